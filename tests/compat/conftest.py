"""Compatibility suite: the real, unmodified Alibaba SDKs against a running cluster.

Safety: no SDK here may dial 100.100.100.200. Every ECS credential provider is given its
instance's metadata listener as ``proxy``; the legacy core SDK gets it through ``http_proxy``.
``ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`` is set for the whole run (tests/conftest.py) so
a default chain never reaches the real address; the explicit provider tests switch the
module-level flag off only while a proxy is configured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"  # before any SDK import

from alibabacloud_credentials.utils import auth_util  # noqa: E402
from alibabacloud_tea_openapi.models import Config  # noqa: E402

from services.cli import cluster  # noqa: E402
from tests.e2e.conftest import ramsim_up  # noqa: E402

ECS_TRUST = json.dumps({"Statement": [{"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": ["ecs.aliyuncs.com"]}}], "Version": "1"})


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.ClusterFile]:
    with ramsim_up(tmp_path_factory.mktemp("compat"), "--instances", "0") as (_, path):
        yield cluster.load(path)


@pytest.fixture
def imds_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let an explicit ECS provider be built; callers must give it a proxy."""
    monkeypatch.setattr(auth_util, "environment_ecs_metadata_disabled", "false")


def api_config(target: cluster.ClusterFile, *, signature: str | None = None, **credentials: object) -> Config:
    config = Config(endpoint=target.gateway_url.split("//", 1)[1], protocol="http", region_id=target.region_id, **credentials)
    if signature == "v2":
        config.signature_algorithm = "v2"
    return config


def root_config(target: cluster.ClusterFile, signature: str | None = None) -> Config:
    return api_config(target, signature=signature, access_key_id=target.access_key_id, access_key_secret=target.access_key_secret)


def state_dir(target: cluster.ClusterFile) -> Path:
    return Path(target.state_dir)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    """The fidelity check's coverage (tests/compat/test_fidelity.py), when it ran."""
    from tests.compat import fidelity
    if fidelity.RESULTS:
        terminalreporter.section("fidelity: documented response fields answered")
        for line in fidelity.summary(fidelity.RESULTS):
            terminalreporter.write_line(line)
