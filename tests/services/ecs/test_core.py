"""Tests for the pure ECS core (:class:`services.ecs.core.EcsCore`).

The core talks to RAM and STS only by returning :class:`Request` effects; ``Cloud`` below is a
small fake that answers them the way RAM (GetRole, GetEffectivePolicies) and STS (AssumeRole)
would, and hands each reply back through ``core.on_reply(context, body, now)``. ECS decides a
RAM user's calls itself from the policies RAM hands it (cached until a RAM event says they
changed), so the tests give the user real policy documents. Time is explicit: every test owns
``now`` and advances it by hand.
"""

from __future__ import annotations

import json
import re

import msgspec
import pytest

from protocol import topics
from protocol.errors import Error, error, timeout
from protocol.messages import ecs as m
from protocol.messages import ram, sts
from protocol.messages.common import Principal
from protocol.times import iso
from services.ecs.core import RETRY_CAP, RETRY_FIRST, EcsCore, retry_delay
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime.effects import Effect, Publish, Reply, Request, Send
from services.runtime.entropy import SeededEntropy
from tests.helpers import ACCOUNT, T0, entropy, envelope, published, replies, reply, requests, root

REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-i"
ROLE = "MyApplicationRole"
LIFETIME = 3600
REFRESH_BEFORE = 1800
TICK = 1.0
INSTANCE_ID = re.compile(r"^i-[a-z0-9]{20}$")

RAM_ONLY_TRUST = json.dumps({"Version": "1", "Statement": [
    {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:root"]}}]})
OTHER_SERVICE_TRUST = json.dumps({"Version": "1", "Statement": [
    {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": ["fc.aliyuncs.com"]}}]})


def allow(*statements: tuple[str, str, str]) -> str:
    """A policy document from (Effect, Action, Resource) triples."""
    return json.dumps({"Version": "1", "Statement": [{"Effect": e, "Action": a, "Resource": r} for e, a, r in statements]})


ALLOW_ALL = allow(("Allow", "*", "*"))
# step 4 of the seed: the user may pass exactly one role (and, here, run and attach instances)
PASS_ONE_ROLE = allow(("Allow", "ecs:*", "*"), ("Allow", "ram:PassRole", f"acs:ram:*:*:role/{ROLE}"))


def alice() -> Principal:
    """A RAM user of the account (not the owner, so every API call is authorized by RAM)."""
    return Principal(identity_type="RAMUser", account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:user/alice",
                     principal_id="200000000000001", user_name="alice")


def ids_json(*instance_ids: str) -> str:
    return json.dumps(list(instance_ids))


class Cloud:
    """Answers the core's requests like RAM and STS would."""

    def __init__(self) -> None:
        self.roles: dict[str, str] = {ROLE: ECS_TRUST_POLICY, "OtherEcsRole": ECS_TRUST_POLICY}
        self.user_policy = ALLOW_ALL        # the one policy attached to every RAM user
        self.generation = 1                 # RAM's change counter
        self.sts_failure: Error | None = None
        self.minted = 0
        self.asked: list[Request] = []
        self.batches = 0                    # AssumeRoles answered

    def answer(self, request: Request, now: float) -> object:
        self.asked.append(request)
        body = request.body
        if isinstance(body, ram.GetRole):
            assert request.dest == "ram"
            document = self.roles.get(body.role_name)
            if document is None:
                return error("EntityNotExist.Role", f"The role not exists: {body.role_name}.", 404)
            return ram.GetRoleOk(role=ram.Role(role_id="300000000000001", role_name=body.role_name,
                                               arn=f"acs:ram::{ACCOUNT}:role/{body.role_name.lower()}",
                                               assume_role_policy_document=document, create_date=iso(T0)))
        if isinstance(body, ram.GetEffectivePolicies):
            assert request.dest == "ram" and body.principal.identity_type == "RAMUser"
            return ram.GetEffectivePoliciesOk(
                policies=[ram.PolicyDocument(name=f"Custom:{body.principal.user_name}", version="v1", document=self.user_policy)],
                generation=self.generation)
        if isinstance(body, sts.AssumeRole):
            assert request.dest == "sts"
            if self.sts_failure is not None:
                return self.sts_failure
            self.minted += 1
            n = self.minted
            return sts.AssumeRoleOk(
                credentials=sts.Credentials(access_key_id=f"STS.KEY{n:021d}", access_key_secret=f"secret-{n}",
                                            security_token=f"token-{n}", expiration=iso(now + body.duration_seconds)),
                assumed_role_user=sts.AssumedRoleUser(arn=f"{body.role_arn}/{body.role_session_name}",
                                                      assumed_role_id=f"300000000000001:{body.role_session_name}"))
        if isinstance(body, sts.AssumeRoles):  # one answer each, as STS's batch gives them
            assert request.dest == "sts" and 1 < len(body.requests) <= 100
            self.batches += 1
            answers = [self.answer(Request("sts", one, None), now) for one in body.requests]
            self.asked[-len(answers):] = []  # the batch was one request
            return sts.AssumeRolesOk(results=[sts.AssumeRoleResult(ok=a) if isinstance(a, sts.AssumeRoleOk) else
                                              sts.AssumeRoleResult(error=a) for a in answers])
        raise AssertionError(f"unexpected request {request}")


class Harness:
    """One core, one fake cloud, one hand-driven clock. ``held`` keeps STS requests not yet answered."""

    def __init__(self, *, lifetime: int = LIFETIME, refresh_before: int = REFRESH_BEFORE) -> None:
        self.now = T0
        self.cloud = Cloud()
        self.core = EcsCore(account_id=ACCOUNT, region_id=REGION, zone_id=ZONE, credential_lifetime=lifetime,
                            refresh_before=refresh_before, entropy=entropy(7))
        self.held: list[Request] = []

    def call(self, body: object, *, hold_sts: bool = False) -> list[Effect]:
        return self.settle(self.core.handle(envelope(body), self.now), hold_sts=hold_sts)

    def settle(self, effects: list[Effect], *, hold_sts: bool = False) -> list[Effect]:
        """Answer every request in ``effects`` (and those the answers cause); return all effects."""
        out = list(effects)
        queue = requests(effects)
        while queue:
            request = queue.pop(0)
            if hold_sts and request.dest == "sts":
                self.held.append(request)
                continue
            more = self.core.on_reply(request.context, self.cloud.answer(request, self.now), self.now)
            out += more
            queue += requests(more)
        return out

    def release(self, request: Request | None = None) -> list[Effect]:
        """Let STS answer one held request (the oldest by default)."""
        request = request or self.held[0]
        self.held.remove(request)
        return self.settle(self.core.on_reply(request.context, self.cloud.answer(request, self.now), self.now))

    def register(self, host_id: str = "h1") -> m.RegisterHostOk:
        ok = reply(self.core.handle(envelope(m.RegisterHost(host_id=host_id), src=f"metadata-{host_id}"), self.now))
        assert isinstance(ok, m.RegisterHostOk)
        return ok

    def launch(self, *, role: str = "", caller: Principal | None = None, amount: int = 1, hold_sts: bool = False) -> list[str]:
        effects = self.call(m.RunInstances(region_id=REGION, ram_role_name=role, amount=amount, caller=caller or root()),
                            hold_sts=hold_sts)
        ok = reply(effects)
        assert isinstance(ok, m.RunInstancesOk), ok
        return ok.instance_id_sets.instance_id_set

    def ready(self, instance_id: str, host_id: str = "h1", url: str = "http://127.0.0.1:9001") -> list[Effect]:
        return self.core.handle(envelope(m.InstanceEndpointReady(instance_id=instance_id, host_id=host_id, url=url),
                                         src=f"metadata-{host_id}"), self.now)

    def running(self, *, role: str = "") -> str:
        self.register()
        [instance_id] = self.launch(role=role)
        self.ready(instance_id)
        return instance_id

    def status(self, instance_id: str) -> str:
        ok = reply(self.call(m.DescribeInstances(region_id=REGION, instance_ids=ids_json(instance_id), caller=root())))
        assert isinstance(ok, m.DescribeInstancesOk)
        [instance] = ok.instances.instance
        return instance.status

    def ram_changed(self, user_policy: str) -> None:
        """RAM changes the user's policy and publishes the event ECS subscribes to."""
        self.cloud.user_policy = user_policy
        self.cloud.generation += 1
        event = ram.PolicyAttachedToUser(policy_type="Custom", policy_name="p", user_name="alice", generation=self.cloud.generation)
        assert self.core.handle(envelope(event, src="ram", dest="*"), self.now) == []

    def asked_for_policies(self) -> int:
        return sum(isinstance(r.body, ram.GetEffectivePolicies) for r in self.cloud.asked)

    def roles(self) -> dict[str, str]:
        ok = reply(self.call(m.DescribeInstanceRamRole(region_id=REGION, instance_ids=ids_json(*self.core.instances),
                                                       caller=root())))
        assert isinstance(ok, m.DescribeInstanceRamRoleOk)
        return {s.instance_id: s.ram_role_name for s in ok.instance_ram_role_sets.instance_ram_role_set}


def views(effects: list[Effect], host_id: str = "h1") -> list[m.InstanceView]:
    """The instance views pushed in ``effects``, checking each went to its instance topic (one
    view) or in one batch to its host's agent (several)."""
    found = []
    for e in effects:
        if isinstance(e, Publish) and isinstance(e.body, m.InstanceChanged):
            assert e.topic == topics.instance(e.body.view.host_id, e.body.view.instance_id)
            assert e.body.view.host_id == host_id
            found.append(e.body.view)
        elif isinstance(e, Send) and isinstance(e.body, m.InstancesChanged):
            assert e.dest == f"metadata-{host_id}" and len(e.body.views) > 1
            assert all(v.host_id == host_id for v in e.body.views)
            found += e.body.views
    return found


def assumed(effects: list[Effect]) -> list[sts.AssumeRole]:
    """Every AssumeRole asked of STS in ``effects``, alone or inside an AssumeRoles."""
    found: list[sts.AssumeRole] = []
    for r in requests(effects):
        if isinstance(r.body, sts.AssumeRoles):
            found += r.body.requests
        elif isinstance(r.body, sts.AssumeRole):
            found.append(r.body)
    return found


def event_topics(effects: list[Effect]) -> list[str]:
    return [e.topic for e in effects if isinstance(e, Publish) and not isinstance(e.body, m.InstanceChanged)]


def error_of(effects: list[Effect]) -> Error:
    body = reply(effects)
    assert isinstance(body, Error), body
    return body


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- hosts and RunInstances -------------------------------------------------------------------
def test_run_instances_by_root_launches_a_pending_instance_and_pushes_its_view(h: Harness) -> None:
    assert h.register("h1").instances == []
    effects = h.call(m.RunInstances(region_id=REGION, caller=root()))

    ok = reply(effects)
    assert isinstance(ok, m.RunInstancesOk)
    [instance_id] = ok.instance_id_sets.instance_id_set
    assert INSTANCE_ID.match(instance_id)
    assert h.cloud.asked == []  # the account owner needs no RAM decision, and no role was asked for
    [view] = views(effects)
    assert view.instance_id == instance_id
    assert (view.region_id, view.zone_id, view.account_id) == (REGION, ZONE, ACCOUNT)
    assert view.host_name == "iZ" + instance_id[2:] + "Z"
    assert view.ram_role_name == "" and view.credentials is None
    assert view.network.mac.startswith("00:16:3e:")
    assert [p.topic for p in effects if isinstance(p, Publish)] == [topics.instance("h1", instance_id)]
    assert h.status(instance_id) == "Pending"


def test_instances_are_spread_over_registered_hosts_and_re_registration_returns_them(h: Harness) -> None:
    h.register("h1")
    h.register("h2")
    launched = h.launch(amount=3)

    assert len(set(launched)) == 3
    assert [h.core.instances[i].host_id for i in launched] == ["h1", "h2", "h1"]
    again = h.register("h1")  # an agent restarting gets every instance it hosts
    assert [v.instance_id for v in again.instances] == [launched[0], launched[2]]
    assert h.core.hosts == ["h1", "h2"]


def test_run_instances_places_an_instance_at_its_private_ip_in_a_configured_vswitch() -> None:
    """compose.yaml's instances are containers with fixed addresses: RunInstances' PrivateIpAddress
    puts each instance's eth0 there, inside the vSwitch the cluster is configured with."""
    h = Harness()
    h.core = EcsCore(account_id=ACCOUNT, region_id=REGION, zone_id=ZONE, credential_lifetime=LIFETIME,
                     refresh_before=REFRESH_BEFORE, entropy=entropy(7), vswitch_cidr="100.100.100.0/24")
    h.register()
    [view] = views(h.call(m.RunInstances(region_id=REGION, private_ip_address="100.100.100.11", caller=root())))
    net = view.network
    assert (net.private_ip, net.vswitch_cidr_block, net.netmask, net.gateway) == ("100.100.100.11", "100.100.100.0/24",
                                                                                 "255.255.255.0", "100.100.100.253")
    [drawn] = views(h.call(m.RunInstances(region_id=REGION, caller=root())))  # without one: an address in the vSwitch
    assert drawn.network.private_ip.startswith("100.100.100.") and drawn.network.private_ip != "100.100.100.11"
    for address, amount, code in [("100.100.100.11", 1, "InvalidPrivateIpAddress.Duplicated"),
                                  ("172.16.0.5", 1, "InvalidPrivateIpAddress.Malformed"),
                                  ("100.100.100.255", 1, "InvalidPrivateIpAddress.Malformed"),
                                  ("not-an-ip", 1, "InvalidPrivateIpAddress.Malformed"),
                                  ("100.100.100.12", 2, "InvalidParameter")]:
        problem = error_of(h.call(m.RunInstances(region_id=REGION, private_ip_address=address, amount=amount, caller=root())))
        assert problem.code == code, (address, problem)
    assert len(h.core.instances) == 2


def test_the_default_vswitch_is_172_16(h: Harness) -> None:
    h.register()
    [view] = views(h.call(m.RunInstances(region_id=REGION, caller=root())))
    assert view.network.private_ip.startswith("172.16.") and view.network.vpc_cidr_block == "172.16.0.0/12"
    assert view.network.gateway == "172.16.255.253"


def test_run_instances_without_a_registered_host_is_no_stock(h: Harness) -> None:
    problem = error_of(h.call(m.RunInstances(region_id=REGION, caller=root())))
    assert (problem.code, problem.http_status) == ("OperationDenied.NoStock", 403)
    assert h.core.instances == {}


@pytest.mark.parametrize("change, code", [
    ({"amount": 0}, "InvalidParameter"),
    ({"amount": 101}, "InvalidParameter"),
    ({"http_tokens": "always"}, "InvalidHttpTokens.NotSupported"),
    ({"http_endpoint": "off"}, "InvalidHttpEndpoint.NotSupported"),
    ({"user_data": "x" * (32 * 1024 + 1)}, "InvalidUserData.SizeExceeded"),
])
def test_run_instances_rejects_bad_parameters(h: Harness, change: dict, code: str) -> None:
    h.register()
    problem = error_of(h.call(m.RunInstances(region_id=REGION, caller=root(), **change)))
    assert (problem.code, problem.http_status) == (code, 400)
    assert h.core.instances == {}


def test_endpoint_ready_moves_pending_to_running(h: Harness) -> None:
    h.register()
    [instance_id] = h.launch()
    assert h.status(instance_id) == "Pending"

    h.ready(instance_id)
    assert h.status(instance_id) == "Running"


def test_endpoint_ready_from_another_host_is_ignored(h: Harness) -> None:
    h.register("h1")
    [instance_id] = h.launch()
    h.ready(instance_id, host_id="h2", url="http://127.0.0.1:9999")
    assert h.status(instance_id) == "Pending"
    assert h.core.instances[instance_id].endpoint_url == ""


# -- RunInstances with a role, by a RAM user ----------------------------------------------------
def test_a_ram_user_call_first_fetches_the_users_effective_policies(h: Harness) -> None:
    h.register()
    effects = h.core.handle(envelope(m.RunInstances(region_id=REGION, ram_role_name=ROLE, caller=alice())), h.now)

    [ask] = requests(effects)
    assert ask.dest == "ram" and isinstance(ask.body, ram.GetEffectivePolicies)
    assert ask.body.principal == alice()
    assert h.core.instances == {}  # nothing happens before RAM answers


def test_pass_role_is_checked_on_the_named_role(h: Harness) -> None:
    h.register()
    h.cloud.user_policy = PASS_ONE_ROLE
    assert len(h.launch(role=ROLE, caller=alice())) == 1

    problem = error_of(h.call(m.RunInstances(region_id=REGION, ram_role_name="OtherEcsRole", caller=alice())))
    assert (problem.code, problem.http_status) == ("InvalidUser.PassRoleForbidden", 403)
    assert len(h.core.instances) == 1
    assert [r.body.role_name for r in h.cloud.asked if isinstance(r.body, ram.GetRole)] == [ROLE]


def test_allowed_run_with_role_checks_the_role_then_assumes_it_as_ecs(h: Harness) -> None:
    h.register()
    [instance_id] = h.launch(role=ROLE, caller=alice(), hold_sts=True)

    [get_role] = [r for r in h.cloud.asked if isinstance(r.body, ram.GetRole)]
    assert get_role.body.role_name == ROLE
    [assume] = h.held
    assert isinstance(assume.body, sts.AssumeRole)
    assert assume.body.role_arn == f"acs:ram::{ACCOUNT}:role/{ROLE.lower()}"
    assert assume.body.role_session_name == instance_id
    assert assume.body.duration_seconds == LIFETIME
    assert assume.body.caller is not None
    assert (assume.body.caller.identity_type, assume.body.caller.arn) == ("Service", "ecs.aliyuncs.com")


@pytest.mark.parametrize("user_policy, code", [
    (allow(("Allow", "ecs:RunInstances", "*")), "InvalidUser.PassRoleForbidden"),
    (allow(("Allow", "*", "*"), ("Deny", "ram:PassRole", "*")), "InvalidUser.PassRoleForbidden"),
    (allow(("Allow", "ram:PassRole", "*")), "Forbidden.RAM"),
    (allow(("Allow", "*", "*"), ("Deny", "ecs:RunInstances", "*")), "Forbidden.RAM"),
])
def test_run_instances_denied_by_the_users_policies(h: Harness, user_policy: str, code: str) -> None:
    h.register()
    h.cloud.user_policy = user_policy
    problem = error_of(h.call(m.RunInstances(region_id=REGION, ram_role_name=ROLE, caller=alice())))

    assert (problem.code, problem.http_status) == (code, 403)
    assert h.core.instances == {}
    assert not any(isinstance(r.body, (ram.GetRole, sts.AssumeRole)) for r in h.cloud.asked)


def test_policies_are_cached_until_a_ram_event_says_they_changed(h: Harness) -> None:
    h.register()
    h.launch(role=ROLE, caller=alice())
    h.launch(role=ROLE, caller=alice())
    assert h.asked_for_policies() == 1  # the second call was decided from the cache

    h.ram_changed(allow(("Allow", "ecs:RunInstances", "*")))  # PassRole revoked
    problem = error_of(h.call(m.RunInstances(region_id=REGION, ram_role_name=ROLE, caller=alice())))
    assert problem.code == "InvalidUser.PassRoleForbidden"
    assert h.asked_for_policies() == 2
    assert len(h.core.instances) == 2


@pytest.mark.parametrize("trust", [RAM_ONLY_TRUST, OTHER_SERVICE_TRUST])
def test_run_instances_with_a_role_not_trusting_ecs_is_not_ecs_role(h: Harness, trust: str) -> None:
    h.register()
    h.cloud.roles[ROLE] = trust
    problem = error_of(h.call(m.RunInstances(region_id=REGION, ram_role_name=ROLE, caller=root())))
    assert (problem.code, problem.http_status) == ("InvalidRamRole.NotEcsRole", 401)
    assert h.core.instances == {}


def test_run_instances_with_a_missing_role_is_role_not_found(h: Harness) -> None:
    h.register()
    problem = error_of(h.call(m.RunInstances(region_id=REGION, ram_role_name="NoSuchRole", caller=root())))
    assert (problem.code, problem.http_status) == ("InvalidRamRole.NotFound", 404)
    assert h.core.instances == {}


def test_credential_from_sts_is_pushed_with_the_role_and_announced_without_secrets(h: Harness) -> None:
    h.register()
    effects = h.call(m.RunInstances(region_id=REGION, ram_role_name=ROLE, caller=root()), hold_sts=True)
    [first] = views(effects)
    assert first.ram_role_name == "" and first.credentials is None  # not serving before STS answers

    h.now += 5 * TICK
    effects = h.release()
    [view] = views(effects)
    assert view.generation > first.generation
    assert view.ram_role_name == ROLE
    c = view.credentials
    assert c is not None
    assert (c.access_key_id, c.access_key_secret, c.security_token) == ("STS.KEY000000000000000000001", "secret-1", "token-1")
    assert c.expiration == h.now + LIFETIME and c.last_updated == h.now

    assert event_topics(effects) == [topics.event("ecs", "RoleAttachedToInstance"),
                                     topics.event("ecs", "InstanceCredentialsRefreshed")]
    [attached] = published(effects, m.RoleAttachedToInstance)
    [refreshed] = published(effects, m.InstanceCredentialsRefreshed)
    assert (attached.instance_id, attached.ram_role_name) == (view.instance_id, ROLE)
    assert (refreshed.access_key_id, refreshed.expiration) == (c.access_key_id, c.expiration)
    for event in (attached, refreshed):
        wire = msgspec.json.encode(event)
        assert b"secret-1" not in wire and b"token-1" not in wire


# -- AttachInstanceRamRole ----------------------------------------------------------------------
def test_attach_replies_only_after_the_credential_arrived(h: Harness) -> None:
    instance_id = h.running()
    assert h.status(instance_id) == "Running"
    effects = h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(instance_id),
                                             caller=root()), hold_sts=True)
    assert replies(effects) == [] and views(effects) == []  # no reply, no view yet
    assert len(h.held) == 1

    effects = h.release()
    ok = reply(effects)
    assert isinstance(ok, m.AttachInstanceRamRoleOk)
    assert (ok.total_count, ok.fail_count, ok.ram_role_name) == (1, 0, ROLE)
    [result] = ok.attach_instance_ram_role_results.attach_instance_ram_role_result
    assert (result.instance_id, result.code, result.success) == (instance_id, "200", True)
    [view] = views(effects)
    assert view.ram_role_name == ROLE and view.credentials is not None
    assert h.roles() == {instance_id: ROLE}


def test_attach_to_several_instances_replies_once_every_credential_arrived(h: Harness) -> None:
    h.register()
    first, second = h.launch(amount=2)
    h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(first, second, first),
                                   caller=root()), hold_sts=True)
    [batch] = h.held  # one AssumeRoles for the batch; the repeated id is attached once
    assert isinstance(batch.body, sts.AssumeRoles) and len(batch.body.requests) == 2

    done = h.release()
    ok = reply(done)
    assert isinstance(ok, m.AttachInstanceRamRoleOk)
    [batch] = [e for e in done if isinstance(e, Send)]  # both views in one message to the host, before the reply
    assert [v.instance_id for v in views(done)] == [first, second] and done.index(batch) < next(i for i, e in enumerate(done) if isinstance(e, Reply))
    assert (ok.total_count, ok.fail_count) == (2, 0)
    assert [r.instance_id for r in ok.attach_instance_ram_role_results.attach_instance_ram_role_result] == [first, second]


def test_attach_by_ram_user_needs_the_instance_and_pass_role(h: Harness) -> None:
    h.register()
    mine, theirs = h.launch(amount=2)
    h.cloud.user_policy = allow(("Allow", "ecs:AttachInstanceRamRole", f"acs:ecs:{REGION}:{ACCOUNT}:instance/{mine}"),
                                ("Allow", "ram:PassRole", f"acs:ram:*:{ACCOUNT}:role/{ROLE}"))

    def attach(instance_id: str, role: str) -> object:
        return reply(h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=role, instance_ids=ids_json(instance_id),
                                                    caller=alice())))

    problem = attach(theirs, ROLE)
    assert isinstance(problem, Error) and (problem.code, problem.http_status) == ("Forbidden.RAM", 403)
    problem = attach(mine, "OtherEcsRole")
    assert isinstance(problem, Error) and (problem.code, problem.http_status) == ("InvalidUser.PassRoleForbidden", 403)
    assert h.roles() == {}

    ok = attach(mine, ROLE)
    assert isinstance(ok, m.AttachInstanceRamRoleOk) and ok.fail_count == 0
    assert h.roles() == {mine: ROLE}


@pytest.mark.parametrize("instance_ids", [
    "i-abc", "", "[]", "{}", '"i-abc"', "[1]", '[""]', '["i-a", null]', json.dumps([f"i-{n}" for n in range(101)]),
])
def test_attach_with_malformed_instance_ids(h: Harness, instance_ids: str) -> None:
    h.running()
    problem = error_of(h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=instance_ids,
                                                      caller=root())))
    assert (problem.code, problem.http_status) == ("InvalidInstanceIds.Malformed", 400)


def test_attach_to_an_unknown_instance_is_not_found(h: Harness) -> None:
    h.running()
    problem = error_of(h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE,
                                                      instance_ids=ids_json("i-doesnotexist0000000"), caller=root())))
    assert (problem.code, problem.http_status) == ("InvalidInstanceId.NotFound", 404)


def test_attach_a_role_not_trusting_ecs_is_not_ecs_role_404(h: Harness) -> None:
    instance_id = h.running()
    h.cloud.roles[ROLE] = RAM_ONLY_TRUST
    problem = error_of(h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE,
                                                      instance_ids=ids_json(instance_id), caller=root())))
    assert (problem.code, problem.http_status) == ("InvalidRamRole.NotEcsRole", 404)
    assert h.roles() == {}


def test_attach_to_an_instance_that_has_a_role_is_a_failed_entry(h: Harness) -> None:
    h.register()
    with_role, without_role = h.launch(amount=2)
    h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(with_role), caller=root()))

    effects = h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name="OtherEcsRole",
                                             instance_ids=ids_json(with_role, without_role), caller=root()))
    ok = reply(effects)
    assert isinstance(ok, m.AttachInstanceRamRoleOk)
    assert (ok.total_count, ok.fail_count) == (2, 1)
    results = {r.instance_id: r for r in ok.attach_instance_ram_role_results.attach_instance_ram_role_result}
    assert (results[with_role].success, results[with_role].code) == (False, "403")
    assert ROLE in results[with_role].message
    assert (results[without_role].success, results[without_role].code) == (True, "200")
    assert h.roles() == {with_role: ROLE, without_role: "OtherEcsRole"}
    assert [v.instance_id for v in views(effects)] == [without_role]


def test_sts_failure_during_attach_is_a_failed_entry_and_leaves_no_role(h: Harness) -> None:
    instance_id = h.running()
    h.cloud.sts_failure = error("NoPermission", "You are not authorized to do this action.", 403)
    effects = h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(instance_id),
                                             caller=root()))
    ok = reply(effects)
    assert isinstance(ok, m.AttachInstanceRamRoleOk)
    assert (ok.total_count, ok.fail_count) == (1, 1)
    [result] = ok.attach_instance_ram_role_results.attach_instance_ram_role_result
    assert (result.success, result.code) == (False, "403")
    assert views(effects) == [] and published(effects, m.RoleAttachedToInstance) == []
    assert h.roles() == {}
    assert h.core.next_deadline() is None

    h.cloud.sts_failure = None  # a later attempt is not refused as "already has a role"
    ok = reply(h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(instance_id),
                                              caller=root())))
    assert isinstance(ok, m.AttachInstanceRamRoleOk) and ok.fail_count == 0


def test_sts_timeout_during_attach_is_a_failed_entry(h: Harness) -> None:
    instance_id = h.running()
    h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(instance_id),
                                   caller=root()), hold_sts=True)
    [held] = h.held
    ok = reply(h.core.on_reply(held.context, timeout("sts"), h.now))
    assert isinstance(ok, m.AttachInstanceRamRoleOk) and ok.fail_count == 1
    assert h.roles() == {}


# -- DetachInstanceRamRole ----------------------------------------------------------------------
def test_detach_removes_role_and_credentials_from_the_view(h: Harness) -> None:
    instance_id = h.running(role=ROLE)
    before = h.core.view(h.core.instances[instance_id])
    assert before.ram_role_name == ROLE

    effects = h.call(m.DetachInstanceRamRole(region_id=REGION, instance_ids=ids_json(instance_id), caller=root()))
    ok = reply(effects)
    assert isinstance(ok, m.DetachInstanceRamRoleOk)
    assert (ok.total_count, ok.fail_count) == (1, 0)
    [result] = ok.detach_instance_ram_role_results.detach_instance_ram_role_result
    assert (result.instance_id, result.code, result.success) == (instance_id, "200", True)
    [view] = views(effects)
    assert view.generation > before.generation
    assert view.ram_role_name == "" and view.credentials is None
    [event] = published(effects, m.RoleDetachedFromInstance)
    assert (event.instance_id, event.ram_role_name) == (instance_id, ROLE)
    assert topics.event("ecs", "RoleDetachedFromInstance") in event_topics(effects)
    assert h.roles() == {}
    assert h.core.next_deadline() is None
    assert h.core.on_timer(h.now + 10 * LIFETIME) == []


@pytest.mark.parametrize("role_name", ["", "OtherEcsRole"])
def test_detach_without_that_role_attached_is_a_failed_entry(h: Harness, role_name: str) -> None:
    h.register()
    bare, with_role = h.launch(amount=2)
    h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(with_role), caller=root()))
    ids = ids_json(bare, with_role) if not role_name else ids_json(with_role)

    ok = reply(h.call(m.DetachInstanceRamRole(region_id=REGION, instance_ids=ids, ram_role_name=role_name, caller=root())))
    assert isinstance(ok, m.DetachInstanceRamRoleOk)
    results = {r.instance_id: r for r in ok.detach_instance_ram_role_results.detach_instance_ram_role_result}
    if role_name:  # the instance has a different role: nothing is detached
        assert (ok.fail_count, results[with_role].code) == (1, "404")
        assert h.roles() == {with_role: ROLE}
    else:
        assert (ok.total_count, ok.fail_count) == (2, 1)
        assert (results[bare].success, results[bare].code) == (False, "404")
        assert results[with_role].success is True
        assert h.roles() == {}


def test_a_late_sts_reply_for_a_detached_attachment_is_discarded(h: Harness) -> None:
    h.register()
    [instance_id] = h.launch(role=ROLE, hold_sts=True)
    [late] = h.held
    h.call(m.DetachInstanceRamRole(region_id=REGION, instance_ids=ids_json(instance_id), caller=root()))

    h.now += TICK
    effects = h.release(late)
    assert views(effects) == []
    assert published(effects, m.RoleAttachedToInstance) == [] and published(effects, m.InstanceCredentialsRefreshed) == []
    assert h.roles() == {}
    assert h.core.view(h.core.instances[instance_id]).credentials is None
    assert h.core.next_deadline() is None


def test_a_late_reply_for_an_old_attachment_does_not_serve_the_new_role(h: Harness) -> None:
    instance_id = h.running()
    attach = m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(instance_id), caller=root())
    h.call(attach, hold_sts=True)
    [old] = h.held
    h.call(m.DetachInstanceRamRole(region_id=REGION, instance_ids=ids_json(instance_id), caller=root()))
    h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name="OtherEcsRole", instance_ids=ids_json(instance_id),
                                   caller=root()), hold_sts=True)
    [new] = [r for r in h.held if r is not old]

    stale = h.release(old)  # minted for ROLE: must not show up as OtherEcsRole's credential
    assert views(stale) == []
    assert h.core.view(h.core.instances[instance_id]).credentials is None
    fresh = h.release(new)
    [view] = views(fresh)
    assert view.ram_role_name == "OtherEcsRole"
    assert view.credentials is not None and view.credentials.security_token == "token-2"


# -- the refresh schedule -----------------------------------------------------------------------
def test_refresh_is_due_refresh_before_the_expiration_and_overlaps_the_old_credential(h: Harness) -> None:
    instance_id = h.running(role=ROLE)
    old = h.core.view(h.core.instances[instance_id]).credentials
    assert old is not None
    due = old.expiration - REFRESH_BEFORE
    assert h.core.next_deadline() == due == T0 + LIFETIME - REFRESH_BEFORE

    h.now = due - TICK
    assert h.core.on_timer(h.now) == []
    h.now = due
    effects = h.core.on_timer(h.now)
    [ask] = requests(effects)
    assert isinstance(ask.body, sts.AssumeRole) and ask.dest == "sts"
    assert ask.body.role_session_name == instance_id
    assert h.core.next_deadline() is None            # in flight: not asked twice
    assert h.core.on_timer(h.now + TICK) == []

    h.now += 2 * TICK
    effects = h.settle(effects)
    [view] = views(effects)
    new = view.credentials
    assert new is not None and view.ram_role_name == ROLE
    assert new.access_key_id != old.access_key_id
    assert new.last_updated == h.now and new.expiration == h.now + LIFETIME
    assert old.expiration > h.now                    # both credentials valid during the overlap
    assert published(effects, m.RoleAttachedToInstance) == []
    [refreshed] = published(effects, m.InstanceCredentialsRefreshed)
    assert refreshed.access_key_id == new.access_key_id
    assert h.core.next_deadline() == new.expiration - REFRESH_BEFORE


def test_refresh_late_timer_still_refreshes(h: Harness) -> None:
    h.running(role=ROLE)
    due = h.core.next_deadline()
    assert due is not None
    h.now = due + 600
    assert len(requests(h.core.on_timer(h.now))) == 1


def test_short_lifetime_refreshes_half_way() -> None:
    h = Harness(lifetime=600, refresh_before=1800)
    h.running(role=ROLE)
    assert h.core.next_deadline() == T0 + 300


def test_sts_failure_during_refresh_keeps_the_role_and_retries(h: Harness) -> None:
    instance_id = h.running(role=ROLE)
    before = h.core.view(h.core.instances[instance_id])
    h.now = h.core.next_deadline() or 0.0
    h.cloud.sts_failure = error("ServiceUnavailable", "STS is down.", 503)

    effects = h.settle(h.core.on_timer(h.now))
    assert views(effects) == [] and published(effects, m.InstanceCredentialsRefreshed) == []
    retry_at = h.core.next_deadline()
    assert retry_at is not None and h.now + RETRY_FIRST / 2 <= retry_at < h.now + RETRY_FIRST
    assert h.roles() == {instance_id: ROLE}
    assert h.core.view(h.core.instances[instance_id]) == before  # the old credential keeps serving
    assert h.core.on_timer(retry_at - TICK) == []

    waits = []
    for _ in range(4):  # still down: each wait about twice the last
        h.now = h.core.next_deadline() or 0.0
        h.settle(h.core.on_timer(h.now))
        waits.append((h.core.next_deadline() or 0.0) - h.now)
    assert all(RETRY_FIRST <= w for w in waits[:1]) and waits[-1] > waits[0]
    assert h.core.view(h.core.instances[instance_id]) == before

    h.now = h.core.next_deadline() or 0.0
    h.cloud.sts_failure = None
    [view] = views(h.settle(h.core.on_timer(h.now)))
    assert view.credentials is not None and view.credentials.last_updated == h.now


def test_retry_delay_doubles_with_jitter_and_is_capped() -> None:
    assert [retry_delay(n, 1800, 0.0) for n in (1, 2, 3)] == [RETRY_FIRST / 2, RETRY_FIRST, RETRY_FIRST * 2]
    assert retry_delay(50, 1800, 0.999) < RETRY_CAP
    assert retry_delay(50, 100, 0.0) == 100 / 10 / 2  # several attempts fit in a short refresh window


def test_restart_restores_instances_and_refreshes_what_is_overdue_spread(h: Harness) -> None:
    launched = [h.running(role=ROLE) for _ in range(3)]
    rows = {t: {k: msgspec.msgpack.decode(msgspec.msgpack.encode(v), type=h.core.ROWS[t]) for k, v in table.items()}
            for t, table in h.core.dump().items()}
    restarted = EcsCore(account_id=h.core.account_id, region_id=REGION, zone_id=h.core.zone_id, credential_lifetime=h.core.credential_lifetime,
                        refresh_before=h.core.refresh_before, entropy=SeededEntropy(7).token_bytes)
    later = (h.core.next_deadline() or 0.0) + 10
    restarted.load(rows, later)
    assert restarted.hosts == h.core.hosts and sorted(restarted.instances) == sorted(launched)
    assert restarted.view(restarted.instances[launched[0]]) == h.core.view(h.core.instances[launched[0]])
    due = sorted(r.due_at or 0.0 for r in restarted.instances.values())
    assert later <= due[0] and due[-1] < later + 1 and len(set(due)) == 3  # at once, but not all at the same instant
    asked = assumed(restarted.on_timer(due[-1]))
    assert sorted(a.role_session_name for a in asked) == sorted(launched)


def test_every_instance_with_a_role_is_refreshed(h: Harness) -> None:
    h.register()
    launched = h.launch(role=ROLE, amount=3)
    h.now = h.core.next_deadline() or 0.0
    asked = requests(h.core.on_timer(h.now))  # one AssumeRole each (what fault rules name), even when due together
    assert all(isinstance(r.body, sts.AssumeRole) for r in asked)
    assert sorted(a.role_session_name for a in assumed(asked)) == sorted(launched)


# -- queries ------------------------------------------------------------------------------------
def test_describe_instances_pages(h: Harness) -> None:
    h.register()
    launched = h.launch(amount=5)

    def page(number: int) -> m.DescribeInstancesOk:
        ok = reply(h.call(m.DescribeInstances(region_id=REGION, page_number=number, page_size=2, caller=root())))
        assert isinstance(ok, m.DescribeInstancesOk)
        assert (ok.total_count, ok.page_number, ok.page_size) == (5, number, 2)
        return ok

    pages = [[i.instance_id for i in page(n).instances.instance] for n in (1, 2, 3, 4)]
    assert pages == [launched[0:2], launched[2:4], launched[4:5], []]


def test_describe_instances_filters_by_instance_ids(h: Harness) -> None:
    h.register()
    launched = h.launch(amount=3)
    ok = reply(h.call(m.DescribeInstances(region_id=REGION, instance_ids=ids_json(launched[2], "i-unknown"), caller=root())))
    assert isinstance(ok, m.DescribeInstancesOk)
    assert ok.total_count == 1 and [i.instance_id for i in ok.instances.instance] == [launched[2]]


@pytest.mark.parametrize("page_number, page_size", [(1, 0), (1, 101), (0, 10)])
def test_describe_instances_rejects_bad_paging(h: Harness, page_number: int, page_size: int) -> None:
    problem = error_of(h.call(m.DescribeInstances(region_id=REGION, page_number=page_number, page_size=page_size,
                                                  caller=root())))
    assert problem.code == "InvalidParameter"


def test_describe_instance_ram_role_by_instance_and_by_role(h: Harness) -> None:
    h.register()
    a, b, c = h.launch(amount=3)
    for instance_id, role in ((a, ROLE), (b, "OtherEcsRole")):
        h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=role, instance_ids=ids_json(instance_id), caller=root()))

    ok = reply(h.call(m.DescribeInstanceRamRole(region_id=REGION, instance_ids=ids_json(a, b, c), caller=root())))
    assert isinstance(ok, m.DescribeInstanceRamRoleOk)
    assert (ok.region_id, ok.total_count) == (REGION, 2)
    assert [(s.instance_id, s.ram_role_name) for s in ok.instance_ram_role_sets.instance_ram_role_set] == [(a, ROLE), (b, "OtherEcsRole")]

    ok = reply(h.call(m.DescribeInstanceRamRole(region_id=REGION, ram_role_name="OtherEcsRole", caller=root())))
    assert isinstance(ok, m.DescribeInstanceRamRoleOk)
    assert [(s.instance_id, s.ram_role_name) for s in ok.instance_ram_role_sets.instance_ram_role_set] == [(b, "OtherEcsRole")]

    problem = error_of(h.call(m.DescribeInstanceRamRole(region_id=REGION, caller=root())))
    assert problem.code == "MissingParameter"


def test_describe_metadata_endpoints_lists_urls_after_endpoint_ready(h: Harness) -> None:
    h.register()
    first, second = h.launch(amount=2)

    def endpoints() -> list[tuple[str, str, str]]:
        ok = reply(h.call(m.DescribeInstanceMetadataEndpoints(caller=root())))
        assert isinstance(ok, m.DescribeInstanceMetadataEndpointsOk)
        return [(e.instance_id, e.host_id, e.url) for e in ok.endpoints]

    assert endpoints() == []
    h.ready(second, url="http://127.0.0.1:40001")
    assert endpoints() == [(second, "h1", "http://127.0.0.1:40001")]
    h.ready(first, url="http://127.0.0.1:40002")

    def some(ids: str) -> object:
        return reply(h.call(m.DescribeInstanceMetadataEndpoints(caller=root(), instance_ids=ids)))

    only = some(json.dumps([first, "i-unknown"]))  # those asked for only (the console asks for a page's)
    assert isinstance(only, m.DescribeInstanceMetadataEndpointsOk)
    assert [(e.instance_id, e.url) for e in only.endpoints] == [(first, "http://127.0.0.1:40002")]
    assert isinstance(some("not json"), Error)


def test_modify_metadata_options_pushes_the_new_view(h: Harness) -> None:
    instance_id = h.running()
    before = h.core.view(h.core.instances[instance_id])
    effects = h.call(m.ModifyInstanceMetadataOptions(region_id=REGION, instance_id=instance_id, http_tokens="required",
                                                     caller=root()))
    assert isinstance(reply(effects), m.ModifyInstanceMetadataOptionsOk)
    [view] = views(effects)
    assert (view.http_tokens, view.http_endpoint) == ("required", "enabled")
    assert view.generation > before.generation


# -- the API gate -------------------------------------------------------------------------------
API_CALLS = [
    lambda region, caller: m.RunInstances(region_id=region, caller=caller),
    lambda region, caller: m.AttachInstanceRamRole(region_id=region, ram_role_name=ROLE, instance_ids='["i-x"]', caller=caller),
    lambda region, caller: m.DetachInstanceRamRole(region_id=region, instance_ids='["i-x"]', caller=caller),
    lambda region, caller: m.DescribeInstances(region_id=region, caller=caller),
    lambda region, caller: m.DescribeInstanceRamRole(region_id=region, instance_ids='["i-x"]', caller=caller),
    lambda region, caller: m.ModifyInstanceMetadataOptions(region_id=region, instance_id="i-x", caller=caller),
]
API_NAMES = ["RunInstances", "Attach", "Detach", "DescribeInstances", "DescribeInstanceRamRole", "ModifyMetadataOptions"]


@pytest.mark.parametrize("make", API_CALLS, ids=API_NAMES)
def test_another_region_is_not_found(h: Harness, make) -> None:
    h.register()
    problem = error_of(h.call(make("cn-beijing", root())))
    assert (problem.code, problem.http_status) == ("InvalidRegionId.NotFound", 404)
    assert h.core.instances == {} and h.cloud.asked == []


@pytest.mark.parametrize("make", API_CALLS, ids=API_NAMES)
def test_an_unauthenticated_call_has_no_permission(h: Harness, make) -> None:
    h.register()
    problem = error_of(h.call(make(REGION, None)))
    assert (problem.code, problem.http_status) == ("NoPermission", 403)
    assert h.core.instances == {} and h.cloud.asked == []


def test_unauthenticated_endpoint_listing_has_no_permission(h: Harness) -> None:
    problem = error_of(h.call(m.DescribeInstanceMetadataEndpoints()))
    assert problem.code == "NoPermission"


def test_instance_creation_time_is_alibaba_minutes_format(h: Harness) -> None:
    h.register()
    [instance_id] = h.launch()
    assert h.core.instances[instance_id].instance.creation_time == "2023-11-14T22:13Z"  # T0, to the minute


def test_describe_instances_says_what_a_user_checks(h: Harness) -> None:
    h.register()
    [instance_id] = reply(h.call(m.RunInstances(region_id=REGION, instance_type="ecs.c7.2xlarge", description="web",
                                                tag=[m.TagParameter(key="env", value="prod")], caller=root()))
                          ).instance_id_sets.instance_id_set  # type: ignore[union-attr]
    h.ready(instance_id)
    h.call(m.ModifyInstanceMetadataOptions(region_id=REGION, instance_id=instance_id, http_tokens="required",
                                           http_put_response_hop_limit=2, caller=root()))
    ok = reply(h.call(m.DescribeInstances(region_id=REGION, caller=root())))
    assert isinstance(ok, m.DescribeInstancesOk)
    [i] = ok.instances.instance
    options = i.metadata_options
    assert (options.http_tokens, options.http_endpoint, options.http_put_response_hop_limit) == ("required", "enabled", 2)
    assert (i.cpu, i.memory, i.instance_type_family, i.description) == (8, 16384, "ecs.c7", "web")
    assert [(t.tag_key, t.tag_value) for t in i.tags.tag] == [("env", "prod")]
    view = h.core.view(h.core.instances[instance_id])
    assert i.vpc_attributes.private_ip_address.ip_address == [view.network.private_ip]
    assert i.network_interfaces.network_interface[0].mac_address == view.network.mac
    assert i.instance_network_type == "vpc" and i.start_time.endswith("Z") and i.os_type == "linux"
    wire = msgspec.json.decode(msgspec.json.encode(ok))
    assert {"OSName", "GPUAmount", "NextToken"} <= set(wire["Instances"]["Instance"][0]) | set(wire)
    assert wire["Instances"]["Instance"][0]["VpcAttributes"]["VSwitchId"] == view.network.vswitch_id
    assert wire["Instances"]["Instance"][0]["PublicIpAddress"] == {"IpAddress": []}  # empty, but answered


def test_describe_instances_pages_by_token(h: Harness) -> None:
    h.register()
    launched = h.launch(amount=5)
    seen, token, pages = [], "", 0
    while True:
        ok = reply(h.call(m.DescribeInstances(region_id=REGION, max_results=2, next_token=token, caller=root())))
        assert isinstance(ok, m.DescribeInstancesOk) and ok.total_count == 5
        seen += [i.instance_id for i in ok.instances.instance]
        pages, token = pages + 1, ok.next_token
        if not token:
            break
    assert seen == launched and pages == 3
    assert error_of(h.call(m.DescribeInstances(region_id=REGION, next_token="i-guessed", caller=root()))).code == "InvalidParameter"
    assert error_of(h.call(m.DescribeInstances(region_id=REGION, max_results=101, caller=root()))).code == "InvalidParameter"
    numbered = reply(h.call(m.DescribeInstances(region_id=REGION, page_size=2, page_number=3, caller=root())))
    assert [i.instance_id for i in numbered.instances.instance] == launched[4:] and numbered.next_token == ""  # type: ignore[union-attr]


def test_describe_instances_filters(h: Harness) -> None:
    h.register()
    a, b = h.launch(amount=2)
    h.ready(a)
    running = reply(h.call(m.DescribeInstances(region_id=REGION, status="Running", caller=root())))
    assert [i.instance_id for i in running.instances.instance] == [a] and running.total_count == 1  # type: ignore[union-attr]
    none = reply(h.call(m.DescribeInstances(region_id=REGION, vpc_id="vpc-other", caller=root())))
    assert none.total_count == 0  # type: ignore[union-attr]
