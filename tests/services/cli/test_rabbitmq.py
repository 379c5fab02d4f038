"""The RabbitMQ and EMQX renderings of the broker ACL (pure), and broker URLs with a version and a vhost."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from protocol import topics
from services.cli import broker, rabbitmq
from services.runtime.bus import BusError
from services.runtime.mqtt_bus import parse, session_client_id

ROOT = Path(__file__).resolve().parents[3]


def allowed(identity: str, access: str, topic_filter: str) -> bool:
    expression = rabbitmq.topic_permissions(identity, broker.acl_rules(["host-1", "host-2"])[identity])[access]
    return re.search(expression, rabbitmq.routing_key(topic_filter)) is not None


def test_topic_permissions_grant_what_the_mosquitto_acl_grants_and_nothing_else() -> None:
    assert allowed("ecs", "write", topics.instance("host-2", "i-1"))
    assert allowed("ecs", "write", topics.inbox("ram", "ecs")) and not allowed("ecs", "write", topics.inbox("ram", "gateway"))
    assert allowed("ecs", "read", topics.inbox_filter("ecs")) and not allowed("ecs", "read", topics.inbox_filter("ram"))
    assert allowed("metadata-host-1", "read", topics.host_instances("host-1"))
    assert not allowed("metadata-host-1", "read", topics.host_instances("host-2"))
    assert not allowed("metadata-host-1", "read", topics.host_instances())
    assert allowed("observer", "read", topics.events("ram")) and allowed("observer", "read", topics.events())
    for identity in ("observer", "ecs", "gateway"):
        assert not allowed(identity, "read", "#") and not allowed(identity, "read", "ramsim/v1/#")
    assert not allowed("gateway", "write", topics.event("ram", "PolicyAttachedToRole"))
    assert allowed("ram", "write", topics.event("ram", "PolicyAttachedToRole"))


def test_the_definitions_make_one_vhost_and_a_user_per_identity_confined_to_its_own_queues() -> None:
    identities = broker.Identities.generate(["host-1"])
    endpoint = broker.Endpoint("127.0.0.1", 1884, vhost="ramsim-1234", version="3.1.1")
    doc = rabbitmq.definitions(endpoint, identities, random=lambda n: b"\0" * n)
    assert doc["vhosts"] == [{"name": "ramsim-1234"}]
    assert {u["name"] for u in doc["users"]} == {f"{i}@ramsim-1234" for i in identities.rules}
    ecs = next(p for p in doc["permissions"] if p["user"] == "ecs@ramsim-1234")
    assert re.search(ecs["configure"], "mqtt-subscription-ramsim-ecs-abcqos1")
    assert not re.search(ecs["configure"], "mqtt-subscription-ramsim-ram-abcqos1")
    assert identities.passwords["ecs"] not in str(doc)  # hashes only
    url = identities.at(endpoint, "ecs")
    address = parse(url)
    assert (address.user, address.password, address.version) == ("ramsim-1234:ecs@ramsim-1234", identities.passwords["ecs"], "3.1.1")
    assert broker.without_password(url) == "mqtt://ramsim-1234%3Aecs%40ramsim-1234@127.0.0.1:1884?version=3.1.1"


def test_a_password_hash_is_rabbitmqs_salted_sha256() -> None:
    # RabbitMQ's rabbit_password_hashing_sha256 (the e2e tests log in with it on a real RabbitMQ)
    raw = base64.b64decode(rabbitmq.password_hash("secret", b"\x01\x02\x03\x04"))
    assert raw == b"\x01\x02\x03\x04" + hashlib.sha256(b"\x01\x02\x03\x04secret").digest()


def test_broker_urls_name_a_version_and_refuse_what_they_cannot_mean() -> None:
    assert parse("mqtt://a%3Ab:p%40ss@h:1?version=3.1.1").user == "a:b"
    assert parse("mqtt://h").version == "5"
    with pytest.raises(BusError, match="version"):
        parse("mqtt://h?version=4")
    with pytest.raises(BusError, match="unknown parameter"):
        parse("mqtt://h?vhost=x")
    assert session_client_id("ramsim-ecs", None) == "ramsim-ecs"
    derived = session_client_id("ramsim-ecs", "pw")
    assert derived.startswith("ramsim-ecs-") and derived != session_client_id("ramsim-ecs", "other")


def test_the_shipped_emqx_acl_is_the_generated_one() -> None:
    expected = rabbitmq.emqx_acl_text(broker.acl_rules([f"host-{i}" for i in range(1, 4)]))
    assert (ROOT / "deploy" / "emqx" / "acl.conf").read_text() == expected
    assert expected.rstrip().endswith("{deny, all}.")


def test_an_sts_worker_may_do_what_sts_may_and_holds_a_session_of_its_own() -> None:
    rules = broker.acl_rules(["host-1"], {"sts": 2})
    assert set(rules) >= {"sts", "sts-1", "sts-2"}
    text = broker.acl_text(rules)
    worker = text[text.index("user sts-1"):text.index("user sts-2")]
    for line in ("topic write ramsim/v1/node/+/from/sts", "topic read ramsim/v1/node/sts/from/+", "topic write ramsim/v1/event/sts/+",
                 "topic write ramsim/v1/deadletter/sts", "topic read ramsim/v1/control/sts"):
        assert line in worker.splitlines()
    assert "from/ecs" not in worker and set(broker.acl_rules(["host-1"], {"sts": 1})) == set(broker.acl_rules(["host-1"]))


def test_without_broker_setup_up_writes_the_definitions_for_an_operator(tmp_path: Path) -> None:
    from services.cli import up

    identities = broker.Identities.generate(["host-1"])
    said: list[str] = []
    options = up.Options(broker="mqtt://127.0.0.1:1884?version=3.1.1", progress=said.append)
    endpoint = up._external_broker(options, "5555", identities, tmp_path)
    assert (endpoint.vhost, endpoint.port, endpoint.version) == ("ramsim-5555", 1884, "3.1.1")
    written = tmp_path / rabbitmq.DEFINITIONS_FILE
    assert written.stat().st_mode & 0o777 == 0o600 and "import_definitions" in said[-1]
    assert {u["name"] for u in json.loads(written.read_text())["users"]} == {f"{i}@ramsim-5555" for i in identities.rules}
    with pytest.raises(up.UpError, match="credentials"):
        up._external_broker(up.Options(broker="mqtt://u:p@127.0.0.1:1884"), "5555", identities, tmp_path)
    with pytest.raises(up.UpError, match="shared subscriptions"):
        up._external_broker(up.Options(broker="mqtt://127.0.0.1:1884", sts_workers=2), "5555", identities, tmp_path)
    with pytest.raises(up.UpError, match="shared subscriptions"):
        up._external_broker(up.Options(broker="mqtt://127.0.0.1:1884", gateway_workers=2), "5555", identities, tmp_path)
