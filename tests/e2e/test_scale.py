"""End-to-end: a cluster beyond one RunInstances batch, in shared metadata mode (real processes,
a real Mosquitto, real HTTP, the official alibabacloud-credentials provider as the client).

No timed assertions here: how fast this is belongs to the benchmarks (``bench/``)."""

from __future__ import annotations

import json
import urllib.parse

from services.cli.app import instance_provider
from services.cli.instances import instances, read_metadata
from services.cli.up import Cluster
from tests.e2e.conftest import CREDENTIALS, credentials, make_role, wait_until


def attach(cluster: Cluster, role: str, *instance_ids: str) -> dict:
    return cluster.call("ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName=role,
                        InstanceIds=json.dumps(list(instance_ids)))


async def test_250_instances_launch_in_batches_and_each_reads_only_its_own_credential_through_one_shared_port(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=250, hosts=2)  # above 100 instances the default metadata mode is shared

    listed = instances(cluster.file)
    assert len(listed) == 250 and all(i["Status"] == "Running" for i in listed)  # `up` waited for every batch
    assert len({i["InstanceId"] for i in listed}) == 250
    ports: dict[str, set[int]] = {}
    for i in listed:
        url = urllib.parse.urlsplit(i["MetadataUrl"])
        assert (url.scheme, url.username, url.hostname) == ("http", i["InstanceId"], "127.0.0.1")
        ports.setdefault(i["HostId"], set()).add(url.port or 0)
    assert sorted(ports) == ["host-1", "host-2"] and all(len(p) == 1 for p in ports.values())  # one port per agent
    assert len(set.union(*ports.values())) == 2

    mine, theirs, bare = listed[0], listed[1], listed[2]
    make_role(cluster, "Mine")
    make_role(cluster, "Theirs")
    assert attach(cluster, "Mine", mine["InstanceId"])["FailCount"] == 0
    assert attach(cluster, "Theirs", theirs["InstanceId"])["FailCount"] == 0
    own = wait_until(lambda: credentials(mine["MetadataUrl"], "Mine"), what="Mine's credential at its view")

    # the official SDK, given the view's URL as its proxy, reads its own instance's credential
    provider = instance_provider(mine["MetadataUrl"])
    got = provider.get_credentials()
    assert got.get_access_key_id() == own["AccessKeyId"] and got.get_security_token() == own["SecurityToken"]

    # and nothing of another instance's: not its role, not through the same port
    wait_until(lambda: credentials(theirs["MetadataUrl"], "Theirs"), what="Theirs's credential at its view")
    assert read_metadata(mine["MetadataUrl"], CREDENTIALS) == (200, "Mine")
    assert read_metadata(mine["MetadataUrl"], CREDENTIALS + "Theirs")[0] == 404
    assert read_metadata(bare["MetadataUrl"], CREDENTIALS)[0] == 404
    assert read_metadata(bare["MetadataUrl"], CREDENTIALS + "Mine")[0] == 404
    assert read_metadata(mine["MetadataUrl"], "/latest/meta-data/instance-id") == (200, mine["InstanceId"])

    # the path-prefix form names the instance too; a request naming none is refused
    port = urllib.parse.urlsplit(mine["MetadataUrl"]).port
    prefixed = f"http://127.0.0.1:{port}/{mine['InstanceId']}"
    assert read_metadata(prefixed, "/latest/meta-data/instance-id") == (200, mine["InstanceId"])
    assert read_metadata(prefixed, CREDENTIALS) == (200, "Mine")
    assert read_metadata(f"http://127.0.0.1:{port}", "/latest/meta-data/instance-id")[0] == 404


async def test_a_batch_attach_reaches_every_instance_of_the_batch(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=120, hosts=2, metadata_mode="shared")
    listed = instances(cluster.file)
    make_role(cluster, "Fleet")
    batch = [i["InstanceId"] for i in listed[:100]]
    answer = attach(cluster, "Fleet", *batch)
    assert (answer["TotalCount"], answer["FailCount"]) == (100, 0)
    # ECS pushed every view before it replied (one message per host): each of the 100 serves
    urls = {i["InstanceId"]: i["MetadataUrl"] for i in listed}
    for instance_id in batch:
        wait_until(lambda: read_metadata(urls[instance_id], CREDENTIALS) == (200, "Fleet"), what=f"the role at {instance_id}")
    assert read_metadata(urls[listed[100]["InstanceId"]], CREDENTIALS)[0] == 404
