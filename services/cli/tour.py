"""I/O shell: ``ramsim tour``: the seed's nine steps, one at a time, showing the system think.

For each step: what it means, in the seed's words; the API calls made (``ram CreateRole ...``);
the messages each call caused on the bus (sender → recipient, type, key fields: read through
the read-only trace tap, :mod:`services.runtime.tap`, grouped by the call's trace id, never a
secret); and the resulting state. Enter moves on; ``--auto`` runs straight through.

On the way it stops at the moments that teach: a RAM user without ``ram:PassRole`` refused, with
the statement that decided it (``Decided by:``, RAM's explanation in Alibaba's
``AccessDeniedDetail``); a policy detached from and attached to the role taking effect on the
very next call, with no restart and no new token; the credential's Expiration and its refresh
(timed by ECS, time-scaled: the tour's private cluster runs at ``--time-scale 300``); the old and
the new credential both valid during the overlap; a detach, and the 404 that follows.

Against a running cluster (``--cluster-file``, ``$RAMSIM_CLUSTER`` or a live
``.ramsim/cluster.json``) it uses that one; else it starts a private one, as ``ramsim demo``
does, and stops it at the end. It needs Mosquitto: the tap reads a real broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from protocol.trace import TraceEvent, is_secret, trace_id_of
from services.cli import api, cluster, demo, sequence, up
from services.cli.errors import CliError
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime import logs

ROLE = demo.ROLE
PASS_ROLE_POLICY = demo.PASS_ROLE_POLICY
READ_POLICY = "AliyunECSReadOnlyAccess"
CREDENTIALS = "/latest/meta-data/ram/security-credentials/"
TOUR_TIME_SCALE = 300.0   # the private cluster: a simulated hour in 12 real seconds, so a refresh comes in 6
MAX_REFRESH_WAIT = 60.0   # real seconds the tour waits for a refresh; longer (a cluster at scale 1) is told, not waited for
SETTLE = 0.15             # real seconds to let the last events of a call (pushes, broadcasts) reach the tap
MASK = "****"

# The seed's words (/work/shared/seed/ram-role-for-ecs.md, "Process"), one per step.
SEED = {
    1: "The enterprise creates a RAM role named MyApplicationRole. Alibaba Cloud Service is selected as the trusted entity, "
       "and Elastic Compute Service is selected as the trusted service. This allows ECS to assume the RAM role.",
    2: "The enterprise attaches the required policies to the RAM role. After the policies are attached, the permissions "
       "attached to the STS token immediately take effect without the need to restart the specific ECS instance.",
    3: "The enterprise uses its Alibaba Cloud account to create a RAM user.",
    4: "The enterprise attaches the required policies to the RAM user: a custom policy allowing ram:PassRole on "
       "acs:ram:*:*:role/MyApplicationRole. When a RAM user that can only manage ECS instances attempts to create an ECS "
       "instance and configure a RAM role, ECS checks whether the RAM user has the ram:PassRole policy on the RAM role.",
    5: "The RAM user starts the ECS instance and configures the RAM role.",
    6: "ECS calls the STS AssumeRole operation to obtain the STS token of the RAM role. The STS service verifies the "
       "identity of ECS and the policies attached to the RAM role.",
    7: "The STS service returns the STS token to ECS.",
    8: "ECS includes the STS token in the metadata of the ECS instance and sends the metadata to the application. "
       "A fresh STS token is issued before the old one expires; both are valid during the overlap.",
    9: "The application uses the STS token to call Alibaba Cloud API operations.",
}


class Seen:
    """The tap's events, shared between the loop that reads the tap and the thread that tours."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self._changed = threading.Condition()

    def add(self, event: TraceEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait(self, found: Callable[[list[TraceEvent]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not found(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def of(self, trace_id: str) -> list[TraceEvent]:
        with self._changed:
            return [e for e in self.events if e.trace_id == trace_id]

    def since(self, mark: int) -> list[TraceEvent]:
        with self._changed:
            return self.events[mark:]

    def mark(self) -> int:
        with self._changed:
            return len(self.events)


class Tour:
    def __init__(self, target: cluster.ClusterFile, seen: Seen, *, auto: bool, say: Callable[[str], None] = print,
                 ask: Callable[[str], str] = input) -> None:
        self.target = target
        self.seen = seen
        self.auto = auto
        self.say = say
        self.ask = ask
        self.root = api.Credential(target.access_key_id, target.access_key_secret)
        self.region = target.region_id
        self.run_id = os.urandom(2).hex()
        self.scale = target.time_scale or 1.0

    # -- what every step does ------------------------------------------------------------------
    def step(self, n: int | str, title: str) -> None:
        if n != 1 and not self.auto:
            try:
                self.ask("\n-- Enter for the next step (Ctrl-C to stop) --")
            except EOFError:
                self.auto = True
        self.say(f"\n=== Step {n}: {title}")
        if isinstance(n, int) and n in SEED:
            self.say(f'    The seed: "{SEED[n]}"')

    def moment(self, text: str) -> None:
        self.say(f"  >> Teaching moment: {text}")

    def state(self, text: str) -> None:
        self.say(f"  State: {text}")

    def call(self, product: str, action: str, credential: api.Credential | None = None, *, who: str = "root",
             show: bool = True, **params: str) -> dict[str, Any]:
        """Make one API call, print it and the messages it caused; an error answer is printed and raised."""
        shown = " ".join(f"--{k} {_param(k, v)}" for k, v in params.items())
        self.say(f"  API call (as {who}): ramsim {product} {action} {shown}".rstrip())
        try:
            answer = api.call(self.target.gateway_url, product, action, params, credential or self.root)
        except api.ApiError as exc:
            self.say(f"    -> {exc.line(product)}".replace("\n", "\n       "))
            self.messages(str(exc.body.get("RequestId", "")), product)
            raise
        self.say(f"    -> OK (RequestId {answer.get('RequestId', '?')})")
        if show:
            self.messages(str(answer.get("RequestId", "")), product)
        return answer

    def ensure(self, product: str, action: str, **params: str) -> None:
        demo.ensure(self.call, self.say, product, action, **params)

    def messages(self, request_id: str, product: str) -> list[TraceEvent]:
        """Print the messages of the call answered with ``request_id`` (its trace), once the answer reached the gateway."""
        if not request_id:
            return []
        trace_id = trace_id_of(request_id)

        def answered(events: list[TraceEvent]) -> bool:  # the service's answer to the gateway
            return any(e.trace_id == trace_id and e.src == product and e.dest == "gateway" and e.in_reply_to is not None
                       for e in events)

        self.seen.wait(answered, timeout=3.0)
        time.sleep(SETTLE)  # the pushes and broadcasts a call causes may trail its answer by a moment
        return self.show_trace(trace_id, f"messages on the bus (trace {trace_id})")

    def show_trace(self, trace_id: str, heading: str) -> list[TraceEvent]:
        events = self.seen.of(trace_id)
        self.say(f"    {heading}: {len(events)}")
        for event in events:
            self.say("      " + sequence.line(event, fields=4))
        return events

    def pause_for(self, real_seconds: float) -> None:
        time.sleep(real_seconds)

    # -- the tour ------------------------------------------------------------------------------
    def run(self) -> int:
        from services.cli.instances import instances, read_metadata

        say = self.say
        say("ramsim tour: the nine steps of 'RAM role for ECS instances', and the messages each one causes.")
        say(f"Cluster: gateway {self.target.gateway_url}, time scale {self.scale:g} (simulated seconds per real second).")
        say("Every line 'src -> dest Type Key=value' below is a message on the MQTT bus, read by the read-only trace tap;"
            " secrets never appear in it.")

        self.step(1, f"Create the RAM role {ROLE}, trusting ECS")
        self.ensure("ram", "CreateRole", RoleName=ROLE, AssumeRolePolicyDocument=ECS_TRUST_POLICY,
                    Description="Role for applications on ECS instances")
        role = self.call("ram", "GetRole", show=False, RoleName=ROLE)["Role"]
        self.state(f"role {role['RoleName']} ({role['Arn']}); trust policy: {ECS_TRUST_POLICY}")

        self.step(2, f"Attach the policy the application needs ({READ_POLICY}) to the role")
        self.ensure("ram", "AttachPolicyToRole", PolicyType="System", PolicyName=READ_POLICY, RoleName=ROLE)
        attached = self.call("ram", "ListPoliciesForRole", show=False, RoleName=ROLE)["Policies"]["Policy"]
        self.state("the role's policies: " + ", ".join(p["PolicyName"] for p in attached))
        say("    RAM announced the change (PolicyAttachedToRole): ECS and OSS drop cached decisions at once.")

        admin, intern = f"ecs-admin-{self.run_id}", f"ecs-intern-{self.run_id}"
        self.step(3, f"Create the RAM users {admin} (will run instances) and {intern} (for contrast)")
        keys: dict[str, api.Credential] = {}
        for user in (admin, intern):
            self.call("ram", "CreateUser", UserName=user)
            key = self.call("ram", "CreateAccessKey", UserName=user)["AccessKey"]
            keys[user] = api.Credential(key["AccessKeyId"], key["AccessKeySecret"])
            self.state(f"{user}: AccessKeyId {key['AccessKeyId']}, AccessKeySecret {MASK} (shown once, kept by the user)")

        self.step(4, f"Let {admin} manage ECS and pass the role; {intern} only manages ECS")
        pass_role = json.dumps({"Statement": [{"Effect": "Allow", "Action": "ram:PassRole",
                                               "Resource": f"acs:ram:*:*:role/{ROLE}"}], "Version": "1"})
        self.ensure("ram", "CreatePolicy", PolicyName=PASS_ROLE_POLICY, PolicyDocument=pass_role)
        for user in (admin, intern):
            self.call("ram", "AttachPolicyToUser", show=user == admin, PolicyType="System", PolicyName="AliyunECSFullAccess",
                      UserName=user)
        self.call("ram", "AttachPolicyToUser", PolicyType="Custom", PolicyName=PASS_ROLE_POLICY, UserName=admin)
        for user in (admin, intern):
            policies = self.call("ram", "ListPoliciesForUser", show=False, UserName=user)["Policies"]["Policy"]
            self.state(f"{user}: " + ", ".join(p["PolicyName"] for p in policies))

        self.step(5, f"{admin} starts an instance with the role (RunInstances --RamRoleName {ROLE})")
        self.moment(f"{intern} has AliyunECSFullAccess but no ram:PassRole: ECS asks RAM, and RAM explains who decided.")
        try:
            self.call("ecs", "RunInstances", keys[intern], who=intern, RegionId=self.region, RamRoleName=ROLE)
            say(f"    UNEXPECTED: {intern} was allowed to pass the role")
            return 1
        except api.ApiError as exc:
            if not exc.decided:
                say(f"    UNEXPECTED: the refusal carries no explanation ({exc.code})")
                return 1
            say(f"    {intern} is refused: {exc.code}. Decided by: {exc.decided}")
        started = time.monotonic()
        answer = self.call("ecs", "RunInstances", keys[admin], who=admin, RegionId=self.region, RamRoleName=ROLE)
        instance_id = answer["InstanceIdSets"]["InstanceIdSet"][0]
        run_trace = trace_id_of(answer["RequestId"])
        self.state(f"instance {instance_id} is Running with role {ROLE}")

        self.step(6, "ECS calls STS AssumeRole, as the ECS service principal; STS checks the trust policy")
        url = ""
        while not url or read_metadata(url, CREDENTIALS)[0] != 200:
            if time.monotonic() - started > 20:
                say("    the credential did not reach the instance in 20 s")
                return 1
            time.sleep(0.02)
            url = next((i["MetadataUrl"] for i in instances(self.target) if i["InstanceId"] == instance_id), "")
        sts_part = [e for e in self.seen.of(run_trace) if e.src == "sts" or e.dest == "sts"]
        say(f"    the part of RunInstances' trace {run_trace} that involves STS:")
        for event in sts_part:
            say("      " + sequence.line(event))
        say("    STS read the role from RAM (GetRole) and found ecs.aliyuncs.com in its trust policy.")

        self.step(7, "STS returns the STS token to ECS, which pushes it to the instance's metadata agent")
        for event in self.seen.of(run_trace):
            if event.type in ("AssumeRoleOk", "InstanceChanged", "RoleAttachedToInstance", "InstanceCredentialsRefreshed"):
                say("      " + sequence.line(event))
        roles = self.call("ecs", "DescribeInstanceRamRole", show=False, RegionId=self.region, InstanceIds=json.dumps([instance_id]))
        self.state(f"DescribeInstanceRamRole: {roles['InstanceRamRoleSets']['InstanceRamRoleSet']}; "
                   f"the agent serves it after {(time.monotonic() - started) * 1000:.0f} ms")

        self.step(8, "The application reads the STS token from the instance metadata")
        _, listing = read_metadata(url, CREDENTIALS)
        say(f"    $ curl http://100.100.100.200{CREDENTIALS}\n    {listing}")
        old = self.read_credential(url, listing)
        say(f"    $ curl http://100.100.100.200{CREDENTIALS}{listing}")
        say("    " + json.dumps(masked(old), indent=2).replace("\n", "\n    "))
        self.moment(f"the token expires at {old['Expiration']} (simulated time); ECS refreshes it before then, "
                    "on a timer of its own, and pushes the new one the same way.")
        new = self.refresh(url, listing, instance_id, old)
        if new is None:
            return 1
        if new:
            self.moment("during the overlap the old and the new credential are both valid:")
            for name, doc in (("old", old), ("new", new)):
                who = self.call("sts", "GetCallerIdentity", _session(doc), who=f"the {name} credential {doc['AccessKeyId']}",
                                show=False)
                say(f"    the {name} credential ({doc['AccessKeyId']}, expires {doc['Expiration']}) -> {who['Arn']}")
            old = new

        self.step(9, "The application calls Alibaba Cloud APIs with the STS token")
        session = _session(old)
        who = self.call("sts", "GetCallerIdentity", session, who="the instance's credential")
        self.state(f"the instance acts as {who['Arn']} ({who['IdentityType']})")
        listed = self.call("ecs", "DescribeInstances", session, who="the instance's credential", RegionId=self.region)
        self.state(f"DescribeInstances -> {listed['TotalCount']} instance(s), allowed by {READ_POLICY}")
        self.moment(f"detach {READ_POLICY} from the role: the same token is refused on its next call.")
        self.call("ram", "DetachPolicyFromRole", PolicyType="System", PolicyName=READ_POLICY, RoleName=ROLE)
        try:
            self.call("ecs", "DescribeInstances", session, who="the instance's credential", RegionId=self.region)
            say("    UNEXPECTED: still allowed after the policy was detached")
            return 1
        except api.ApiError as exc:
            say(f"    refused at once: {exc.code}. Decided by: {exc.decided or exc.message}")
        self.moment(f"attach {READ_POLICY} again: it takes effect on the next call, with no restart and no new token.")
        self.call("ram", "AttachPolicyToRole", PolicyType="System", PolicyName=READ_POLICY, RoleName=ROLE)
        self.call("ecs", "DescribeInstances", session, who="the instance's credential", RegionId=self.region)
        say("    allowed again: the same token, the same instance, nothing restarted.")

        self.step("10", "Epilogue: DetachInstanceRamRole, and the instance stops serving the role")
        self.moment("a detach reaches the instance as an event; the metadata path answers 404 after it.")
        detached = time.monotonic()
        self.call("ecs", "DetachInstanceRamRole", RegionId=self.region, InstanceIds=json.dumps([instance_id]))
        while (status := read_metadata(url, CREDENTIALS + listing)[0]) == 200:
            if time.monotonic() - detached > 5:
                say("    UNEXPECTED: the role is still served 5 s after the detach")
                return 1
            time.sleep(0.01)
        say(f"    $ curl http://100.100.100.200{CREDENTIALS}{listing}\n    HTTP {status}, "
            f"{(time.monotonic() - detached) * 1000:.0f} ms after the detach was sent")
        self.state(f"instance {instance_id} has no role; its metadata answers {status}")
        say("\nDone: the nine steps, and what each one did on the bus. `ramsim trace --format svg` draws any of these traces.")
        return 0

    def read_credential(self, url: str, role: str) -> dict[str, str]:
        from services.cli.instances import read_metadata

        status, body = read_metadata(url, CREDENTIALS + role)
        if status != 200:
            raise CliError(f"the instance's metadata answered {status} for its credential")
        return json.loads(body)

    def refresh(self, url: str, role: str, instance_id: str, old: dict[str, str]) -> dict[str, str] | None:
        """Wait (time-scaled) for ECS's refresh; the new credential, {} when it is too far off to wait, None on failure."""
        from protocol.times import parse_iso

        expires = parse_iso(old["Expiration"])
        # ECS refreshes refresh_before ahead of expiry; the cluster file does not say how far, so watch for it
        sim_now = self.target.time_origin + (time.time() - self.target.time_origin) * self.scale
        to_expiry = (expires - sim_now) / self.scale
        if to_expiry > MAX_REFRESH_WAIT:
            self.say(f"    at this cluster's time scale ({self.scale:g}) the expiry is {to_expiry:.0f} real seconds away: too long to wait "
                     "here. Start a cluster with `ramsim up --time-scale 300` (the tour's own runs at 300) to watch the refresh.")
            return {}
        self.say(f"    waiting for the refresh (issued {old.get('LastUpdated', '?')}; up to {to_expiry:.1f} real seconds)...")
        mark = self.seen.mark()

        def refreshed(events: list[TraceEvent]) -> bool:
            return any(e.type == "InstanceCredentialsRefreshed" and e.fields.get("InstanceId") == instance_id
                       and e.fields.get("AccessKeyId") != old["AccessKeyId"] for e in events[mark:])

        if not self.seen.wait(refreshed, timeout=to_expiry + 5):
            self.say("    UNEXPECTED: no refresh came before the credential expired")
            return None
        event = next(e for e in self.seen.since(mark) if e.type == "InstanceCredentialsRefreshed"
                     and e.fields.get("InstanceId") == instance_id)
        time.sleep(SETTLE)
        self.show_trace(event.trace_id, f"ECS's timer started a trace of its own ({event.trace_id})")
        new = self.read_credential(url, role)
        deadline = time.monotonic() + 5
        while new["AccessKeyId"] == old["AccessKeyId"] and time.monotonic() < deadline:
            time.sleep(0.01)
            new = self.read_credential(url, role)
        self.say(f"    the metadata now serves {new['AccessKeyId']} (expires {new['Expiration']}); "
                 f"the old {old['AccessKeyId']} expires {old['Expiration']}")
        return new


def masked(document: dict[str, str]) -> dict[str, str]:
    """A credential document with its secrets masked."""
    return {k: (MASK if is_secret(k) else v) for k, v in document.items()}


def _param(name: str, value: str) -> str:
    if is_secret(name):
        return MASK
    text = value if len(value) <= 60 else value[:59] + "…"
    return f"'{text}'" if any(c in text for c in " {\"[") else text


def _session(doc: dict[str, str]) -> api.Credential:
    return api.Credential(doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"])


# -- running it -------------------------------------------------------------------------------
async def _tour(target: cluster.ClusterFile, broker_url: str, auto: bool) -> int:
    from services.runtime.tap import Tap

    seen = Seen()
    async with Tap(broker_url) as tap:
        async def pump() -> None:
            async for event in tap:
                seen.add(event)

        reader = asyncio.get_running_loop().create_task(pump(), name="tour-tap")
        try:
            return await asyncio.to_thread(Tour(target, seen, auto=auto).run)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _private(options: up.Options, auto: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="ramsim-tour-") as state:
        options.state_dir, options.instances, options.cluster_file = Path(state), 0, None
        print("No running cluster found: starting a private one for the tour (Mosquitto + ram, sts, ecs, gateway, oss, metadata), "
              f"at --time-scale {options.time_scale:g}.")
        async with up.running_cluster(options) as running:
            from services.cli import broker

            return await _tour(running.file, running.broker_url(broker.TRACE), auto)


def run(cluster_file: Path | None, options: up.Options, *, auto: bool) -> int:
    path = cluster.locate(str(cluster_file) if cluster_file else None)
    if cluster_file or os.environ.get("RAMSIM_CLUSTER") or demo._alive(path):
        from services.runtime.tap import cluster_url

        target = cluster.load(path)
        if target.broker_url.startswith("memory:"):
            raise CliError("the tour reads the bus of a cluster with a broker; this one runs in memory")
        return asyncio.run(_tour(target, cluster_url(path), auto))
    up.find_mosquitto()  # the tour reads a real broker: UpError (with how to install it) when there is none
    return asyncio.run(_private(options, auto))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tour", help="walk the nine steps one at a time, with the bus messages each causes and the moments that teach",
                       description=_plain(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    up.cluster_options(p)
    p.set_defaults(time_scale=TOUR_TIME_SCALE)
    for action in p._actions:
        if action.dest == "time_scale":
            action.help = f"simulated seconds per real second of the tour's private cluster (default {TOUR_TIME_SCALE:g})"
    p.add_argument("--auto", action="store_true", help="run straight through (default: Enter after each step)")
    p.add_argument("--cluster-file", type=Path, default=None,
                   help="tour this running cluster (default: $RAMSIM_CLUSTER, or .ramsim/cluster.json if its cluster is alive, "
                        "else start a private one at --time-scale 300)")


def main(args: Any) -> int:
    logs.configure(level="warning")
    auto = args.auto or not sys.stdin.isatty()
    return run(args.cluster_file, up.options(args, progress=False), auto=auto)


def _plain(doc: str | None) -> str:
    """The module's docstring, after its first line, as --help prints it (no reST markup)."""
    text = (doc or "").split("\n", 2)[-1]
    return re.sub(r":(?:mod|func|class):`~?([^`]*)`", r"\1", text).replace("``", "")
