"""Explained denials, end to end: the gateway answers a denial with Alibaba's AccessDeniedDetail
(PolicyType, AuthPrincipalType, AuthAction, NoPermissionType ImplicitDeny/ExplicitDeny, and RAM's
explanation), and the CLI's ERROR line is followed by "Decided by:", the deciding statement or none."""

from __future__ import annotations

import json
from typing import Callable

import pytest

from services.cli import api
from tests.e2e.conftest import make_role
from tests.e2e.test_cli_errors import ramsim

pytestmark = pytest.mark.e2e
ALIBABA_KEYS = {"PolicyType", "AuthPrincipalOwnerId", "AuthPrincipalType", "AuthPrincipalDisplayName", "NoPermissionType",
                "AuthAction", "EncodedDiagnosticMessage"}


def user(cluster, name: str, *policies: tuple[str, str]) -> api.Credential:  # noqa: ANN001
    cluster.call("ram", "CreateUser", UserName=name)
    key = cluster.call("ram", "CreateAccessKey", UserName=name)["AccessKey"]
    for kind, policy in policies:
        cluster.call("ram", "AttachPolicyToUser", PolicyType=kind, PolicyName=policy, UserName=name)
    return api.Credential(key["AccessKeyId"], key["AccessKeySecret"])


def refused(call: Callable[[], object]) -> api.ApiError:
    with pytest.raises(api.ApiError) as caught:
        call()
    return caught.value


async def test_an_implicit_and_an_explicit_deny_say_what_decided(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Guarded")
    no_pass = json.dumps({"Version": "1", "Statement": [
        {"Effect": "Allow", "Action": "ram:PassRole", "Resource": "*"},
        {"Sid": "NeverGuarded", "Effect": "Deny", "Action": "ram:PassRole", "Resource": "acs:ram:*:*:role/Guarded"}]})
    cluster.call("ram", "CreatePolicy", PolicyName="NoGuarded", PolicyDocument=no_pass)
    plain = user(cluster, "plain", ("System", "AliyunECSFullAccess"))
    denied = user(cluster, "denied", ("System", "AliyunECSFullAccess"), ("Custom", "NoGuarded"))
    region = cluster.file.region_id

    implicit = refused(lambda: cluster.call("ecs", "RunInstances", plain, RegionId=region, RamRoleName="Guarded"))
    detail = implicit.body["AccessDeniedDetail"]
    assert set(detail) == ALIBABA_KEYS, detail
    assert (detail["NoPermissionType"], detail["AuthAction"], detail["AuthPrincipalType"], detail["PolicyType"]) == \
        ("ImplicitDeny", "ram:PassRole", "SubUser", "AccountLevelIdentityBasedPolicy")
    assert implicit.decided.startswith("none: no statement allows it (ImplicitDeny; ram:PassRole for SubUser plain")

    explicit = refused(lambda: cluster.call("ecs", "RunInstances", denied, RegionId=region, RamRoleName="Guarded"))
    detail = explicit.body["AccessDeniedDetail"]
    assert (detail["NoPermissionType"], detail["AuthPrincipalDisplayName"]) == ("ExplicitDeny", "denied")
    # statements are numbered from 0, as Statement[i] in the document: the Deny is the second, statement 1
    assert "NoGuarded" in explicit.decided and "statement 1" in explicit.decided and "Sid NeverGuarded" in explicit.decided
    assert "ExplicitDeny" in explicit.decided

    # the CLI: the ERROR line, then the Decided by: line, exit status 1
    at = ("--cluster-file", str(cluster.path))
    for credential, words in ((plain, ("none: no statement allows it", "ImplicitDeny")),
                              (denied, ("NoGuarded", "statement 1", "Sid NeverGuarded", "ExplicitDeny"))):
        done = ramsim("ecs", "RunInstances", "--RegionId", region, "--RamRoleName", "Guarded", "--access-key-id",
                      credential.access_key_id, "--access-key-secret", credential.access_key_secret, *at)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines[-2].startswith("ERROR: InvalidUser.PassRoleForbidden"), lines
        assert lines[-1].startswith("Decided by: ") and all(w in lines[-1] for w in words), lines[-1]
        assert credential.access_key_secret not in done.stderr + done.stdout


async def test_sts_explains_an_assume_role_its_caller_may_not_make(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    trust = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                        "Principal": {"RAM": [f"acs:ram::{cluster.file.account_id}:root"]}}]})
    cluster.call("ram", "CreateRole", RoleName="Trusting", AssumeRolePolicyDocument=trust)
    nobody = user(cluster, "nobody")  # trusted by the role (its account), but no sts:AssumeRole permission
    arn = f"acs:ram::{cluster.file.account_id}:role/Trusting"
    exc = refused(lambda: cluster.call("sts", "AssumeRole", nobody, RoleArn=arn, RoleSessionName="s1"))
    assert exc.code == "NoPermission"
    detail = exc.body["AccessDeniedDetail"]
    assert (detail["AuthAction"], detail["NoPermissionType"], detail["AuthPrincipalDisplayName"]) == \
        ("sts:AssumeRole", "ImplicitDeny", "nobody")
    assert exc.decided.startswith("none: no statement allows it") and "sts:AssumeRole" in exc.decided
