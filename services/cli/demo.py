"""I/O shell: ``ramsim demo``: the seed's nine steps against a real cluster, narrated.

With no running cluster it starts a private one (in a temporary state directory) and stops it
at the end, so ``ramsim demo`` alone is a complete tour. Without Mosquitto (or with
``--embedded``) that private cluster runs inside this process on the in-memory bus.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from services.cli import api, cluster, up
from services.cli.embedded import embedded_cluster
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime import logs

ROLE = "MyApplicationRole"
PASS_ROLE_POLICY = "PassMyApplicationRole"
OSS_POLICY = "AliyunOSSFullAccess"


def run(cluster_file: Path | None, options: up.Options, *, embedded: bool = False) -> int:
    """Walk the steps against ``cluster_file``'s cluster, a live default one, or a private one:
    real processes over Mosquitto when it is installed, else everything in this process."""
    path = cluster.locate(str(cluster_file) if cluster_file else None)
    if cluster_file or os.environ.get("RAMSIM_CLUSTER") or _alive(path):
        target = cluster.load(path)
        return walk(target, print)
    if not embedded:
        try:
            up.find_mosquitto()
        except up.UpError:
            print("Mosquitto is not installed, so the demo runs every service inside this process over the "
                  "in-memory bus (install mosquitto to see them as separate processes).")
            embedded = True
    return asyncio.run(_in_memory(options) if embedded else _private(options))


def _alive(path: Path) -> bool:
    try:
        os.kill(cluster.load(path).pid, 0)
        return True
    except (cluster.NoCluster, ProcessLookupError, PermissionError):
        return False


async def _in_memory(options: up.Options) -> int:
    async with embedded_cluster(time_scale=options.time_scale, credential_lifetime=options.credential_lifetime,
                                refresh_before=options.refresh_before) as target:
        return await asyncio.to_thread(walk, target, print)


async def _private(options: up.Options) -> int:
    with tempfile.TemporaryDirectory(prefix="ramsim-demo-") as state:
        options.state_dir, options.instances, options.cluster_file = Path(state), 0, None
        print("No running cluster found: starting a private one for the demo (Mosquitto + ram, sts, ecs, gateway, metadata).")
        async with up.running_cluster(options) as running:
            return await asyncio.to_thread(walk, running.file, print)


def ensure(call: Callable[..., Any], say: Callable[[str], None], product: str, action: str, **params: str) -> None:
    """``call(product, action, **params)``, where an entity an earlier run made is fine: reused, and said so."""
    try:
        call(product, action, **params)
    except api.ApiError as exc:
        if not exc.code.startswith("EntityAlreadyExists"):
            raise
        say(f"    ({exc.code}: already there from an earlier run, reusing it)")


class Steps:
    def __init__(self, target: cluster.ClusterFile, say: Callable[[str], None]) -> None:
        self.target = target
        self.say = say
        self.root = api.Credential(target.access_key_id, target.access_key_secret)

    def call(self, product: str, action: str, credential: api.Credential | None = None, **params: str) -> dict[str, Any]:
        return api.call(self.target.gateway_url, product, action, params, credential or self.root)

    def ensure(self, product: str, action: str, **params: str) -> None:
        ensure(self.call, self.say, product, action, **params)

    def step(self, n: int, text: str) -> None:
        self.say(f"\n[{n}] {text}")


def _oss(target: cluster.ClusterFile, token: dict[str, str], bucket_name: str, s: Steps, say: Callable[[str], None]) -> bool:
    """Step 9 in OSS: put and get an object with the role's token (oss2, signature V1), then
    detach the OSS policy and attach it again, timing how long each takes to apply."""
    import oss2

    bucket = oss2.Bucket(oss2.StsAuth(token["AccessKeyId"], token["AccessKeySecret"], token["SecurityToken"]),
                         target.oss_url, bucket_name, connect_timeout=5)
    bucket.create_bucket()
    bucket.put_object("hello.txt", b"hello from the instance")
    body = bucket.get_object("hello.txt").read().decode()
    say(f"    oss PutBucket {bucket_name}, PutObject hello.txt, GetObject hello.txt -> {body!r} ({OSS_POLICY})")

    def allowed() -> bool:
        try:
            bucket.put_object("hello.txt", b"hello again")
            return True
        except oss2.exceptions.AccessDenied:
            return False

    for action, want in (("DetachPolicyFromRole", False), ("AttachPolicyToRole", True)):
        sent = time.monotonic()
        s.call("ram", action, PolicyType="System", PolicyName=OSS_POLICY, RoleName=ROLE)
        while allowed() != want:
            if time.monotonic() - sent > 1.0:
                say(f"    UNEXPECTED: OSS PutObject still {'denied' if want else 'allowed'} 1 s after {action}")
                return False
        took = (time.monotonic() - sent) * 1000
        if want:
            say(f"    {OSS_POLICY} attached again -> oss PutObject allowed, {took:.0f} ms after the attach was sent")
        else:
            say(f"    {OSS_POLICY} detached -> oss PutObject refused (AccessDenied), {took:.0f} ms after the detach was sent")
    return True


def walk(target: cluster.ClusterFile, say: Callable[[str], None]) -> int:
    from services.cli.instances import instances, read_metadata

    s = Steps(target, say)
    region = target.region_id
    run_id = os.urandom(2).hex()

    s.step(1, f"The enterprise creates RAM role {ROLE}, trusting the ECS service (ecs.aliyuncs.com).")
    s.ensure("ram", "CreateRole", RoleName=ROLE, AssumeRolePolicyDocument=ECS_TRUST_POLICY,
             Description="Role for applications on ECS instances")
    say(f"    trust policy: {ECS_TRUST_POLICY}")

    s.step(2, "It attaches the policies the applications need to the role (here: AliyunECSReadOnlyAccess and AliyunOSSFullAccess).")
    for policy in ("AliyunECSReadOnlyAccess", OSS_POLICY):
        s.ensure("ram", "AttachPolicyToRole", PolicyType="System", PolicyName=policy, RoleName=ROLE)
    attached = s.call("ram", "ListPoliciesForRole", RoleName=ROLE)["Policies"]["Policy"]
    say("    role policies: " + ", ".join(p["PolicyName"] for p in attached))

    admin, intern = f"ecs-admin-{run_id}", f"ecs-intern-{run_id}"
    s.step(3, f"Using the account, it creates RAM users {admin} (will run instances) and {intern} (for contrast).")
    keys = {}
    for user in (admin, intern):
        s.call("ram", "CreateUser", UserName=user)
        key = s.call("ram", "CreateAccessKey", UserName=user)["AccessKey"]
        keys[user] = api.Credential(key["AccessKeyId"], key["AccessKeySecret"])
        say(f"    {user}: AccessKeyId {key['AccessKeyId']}")

    s.step(4, f"It lets {admin} manage ECS and pass the role (ram:PassRole on acs:ram:*:*:role/{ROLE}); {intern} only manages ECS.")
    pass_role = json.dumps({"Statement": [{"Effect": "Allow", "Action": "ram:PassRole",
                                           "Resource": f"acs:ram:*:*:role/{ROLE}"}], "Version": "1"})
    s.ensure("ram", "CreatePolicy", PolicyName=PASS_ROLE_POLICY, PolicyDocument=pass_role)
    for user in (admin, intern):
        s.call("ram", "AttachPolicyToUser", PolicyType="System", PolicyName="AliyunECSFullAccess", UserName=user)
    s.call("ram", "AttachPolicyToUser", PolicyType="Custom", PolicyName=PASS_ROLE_POLICY, UserName=admin)
    say(f"    {PASS_ROLE_POLICY}: {pass_role}")

    s.step(5, f"{admin} starts an ECS instance with the role (RunInstances --RamRoleName {ROLE}).")
    try:
        s.call("ecs", "RunInstances", keys[intern], RegionId=region, RamRoleName=ROLE)
        say(f"    UNEXPECTED: {intern} was allowed to pass the role")
        return 1
    except api.ApiError as exc:
        say(f"    {intern} tries first and is refused: {exc.code} ({exc.message})")
    started = time.monotonic()
    instance_id = s.call("ecs", "RunInstances", keys[admin], RegionId=region, RamRoleName=ROLE)["InstanceIdSets"]["InstanceIdSet"][0]
    say(f"    {admin} succeeds: instance {instance_id}")

    s.step(6, "ECS calls STS AssumeRole for the role, as the ECS service principal; STS checks the trust policy.")
    s.step(7, "STS returns the STS token to ECS, which pushes it to the instance's metadata agent as a bus event.")
    url = ""
    while not url or read_metadata(url, "/latest/meta-data/ram/security-credentials/")[0] != 200:
        if time.monotonic() - started > 20:
            say("    the credential did not reach the instance in 20 s")
            return 1
        time.sleep(0.02)
        url = next((i["MetadataUrl"] for i in instances(target) if i["InstanceId"] == instance_id), "")
    say(f"    serving after {(time.monotonic() - started) * 1000:.0f} ms; instance metadata view: {url}")
    roles = s.call("ecs", "DescribeInstanceRamRole", RegionId=region, InstanceIds=json.dumps([instance_id]))
    say(f"    DescribeInstanceRamRole: {roles['InstanceRamRoleSets']['InstanceRamRoleSet']}")

    s.step(8, "The application reads the token from instance metadata:")
    _, listing = read_metadata(url, "/latest/meta-data/ram/security-credentials/")
    say(f"    $ curl http://100.100.100.200/latest/meta-data/ram/security-credentials/\n    {listing}")
    _, document = read_metadata(url, f"/latest/meta-data/ram/security-credentials/{listing}")
    say(f"    $ curl http://100.100.100.200/latest/meta-data/ram/security-credentials/{listing}")
    say("    " + document.replace("\n", "\n    "))
    token = json.loads(document)
    session = api.Credential(token["AccessKeyId"], token["AccessKeySecret"], token["SecurityToken"])

    s.step(9, "The application calls Alibaba Cloud APIs with the STS token.")
    who = s.call("sts", "GetCallerIdentity", session)
    say(f"    sts GetCallerIdentity -> {who['Arn']} ({who['IdentityType']})")
    listed = s.call("ecs", "DescribeInstances", session, RegionId=region)
    say(f"    ecs DescribeInstances -> {listed['TotalCount']} instance(s), allowed by AliyunECSReadOnlyAccess")
    s.call("ram", "DetachPolicyFromRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName=ROLE)
    try:
        s.call("ecs", "DescribeInstances", session, RegionId=region)
        say("    UNEXPECTED: still allowed after the policy was detached")
        return 1
    except api.ApiError as exc:
        say(f"    policy detached from the role -> the same token is refused at once: {exc.code}")
    s.call("ram", "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName=ROLE)
    s.call("ecs", "DescribeInstances", session, RegionId=region)
    say("    policy attached again -> allowed again, with no restart and no new token")
    if target.oss_url:
        if not _oss(target, token, f"ramsim-demo-{run_id}", s, say):
            return 1
    else:
        say("    (this cluster runs no OSS: the cluster file has no OssUrl)")

    s.step(10, "Epilogue: DetachInstanceRamRole; the instance stops serving the role.")
    detached = time.monotonic()
    s.call("ecs", "DetachInstanceRamRole", RegionId=region, InstanceIds=json.dumps([instance_id]))
    while (status := read_metadata(url, "/latest/meta-data/ram/security-credentials/")[0]) == 200:
        if time.monotonic() - detached > 5:
            say("    UNEXPECTED: the role is still served 5 s after the detach")
            return 1
        time.sleep(0.01)
    say(f"    GET /latest/meta-data/ram/security-credentials/ -> HTTP {status}, "
        f"{(time.monotonic() - detached) * 1000:.0f} ms after the detach was sent")
    where = ("inside this process, over the in-memory bus" if target.broker_url.startswith("memory:")
             else f"against separate service processes over Mosquitto at {target.broker_url.split('@')[-1]}")
    say(f"\nDone: all nine steps ran {where}.")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", description="Walk the nine steps of 'RAM role for ECS instances' against a running cluster, "
                                           "or against a private one started for the demo when none is running.")
    up.cluster_options(p)
    p.add_argument("--cluster-file", type=Path, default=None,
                   help="use this running cluster (default: $RAMSIM_CLUSTER, or .ramsim/cluster.json if its cluster is alive, else start one)")
    p.add_argument("--embedded", action="store_true",
                   help="run the private cluster inside this process on the in-memory bus (the default when Mosquitto is missing)")


def main(args: Any) -> int:
    logs.configure(level="warning")  # this process's own bus client: only problems
    return run(args.cluster_file, up.options(args, progress=True), embedded=args.embedded)
