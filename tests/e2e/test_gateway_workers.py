"""Gateway workers: ``ramsim up --gateway-workers N`` runs the gateway as N processes, ``gateway-1`` …
``gateway-N``, each its own broker identity, all node ``gateway``, all listening on the one gateway
port (SO_REUSEPORT: the kernel spreads connections between them). Real processes, a real Mosquitto,
real HTTP, signed calls.

Each worker logs ``request_served`` for every call it answers, in its own log: signed calls are
all answered and both workers answered some. Every worker hears every reply addressed to node
``gateway`` and takes only its own, so no worker logs a ``reply_unexpected``. A request replayed
is refused whichever worker it reaches (the nonce file is shared). A worker killed -9 leaves the
calls to the other (a connection the dead one had accepted is reset: the client asks again, as a
real client's retry would); the supervisor restarts it and it serves again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.cli import api, broker
from services.cli.up import Cluster
from tests.e2e.conftest import alive, wait_until

WORKERS = 2
CALLS = 40


def served(cluster: Cluster, name: str) -> int:
    """How many API calls worker ``name`` answered, by its log."""
    log = Path(cluster.file.state_dir) / "logs" / f"{name}.log"
    return sum(1 for line in log.read_text().splitlines() if '"request_served"' in line)


def call(cluster: Cluster, k: int, retries: list[int]) -> None:
    """One signed call (STS or RAM, by ``k``), asked again only when the gateway could not be reached."""
    for attempt in range(4):
        try:
            if k % 2:
                assert cluster.call("sts", "GetCallerIdentity")["AccountId"] == cluster.file.account_id
            else:
                assert "Users" in cluster.call("ram", "ListUsers")
            return
        except api.Unreachable:
            retries.append(k)
            if attempt == 3:
                raise
            time.sleep(0.1)


def replayed(cluster: Cluster, times: int) -> list[int]:
    """The HTTP statuses of one signed request sent ``times`` times, each on its own connection."""
    url = f"{cluster.file.gateway_url}/?{api.signed_query('sts', 'GetCallerIdentity', {}, cluster.credential)}"
    statuses = []
    for _ in range(times):
        request = urllib.request.Request(url, data=b"", method="POST", headers={"Accept": "application/json"})
        try:
            with api.opener.open(request, timeout=15) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as exc:
            assert json.loads(exc.read())["Code"] == "SignatureNonceUsed"
            statuses.append(exc.code)
    return statuses


async def test_gateway_workers_share_the_port_and_a_killed_one_is_restarted(make_cluster, broker_options) -> None:  # noqa: ANN001
    if broker_options.get("broker"):
        pytest.skip("--gateway-workers needs shared subscriptions, which RabbitMQ 3.10 lacks (ramsim up refuses it)")
    cluster = await make_cluster(instances=0, gateway_workers=WORKERS)
    names = [broker.worker_identity("gateway", k) for k in range(1, WORKERS + 1)]
    assert sorted(p.name for p in cluster.processes if p.name.startswith("gateway")) == names
    assert "user gateway-2" in (Path(cluster.file.state_dir) / "mosquitto.acl").read_text()

    retries: list[int] = []
    for k in range(CALLS):
        await asyncio.to_thread(call, cluster, k, retries)
    assert not retries, retries  # nothing was down
    counts = await asyncio.to_thread(wait_until, lambda: (c := [served(cluster, n) for n in names]) and sum(c) >= CALLS and c,
                                     what="every call in the workers' logs")
    assert sum(counts) == CALLS and min(counts) > 0, counts  # each call served once, both workers served some

    statuses = await asyncio.to_thread(replayed, cluster, 8)
    assert statuses == [200] + [400] * 7, statuses  # whichever worker a replay reached
    for name in names:  # the replies meant for the other worker were heard and left quietly
        assert '"reply_unexpected"' not in (Path(cluster.file.state_dir) / "logs" / f"{name}.log").read_text()

    # kill -9 one worker while calls go on: every call succeeds (asked again only if it could not connect)
    victim = cluster.process(names[0])
    killed_pid = victim.pid
    before = served(cluster, names[0])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        going = [pool.submit(call, cluster, k, retries) for k in range(CALLS)]
        await asyncio.to_thread(wait_until, lambda: sum(f.done() for f in going) >= 4, what="calls under way")
        os.kill(killed_pid, signal.SIGKILL)
        for f in going:
            await asyncio.wrap_future(f)  # each succeeded (call raises after its last retry)
    assert len(set(retries)) <= 8, retries  # only calls the dead worker had taken were asked again
    assert not alive(killed_pid)

    # the supervisor started it again, and it serves again
    await asyncio.to_thread(wait_until, lambda: victim.pid != killed_pid and alive(victim.pid), timeout=30,
                            what="the killed worker restarted")
    log = Path(cluster.file.state_dir) / "logs" / f"{names[0]}.log"
    await asyncio.to_thread(wait_until, lambda: log.read_text().count('"service_ready"') >= 2, timeout=30,
                            what="the restarted worker listening")
    restarted = served(cluster, names[0])
    for k in range(CALLS):
        await asyncio.to_thread(call, cluster, k, retries)
    assert await asyncio.to_thread(wait_until, lambda: served(cluster, names[0]) > restarted, what="the restarted worker serving")
    assert restarted >= before
