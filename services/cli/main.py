"""I/O shell: the ``ramsim`` command line.

    ramsim up        start (or resume) a cluster (private Mosquitto + every service, supervised) and run until Ctrl-C
    ramsim demo      walk the seed's nine steps (starts its own cluster if none is running)
    ramsim instances list instances and the URL of each one's metadata view
    ramsim metadata  read what an instance sees at http://100.100.100.200<path>
    ramsim app       run an application on an instance: OSS calls with its role's credentials, measured
    ramsim check     check a recorded fault-run history (JSON lines) against the durability invariants
    ramsim soak      random faults (kill -9, broker restarts, pauses) for minutes, then the invariant checker
    ramsim ram|ecs|sts <Action> --Param value ...   call an API, like Alibaba's aliyun CLI
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence


from services.cli import api, app, cluster, demo, up
from services.faults import history as fault_history, invariants, soak
from services.runtime import logs
from services.gateway.core import PRODUCTS, VERSIONS

EPILOG = """examples:
  ramsim up --instances 2 --time-scale 60
  ramsim up --state-dir ~/ramsim            # again later: resumes that cluster; --reset starts a new one
  ramsim ram CreateRole --RoleName MyApplicationRole --AssumeRolePolicyDocument "$(cat trust.json)"
  ramsim ecs AttachInstanceRamRole --RegionId cn-hangzhou --RamRoleName MyApplicationRole --InstanceIds '["i-..."]'
  ramsim metadata i-... /latest/meta-data/ram/security-credentials/
  ramsim app i-... --rate 20 --duration 30
  ramsim check run.jsonl --detach-bound 1 --grace 5
  ramsim soak --minutes 10 --seed 7
The cluster is found with --cluster-file, else $RAMSIM_CLUSTER, else .ramsim/cluster.json."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ramsim", description="A working simulation of Alibaba Cloud RAM roles for ECS instances.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("up", help="start (or resume) a cluster and run until Ctrl-C",
                       description="Start a private Mosquitto on a loopback port and every service (ram, sts, ecs, gateway, "
                                   "oss, one metadata agent per host) as its own process; wait until all answer; write the "
                                   "cluster file; run until Ctrl-C or SIGTERM, then stop everything. A process that exits "
                                   "meanwhile is restarted (backoff 0.2 s doubling to 10 s); more than 5 exits of one "
                                   "within 60 s is a crash loop that stops the cluster (exit status 1). A --state-dir a "
                                   "previous `ramsim up` used is resumed: same account, root AccessKey, keys and (when "
                                   "free) ports, from its keys.json (at a --time-scale no smaller than before: simulated time "
                                   "never runs backwards); --reset starts a new cluster there instead.")
    _cluster_options(p)
    p.add_argument("--cluster-file", type=Path, default=None, help="where to write the cluster file (default <state-dir>/cluster.json)")
    p.add_argument("--instances", type=int, default=1, help="instances to launch at start, without a role (default 1)")
    p.add_argument("--hosts", type=int, default=1, help="simulated hosts, one metadata agent each (default 1)")
    p.add_argument("--state-dir", type=Path, default=Path(cluster.DEFAULT_STATE_DIR),
                   help="the cluster's state (keys.json with its secrets, 0600; each service's <node>.db; OSS objects), logs "
                        "and generated config; one running cluster per directory (default .ramsim)")
    p.add_argument("--reset", action="store_true",
                   help="delete the previous cluster's state in --state-dir (keys.json, the services' databases, OSS "
                        "objects; logs stay) and start a new cluster, with a new account")
    p.add_argument("--log-format", choices=("json", "console"), default="json", help="service log format (default json)")
    p.add_argument("--metadata-mode", choices=("port", "netns"), default="port",
                   help="port: each instance's metadata view is a loopback port (default); netns: each instance is a "
                        "network namespace (rsi-<id>) where http://100.100.100.200 answers by source address, so an "
                        "unmodified SDK needs no proxy: `ip netns exec rsi-<id> <app>` (needs root and iproute2)")

    p = sub.add_parser("demo", help="walk the seed's nine steps, narrated",
                       description="Walk the nine steps of 'RAM role for ECS instances' against a running cluster, "
                                   "or against a private one started for the demo when none is running.")
    _cluster_options(p)
    p.add_argument("--cluster-file", type=Path, default=None,
                   help="use this running cluster (default: $RAMSIM_CLUSTER, or .ramsim/cluster.json if its cluster is alive, else start one)")
    p.add_argument("--embedded", action="store_true",
                   help="run the private cluster inside this process on the in-memory bus (the default when Mosquitto is missing)")

    p = sub.add_parser("instances", help="list instances and their metadata view URLs")
    p.add_argument("--cluster-file", help="cluster file (default: $RAMSIM_CLUSTER or .ramsim/cluster.json)")

    p = sub.add_parser("metadata", help="GET a metadata path as an instance sees it")
    p.add_argument("instance_id", metavar="InstanceId")
    p.add_argument("path", help="e.g. /latest/meta-data/ram/security-credentials/")
    p.add_argument("--token", help="send this hardened-mode token (X-aliyun-ecs-metadata-token)")
    p.add_argument("--cluster-file", help="cluster file (default: $RAMSIM_CLUSTER or .ramsim/cluster.json)")

    app.add_parser(sub)
    soak.add_parser(sub)

    bounds = invariants.Bounds()
    p = sub.add_parser("check", help="check a recorded history against the durability invariants",
                       description="Check the history of a run (JSON lines, as services.faults.recorder.Recorder writes\n"
                                   "it) against the invariants of the durability issue. Prints, per invariant, how many\n"
                                   "records were checked, skipped (during a fault, not covered by probes) and violated,\n"
                                   "then each violation with its evidence. Exit status 0 when nothing is violated, 1 on\n"
                                   "any violation, 2 when the file cannot be read.",
                       epilog="invariants:\n" + "\n".join(
                           f"  {rule.__name__:28} {(rule.__doc__ or '').strip().splitlines()[0]}" for rule in invariants.INVARIANTS)
                       + "\n\nA fault window on a node of a path (or on the instance's metadata agent) makes what\n"
                         "happens from its start until --grace seconds after its end unhealthy for that path:\n"
                         "the expiry checks (credential path) and detach checks (control path) skip it.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("history", metavar="HISTORY.jsonl", type=Path, help="the recorded history")
    p.add_argument("--detach-bound", type=float, default=bounds.detach_bound, metavar="S",
                   help=f"seconds after DetachInstanceRamRole returns by which the role must be gone (default {bounds.detach_bound:g})")
    p.add_argument("--refresh-margin", type=float, default=bounds.refresh_margin, metavar="S",
                   help=f"seconds before expiry by which a fresh credential must be served (default {bounds.refresh_margin:g})")
    p.add_argument("--grace", type=float, default=bounds.grace, metavar="S",
                   help=f"recovery seconds after a fault window ends before records count again (default {bounds.grace:g})")
    p.add_argument("--credential-path", default=",".join(bounds.credential_path), metavar="NODES",
                   help="nodes issuing a credential needs; their faults excuse the expiry checks (default %(default)s)")
    p.add_argument("--control-path", default=",".join(bounds.control_path), metavar="NODES",
                   help="nodes carrying a detach to an instance; their faults excuse the detach checks (default %(default)s)")
    p.add_argument("--reply-path", default=",".join(bounds.reply_path), metavar="NODES",
                   help="nodes holding a caller's connection; their faults excuse a missing reply (default %(default)s)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format (default table)")

    for product in sorted(VERSIONS):
        actions = sorted(next(cmds for _, (name, cmds) in PRODUCTS.items() if name == product))
        p = sub.add_parser(product, help=f"call {product.upper()} API version {VERSIONS[product]}",
                           description=f"Call an {product.upper()} action. Actions: {', '.join(actions)}.\n"
                                       f"Parameters are given as --Name value, spelled as in Alibaba's API.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("action", metavar="Action", nargs="?", help="API action, e.g. " + actions[0])
        p.add_argument("--cluster-file", help="cluster file (default: $RAMSIM_CLUSTER or .ramsim/cluster.json)")
        p.add_argument("--access-key-id", help="act as this AccessKey (default: the account root)")
        p.add_argument("--access-key-secret", help="secret of --access-key-id")
        p.add_argument("--security-token", help="STS SecurityToken, with an STS. AccessKeyId")
    return parser


def _cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second (default 1)")
    p.add_argument("--credential-lifetime", type=int, default=3600, help="seconds an instance credential lasts (default 3600)")
    p.add_argument("--refresh-before", type=int, default=1800, help="seconds before expiry that ECS refreshes it (default 1800)")


def _params(extra: Sequence[str]) -> dict[str, str]:
    """``--Name value`` / ``--Name=value`` pairs, as the aliyun CLI takes them."""
    params: dict[str, str] = {}
    items = list(extra)
    while items:
        token = items.pop(0)
        if not token.startswith("--") or len(token) < 3:
            raise SystemExit(f"ramsim: expected --ParameterName value, got {token!r}")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if not items:
                raise SystemExit(f"ramsim: --{name} needs a value")
            value = items.pop(0)
        params[name] = value
    return params


def _fail(code: str, message: str, status: int | None = None) -> int:
    print(f"ERROR: {code}: {message}" + (f" (HTTP {status})" if status else ""), file=sys.stderr)
    return 1


def _product(args: argparse.Namespace, extra: Sequence[str], parser: argparse.ArgumentParser) -> int:
    if not args.action:
        parser.parse_args([args.command, "--help"])
        return 2
    target = cluster.load(cluster.locate(args.cluster_file))
    if bool(args.access_key_id) != bool(args.access_key_secret):
        return _fail("MissingParameter", "give both --access-key-id and --access-key-secret")
    credential = api.Credential(args.access_key_id, args.access_key_secret, args.security_token or "") if args.access_key_id \
        else api.Credential(target.access_key_id, target.access_key_secret)
    try:
        answer = api.call(target.gateway_url, args.command, args.action, _params(extra), credential)
    except api.ApiError as exc:
        print(json.dumps(exc.body, indent=2), file=sys.stderr)
        return _fail(exc.code, exc.message, exc.status)
    except urllib.error.URLError as exc:
        return _fail("ServiceUnavailable", f"cannot reach the gateway at {target.gateway_url}: {exc.reason}; is `ramsim up` running?")
    print(json.dumps(answer, indent=2))
    return 0


def instances(target: cluster.ClusterFile) -> list[dict[str, str]]:
    root = api.Credential(target.access_key_id, target.access_key_secret)
    endpoints = api.call(target.gateway_url, "ecs", "DescribeInstanceMetadataEndpoints", {}, root)["Endpoints"]
    urls = {e["InstanceId"]: e for e in endpoints}
    described = api.call(target.gateway_url, "ecs", "DescribeInstances", {"RegionId": target.region_id, "PageSize": "100"}, root)
    return [{"InstanceId": i["InstanceId"], "Status": i["Status"], "HostId": urls.get(i["InstanceId"], {}).get("HostId", ""),
             "MetadataUrl": urls.get(i["InstanceId"], {}).get("Url", "")} for i in described["Instances"]["Instance"]]


# Run inside an instance's namespace (namespace mode): GET http://100.100.100.200<path>, as the instance.
_IN_NAMESPACE = """
import sys, urllib.error, urllib.request
request = urllib.request.Request("http://100.100.100.200" + sys.argv[1])
if sys.argv[2]:
    request.add_header("X-aliyun-ecs-metadata-token", sys.argv[2])
try:
    answer = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5)
    status, body = answer.status, answer.read()
except urllib.error.HTTPError as exc:
    status, body = exc.code, exc.read()
sys.stdout.write(str(status) + "\\n" + body.decode())
"""


def read_metadata(url: str, path: str, token: str | None = None) -> tuple[int, str]:
    """GET ``path`` from an instance's metadata view; (status, body). A ``netns:<namespace>``
    endpoint (namespace mode) is read from inside that namespace, at the real address."""
    if url.startswith("netns:"):
        done = subprocess.run(["ip", "netns", "exec", url.removeprefix("netns:"), sys.executable, "-c", _IN_NAMESPACE,
                               "/" + path.lstrip("/"), token or ""], capture_output=True, text=True, timeout=30)
        status, _, body = done.stdout.partition("\n")
        return (int(status), body) if status.isdigit() else (502, done.stderr.strip() or "no answer from the namespace")
    request = urllib.request.Request(url.rstrip("/") + "/" + path.lstrip("/"))
    if token:
        request.add_header("X-aliyun-ecs-metadata-token", token)
    try:
        with api.opener.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _metadata(args: argparse.Namespace) -> int:
    target = cluster.load(cluster.locate(args.cluster_file))
    url = next((i["MetadataUrl"] for i in instances(target) if i["InstanceId"] == args.instance_id), "")
    if not url:
        return _fail("InvalidInstanceId.NotFound", f"no running instance {args.instance_id}; see `ramsim instances`")
    status, body = read_metadata(url, args.path, args.token)
    if status != 200:
        return _fail(str(status), body.strip() or "metadata request failed", status)
    sys.stdout.write(body + ("\n" if sys.stdout.isatty() else ""))
    return 0


def _check(args: argparse.Namespace) -> int:
    """``ramsim check``: 0 when every invariant holds, 1 on any violation, 2 when unreadable."""
    try:
        history = fault_history.decode_jsonl(args.history.read_bytes())
    except (OSError, fault_history.HistoryError) as exc:
        print(f"ramsim check: cannot read {args.history}: {exc}", file=sys.stderr)
        return 2
    nodes = lambda text: tuple(n.strip() for n in text.split(",") if n.strip())  # noqa: E731
    bounds = invariants.Bounds(detach_bound=args.detach_bound, refresh_margin=args.refresh_margin, grace=args.grace,
                               credential_path=nodes(args.credential_path), control_path=nodes(args.control_path),
                               reply_path=nodes(args.reply_path))
    report = invariants.check(history, bounds)
    if args.output == "json":
        import msgspec

        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    else:
        print(f"{args.history}: {len(history)} records")
        print(report.table())
    return 0 if report.ok else 1


def _options(args: argparse.Namespace, progress: bool) -> up.Options:
    return up.Options(state_dir=getattr(args, "state_dir", None) or Path(cluster.DEFAULT_STATE_DIR),
                      cluster_file=args.cluster_file, instances=getattr(args, "instances", 0),
                      hosts=getattr(args, "hosts", 1), time_scale=args.time_scale,
                      credential_lifetime=args.credential_lifetime, refresh_before=args.refresh_before,
                      log_format=getattr(args, "log_format", "json"), reset=getattr(args, "reset", False),
                      metadata_mode=getattr(args, "metadata_mode", "port"),
                      progress=(lambda line: print(f"[ramsim] {line}", file=sys.stderr, flush=True)) if progress else (lambda line: None))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    logs.configure(level="warning")  # this process's own bus client: only problems
    if args.command not in VERSIONS and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "up":
            return asyncio.run(up.up(_options(args, progress=True)))
        if args.command == "demo":
            return demo.run(args.cluster_file, _options(args, progress=True), embedded=args.embedded)
        if args.command == "instances":
            print(json.dumps(instances(cluster.load(cluster.locate(args.cluster_file))), indent=2))
            return 0
        if args.command == "metadata":
            return _metadata(args)
        if args.command == "app":
            return app.main(args)
        if args.command == "check":
            return _check(args)
        if args.command == "soak":
            return soak.main(args)
        if args.command in VERSIONS:
            return _product(args, extra, parser)
    except (cluster.NoCluster, up.UpError) as exc:
        print(f"ramsim: {exc}", file=sys.stderr)
        return 2
    except api.ApiError as exc:
        return _fail(exc.code, exc.message, exc.status)
    except KeyboardInterrupt:
        return 130
    parser.print_help()
    return 2


def entry() -> None:
    sys.exit(main())


