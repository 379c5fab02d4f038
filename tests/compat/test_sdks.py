"""The official SDKs walk the seed's flow against a running cluster (real processes, Mosquitto,
HTTP), with both signature schemes, and the credentials SDK reads tokens from metadata."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import pytest
from alibabacloud_credentials.client import Client as CredClient
from alibabacloud_credentials.models import Config as CredConfig
from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client as Ecs
from alibabacloud_ram20150501 import models as ram_models
from alibabacloud_ram20150501.client import Client as Ram
from alibabacloud_sts20150401 import models as sts_models
from alibabacloud_sts20150401.client import Client as Sts
from Tea.exceptions import TeaException

from services.cli import cluster
from services.cli.instances import instances
from tests.compat.conftest import ECS_TRUST, api_config, root_config
from tests.e2e.conftest import wait_until

SIGNATURES = [pytest.param(None, id="v3-acs3-hmac-sha256"), pytest.param("v2", id="v1-hmac-sha1")]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def metadata_proxy(target: cluster.ClusterFile, instance_id: str) -> str:
    return wait_until(lambda: next((i["MetadataUrl"] for i in instances(target) if i["InstanceId"] == instance_id
                                    and i["Status"] == "Running"), ""), what=f"{instance_id} running")


def ecs_role_with_user(target: cluster.ClusterFile, signature: str | None) -> tuple[str, Ram, dict[str, str]]:
    """Steps 1-4 with the RAM SDK: a role trusting ECS with a policy, a user allowed to pass it."""
    ram = Ram(root_config(target, signature))
    role_name, user_name = unique("AppRole"), unique("ops")
    role = ram.create_role(ram_models.CreateRoleRequest(role_name=role_name, assume_role_policy_document=ECS_TRUST,
                                                        description="compat")).body.role
    assert role.arn == f"acs:ram::{target.account_id}:role/{role_name}"
    assert role.create_date.endswith("Z")
    ram.attach_policy_to_role(ram_models.AttachPolicyToRoleRequest(policy_type="System", policy_name="AliyunECSReadOnlyAccess",
                                                                   role_name=role_name))
    listed = ram.list_policies_for_role(ram_models.ListPoliciesForRoleRequest(role_name=role_name)).body.policies.policy
    assert [p.policy_name for p in listed] == ["AliyunECSReadOnlyAccess"]
    ram.create_user(ram_models.CreateUserRequest(user_name=user_name))
    key = ram.create_access_key(ram_models.CreateAccessKeyRequest(user_name=user_name)).body.access_key
    pass_role = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "ram:PassRole",
                                                           "Resource": f"acs:ram:*:*:role/{role_name}"}]})
    policy_name = unique("Pass")
    ram.create_policy(ram_models.CreatePolicyRequest(policy_name=policy_name, policy_document=pass_role))
    for policy_type, policy in (("System", "AliyunECSFullAccess"), ("Custom", policy_name)):
        ram.attach_policy_to_user(ram_models.AttachPolicyToUserRequest(policy_type=policy_type, policy_name=policy, user_name=user_name))
    return role_name, ram, {"access_key_id": key.access_key_id, "access_key_secret": key.access_key_secret}


@pytest.mark.parametrize("signature", SIGNATURES)
def test_tea_openapi_sdks_walk_the_seed(target, imds_allowed, signature) -> None:  # noqa: ANN001
    role_name, ram, user = ecs_role_with_user(target, signature)
    ecs = Ecs(api_config(target, signature=signature, **user))
    # 5. the user runs an instance with the role (ram:PassRole checked)
    launched = ecs.run_instances(ecs_models.RunInstancesRequest(region_id=target.region_id, ram_role_name=role_name, amount=1,
                                                                image_id="aliyun_3_x64_20G_alibase_20240819.vhd",
                                                                instance_type="ecs.g7.large"))
    instance_id = launched.body.instance_id_sets.instance_id_set[0]
    proxy = metadata_proxy(target, instance_id)
    described = ecs.describe_instances(ecs_models.DescribeInstancesRequest(region_id=target.region_id,
                                                                            instance_ids=json.dumps([instance_id])))
    assert described.body.instances.instance[0].instance_id == instance_id
    roles = ecs.describe_instance_ram_role(ecs_models.DescribeInstanceRamRoleRequest(region_id=target.region_id,
                                                                                      instance_ids=json.dumps([instance_id])))
    assert roles.body.instance_ram_role_sets.instance_ram_role_set[0].ram_role_name == role_name
    # 6-8. the credentials SDK discovers the role and reads the token through the instance's metadata
    credential = CredClient(CredConfig(type="ecs_ram_role", proxy=proxy))
    token = wait_until(lambda: _try(credential.get_credential), what="credential from metadata")
    assert token.access_key_id.startswith("STS.") and token.security_token
    # 9. the application calls STS and ECS with it
    sts = Sts(api_config(target, signature=signature, credential=credential))
    who = sts.get_caller_identity().body
    assert who.arn == f"acs:ram::{target.account_id}:assumed-role/{role_name}/{instance_id}"
    assert who.identity_type == "AssumedRoleUser"
    as_app = Ecs(api_config(target, signature=signature, credential=credential))
    assert as_app.describe_instances(ecs_models.DescribeInstancesRequest(region_id=target.region_id)).body.total_count >= 1
    # a policy change takes effect on the next call, same token
    ram.detach_policy_from_role(ram_models.DetachPolicyFromRoleRequest(policy_type="System", policy_name="AliyunECSReadOnlyAccess",
                                                                       role_name=role_name))
    with pytest.raises(TeaException) as denied:
        as_app.describe_instances(ecs_models.DescribeInstancesRequest(region_id=target.region_id))
    assert denied.value.code == "Forbidden.RAM" and denied.value.statusCode == 403


@pytest.mark.parametrize("signature", SIGNATURES)
def test_sts_assume_role_for_a_ram_user(target, signature) -> None:  # noqa: ANN001
    ram = Ram(root_config(target, signature))
    user_name, role_name = unique("dev"), unique("Assumable")
    ram.create_user(ram_models.CreateUserRequest(user_name=user_name))
    key = ram.create_access_key(ram_models.CreateAccessKeyRequest(user_name=user_name)).body.access_key
    trust = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                       "Principal": {"RAM": [f"acs:ram::{target.account_id}:root"]}}]})
    ram.create_role(ram_models.CreateRoleRequest(role_name=role_name, assume_role_policy_document=trust))
    sts = Sts(api_config(target, signature=signature, access_key_id=key.access_key_id, access_key_secret=key.access_key_secret))
    request = sts_models.AssumeRoleRequest(role_arn=f"acs:ram::{target.account_id}:role/{role_name}", role_session_name="alice",
                                           duration_seconds=900)
    with pytest.raises(TeaException) as refused:  # identity policy does not allow sts:AssumeRole yet
        sts.assume_role(request)
    assert refused.value.code == "NoPermission"
    ram.attach_policy_to_user(ram_models.AttachPolicyToUserRequest(policy_type="System", policy_name="AliyunSTSAssumeRoleAccess",
                                                                   user_name=user_name))
    assumed = sts.assume_role(request).body
    assert assumed.assumed_role_user.arn == f"acs:ram::{target.account_id}:role/{role_name}/alice"
    assert assumed.credentials.access_key_id.startswith("STS.")
    session = Sts(api_config(target, signature=signature, access_key_id=assumed.credentials.access_key_id,
                             access_key_secret=assumed.credentials.access_key_secret,
                             security_token=assumed.credentials.security_token))
    assert session.get_caller_identity().body.arn == f"acs:ram::{target.account_id}:assumed-role/{role_name}/alice"
    for bad, code in ((sts_models.AssumeRoleRequest(role_arn="not-an-arn", role_session_name="alice"), "InvalidParameter.RoleArn"),
                      (sts_models.AssumeRoleRequest(role_arn=request.role_arn, role_session_name="a"), "InvalidParameter.RoleSessionName"),
                      (sts_models.AssumeRoleRequest(role_arn=request.role_arn, role_session_name="alice", duration_seconds=60),
                       "InvalidParameter.DurationSeconds")):
        with pytest.raises(TeaException) as caught:
            sts.assume_role(bad)
        assert caught.value.code == code


def test_legacy_core_sdk(target, monkeypatch) -> None:  # noqa: ANN001
    from aliyunsdkcore.acs_exception.exceptions import ServerException
    from aliyunsdkcore.auth.credentials import EcsRamRoleCredential
    from aliyunsdkcore.client import AcsClient
    from aliyunsdkcore.request import CommonRequest

    def request(domain: str, version: str, action: str, method: str = "POST", **params: str) -> CommonRequest:
        r = CommonRequest(domain=domain, version=version, action_name=action)
        r.set_protocol_type("http")
        r.set_method(method)
        for k, v in params.items():
            r.add_query_param(k, v)
        return r

    gateway = target.gateway_url.split("//", 1)[1]
    root = AcsClient(target.access_key_id, target.access_key_secret, target.region_id)
    role_name = unique("Legacy")
    created = json.loads(root.do_action_with_exception(request(gateway, "2015-05-01", "CreateRole", "GET", RoleName=role_name,
                                                               AssumeRolePolicyDocument=ECS_TRUST)))
    assert created["Role"]["RoleName"] == role_name
    launched = json.loads(root.do_action_with_exception(request(gateway, "2014-05-26", "RunInstances", RegionId=target.region_id,
                                                                RamRoleName=role_name)))
    instance_id = launched["InstanceIdSets"]["InstanceIdSet"][0]
    proxy = metadata_proxy(target, instance_id)
    wait_until(lambda: _metadata_ok(proxy, role_name), what="credential at metadata")
    # EcsRamRoleCredential fetches with urllib's global opener, which honours http_proxy only if it
    # is built after the variable is set: set both, and build that opener now. Every API call goes
    # through the same proxy, which forwards hosts other than 100.100.100.200 to the gateway.
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy})))
    app = AcsClient(region_id=target.region_id, credential=EcsRamRoleCredential(role_name))
    who = json.loads(app.do_action_with_exception(request("sts.aliyuncs.com", "2015-04-01", "GetCallerIdentity")))
    assert who["Arn"] == f"acs:ram::{target.account_id}:assumed-role/{role_name}/{instance_id}"
    with pytest.raises(ServerException) as denied:  # the role has no policies: ECS refuses
        app.do_action_with_exception(request(f"ecs-{target.region_id}.aliyuncs.com", "2014-05-26", "DescribeInstances",
                                             RegionId=target.region_id))
    assert denied.value.get_error_code() == "Forbidden.RAM"


def _metadata_ok(proxy: str, role: str) -> bool:
    from services.cli.instances import read_metadata
    return read_metadata(proxy, f"/latest/meta-data/ram/security-credentials/{role}")[0] == 200


def _try(fetch):  # noqa: ANN001, ANN202
    try:
        return fetch()
    except Exception:  # noqa: BLE001 - not there yet
        time.sleep(0.05)
        return None


def _walk(list_page, request, items) -> tuple[list[str], int]:  # noqa: ANN001
    """The pagination loop a user writes: ask again with the Marker while IsTruncated."""
    names, pages = [], 0
    while True:
        body = list_page(request).body
        pages += 1
        names += items(body)
        assert body.is_truncated in (True, False)  # always answered, never None
        if not body.is_truncated:
            return names, pages
        request.marker = body.marker


@pytest.mark.parametrize("signature", SIGNATURES)
def test_ram_lists_page_with_the_sdk(target, signature) -> None:  # noqa: ANN001
    ram = Ram(root_config(target, signature))
    prefix = unique("Paged")
    created = [f"{prefix}-{i}" for i in range(7)]
    group = unique("grp")
    ram.create_group(ram_models.CreateGroupRequest(group_name=group))
    for name in created:
        ram.create_role(ram_models.CreateRoleRequest(role_name=name, assume_role_policy_document=ECS_TRUST))
        ram.create_user(ram_models.CreateUserRequest(user_name=name))
        ram.add_user_to_group(ram_models.AddUserToGroupRequest(user_name=name, group_name=group))
    total = len(ram.list_roles(ram_models.ListRolesRequest(max_items=1000)).body.roles.role)
    roles, pages = _walk(ram.list_roles, ram_models.ListRolesRequest(max_items=3), lambda b: [r.role_name for r in b.roles.role])
    assert len(roles) == len(set(roles)) == total and set(created) <= set(roles) and pages == -(-total // 3)
    users, _ = _walk(ram.list_users, ram_models.ListUsersRequest(max_items=2), lambda b: [u.user_name for u in b.users.user])
    assert set(created) <= set(users) and len(users) == len(set(users))
    members, pages = _walk(ram.list_users_for_group, ram_models.ListUsersForGroupRequest(group_name=group, max_items=3),
                           lambda b: [u.user_name for u in b.users.user])
    assert members == created and pages == 3
    policies, _ = _walk(ram.list_policies, ram_models.ListPoliciesRequest(policy_type="System", max_items=2),
                        lambda b: [p.policy_name for p in b.policies.policy])
    assert "AdministratorAccess" in policies and len(policies) == len(set(policies))
    with pytest.raises(TeaException) as refused:
        ram.list_roles(ram_models.ListRolesRequest(max_items=1001))
    assert refused.value.code == "InvalidParameter.MaxItems"


def test_ecs_describe_confirms_hardened_mode_and_pages(target) -> None:  # noqa: ANN001
    ecs = Ecs(root_config(target))
    launched = ecs.run_instances(ecs_models.RunInstancesRequest(
        region_id=target.region_id, amount=3, instance_type="ecs.g7.xlarge", description="compat",
        tag=[ecs_models.RunInstancesRequestTag(key="team", value="compat")])).body.instance_id_sets.instance_id_set
    hardened = launched[0]
    ecs.modify_instance_metadata_options(ecs_models.ModifyInstanceMetadataOptionsRequest(
        region_id=target.region_id, instance_id=hardened, http_tokens="required", http_put_response_hop_limit=2))
    wait_until(lambda: all(i["Status"] == "Running" for i in instances(target) if i["InstanceId"] in launched), what="running")
    [i] = ecs.describe_instances(ecs_models.DescribeInstancesRequest(region_id=target.region_id,
                                                                     instance_ids=json.dumps([hardened]))).body.instances.instance
    assert (i.metadata_options.http_tokens, i.metadata_options.http_endpoint, i.metadata_options.http_put_response_hop_limit) == \
        ("required", "enabled", 2)
    assert (i.cpu, i.memory, i.instance_network_type, i.status, i.description) == (4, 16384, "vpc", "Running", "compat")
    assert [(t.tag_key, t.tag_value) for t in i.tags.tag] == [("team", "compat")]
    assert i.vpc_attributes.private_ip_address.ip_address[0].startswith("172.16.")
    assert i.network_interfaces.network_interface[0].primary_ip_address == i.vpc_attributes.private_ip_address.ip_address[0]
    assert i.start_time.endswith("Z") and i.expired_time and i.osname
    seen, token = [], None
    while True:  # the NextToken loop
        body = ecs.describe_instances(ecs_models.DescribeInstancesRequest(region_id=target.region_id, max_results=2,
                                                                          next_token=token)).body
        seen += [x.instance_id for x in body.instances.instance]
        token = body.next_token
        if not token:
            break
    assert set(launched) <= set(seen) and len(seen) == len(set(seen)) == body.total_count
