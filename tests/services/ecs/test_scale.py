"""The ECS core at scale, with explicit time: one heap of refresh deadlines and its jitter,
batch attach message counts, the rows a step changed, paged registration and endpoints.

Nothing here is timed: how fast this is belongs to the benchmarks (``bench/``)."""

from __future__ import annotations

import msgspec

from protocol import errors
from protocol.errors import error
from protocol.messages import ecs as m
from protocol.messages import ram, sts
from services.ecs.core import BATCH_VIEWS, MAX_ENDPOINTS, REGISTER_PAGE, EcsCore
from services.metadata.core import MetadataCore
from services.runtime.effects import Publish, Reply, Request, Send
from services.runtime.entropy import SeededEntropy
from tests.helpers import envelope, reply, requests, root
from tests.services.ecs.test_core import LIFETIME, REFRESH_BEFORE, REGION, ROLE, Harness, assumed, ids_json

HOSTS = ("h1", "h2")


def fleet(n: int, *, jitter: float = 0.0, seed: int = 7, role: str = ROLE) -> Harness:
    """``n`` instances over two hosts, each with ``role``'s credential issued at T0."""
    h = Harness()
    h.core = EcsCore(account_id=h.core.account_id, region_id=REGION, zone_id=h.core.zone_id, credential_lifetime=LIFETIME,
                     refresh_before=REFRESH_BEFORE, entropy=SeededEntropy(seed).token_bytes, refresh_jitter=jitter)
    for host in HOSTS:
        h.register(host)
    for start in range(0, n, 100):
        h.launch(amount=min(100, n - start), role=role)
    return h


def test_refresh_deadlines_are_one_heap_and_jitter_spreads_them_earlier_only() -> None:
    h = fleet(1000, jitter=0.2)
    records = list(h.core.instances.values())
    assert len(h.core._due) == 1000  # one entry per instance in one heap: no timer or task each
    expiry = h.now + LIFETIME
    due = [r.due_at for r in records]
    assert all(d is not None and expiry - REFRESH_BEFORE * 1.2 <= d <= expiry - REFRESH_BEFORE for d in due)
    assert len(set(due)) > 950  # spread over the window, not a stampede at one instant
    assert h.core.next_deadline() == min(due)  # type: ignore[type-var]

    # on_timer at t takes exactly the refreshes due by t
    t = sorted(due)[499]  # type: ignore[type-var]
    asked = assumed(h.core.on_timer(t))
    assert sorted(a.role_session_name for a in asked) == sorted(r.instance.instance_id for r in records if r.due_at is None)
    assert len(asked) == 500
    assert h.core.next_deadline() == sorted(due)[500]  # type: ignore[type-var]


def test_jitter_comes_from_the_entropy_source_and_zero_means_none() -> None:
    def schedule(seed: int, jitter: float) -> list[float]:
        return [r.due_at or 0.0 for r in fleet(200, jitter=jitter, seed=seed).core.instances.values()]

    assert schedule(3, 0.1) == schedule(3, 0.1)  # the same entropy, the same schedule
    assert schedule(3, 0.1) != schedule(4, 0.1)
    assert set(schedule(3, 0.0)) == {T0_REFRESH}


T0_REFRESH = Harness().now + LIFETIME - REFRESH_BEFORE


def test_a_credential_shorter_than_refresh_before_is_refreshed_at_half_its_life() -> None:
    h = fleet(1, jitter=0.5)
    [record] = h.core.instances.values()
    assert h.core._refresh_at(h.now + 100, h.now) == h.now + 50
    assert record.due_at is not None


def test_jitter_never_moves_a_refresh_before_now_nor_later_than_refresh_before() -> None:
    """900 s credentials refreshed 897 s early (the compat suite's rotating cluster) with 10%
    jitter: up to 89.7 s earlier would be in the past. The refresh comes in the last 10% of the
    3 s left: not at half the credential's life (450 s), as a jitter past now once made it, and
    not at once (a credential refreshed as soon as it arrives is a refresh storm)."""
    h = fleet(1, jitter=0.1)
    core, now = h.core, h.now
    core.refresh_before = 897
    for _ in range(200):
        at = core._refresh_at(now + 900, now)
        assert now + 3 * 0.9 <= at <= now + 3


def test_a_batch_attach_is_one_authorization_one_sts_round_trip_and_one_message_per_host() -> None:
    h = fleet(100, role="")
    batch = list(h.core.instances)
    h.cloud.asked.clear()
    effects = h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(*batch), caller=root()))
    to_ram = [r for r in h.cloud.asked if r.dest == "ram"]
    to_sts = [r for r in h.cloud.asked if r.dest == "sts"]
    assert [type(r.body) for r in to_ram] == [ram.GetRole]  # root: no policy lookup; the role once
    assert [type(r.body) for r in to_sts] == [sts.AssumeRoles] and h.cloud.batches == 1
    sends = [e for e in effects if isinstance(e, Send)]
    assert sorted(e.dest for e in sends) == ["metadata-h1", "metadata-h2"]  # one message per host
    assert sum(len(e.body.views) for e in sends) == 100 and all(isinstance(e.body, m.InstancesChanged) for e in sends)
    assert not [e for e in effects if isinstance(e, Publish) and isinstance(e.body, m.InstanceChanged)]
    ok = reply(effects)
    assert isinstance(ok, m.AttachInstanceRamRoleOk) and (ok.total_count, ok.fail_count) == (100, 0)
    assert [r.instance_id for r in ok.attach_instance_ram_role_results.attach_instance_ram_role_result] == batch
    assert max(effects.index(e) for e in sends) < next(i for i, e in enumerate(effects) if isinstance(e, Reply))


def test_a_failed_batch_round_trip_fails_each_instance_as_a_single_fetch_would() -> None:
    h = fleet(3, role="")
    batch = list(h.core.instances)
    effects = h.core.handle(envelope(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(*batch),
                                                             caller=root())), h.now)
    [get_role] = requests(effects)
    [assume] = requests(h.core.on_reply(get_role.context, h.cloud.answer(get_role, h.now), h.now))
    ok = reply(h.core.on_reply(assume.context, errors.timeout("sts"), h.now))
    assert isinstance(ok, m.AttachInstanceRamRoleOk) and ok.fail_count == 3
    assert all(not r.role_name for r in h.core.instances.values())  # a failed first issue undoes the attachment


def test_a_step_names_every_row_it_changed() -> None:
    """The driver encodes only ``changed_rows()``: after each step it must hold every row whose
    bytes differ from the last full dump (and the meta row)."""
    encode = msgspec.msgpack.Encoder().encode
    h = Harness()
    last = {k: encode(v) for k, v in h.core.dump()["instances"].items()}
    h.core.changed_rows()

    def check() -> None:
        nonlocal last
        now = {k: encode(v) for k, v in h.core.dump()["instances"].items()}
        changed = {k for k, b in now.items() if last.get(k) != b}
        named = h.core.changed_rows()
        assert changed <= set(named["instances"]), changed - set(named["instances"])
        assert set(named["meta"]) == {"ecs"}
        last = now

    h.register()
    check()
    launched = h.launch(amount=5, role=ROLE)
    check()
    for i in launched[:3]:
        h.ready(i)
        check()
    h.call(m.DetachInstanceRamRole(region_id=REGION, instance_ids=ids_json(*launched[:2]), caller=root()))
    check()
    h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(*launched[:2]), caller=root()))
    check()
    h.call(m.ModifyInstanceMetadataOptions(region_id=REGION, instance_id=launched[4], http_tokens="required", caller=root()))
    check()
    h.now = h.core.next_deadline() or h.now
    h.settle(h.core.on_timer(h.now))
    check()
    h.cloud.sts_failure = error("ServiceUnavailable", "STS is down", 503)  # failed refreshes: retries scheduled
    h.now = (h.core.next_deadline() or h.now) + LIFETIME
    h.settle(h.core.on_timer(h.now))
    check()


def test_a_large_host_registers_in_pages_and_its_agent_is_ready_after_the_last() -> None:
    h = Harness()
    h.register("h1")
    for _ in range(3):
        h.launch(amount=90)  # 270 instances, one host
    agent = MetadataCore(host_id="h1", token_key=b"k" * 32)
    [ask] = requests(agent.on_timer(h.now))
    pages = 0
    while True:
        pages += 1
        answer = reply(h.core.handle(envelope(ask.body, src="metadata-h1", dest="ecs"), h.now))
        assert isinstance(answer, m.RegisterHostOk) and len(answer.instances) <= REGISTER_PAGE
        more = requests(agent.on_reply(ask.context, answer, h.now))
        if not more:
            break
        assert not agent.ready
        [ask] = more
    assert pages == 3 and agent.ready and len(agent.views) == 270 and agent.registered == 1


def test_an_agent_applies_a_batch_of_views_only_from_ecs_and_only_its_own() -> None:
    h = fleet(4, role="")
    views = [h.core.view(r) for r in h.core.instances.values()]
    agent = MetadataCore(host_id="h1", token_key=b"k" * 32)
    forged = agent.handle(envelope(m.InstancesChanged(views=views), src="sts", dest="metadata-h1"), h.now)
    assert agent.views == {} and forged[0].event == "view_not_from_ecs"  # type: ignore[union-attr]
    agent.handle(envelope(m.InstancesChanged(views=views), src="ecs", dest="metadata-h1"), h.now)
    assert set(agent.views) == {v.instance_id for v in views if v.host_id == "h1"}
    assert agent.take_touched() == set(agent.views) and agent.take_touched() == set()


def test_views_of_one_host_go_in_pieces_of_batch_views() -> None:
    h = Harness()
    h.register("h1")
    for _ in range(3):
        h.launch(amount=100)
    effects = h.call(m.AttachInstanceRamRole(region_id=REGION, ram_role_name=ROLE, instance_ids=ids_json(*list(h.core.instances)[:100]),
                                             caller=root()))
    sends = [e for e in effects if isinstance(e, Send)]
    assert [len(e.body.views) for e in sends] == [BATCH_VIEWS]  # type: ignore[union-attr]


def test_metadata_endpoints_page() -> None:
    h = fleet(MAX_ENDPOINTS + 50, role="")
    for i in h.core.instances:
        h.ready(i, host_id=h.core.instances[i].host_id)
    first = reply(h.call(m.DescribeInstanceMetadataEndpoints(caller=root())))
    assert isinstance(first, m.DescribeInstanceMetadataEndpointsOk) and len(first.endpoints) == MAX_ENDPOINTS and first.next_token
    rest = reply(h.call(m.DescribeInstanceMetadataEndpoints(next_token=first.next_token, caller=root())))
    assert isinstance(rest, m.DescribeInstanceMetadataEndpointsOk) and len(rest.endpoints) == 50 and not rest.next_token
    assert len({e.instance_id for e in first.endpoints + rest.endpoints}) == MAX_ENDPOINTS + 50
    small = reply(h.call(m.DescribeInstanceMetadataEndpoints(max_results=7, caller=root())))
    assert isinstance(small, m.DescribeInstanceMetadataEndpointsOk) and len(small.endpoints) == 7
    bad = reply(h.call(m.DescribeInstanceMetadataEndpoints(next_token="nope!", caller=root())))
    assert getattr(bad, "code", "").startswith("InvalidParameter")


def test_endpoints_ready_in_a_batch_make_each_running_with_one_log_line() -> None:
    h = fleet(3, role="")
    ids = list(h.core.instances)
    hosted = [i for i in ids if h.core.instances[i].host_id == "h1"]
    body = m.InstanceEndpointsReady(host_id="h1", endpoints=[m.MetadataEndpoint(instance_id=i, host_id="h1", url=f"http://{i}:@127.0.0.1:1")
                                                             for i in ids])
    logs = h.core.handle(envelope(body, src="metadata-h1", dest="ecs"), h.now)
    assert [h.status(i) for i in hosted] == ["Running"] * len(hosted)
    assert [h.status(i) for i in ids if i not in hosted] == ["Pending"] * (len(ids) - len(hosted))  # another host's: refused
    assert [log.event for log in logs] == ["instances_running", "endpoint_unknown_instance"]  # type: ignore[union-attr]
    forged = h.core.handle(envelope(body, src="metadata-h2", dest="ecs"), h.now)
    assert [log.event for log in forged] == ["endpoint_unknown_instance"]  # type: ignore[union-attr]
    assert not [e for e in logs if isinstance(e, Request)]
