"""Fidelity: every documented field of the official SDKs' response models (RAM, STS, ECS), for
every action ramsim implements, against ramsim's real answers from a running cluster.

One scenario calls each action (lists with more than one item and truncated, every identity
GetCallerIdentity knows, an instance with a role and tags); the answers of an action are pooled.
A documented field that no answer holds must be in ``omissions.toml`` with the reason; a listed
omission that is answered, or that no model documents, fails too, so the list stays true. The
coverage (fields answered / fields in the models) is printed at the end of the run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from protocol.messages import ecs, ram, sts
from services.cli import api, cluster
from tests.compat import fidelity
from tests.compat.test_sdks import metadata_proxy, unique

ALLOW_ALL = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


class Recorder:
    """Calls the gateway and keeps every answer per ``product.Action``."""

    def __init__(self, target: cluster.ClusterFile) -> None:
        self.target = target
        self.answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.root = api.Credential(target.access_key_id, target.access_key_secret)

    def __call__(self, product: str, action: str, credential: api.Credential | None = None, **params: str) -> dict[str, Any]:
        answer = api.call(self.target.gateway_url, product, action, params, credential or self.root)
        self.answers[f"{product}.{action}"].append(answer)
        return answer


def scenario(call: Recorder, target: cluster.ClusterFile) -> None:  # noqa: PLR0915 - one walk through every action
    account = target.account_id
    role, spare, user, group, policy = unique("FidRole"), unique("FidSpare"), unique("fid"), unique("fidg"), unique("FidPolicy")
    trust = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {
        "Service": ["ecs.aliyuncs.com"], "RAM": [f"acs:ram::{account}:root"]}}]})
    for name in (role, spare):
        call("ram", "CreateRole", RoleName=name, AssumeRolePolicyDocument=trust, Description="fidelity", MaxSessionDuration="3600")
    call("ram", "GetRole", RoleName=role)
    call("ram", "UpdateRole", RoleName=role, NewDescription="fidelity, updated")
    call("ram", "ListRoles", MaxItems="1")
    call("ram", "ListRoles")
    for name in (user, user + "b"):
        call("ram", "CreateUser", UserName=name, DisplayName="Fidelity", Comments="fidelity", MobilePhone="86-18600008888",
             Email="fidelity@example.com")
    call("ram", "GetUser", UserName=user)
    call("ram", "UpdateUser", UserName=user + "b", NewComments="updated")
    call("ram", "ListUsers", MaxItems="1")
    call("ram", "ListUsers")
    key = call("ram", "CreateAccessKey", UserName=user)["AccessKey"]
    as_user = api.Credential(key["AccessKeyId"], key["AccessKeySecret"])
    call("ram", "ListAccessKeys", UserName=user)
    call("ram", "UpdateAccessKey", UserName=user, UserAccessKeyId=key["AccessKeyId"], Status="Active")
    for name in (group, group + "b"):
        call("ram", "CreateGroup", GroupName=name, Comments="fidelity")
    call("ram", "GetGroup", GroupName=group)
    call("ram", "UpdateGroup", GroupName=group + "b", NewComments="updated")
    call("ram", "ListGroups", MaxItems="1")
    call("ram", "ListGroups")
    for name in (user, user + "b"):
        call("ram", "AddUserToGroup", UserName=name, GroupName=group)
    call("ram", "ListGroupsForUser", UserName=user)
    call("ram", "ListUsersForGroup", GroupName=group, MaxItems="1")
    call("ram", "ListUsersForGroup", GroupName=group)
    call("ram", "CreatePolicy", PolicyName=policy, PolicyDocument=ALLOW_ALL, Description="fidelity")
    call("ram", "GetPolicy", PolicyType="Custom", PolicyName=policy)
    call("ram", "ListPolicies", MaxItems="1")
    call("ram", "ListPolicies", PolicyType="Custom")
    call("ram", "CreatePolicyVersion", PolicyName=policy, PolicyDocument=ALLOW_ALL, SetAsDefault="true")
    call("ram", "GetPolicyVersion", PolicyType="Custom", PolicyName=policy, VersionId="v2")
    call("ram", "ListPolicyVersions", PolicyType="Custom", PolicyName=policy)
    call("ram", "SetDefaultPolicyVersion", PolicyName=policy, VersionId="v1")
    call("ram", "DeletePolicyVersion", PolicyName=policy, VersionId="v2")
    call("ram", "AttachPolicyToUser", PolicyType="Custom", PolicyName=policy, UserName=user)
    call("ram", "AttachPolicyToGroup", PolicyType="Custom", PolicyName=policy, GroupName=group)
    call("ram", "AttachPolicyToRole", PolicyType="Custom", PolicyName=policy, RoleName=role)
    call("ram", "ListPoliciesForUser", UserName=user)
    call("ram", "ListPoliciesForGroup", GroupName=group)
    call("ram", "ListPoliciesForRole", RoleName=role)
    call("ram", "ListEntitiesForPolicy", PolicyType="Custom", PolicyName=policy)
    # STS, as every kind of caller
    call("sts", "GetCallerIdentity")
    call("sts", "GetCallerIdentity", as_user)
    assumed = call("sts", "AssumeRole", as_user, RoleArn=f"acs:ram::{account}:role/{role}", RoleSessionName="fidelity")
    c = assumed["Credentials"]
    call("sts", "GetCallerIdentity", api.Credential(c["AccessKeyId"], c["AccessKeySecret"], c["SecurityToken"]))
    # ECS
    launched = call("ecs", "RunInstances", RegionId=target.region_id, Amount="2", RamRoleName=role, Description="fidelity",
                    **{"Tag.1.Key": "team", "Tag.1.Value": "fidelity"})["InstanceIdSets"]["InstanceIdSet"]
    for instance_id in launched:
        metadata_proxy(target, instance_id)  # Running, with a StartTime
    other = call("ecs", "RunInstances", RegionId=target.region_id)["InstanceIdSets"]["InstanceIdSet"]
    call("ecs", "AttachInstanceRamRole", RegionId=target.region_id, RamRoleName=role, InstanceIds=json.dumps(other))
    call("ecs", "ModifyInstanceMetadataOptions", RegionId=target.region_id, InstanceId=launched[0], HttpTokens="required")
    call("ecs", "DescribeInstances", RegionId=target.region_id, InstanceIds=json.dumps(launched))
    call("ecs", "DescribeInstances", RegionId=target.region_id, MaxResults="1")
    call("ecs", "DescribeInstanceRamRole", RegionId=target.region_id, InstanceIds=json.dumps(launched))
    call("ecs", "DetachInstanceRamRole", RegionId=target.region_id, InstanceIds=json.dumps(other), RamRoleName=role)
    # and undo
    for kind, target_name in (("User", user), ("Group", group), ("Role", role)):
        call("ram", f"DetachPolicyFrom{kind}", PolicyType="Custom", PolicyName=policy, **{f"{kind}Name": target_name})
    call("ram", "RemoveUserFromGroup", UserName=user + "b", GroupName=group)
    call("ram", "DeleteAccessKey", UserName=user, UserAccessKeyId=key["AccessKeyId"])
    call("ram", "DeleteUser", UserName=user + "b")
    call("ram", "DeleteGroup", GroupName=group + "b")
    call("ram", "DeletePolicy", PolicyName=policy)
    call("ram", "DeleteRole", RoleName=spare)


def implemented() -> list[tuple[str, str]]:
    return [(product, c.__name__) for product, module in (("ram", ram), ("sts", sts), ("ecs", ecs)) for c in module.COMMANDS]


def test_answers_hold_every_documented_field(target) -> None:  # noqa: ANN001
    call = Recorder(target)
    scenario(call, target)
    omissions = fidelity.load_omissions()
    problems = []
    for product, action in implemented():
        model = fidelity.model(product, action)
        if model is None:
            continue  # a ramsim extension: no model documents it
        name = f"{product}.{action}"
        assert call.answers[name], f"the scenario never called {name}"
        answered = set().union(*(fidelity.answered(a) for a in call.answers[name]))
        report = fidelity.Report(name, fidelity.documented(model), answered, omissions.pop(name, {}))
        fidelity.RESULTS[name] = report
        problems += [f"{name}: {p} is documented, not answered and not in omissions.toml" for p in report.missing]
        problems += [f"{name}: {p} is in omissions.toml but answered" for p in report.listed_but_answered]
        problems += [f"{name}: {p} is in omissions.toml but no model documents it" for p in report.listed_but_undocumented]
    problems += [f"{name}: in omissions.toml but not an action ramsim implements" for name in omissions]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("answer, expected", [
    ({"A": {"B": [{"C": 1}, {"D": 2}]}, "E": []}, {"A", "A.B", "A.B[].C", "A.B[].D", "E"}),
    ({"A": {"B": []}}, {"A", "A.B"}),
])
def test_answered_paths(answer: dict, expected: set[str]) -> None:
    assert fidelity.answered(answer) == expected


def test_documented_paths_follow_nested_models() -> None:
    paths = fidelity.documented(fidelity.model("ram", "ListRoles"))
    assert {"IsTruncated", "Marker", "Roles", "Roles.Role", "Roles.Role[].RoleName"} <= set(paths)
    assert fidelity.model("ecs", "DescribeInstanceMetadataEndpoints") is None  # ramsim's own: no model


def test_an_unlisted_missing_field_and_a_stale_omission_are_both_reported() -> None:
    report = fidelity.Report("x.Y", ["A", "A.B", "A.C", "D"], {"A", "A.B"}, {"D": "why", "A.B": "stale"})
    assert report.missing == ["A.C"] and report.listed_but_answered == ["A.B"] and report.covered == 2
