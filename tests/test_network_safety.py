"""No test can reach the real instance metadata address: the guard in tests/conftest.py
refuses the connection, and default credential chains leave the ECS provider out."""

from __future__ import annotations

import os
import socket

import pytest

from tests.conftest import RealMetadataAddressDialled


def test_sockets_refuse_the_real_metadata_address() -> None:
    with pytest.raises(RealMetadataAddressDialled):
        socket.create_connection(("100.100.100.200", 80), timeout=0.5)
    with socket.socket() as s, pytest.raises(RealMetadataAddressDialled):
        s.connect_ex(("100.100.100.200", 80))


def test_default_chains_leave_the_ecs_provider_out() -> None:
    assert os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] == "true"
    from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider
    from alibabacloud_credentials.utils import auth_util

    assert auth_util.environment_ecs_metadata_disabled.lower() == "true"
    with pytest.raises(ValueError, match="IMDS credentials is disabled"):
        EcsRamRoleCredentialsProvider(async_update_enabled=False)
