"""Pure core: the ECS control plane.

Instances are placed on registered metadata hosts; each change to an instance is pushed to its
host as a complete :class:`InstanceView` (newest ``generation`` wins). A role attached to an
instance (at RunInstances or later with AttachInstanceRamRole) is checked first (the caller
needs ``ram:PassRole`` on it; it must trust ``ecs.aliyuncs.com``), then ECS assumes it from STS
as the ECS service principal and pushes the credential. Each credential is refreshed as a
timed event ``refresh_before`` seconds before it expires; the old one stays valid until its own
expiry; a failed AssumeRole is retried with exponential backoff and jitter (:func:`retry_delay`)
while the old credential keeps serving. Detach removes the role from the view at once.

Durable: the instances (with their role bindings, credentials and refresh schedule) and the
hosts are rows for the service's store. After a restart every refresh that is overdue, or was
in flight when the process died, runs at once, spread over a short window (not a stampede).

Instance states (only these transitions exist)::

    Pending --(metadata agent serves the instance)--> Running
"""

from __future__ import annotations

import heapq
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import msgspec
from msgspec.structs import replace

from protocol import errors, ids, topics
from protocol.envelope import Envelope
from protocol.errors import Error, error
from protocol.messages import common, ram, sts
from protocol.messages import ecs as m
from protocol.times import iso, parse_iso
from services.ecs import describe
from services.ram import explain, policy
from services.ram.cache import Entry, PolicyCache
from services.runtime import paging
from services.runtime.effects import Effect, Log, Publish, Reply, Request, Send, dispatch

NAME = "ecs"
SERVICE_PRINCIPAL = "ecs.aliyuncs.com"
MAX_INSTANCE_IDS = 100
RETRY_FIRST, RETRY_CAP = 2.0, 60.0  # simulated seconds: the first retry after an STS failure, the longest wait
RESTART_SPREAD = 0.01  # simulated seconds per overdue refresh after a restart (capped at refresh_before / 4)
MAX_USER_DATA = 32 * 1024
MAX_TAGS = 20
VSWITCH_CIDR = "172.16.0.0/16"  # the default vSwitch; RAMSIM_VSWITCH_CIDR sets another (compose.yaml: its instances' network)
_PRIVATE_172 = ipaddress.IPv4Network("172.16.0.0/12")
MAX_ATTACH_POLICY = 1024  # AttachInstanceRamRole's Policy, as Alibaba documents it
BATCH_VIEWS = 100  # views per InstancesChanged (one message per host and step, in pieces of this many)
REGISTER_PAGE = 100  # views per RegisterHostOk page (a host of 2,000 instances does not fit one message)
MAX_ENDPOINTS = 1000  # DescribeInstanceMetadataEndpoints' MaxResults (its default and its limit)


def _metadata_options(http_tokens: str, http_endpoint: str) -> Error | None:
    if http_tokens not in ("optional", "required"):
        return error("InvalidHttpTokens.NotSupported", "The specified HttpTokens is not supported; use optional or required.")
    if http_endpoint not in ("enabled", "disabled"):
        return error("InvalidHttpEndpoint.NotSupported", "The specified HttpEndpoint is not supported; use enabled or disabled.")
    return None


def retry_delay(failures: int, refresh_before: float, jitter: float) -> float:
    """Seconds until attempt ``failures + 1``: doubling from :data:`RETRY_FIRST`, capped at
    :data:`RETRY_CAP` and at a tenth of ``refresh_before`` (so several attempts fit before the
    old credential expires), times a jitter factor in [0.5, 1) so instances that failed
    together do not retry together."""
    base = min(RETRY_FIRST * 2 ** max(0, failures - 1), RETRY_CAP, max(refresh_before / 10, 0.1))
    return base * (0.5 + jitter / 2)


def _uuid(entropy: bytes) -> str:
    h = entropy[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass
class InstanceRecord:
    instance: m.Instance
    host_id: str
    network: m.NetworkInterface
    serial_number: str
    http_tokens: str
    http_endpoint: str
    user_data: str = ""
    generation: int = 1
    role_name: str = ""          # the role attached (serving once credentials exist)
    role_arn: str = ""
    session_policy: str = ""
    attachment: int = 0          # grows with every attach/detach; stale STS replies are ignored
    credentials: m.InstanceCredentials | None = None
    due_at: float | None = None  # when to (re)fetch credentials; None while a fetch is in flight
    endpoint_url: str = ""
    failures: int = 0            # AssumeRole failures in a row (for the backoff)
    start_time: str = ""         # when it first ran (its metadata view served)
    hop_limit: int = 1           # HttpPutResponseHopLimit
    description: str = ""
    tags: list[m.Tag] = field(default_factory=list)


class EcsMeta(msgspec.Struct, frozen=True):
    hosts: list[str]
    next_host: int
    vpc_id: str
    vswitch_id: str


@dataclass
class Gate:
    """A request waiting for RAM: the caller's effective policies, or the role (GetRole)."""

    request: Envelope
    then: Callable[..., list[Effect]]


@dataclass
class AttachOp:
    request: Envelope
    role_name: str
    results: dict[str, m.RamRoleResult]
    waiting: set[str] = field(default_factory=set)
    ready: list[str] = field(default_factory=list)  # issued, its view held back until the whole batch is (one message per host)
    events: list[Effect] = field(default_factory=list)  # their events, which follow their views


@dataclass
class Fetch:
    """An AssumeRole for one instance's credential (first issue or refresh)."""

    instance_id: str
    attachment: int
    op: AttachOp | None = None


@dataclass
class Fetches:
    """One AssumeRoles for several instances' credentials (a batch attach, refreshes due together)."""

    fetches: list[Fetch]


class EcsCore:
    node_id = NAME
    ROWS: dict[str, type] = {"instances": InstanceRecord, "meta": EcsMeta}
    SEALED = frozenset({"instances"})  # they hold STS credentials
    READ_ONLY = frozenset({m.DescribeInstances, m.DescribeInstanceRamRole, m.DescribeInstanceMetadataEndpoints,
                           *(t for t in ram.__dict__.values()  # RAM's events only drop cached decisions
                             if isinstance(t, type) and issubclass(t, msgspec.Struct) and "generation" in t.__struct_fields__)})

    def __init__(self, *, account_id: str, region_id: str, zone_id: str, credential_lifetime: int,
                 refresh_before: int, entropy: Callable[[int], bytes], refresh_jitter: float = 0.0,
                 vswitch_cidr: str = VSWITCH_CIDR) -> None:
        self.account_id = account_id
        self.refresh_jitter = refresh_jitter  # a refresh comes up to this fraction of refresh_before earlier, at random
        self.region_id = region_id
        self.zone_id = zone_id
        self.credential_lifetime = credential_lifetime
        self.refresh_before = refresh_before
        self._entropy = entropy
        self.vswitch = ipaddress.IPv4Network(vswitch_cidr)  # the cluster's one vSwitch (a compose deployment: its instances' network)
        self.instances: dict[str, InstanceRecord] = {}
        self.cache = PolicyCache()
        self.vpc_id = "vpc-" + ids.instance_id(entropy(20))[2:]
        self.vswitch_id = "vsw-" + ids.instance_id(entropy(20))[2:]
        self.hosts: list[str] = []
        self._next_host = 0
        self._order: list[InstanceRecord] = []
        self._due: list[tuple[float, str]] = []  # (due_at, instance id), lazily pruned: the next refresh without a scan
        self._dirty: set[str] = set()  # instances changed since the driver last took the changed rows
        self._table = {
            m.RegisterHost: self._register_host,
            m.InstanceEndpointReady: self._endpoint_ready,
            m.InstanceEndpointsReady: self._endpoints_ready,
            m.RunInstances: self._api(self._run_instances),
            m.AttachInstanceRamRole: self._api(self._attach),
            m.DetachInstanceRamRole: self._api(self._detach),
            m.DescribeInstances: self._api(self._describe_instances),
            m.DescribeInstanceRamRole: self._api(self._describe_instance_ram_role),
            m.ModifyInstanceMetadataOptions: self._api(self._modify_metadata_options),
            m.DescribeInstanceMetadataEndpoints: self._api(self._describe_endpoints),
        }

    # -- the Core protocol ----------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        return [topics.events("ram")]

    def handle(self, msg: Envelope, now: float) -> list[Effect]:
        if self.cache.observed(msg):  # a RAM change: cached decisions may be stale
            return []
        return _batched(dispatch(self._table, msg, now, product=NAME))

    def on_reply(self, context: object, body: object, now: float) -> list[Effect]:
        return _batched(self._on_reply(context, body, now))

    def _on_reply(self, context: object, body: object, now: float) -> list[Effect]:
        if isinstance(context, Fetch):
            return self._fetched(context, body, now)
        if isinstance(context, Fetches):
            if isinstance(body, sts.AssumeRolesOk) and len(body.results) == len(context.fetches):
                answers: list[object] = [r.ok if r.ok is not None else (r.error or errors.internal_error()) for r in body.results]
            else:  # the whole batch failed (a timeout, STS away): each instance retries as a single fetch would
                answers = [body] * len(context.fetches)
            return [e for fetch, answer in zip(context.fetches, answers) for e in self._fetched(fetch, answer, now)]
        assert isinstance(context, Gate)
        if isinstance(body, Error):
            if body.code == "EntityNotExist.Role":
                body = error("InvalidRamRole.NotFound", "The specified RAMRoleName does not exist.", 404)
            return [Reply(context.request, body)]
        return context.then(body, now)

    def on_timer(self, now: float) -> list[Effect]:
        due: list[InstanceRecord] = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, instance_id = heapq.heappop(self._due)
            record = self.instances[instance_id]
            record.due_at = None  # taken: next_deadline no longer offers it
            due.append(record)
        # One AssumeRole each (not batched): fault rules and experiments name that message, and
        # with jitter the refreshes due at one instant are few.
        return _batched([e for record in due for e in self._fetch(record, None)])

    def next_deadline(self) -> float | None:
        """The earliest due refresh; entries the record no longer agrees with are dropped as found."""
        due = self._due
        while due:
            at, instance_id = due[0]
            record = self.instances.get(instance_id)
            if record is not None and record.due_at == at and record.role_name:
                return at
            heapq.heappop(due)
        return None

    def _schedule(self, record: InstanceRecord, at: float) -> None:
        record.due_at = at
        self._dirty.add(record.instance.instance_id)
        heapq.heappush(self._due, (at, record.instance.instance_id))

    def _refresh_at(self, expires_at: float, now: float) -> float:
        """When to refresh a credential expiring at ``expires_at``: ``refresh_before`` ahead, and
        up to ``refresh_jitter`` of that earlier again (from the entropy source), so instances
        attached together do not all refresh together; never later. Half its remaining life
        when that moment has passed already (a credential shorter than ``refresh_before``)."""
        at = expires_at - self.refresh_before
        if at <= now:
            return now + (expires_at - now) / 2
        if self.refresh_jitter > 0:
            # a fraction of refresh_before, or of the time left when that is shorter: never at or
            # before now (a credential refreshed as soon as it arrived would be a refresh storm)
            at -= min(at - now, self.refresh_before) * self.refresh_jitter * self._jitter()
        return at

    # -- durable state --------------------------------------------------------------------
    def dump(self) -> dict[str, dict[str, object]]:
        return {"instances": dict(self.instances), "meta": {"ecs": self._meta()}}

    def changed_rows(self) -> dict[str, dict[str, object]]:
        """The rows that may have changed since the last call (the driver encodes only these:
        a step of a 10,000-instance ECS costs the instances it touched, not all of them)."""
        dirty, self._dirty = self._dirty, set()
        return {"instances": {i: self.instances[i] for i in dirty if i in self.instances}, "meta": {"ecs": self._meta()}}

    def _meta(self) -> EcsMeta:
        return EcsMeta(list(self.hosts), self._next_host, self.vpc_id, self.vswitch_id)

    def load(self, rows: dict[str, dict], now: float) -> list[Effect]:
        """Restore instances and hosts; schedule what is overdue (or was in flight) at once, spread."""
        meta = rows.get("meta", {}).get("ecs")
        if meta is not None:
            self.hosts, self._next_host, self.vpc_id, self.vswitch_id = list(meta.hosts), meta.next_host, meta.vpc_id, meta.vswitch_id
        restored = {**self.instances, **rows.get("instances", {})}
        self.instances = dict(sorted(restored.items(), key=lambda kv: (kv[1].instance.creation_time, kv[0])))
        self._order = []
        overdue = [r for r in self.instances.values()
                   if r.role_name and (r.due_at is None or r.due_at <= now or r.credentials is None)]
        window = min(self.refresh_before / 4, RESTART_SPREAD * len(overdue))
        for record in overdue:
            record.due_at = now + window * self._jitter()
            self._dirty.add(record.instance.instance_id)
        self._due = [(r.due_at, i) for i, r in self.instances.items() if r.due_at is not None]
        heapq.heapify(self._due)
        return [Log("instances_restored", "info", {"instances": len(self.instances), "overdue": len(overdue),
                                                   "spread_seconds": round(window, 3)})]

    def _jitter(self) -> float:
        """A number in [0, 1) from the entropy the shell handed us."""
        return int.from_bytes(self._entropy(2), "big") / 65536

    # -- metadata hosts -------------------------------------------------------------------
    def _register_host(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.RegisterHost)
        if msg.src != _agent(body.host_id):  # the views carry credentials: only that host's agent gets them
            return [Reply(msg, errors.no_permission(f"{msg.src} may not register as host {body.host_id}.")),
                    Log("register_host_refused", "warning", {"src": msg.src, "host_id": body.host_id})]
        if body.host_id not in self.hosts:
            self.hosts.append(body.host_id)
        hosted = [r for r in self.instances.values() if r.host_id == body.host_id]
        start = 0
        if body.after:
            start = next((n + 1 for n, r in enumerate(hosted) if r.instance.instance_id == body.after), 0)
        views = [self.view(r) for r in hosted[start:start + REGISTER_PAGE]]
        more = start + REGISTER_PAGE < len(hosted)
        reply = m.RegisterHostOk(instances=views, next_after=views[-1].instance_id if more and views else "")
        if start:
            return [Reply(msg, reply)]
        return [Reply(msg, reply), Log("host_registered", "info", {"host_id": body.host_id, "instances": len(hosted)})]

    def _endpoint_ready(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.InstanceEndpointReady)
        record = self.instances.get(body.instance_id)
        if record is None or record.host_id != body.host_id or msg.src != _agent(body.host_id):
            return [Log("endpoint_unknown_instance", "warning", {"instance_id": body.instance_id, "host_id": body.host_id})]
        if self._serving_at(record, body.url, now):
            return [Log("instance_running", "info", {"instance_id": body.instance_id, "url": body.url})]
        return []

    def _endpoints_ready(self, msg: Envelope, now: float) -> list[Effect]:
        """Several instances' views serve (one message per agent step): one log line, not one each."""
        body = msg.body
        assert isinstance(body, m.InstanceEndpointsReady)
        if msg.src != _agent(body.host_id):
            return [Log("endpoint_unknown_instance", "warning", {"instances": len(body.endpoints), "host_id": body.host_id})]
        running = unknown = 0
        for e in body.endpoints:
            record = self.instances.get(e.instance_id)
            if record is None or record.host_id != body.host_id:
                unknown += 1
            elif self._serving_at(record, e.url, now):
                running += 1
        effects: list[Effect] = []
        if running:
            effects.append(Log("instances_running", "info", {"host_id": body.host_id, "instances": running}))
        if unknown:
            effects.append(Log("endpoint_unknown_instance", "warning", {"host_id": body.host_id, "instances": unknown}))
        return effects

    def _serving_at(self, record: InstanceRecord, url: str, now: float) -> bool:
        """The instance's view serves at ``url``; True when that makes it Running."""
        record.endpoint_url = url
        self._dirty.add(record.instance.instance_id)
        if record.instance.status == "Pending":
            record.instance = replace(record.instance, status="Running")
            record.start_time = iso(now)[:-4] + "Z"
            return True
        return False

    def view(self, r: InstanceRecord) -> m.InstanceView:
        i = r.instance
        serving = r.credentials is not None
        return m.InstanceView(
            instance_id=i.instance_id, host_id=r.host_id, generation=r.generation, account_id=self.account_id,
            region_id=i.region_id, zone_id=i.zone_id, host_name=i.host_name, instance_type=i.instance_type,
            image_id=i.image_id, serial_number=r.serial_number, network=r.network, http_tokens=r.http_tokens,
            http_endpoint=r.http_endpoint, user_data=r.user_data,
            ram_role_name=r.role_name if serving else "", credentials=r.credentials, endpoint_url=r.endpoint_url)

    def _push(self, record: InstanceRecord) -> Effect:
        """The record's new view for its host (one :class:`Publish`; :func:`_batched` folds a
        step's views for one host into one message)."""
        record.generation += 1
        self._dirty.add(record.instance.instance_id)
        return Publish(topics.instance(record.host_id, record.instance.instance_id), m.InstanceChanged(view=self.view(record)))

    # -- API plumbing ---------------------------------------------------------------------
    def _api(self, handler: Callable[[Envelope, float], list[Effect] | Error]) -> Callable[[Envelope, float], list[Effect]]:
        def run(msg: Envelope, now: float) -> list[Effect]:
            body = msg.body
            if getattr(body, "caller", None) is None:
                return [Reply(msg, errors.no_permission("The request is not authenticated."))]
            if getattr(body, "region_id", self.region_id) != self.region_id:
                return [Reply(msg, error("InvalidRegionId.NotFound", f"The specified region does not exist; this cluster serves {self.region_id}.", 404))]
            result = handler(msg, now)
            return [Reply(msg, result)] if isinstance(result, Error) else result
        return run

    def _authorize(self, msg: Envelope, now: float, checks: list[ram.Check], then: Callable[[float], list[Effect]]) -> list[Effect]:
        """Run ``then`` if the caller may do every check. Decided here from cached effective
        policies; on a miss, RAM is asked for them once."""
        caller = getattr(msg.body, "caller")
        context = getattr(msg.body, "request_context", {})
        checks = [ram.Check(action=c.action, resource=c.resource, context={**context, **c.context}) for c in checks]
        if caller.identity_type == "Account" and caller.account_id == self.account_id:
            return then(now)

        def decide(entry: Entry, now: float) -> list[Effect]:
            for check in checks:
                decision = self.cache.decide(entry, caller, check, now)
                if not decision.allowed:
                    if check.action.lower() == "ram:passrole":
                        problem = explain.denied("InvalidUser.PassRoleForbidden", "The RAM user does not have the privilege to pass a RAM role.",
                                                 403, caller, check.action, decision)
                    else:
                        problem = explain.denied("Forbidden.RAM", "User not authorized to operate on the specified resource.",
                                                 403, caller, check.action, decision)
                    return [Reply(msg, problem), Log("access_denied", "info", {"principal": caller.arn, "action": check.action,
                                                                               "reason": decision.reason})]
            return then(now)

        entry = self.cache.get(caller)
        if entry is not None:
            return decide(entry, now)

        def fetched(reply: object, now: float) -> list[Effect]:
            assert isinstance(reply, ram.GetEffectivePoliciesOk)
            return decide(self.cache.put(caller, reply), now)

        return [Request("ram", ram.GetEffectivePolicies(principal=caller), Gate(msg, fetched), trace_id=msg.trace_id)]

    def _with_ecs_role(self, msg: Envelope, role_name: str, then: Callable[[ram.Role, float], list[Effect]], *, not_ecs_status: int) -> list[Effect]:
        """Look the role up in RAM; go on only if it trusts ECS."""

        def found(reply: object, now: float) -> list[Effect]:
            assert isinstance(reply, ram.GetRoleOk)
            trust = policy.parse(reply.role.assume_role_policy_document, trust=True)
            if not policy.trusts(trust, "Service", SERVICE_PRINCIPAL):
                return [Reply(msg, error("InvalidRamRole.NotEcsRole", "The specified ram role is not authorized for ecs, please check your role policy.", not_ecs_status))]
            return then(reply.role, now)

        return [Request("ram", ram.GetRole(role_name=role_name, caller=self.principal()), Gate(msg, found), trace_id=msg.trace_id)]

    def principal(self) -> common.Principal:
        return common.Principal(identity_type="Service", account_id=self.account_id, arn=SERVICE_PRINCIPAL,
                                principal_id=SERVICE_PRINCIPAL)

    def _arn(self, instance_id: str) -> str:
        return f"acs:ecs:{self.region_id}:{self.account_id}:instance/{instance_id}"

    def _role_arn(self, role_name: str) -> str:
        return f"acs:ram:*:{self.account_id}:role/{role_name}"

    # -- RunInstances ---------------------------------------------------------------------
    def _run_instances(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.RunInstances)
        if not 1 <= body.amount <= 100:
            return errors.invalid_parameter("Amount", "It must be 1-100.")
        problem = _metadata_options(body.http_tokens, body.http_endpoint)
        if problem is not None:
            return problem
        if len(body.tag) > MAX_TAGS or not all(t.key for t in body.tag):
            return errors.invalid_parameter("Tag", f"Give 1-{MAX_TAGS} tags, each with a Key.")
        if len(body.user_data) > MAX_USER_DATA:
            return error("InvalidUserData.SizeExceeded", f"The specified UserData exceeds {MAX_USER_DATA} bytes.")
        if body.private_ip_address:
            problem = self._private_ip_problem(body.private_ip_address, body.amount)
            if problem is not None:
                return problem
        if not self.hosts:
            return error("OperationDenied.NoStock", "No metadata host is registered to run instances on.", 403)
        checks = [ram.Check(action="ecs:RunInstances", resource=self._arn("*"))]
        if body.ram_role_name:
            checks.append(ram.Check(action="ram:PassRole", resource=self._role_arn(body.ram_role_name)))

        def authorized(now: float) -> list[Effect]:
            if not body.ram_role_name:
                return self._launch(msg, None, now)
            return self._with_ecs_role(msg, body.ram_role_name, lambda role, now: self._launch(msg, role, now), not_ecs_status=401)

        return self._authorize(msg, now, checks, authorized)

    def _launch(self, msg: Envelope, role: ram.Role | None, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.RunInstances)
        effects: list[Effect] = []
        launched: list[str] = []
        binding: list[InstanceRecord] = []
        for _ in range(body.amount):
            instance_id = ids.instance_id(self._entropy(20))
            host_id = self.hosts[self._next_host % len(self.hosts)]
            self._next_host += 1
            record = InstanceRecord(
                instance=m.Instance(instance_id=instance_id, instance_name=body.instance_name or instance_id, status="Pending",
                                    region_id=self.region_id, zone_id=body.zone_id or self.zone_id,
                                    instance_type=body.instance_type, image_id=body.image_id,
                                    host_name="iZ" + instance_id[2:] + "Z", creation_time=iso(now)[:-4] + "Z"),
                host_id=host_id, network=self._interface(body.private_ip_address), serial_number=_uuid(self._entropy(16)),
                http_tokens=body.http_tokens, http_endpoint=body.http_endpoint, user_data=body.user_data,
                description=body.description, tags=[m.Tag(tag_key=t.key, tag_value=t.value) for t in body.tag])
            self.instances[instance_id] = record
            launched.append(instance_id)
            effects.append(self._push(record))
            if role is not None:
                self._bind(record, role, "")
                binding.append(record)
        effects += self._fetch_all(binding, None)
        effects.append(Log("instances_launched", "info", {"instance_ids": launched, "role": role.role_name if role else ""}))
        return [Reply(msg, m.RunInstancesOk(instance_id_sets=m.InstanceIdSets(instance_id_set=launched))), *effects]

    def _interface(self, private_ip: str = "") -> m.NetworkInterface:
        """eth0 in the cluster's one VPC and vSwitch (172.16.0.0/16 unless configured; gateway the
        vSwitch's last address but two, .253 as Alibaba's), at ``private_ip`` or a random address in it."""
        e = self._entropy(26)
        net = self.vswitch
        if not private_ip and net == ipaddress.IPv4Network(VSWITCH_CIDR):
            private_ip = f"172.16.{e[3]}.{2 + e[4] % 250}"
        elif not private_ip:  # from the network's second address up to its gateway, exclusive
            private_ip = str(net.network_address + 2 + int.from_bytes(e[3:5], "big") % max(net.num_addresses - 5, 1))
        return m.NetworkInterface(
            mac="00:16:3e:" + ":".join(f"{b:02x}" for b in e[:3]), private_ip=private_ip,
            network_interface_id="eni-" + ids.instance_id(e[5:25])[2:], vpc_id=self.vpc_id, vswitch_id=self.vswitch_id,
            vpc_cidr_block=str(net.supernet(new_prefix=min(net.prefixlen, 12))) if net.subnet_of(_PRIVATE_172) else str(net),
            vswitch_cidr_block=str(net), gateway=str(net.broadcast_address - 2), netmask=str(net.netmask))

    def _private_ip_problem(self, address: str, amount: int) -> Error | None:
        """Why RunInstances cannot place an instance at ``address``, or None."""
        if amount != 1:
            return errors.invalid_parameter("PrivateIpAddress", "It can be given only with Amount 1.")
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return error("InvalidPrivateIpAddress.Malformed", f"The specified PrivateIpAddress {address!r} is not an IPv4 address.")
        if ip not in self.vswitch or ip in (self.vswitch.network_address, self.vswitch.broadcast_address):
            return error("InvalidPrivateIpAddress.Malformed", f"The specified PrivateIpAddress is not in the vSwitch's CIDR block {self.vswitch}.")
        if any(r.network.private_ip == address for r in self.instances.values()):
            return error("InvalidPrivateIpAddress.Duplicated", "The specified PrivateIpAddress is already in use.")
        return None

    # -- metadata options -----------------------------------------------------------------
    def _modify_metadata_options(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.ModifyInstanceMetadataOptions)
        record = self.instances.get(body.instance_id)
        if record is None:
            return error("InvalidInstanceId.NotFound", "The specified instanceId does not exist", 404)
        problem = _metadata_options(body.http_tokens or "optional", body.http_endpoint or "enabled")
        if problem is not None:
            return problem
        if not 0 <= body.http_put_response_hop_limit <= 64:
            return error("InvalidHttpPutResponseHopLimit.NotSupported", "The specified HttpPutResponseHopLimit must be 1-64.")

        def modify(now: float) -> list[Effect]:
            record.http_tokens = body.http_tokens or record.http_tokens
            record.http_endpoint = body.http_endpoint or record.http_endpoint
            record.hop_limit = body.http_put_response_hop_limit or record.hop_limit
            return [Reply(msg, m.ModifyInstanceMetadataOptionsOk()), self._push(record)]

        check = ram.Check(action="ecs:ModifyInstanceMetadataOptions", resource=self._arn(body.instance_id))
        return self._authorize(msg, now, [check], modify)

    # -- attach / detach ------------------------------------------------------------------
    def _instance_ids(self, text: str) -> list[str] | Error:
        try:
            values = json.loads(text)
        except ValueError:
            values = None
        if not isinstance(values, list) or not values or len(values) > MAX_INSTANCE_IDS or \
                not all(isinstance(v, str) and v for v in values):
            return error("InvalidInstanceIds.Malformed", "The specified instanceIds are not valid.")
        return list(dict.fromkeys(values))

    def _attach(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.AttachInstanceRamRole)
        instance_ids = self._instance_ids(body.instance_ids)
        if isinstance(instance_ids, Error):
            return instance_ids
        if len(body.policy) > MAX_ATTACH_POLICY:
            return error("InvalidParameter.Policy", f"The specified Policy exceeds {MAX_ATTACH_POLICY} characters.")
        if body.policy:
            try:
                policy.parse(body.policy, max_chars=MAX_ATTACH_POLICY)
            except policy.PolicyError as exc:
                return error("InvalidParameter.Policy", f"The specified Policy is invalid: {exc}")
        if not any(i in self.instances for i in instance_ids):
            return error("InvalidInstanceId.NotFound", "The specified instanceId does not exist", 404)
        checks = [ram.Check(action="ecs:AttachInstanceRamRole", resource=self._arn(i)) for i in instance_ids]
        checks.append(ram.Check(action="ram:PassRole", resource=self._role_arn(body.ram_role_name)))
        return self._authorize(msg, now, checks, lambda now: self._with_ecs_role(
            msg, body.ram_role_name, lambda role, now: self._bind_all(msg, instance_ids, role, now), not_ecs_status=404))

    def _bind_all(self, msg: Envelope, instance_ids: list[str], role: ram.Role, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.AttachInstanceRamRole)
        op = AttachOp(msg, role.role_name, {})
        binding: list[InstanceRecord] = []
        for instance_id in instance_ids:
            record = self.instances.get(instance_id)
            if record is None:
                op.results[instance_id] = m.RamRoleResult(instance_id=instance_id, code="404", message="The specified instanceId does not exist", success=False)
            elif record.role_name:
                op.results[instance_id] = m.RamRoleResult(instance_id=instance_id, code="403", success=False,
                                                          message=f"The instance already has RAM role {record.role_name}; detach it first.")
            else:
                self._bind(record, role, body.policy)
                binding.append(record)
                op.waiting.add(instance_id)
                op.results[instance_id] = m.RamRoleResult(instance_id=instance_id, code="", message="", success=False)  # its place
        return self._fetch_all(binding, op) if op.waiting else self._attach_reply(op)

    def _bind(self, record: InstanceRecord, role: ram.Role, session_policy: str) -> None:
        """Attach ``role``; it serves once its first credential arrives."""
        record.role_name, record.role_arn, record.session_policy = role.role_name, role.arn, session_policy
        record.attachment += 1
        record.credentials = None
        self._dirty.add(record.instance.instance_id)

    def _attach_reply(self, op: AttachOp) -> list[Effect]:
        """The views of the instances the batch issued credentials to (together: one message per
        host), then the reply."""
        views: list[Effect] = []
        for instance_id in op.ready:
            record = self.instances.get(instance_id)
            if record is not None and record.credentials is not None:
                views.append(self._push(record))
        results = [op.results[i] for i in op.results]
        failed = sum(1 for r in results if not r.success)
        reply = m.AttachInstanceRamRoleOk(total_count=len(results), fail_count=failed, ram_role_name=op.role_name,
                                          attach_instance_ram_role_results=m.AttachResults(attach_instance_ram_role_result=results))
        return [*views, *op.events, Reply(op.request, reply)]

    def _detach(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.DetachInstanceRamRole)
        instance_ids = self._instance_ids(body.instance_ids)
        if isinstance(instance_ids, Error):
            return instance_ids
        if not any(i in self.instances for i in instance_ids):
            return error("InvalidInstanceId.NotFound", "The specified instanceId does not exist", 404)
        checks = [ram.Check(action="ecs:DetachInstanceRamRole", resource=self._arn(i)) for i in instance_ids]
        return self._authorize(msg, now, checks, lambda now: self._unbind_all(msg, instance_ids))

    def _unbind_all(self, msg: Envelope, instance_ids: list[str]) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.DetachInstanceRamRole)
        results: list[m.RamRoleResult] = []
        effects: list[Effect] = []
        for instance_id in instance_ids:
            record = self.instances.get(instance_id)
            if record is None:
                results.append(m.RamRoleResult(instance_id=instance_id, code="404", message="The specified instanceId does not exist", success=False))
            elif not record.role_name or (body.ram_role_name and body.ram_role_name != record.role_name):
                results.append(m.RamRoleResult(instance_id=instance_id, code="404", success=False,
                                               message=f"The instance has no RAM role {body.ram_role_name}".strip() + " attached."))
            else:
                detached = record.role_name
                record.role_name = record.role_arn = record.session_policy = ""
                record.attachment += 1
                record.credentials = None
                record.due_at = None
                effects.append(self._push(record))
                effects.append(Publish(topics.event(NAME, "RoleDetachedFromInstance"),
                                       m.RoleDetachedFromInstance(instance_id=instance_id, ram_role_name=detached)))
                detached_set = m.InstanceRamRoleSets(instance_ram_role_set=[m.InstanceRamRole(instance_id=instance_id, ram_role_name=detached)])
                results.append(m.RamRoleResult(instance_id=instance_id, code="200", message="Success", success=True,
                                               instance_ram_role_sets=detached_set))
        failed = sum(1 for r in results if not r.success)
        reply = m.DetachInstanceRamRoleOk(total_count=len(results), fail_count=failed, ram_role_name=body.ram_role_name,
                                          detach_instance_ram_role_results=m.DetachResults(detach_instance_ram_role_result=results))
        return [*effects, Reply(msg, reply)]  # the hosts hear of it before the caller does

    # -- credentials ----------------------------------------------------------------------
    def _fetch(self, record: InstanceRecord, op: AttachOp | None) -> list[Effect]:
        assume, fetch = self._assume(record, op)
        return [Request("sts", assume, fetch)]

    def _fetch_all(self, records: list[InstanceRecord], op: AttachOp | None) -> list[Effect]:
        """Credentials for ``records``: one AssumeRole for one, else one AssumeRoles per
        :data:`MAX_INSTANCE_IDS` (one round trip to STS, which asks RAM once per role)."""
        if len(records) == 1:
            return self._fetch(records[0], op)
        effects: list[Effect] = []
        for start in range(0, len(records), MAX_INSTANCE_IDS):
            pairs = [self._assume(r, op) for r in records[start:start + MAX_INSTANCE_IDS]]
            effects.append(Request("sts", sts.AssumeRoles(requests=[a for a, _ in pairs]), Fetches([f for _, f in pairs])))
        return effects

    def _assume(self, record: InstanceRecord, op: AttachOp | None) -> tuple[sts.AssumeRole, Fetch]:
        record.due_at = None
        self._dirty.add(record.instance.instance_id)
        assume = sts.AssumeRole(role_arn=record.role_arn,
                                role_session_name=record.instance.instance_id,
                                duration_seconds=self.credential_lifetime, policy=record.session_policy,
                                caller=self.principal())
        return assume, Fetch(record.instance.instance_id, record.attachment, op)

    def _fetched(self, fetch: Fetch, body: object, now: float) -> list[Effect]:
        record = self.instances.get(fetch.instance_id)
        current = record is not None and record.attachment == fetch.attachment and bool(record.role_name)
        effects: list[Effect] = []
        if not current or record is None:
            effects.append(Log("credential_discarded", "info", {"instance_id": fetch.instance_id}))
            ok = False
        elif isinstance(body, sts.AssumeRoleOk):
            c = body.credentials
            expires_at = parse_iso(c.expiration)
            first = record.credentials is None
            record.credentials = m.InstanceCredentials(access_key_id=c.access_key_id, access_key_secret=c.access_key_secret,
                                                       security_token=c.security_token, expiration=expires_at, last_updated=now)
            self._schedule(record, self._refresh_at(expires_at, now))
            record.failures = 0
            events: list[Effect] = []
            if first:
                events.append(Publish(topics.event(NAME, "RoleAttachedToInstance"),
                                      m.RoleAttachedToInstance(instance_id=fetch.instance_id, ram_role_name=record.role_name)))
            events.append(Publish(topics.event(NAME, "InstanceCredentialsRefreshed"),
                                  m.InstanceCredentialsRefreshed(instance_id=fetch.instance_id, ram_role_name=record.role_name,
                                                                 access_key_id=c.access_key_id, expiration=expires_at)))
            if fetch.op is not None:  # its view and events go with the rest of its batch (_attach_reply)
                fetch.op.ready.append(fetch.instance_id)
                fetch.op.events += events
            else:
                effects += [self._push(record), *events]
            ok = True
        else:
            reason = body.message if isinstance(body, Error) else type(body).__name__
            record.failures += 1
            self._schedule(record, now + retry_delay(record.failures, self.refresh_before, self._jitter()))
            effects.append(Log("credential_fetch_failed", "warning", {"instance_id": fetch.instance_id, "reason": reason,
                                                                      "failures": record.failures, "retry_at": record.due_at}))
            if fetch.op is not None:  # a failed first issue undoes the attachment
                record.role_name = record.role_arn = record.session_policy = ""
                record.attachment += 1
                record.due_at = None
            ok = False
        if fetch.op is not None:
            op = fetch.op
            op.waiting.discard(fetch.instance_id)
            message = "success" if ok else (body.message if isinstance(body, Error) else "the role could not be assumed")
            op.results[fetch.instance_id] = m.RamRoleResult(instance_id=fetch.instance_id, code="200" if ok else "403",
                                                            message=message, success=ok)
            if not op.waiting:
                effects += self._attach_reply(op)
        return effects

    # -- queries --------------------------------------------------------------------------
    def _selected(self, text: str) -> Sequence[InstanceRecord] | Error:
        if not text:
            return self._ordered()
        wanted = self._instance_ids(text)
        if isinstance(wanted, Error):
            return wanted
        return [self.instances[i] for i in wanted if i in self.instances]

    def _ordered(self) -> list[InstanceRecord]:
        """Every instance, oldest first; rebuilt only after a launch (instances are never removed),
        so a page of 10,000 instances costs its page, not the list."""
        if len(self._order) != len(self.instances):
            self._order = list(self.instances.values())
        return self._order

    def _describe_instances(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.DescribeInstances)
        if not 1 <= body.page_size <= describe.MAX_PAGE or body.page_number < 1:
            return errors.invalid_parameter("PageSize", f"PageSize must be 1-{describe.MAX_PAGE} and PageNumber at least 1.")
        if not 0 <= body.max_results <= describe.MAX_PAGE:
            return errors.invalid_parameter("MaxResults", f"MaxResults must be 1-{describe.MAX_PAGE}.")
        selected = self._selected(body.instance_ids)
        if isinstance(selected, Error):
            return selected
        if describe.filtered(body):
            selected = [r for r in selected if describe.matches(body, r)]
        answer = describe.page(body, selected)
        if answer is None:
            return errors.invalid_parameter("NextToken", "It is not a token this API returned.")

        def reply(now: float) -> list[Effect]:
            return [Reply(msg, answer)]

        return self._authorize(msg, now, [ram.Check(action="ecs:DescribeInstances", resource=self._arn("*"))], reply)

    def _describe_instance_ram_role(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.DescribeInstanceRamRole)
        if not body.instance_ids and not body.ram_role_name:
            return errors.missing_parameter("InstanceIds")
        selected = self._selected(body.instance_ids)
        if isinstance(selected, Error):
            return selected
        sets = [m.InstanceRamRole(instance_id=r.instance.instance_id, ram_role_name=r.role_name)
                for r in selected if r.role_name and (not body.ram_role_name or r.role_name == body.ram_role_name)]

        def reply(now: float) -> list[Effect]:
            return [Reply(msg, m.DescribeInstanceRamRoleOk(region_id=self.region_id, total_count=len(sets),
                                                           instance_ram_role_sets=m.InstanceRamRoleSets(instance_ram_role_set=sets)))]

        return self._authorize(msg, now, [ram.Check(action="ecs:DescribeInstanceRamRole", resource=self._arn("*"))], reply)

    def _describe_endpoints(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.DescribeInstanceMetadataEndpoints)
        if not 0 <= body.max_results <= MAX_ENDPOINTS:
            return errors.invalid_parameter("MaxResults", f"MaxResults must be 1-{MAX_ENDPOINTS}.")
        selected = self._selected(body.instance_ids) if body.instance_ids else self._ordered()
        if isinstance(selected, Error):
            return selected
        serving = [r for r in selected if r.endpoint_url]
        found = paging.page(serving, lambda r: r.instance.instance_id, body.next_token, body.max_results or MAX_ENDPOINTS)
        if found is None:
            return errors.invalid_parameter("NextToken", "It is not a token this API returned.")
        listed, token = found
        endpoints = [m.MetadataEndpoint(instance_id=r.instance.instance_id, host_id=r.host_id, url=r.endpoint_url) for r in listed]

        def reply(now: float) -> list[Effect]:
            return [Reply(msg, m.DescribeInstanceMetadataEndpointsOk(endpoints=endpoints, next_token=token))]

        return self._authorize(msg, now, [ram.Check(action="ecs:DescribeInstances", resource=self._arn("*"))], reply)


def _agent(host_id: str) -> str:
    """The node id of a host's metadata agent (the sender of its RegisterHost and endpoints)."""
    return f"metadata-{host_id}"


def _batched(effects: list[Effect]) -> list[Effect]:
    """A step's views for one host in one message: the :class:`InstanceChanged` publishes of a
    host (two or more) become :class:`InstancesChanged` direct messages to its agent, in pieces
    of :data:`BATCH_VIEWS`, where the first of them stood (so the hosts still hear of a change
    before the caller does). A lone view stays a publish on its instance topic."""
    by_host: dict[str, list[m.InstanceView]] = {}
    for e in effects:
        if isinstance(e, Publish) and isinstance(e.body, m.InstanceChanged):
            by_host.setdefault(e.body.view.host_id, []).append(e.body.view)
    if all(len(views) < 2 for views in by_host.values()):
        return effects
    out: list[Effect] = []
    placed: set[str] = set()
    for e in effects:
        if isinstance(e, Publish) and isinstance(e.body, m.InstanceChanged) and len(by_host[e.body.view.host_id]) > 1:
            host = e.body.view.host_id
            if host not in placed:
                placed.add(host)
                views = by_host[host]
                out += [Send(_agent(host), m.InstancesChanged(views=views[i:i + BATCH_VIEWS])) for i in range(0, len(views), BATCH_VIEWS)]
            continue
        out.append(e)
    return out
