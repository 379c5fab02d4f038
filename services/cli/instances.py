"""I/O shell: ``ramsim instances`` and ``ramsim metadata``: the instances of a running cluster,
and what one of them reads at ``http://100.100.100.200``."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from services.cli import api, cluster

CLUSTER_FILE_HELP = "cluster file (default: $RAMSIM_CLUSTER or .ramsim/cluster.json)"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("instances", description="List the cluster's instances: InstanceId, Status, HostId and the URL "
                                                "(or netns:<namespace>) of each one's metadata view, as JSON.")
    p.add_argument("--cluster-file", help=CLUSTER_FILE_HELP)
    p = sub.add_parser("metadata", description="GET a path of the instance metadata service as that instance sees it at "
                                               "http://100.100.100.200 (its own view: its role's credentials, its identity).")
    p.add_argument("instance_id", metavar="InstanceId")
    p.add_argument("path", help="e.g. /latest/meta-data/ram/security-credentials/")
    p.add_argument("--token", help="send this hardened-mode token (X-aliyun-ecs-metadata-token)")
    p.add_argument("--cluster-file", help=CLUSTER_FILE_HELP)


def main(args: Any) -> int:
    target = cluster.load(cluster.locate(args.cluster_file))
    if args.command == "instances":
        print(json.dumps(instances(target), indent=2))
        return 0
    url = next((i["MetadataUrl"] for i in instances(target) if i["InstanceId"] == args.instance_id), "")
    if not url:
        raise api.ApiError(0, "InvalidInstanceId.NotFound", f"no running instance {args.instance_id}; see `ramsim instances`", {})
    status, body = read_metadata(url, args.path, args.token)
    if status != 200:
        raise api.ApiError(status, str(status), body.strip() or "metadata request failed", {})
    sys.stdout.write(body + ("\n" if sys.stdout.isatty() else ""))
    return 0


def instances(target: cluster.ClusterFile) -> list[dict[str, str]]:
    """Every instance (all pages of DescribeInstances) with its metadata endpoint."""
    root = api.Credential(target.access_key_id, target.access_key_secret)
    found: list[dict[str, str]] = []
    for number in range(1, 1 << 20):
        page = api.call(target.gateway_url, "ecs", "DescribeInstances",
                        {"RegionId": target.region_id, "PageSize": "100", "PageNumber": str(number)}, root)
        listed = page.get("Instances", {}).get("Instance", [])
        # the page's endpoints only: every endpoint of thousands of instances is more than one bus message carries
        ids = json.dumps([i["InstanceId"] for i in listed])
        endpoints = api.call(target.gateway_url, "ecs", "DescribeInstanceMetadataEndpoints", {"InstanceIds": ids}, root) if listed else {}
        urls = {e["InstanceId"]: e for e in endpoints.get("Endpoints", [])}
        found += [{"InstanceId": i["InstanceId"], "Status": i["Status"], "HostId": urls.get(i["InstanceId"], {}).get("HostId", ""),
                   "MetadataUrl": urls.get(i["InstanceId"], {}).get("Url", "")} for i in listed]
        if not listed or len(found) >= page.get("TotalCount", 0):
            return found
    return found


def metadata_endpoints(gateway_url: str, credential: api.Credential, timeout: float = 15.0) -> list[dict[str, str]]:
    """Every page of DescribeInstanceMetadataEndpoints (1,000 endpoints a page)."""
    found: list[dict[str, str]] = []
    token = ""
    while True:
        page = api.call(gateway_url, "ecs", "DescribeInstanceMetadataEndpoints", {"NextToken": token} if token else {},
                        credential, timeout=timeout)
        found += page.get("Endpoints", [])
        token = page.get("NextToken", "")
        if not token:
            return found


def split_user(url: str) -> tuple[str, str]:
    """(the URL without its user name, the user name): a shared-mode view's URL
    ``http://<InstanceId>:@127.0.0.1:PORT`` names its instance as the user."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username:
        return url, ""
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), urllib.parse.unquote(parts.username)


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
    if url.startswith("address:"):  # address mode (compose.yaml): only that instance's own address gets its view
        raise api.Unreachable(f"{url}: only the instance at {url.removeprefix('address:')} reads this view; ask from inside it "
                              f"(docker compose exec instance-N python3 -c ...), see deploy/README.md")
    base, user = split_user(url)
    request = urllib.request.Request(base.rstrip("/") + "/" + path.lstrip("/"))
    if user:  # a shared-mode view: the instance is the user name, sent as curl and requests send it
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:".encode()).decode())
    if token:
        request.add_header("X-aliyun-ecs-metadata-token", token)
    try:
        with api.opener.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise api.Unreachable(f"the metadata view at {url} does not answer: {getattr(exc, 'reason', exc)}") from None
