"""The broker identities and ACLs ``ramsim up`` generates: the pure builders, and the files.

The ACL text is checked by reading it back with a small model of Mosquitto's ``acl_file``
rules (``pattern`` lines for everyone with ``%u`` for the username, ``topic`` lines under a
``user``; anything not granted is denied). That the real broker enforces it is proven by
delivery in ``tests/e2e/test_broker_acl.py``.
"""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from protocol import topics
from services.cli import broker
from services.cli.up import mosquitto_conf
from services.runtime.entropy import SeededEntropy
from services.runtime.mqtt_bus import parse_url

ROOT = Path(__file__).resolve().parents[3]
HOSTS = ["host-1", "host-2"]


def grants(acl: str) -> dict[str, list[tuple[str, str]]]:
    """``acl_file`` text -> {user: [(access, filter)]}; the key ``"%pattern"`` holds the patterns."""
    table: dict[str, list[tuple[str, str]]] = {"%pattern": []}
    user = None
    for line in acl.splitlines():
        if not line or line.startswith("#"):
            continue
        word, rest = line.split(" ", 1)
        if word == "user":
            user = rest
            table.setdefault(user, [])
        elif word == "pattern":
            access, topic = rest.split(" ", 1)
            table["%pattern"].append((access, topic))
        else:
            assert word == "topic" and user is not None, line  # no rules for anonymous clients
            access, topic = rest.split(" ", 1)
            table[user].append((access, topic))
    return table


def may(table: dict[str, list[tuple[str, str]]], user: str, access: str, topic: str) -> bool:
    if user not in table:
        return False
    rules = table[user] + [(a, t.replace("%u", user)) for a, t in table["%pattern"]]
    if any(a == "deny" and topics.matches(t, topic) for a, t in rules):  # Mosquitto checks a user's denials first
        return False
    return any(a in (access, "readwrite") and topics.matches(t, topic) for a, t in rules)


@pytest.fixture
def acl() -> dict[str, list[tuple[str, str]]]:
    return grants(broker.acl_text(broker.acl_rules(HOSTS)))


def test_every_identity_sends_direct_messages_only_as_itself_and_reads_only_its_inbox(acl) -> None:  # noqa: ANN001
    users = [u for u in acl if u != "%pattern"]
    assert set(users) == {"ram", "sts", "ecs", "gateway", "console", "oss", "operator", "observer", "trace", "metadata-host-1", "metadata-host-2"}
    users.remove(broker.TRACE)  # reads everything, writes nothing: test_the_trace_identity_...
    for user in users:
        for other in users:
            assert may(acl, user, "write", topics.inbox(other, user))
            assert may(acl, user, "read", topics.inbox(user, other))
            if other != user:
                assert not may(acl, user, "write", topics.inbox(user, other)), (user, other)  # never as someone else
                assert not may(acl, user, "read", topics.inbox(other, user)), (user, other)   # never another's inbox
    assert not may(acl, "nobody", "write", topics.inbox("ram", "nobody"))  # unknown users get nothing


def test_only_ecs_writes_host_topics_and_each_agent_reads_only_its_own_host(acl) -> None:  # noqa: ANN001
    for host in HOSTS:
        topic = topics.instance(host, "i-1")
        assert [u for u in acl if may(acl, u, "write", topic)] == ["ecs"]
        assert [u for u in acl if may(acl, u, "read", topic)] == [broker.TRACE, broker.host_identity(host)]
    assert not may(acl, "metadata-host-1", "read", topics.instance("host-10", "i-1"))


def test_each_service_alone_announces_its_events(acl) -> None:  # noqa: ANN001
    for service in ("ram", "sts", "ecs", "oss", "gateway", "metadata-host-1"):
        assert [u for u in acl if may(acl, u, "write", topics.event(service, "Anything"))] == \
            ([service] if service in ("ram", "sts", "ecs") else [])
    assert sorted(u for u in acl if may(acl, u, "read", topics.event("ram", "PolicyAttachedToRole"))) == \
        ["ecs", "observer", "oss", "trace"]
    assert [u for u in acl if may(acl, u, "read", topics.event("sts", "RoleAssumed"))] == ["observer", "trace"]


def test_each_identity_writes_only_its_own_dead_letters_and_only_the_observer_reads_them(acl) -> None:  # noqa: ANN001
    users = [u for u in acl if u != "%pattern"]
    for node in users:
        topic = topics.deadletter(node)
        assert [u for u in users if may(acl, u, "write", topic)] == ([node] if node != broker.TRACE else [])
        assert [u for u in users if may(acl, u, "read", topic)] == [broker.OBSERVER] + ([broker.TRACE] if node != broker.TRACE else [])
    assert not may(acl, "nobody", "write", topics.deadletter("nobody"))
    assert not may(acl, "ram", "write", topics.deadletter("ram") + "/more")  # one level: the node's own topic, no deeper


def test_no_rule_reaches_beyond_ramsim_topics(acl) -> None:  # noqa: ANN001
    for user, rules in acl.items():
        for _, topic in rules:
            if (user, topic) == (broker.TRACE, topics.everything()):
                assert topic == "ramsim/#"  # the read-only tap: every ramsim topic, nothing else
                continue
            assert topic.startswith(topics.PREFIX + "/") and "#" not in topic, (user, topic)
    assert not any(may(acl, u, "read", "$SYS/broker/clients/connected") for u in acl)


def test_every_service_process_has_an_identity() -> None:
    services = {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")} - {"cli", "metadata"}
    assert services <= set(broker.RULES), services - set(broker.RULES)


def test_password_entries_are_mosquitto_2_pbkdf2_sha512() -> None:
    # made by mosquitto_passwd -U (Mosquitto 2.0.11) from "alice:secret"
    made = "alice:$7$101$LRimZn/Y8oulAQug$8GHwQco/4JUHebJ9XqS+ONuaD57b9lA1yGU5NX9D6JvfkLD6CA8bSSQSVT6P/SJCGkelxTMHZJnTUv0ea4Xbew=="
    salt = base64.b64decode(made.split("$")[3])
    assert broker.password_entry("alice", "secret", salt) == made
    assert broker.password_entry("alice", "other", salt) != made
    for bad in ("", "a:b", "a\nb"):
        with pytest.raises(ValueError):
            broker.password_entry(bad, "secret", salt)


def test_passwords_are_random_distinct_and_travel_in_a_url() -> None:
    identities = broker.Identities.generate(HOSTS, SeededEntropy(7).token_bytes)
    passwords = list(identities.passwords.values())
    assert len(set(passwords)) == len(passwords) == len(identities.rules)
    assert all(len(p) == 32 for p in passwords)  # 24 random bytes
    url = identities.url("metadata-host-2", "127.0.0.1", 18830)
    assert parse_url(url) == ("127.0.0.1", 18830, "metadata-host-2", identities.passwords["metadata-host-2"])
    assert broker.without_password(url) == "mqtt://metadata-host-2@127.0.0.1:18830"
    assert identities.passwords["ram"] not in broker.without_password(identities.url("ram", "127.0.0.1", 1))
    assert broker.without_password("mqtt://127.0.0.1:1883") == "mqtt://127.0.0.1:1883"
    assert broker.Identities.generate(HOSTS, SeededEntropy(8).token_bytes).passwords != identities.passwords


def test_files_are_private_and_hold_what_the_broker_needs(tmp_path: Path) -> None:
    identities = broker.Identities.generate(HOSTS)
    files = broker.write_files(tmp_path, identities)
    for path in (files.password_file, files.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = dict(line.split(":", 1) for line in files.password_file.read_text().splitlines())
    assert set(entries) == set(identities.passwords)
    for user, entry in entries.items():
        _, kind, iterations, salt, digest = entry.split("$")
        assert kind == "7"
        assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", identities.passwords[user].encode(),
                                                               base64.b64decode(salt), int(iterations))
        assert identities.passwords[user] not in entry
    assert files.acl_file.read_text() == broker.acl_text(identities.rules)
    broker.write_files(tmp_path, identities)  # again, over the old files
    assert stat.S_IMODE(files.password_file.stat().st_mode) == 0o600


def test_the_generated_config_refuses_anonymous_clients_and_retained_messages(tmp_path: Path) -> None:
    files = broker.write_files(tmp_path, broker.Identities.generate(HOSTS))
    lines = mosquitto_conf(18830, tmp_path, files, services_port=18831).splitlines()
    assert "allow_anonymous false" in lines and "allow_anonymous true" not in lines
    assert f"password_file {files.password_file}" in lines and f"acl_file {files.acl_file}" in lines
    assert "retain_available false" in lines and "set_tcp_nodelay true" in lines
    assert [line for line in lines if line.startswith("listener")] == ["listener 18830 127.0.0.1", "listener 18831 127.0.0.1"]
    # client ids bound to identities: the services listener takes the username as the id, every id sent has the prefix
    assert lines[lines.index("listener 18831 127.0.0.1") + 1] == "use_username_as_clientid true"
    assert f"clientid_prefixes {broker.CLIENT_ID_PREFIX}" in lines
    assert not any(user.startswith(broker.CLIENT_ID_PREFIX) for user in broker.acl_rules(HOSTS))


def test_the_trace_identity_reads_everything_and_its_pattern_writes_are_denied() -> None:
    text = broker.acl_text(broker.acl_rules(HOSTS))
    section = text.split(f"user {broker.TRACE}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section == ["topic read ramsim/#", f"topic deny {topics.outbox_filter(broker.TRACE)}",
                       f"topic deny {topics.deadletter(broker.TRACE)}", f"topic deny {topics.control_applied(broker.TRACE)}"]
    assert broker.TRACE in broker.Identities.generate(HOSTS).passwords  # so keys.json keeps a password for it
    acl = grants(text)
    users = [u for u in acl if u != "%pattern"]
    for topic in (topics.inbox("ram", broker.TRACE), topics.inbox(broker.TRACE, "ram"), topics.deadletter(broker.TRACE),
                  topics.control_applied(broker.TRACE), topics.event("ram", "X"), topics.instance("host-1", "i-1"),
                  topics.control("ram")):
        assert not may(acl, broker.TRACE, "write", topic), topic
    for other in users:
        assert may(acl, broker.TRACE, "read", topics.inbox(other, "ram"))
    assert not may(acl, broker.TRACE, "read", "$SYS/broker/clients/connected")


def test_a_gateway_worker_may_do_exactly_what_the_gateway_may() -> None:
    """``--gateway-workers``: ``gateway-2`` speaks as node ``gateway`` (its inbox, its outbox, its
    replies to RAM, STS and ECS), and no more than ``gateway`` does (beyond the patterns' topics
    under its own name, which it does not use)."""
    table = grants(broker.acl_text(broker.acl_rules(HOSTS, {"gateway": 2})))
    probes = [(access, topic) for access in ("read", "write")
              for topic in (topics.inbox("gateway", "ram"), topics.inbox("ram", "gateway"), topics.inbox("sts", "gateway"),
                            topics.inbox("ecs", "gateway"), topics.inbox("ram", "sts"), topics.inbox("gateway-1", "ram"), topics.deadletter("gateway"), topics.host_instances(HOSTS[0]))]
    for access, topic in probes:
        assert may(table, "gateway-2", access, topic) == may(table, "gateway", access, topic), (access, topic)
    assert may(table, "gateway-2", "write", topics.inbox("ram", "gateway"))
    assert not may(table, "gateway-2", "write", topics.inbox("ram", "sts"))
