"""I/O shell: ``ramsim ram|ecs|sts <Action> --Param value ...``: one signed API call through the
gateway, shaped like Alibaba's ``aliyun`` CLI; the answer's JSON on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from protocol.products import VERSIONS
from services.cli import api, cluster
from services.cli.errors import CliError


def add_parser(sub: Any) -> None:
    from services.gateway.core import COMMANDS  # the action lists: only for this command's --help

    for product, version in sorted(VERSIONS.items()):
        actions = sorted(COMMANDS[product])
        p = sub.add_parser(product, description=f"Call an {product.upper()} action (API version {version}) through the "
                                                f"cluster's gateway, signed as the account root or as --access-key-id.\n"
                                                f"Parameters are given as --Name value, spelled as in Alibaba's API.\n\n"
                                                f"actions: {', '.join(actions)}",
                           epilog=f"example: ramsim {product} {actions[0]} --Name value    (errors: `ERROR: Code: Message`, exit 1)",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("action", metavar="Action", nargs="?", help="API action, e.g. " + actions[0])
        p.add_argument("--cluster-file", help="cluster file (default: $RAMSIM_CLUSTER or .ramsim/cluster.json)")
        p.add_argument("--access-key-id", help="act as this AccessKey (default: the account root)")
        p.add_argument("--access-key-secret", help="secret of --access-key-id")
        p.add_argument("--security-token", help="STS SecurityToken, with an STS. AccessKeyId")


def params(extra: Sequence[str]) -> dict[str, str]:
    """``--Name value`` / ``--Name=value`` pairs, as the aliyun CLI takes them."""
    found: dict[str, str] = {}
    items = list(extra)
    while items:
        token = items.pop(0)
        if not token.startswith("--") or len(token) < 3:
            raise CliError(f"expected --ParameterName value, got {token!r}")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if not items:
                raise CliError(f"--{name} needs a value")
            value = items.pop(0)
        found[name] = value
    return found


def main(args: argparse.Namespace) -> int:
    if not args.action:
        raise CliError(f"name an action: `ramsim {args.command} --help` lists them")
    if bool(args.access_key_id) != bool(args.access_key_secret):
        raise CliError("give both --access-key-id and --access-key-secret")
    request = params(args.extra)
    target = cluster.load(cluster.locate(args.cluster_file))
    credential = api.Credential(args.access_key_id, args.access_key_secret, args.security_token or "") if args.access_key_id \
        else api.Credential(target.access_key_id, target.access_key_secret)
    try:
        answer = api.call(target.gateway_url, args.command, args.action, request, credential)
    except api.ApiError as exc:
        print(json.dumps(exc.body, indent=2), file=sys.stderr)
        raise
    print(json.dumps(answer, indent=2))
    return 0
