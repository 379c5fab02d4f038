"""Secrets never reach a log: run the whole demo against a real cluster, collect every secret
that existed during the run, and scan every line every service wrote."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli import api
from services.cli.demo import walk
from tests.e2e.conftest import credentials, make_role, metadata_url, wait_until


async def test_no_secret_in_any_log_line_of_a_full_run(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=1, log_level="debug")
    said: list[str] = []
    assert walk(cluster.file, said.append) == 0  # the nine steps, narrated into `said`
    secrets = {cluster.file.access_key_secret, *cluster.identities.passwords.values()}  # and every broker password
    # the demo printed the credentials of step 8 and the users' keys: harvest every secret it saw
    for line in "\n".join(said).splitlines():
        line = line.strip().rstrip(",")
        for key in ('"AccessKeySecret"', '"SecurityToken"'):
            if line.startswith(key):
                secrets.add(json.loads("{" + line + "}")[key.strip('"')])
    # and some more, made here: a user's AccessKey, an instance credential, failed signatures
    cluster.call("ram", "CreateUser", UserName="hygiene")
    key = cluster.call("ram", "CreateAccessKey", UserName="hygiene")["AccessKey"]
    secrets.add(key["AccessKeySecret"])
    make_role(cluster, "Hygiene")
    instance = cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, RamRoleName="Hygiene")
    doc = wait_until(lambda: credentials(metadata_url(cluster, instance["InstanceIdSets"]["InstanceIdSet"][0]), "Hygiene"),
                     what="credential")
    secrets |= {doc["AccessKeySecret"], doc["SecurityToken"]}
    for bad in (api.Credential(key["AccessKeyId"], "wrong-secret"),
                api.Credential(doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"] + "x")):
        try:
            cluster.call("ram", "GetRole", bad, RoleName="Hygiene")
        except api.ApiError as exc:
            assert not any(secret in json.dumps(exc.body) for secret in secrets)  # errors never echo secrets
    assert len(secrets) >= 6 and all(len(s) >= 20 for s in secrets)

    logs = sorted(Path(cluster.file.state_dir, "logs").glob("*"))
    assert {p.name for p in logs} >= {"ram.log", "sts.log", "ecs.log", "gateway.log", "metadata-host-1.log"}
    lines = [line for p in logs for line in p.read_text(errors="replace").splitlines()]
    assert len(lines) > 50  # debug logging of a whole run: the scan has something to scan
    leaks = [(line[:120], s[:6]) for line in lines for s in secrets if s in line]
    assert leaks == []
