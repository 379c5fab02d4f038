"""I/O shell: the broker identities and ACLs of a ``ramsim up`` cluster.

Every service, every metadata agent and ``ramsim up`` itself connects to Mosquitto with its own
username (its node id) and a random password made per cluster; anonymous access is off. The
rules each identity gets are data, here and nowhere else (:data:`RULES`, :data:`PATTERNS`,
:func:`acl_rules`), and everything that turns them into Mosquitto's files is a pure function
(:func:`acl_text`, :func:`password_entry`, :func:`password_text`); only :func:`write_files`
touches the disk.

=====================  ========================================  =====================================
identity               writes                                    reads
=====================  ========================================  =====================================
everyone (pattern)     ``node/+/from/<me>`` (direct messages),   ``node/<me>/from/+`` (its inbox),
                       ``deadletter/<me>`` (what it dropped),    ``control/<me>`` (faults set on it)
                       ``control/<me>/applied`` (their ack)
``ram``                ``event/ram/+``
``sts``                ``event/sts/+``
``ecs``                ``event/ecs/+``, ``host/+/instance/+``    ``event/ram/+``
``oss``                                                          ``event/ram/+``
``metadata-host-<n>``                                            ``host/host-<n>/instance/+``
``gateway``
``console``
``operator``           ``event/app/+`` (``ramsim app``'s calls),  ``control/+/applied``
                       ``control/+`` (experiments' faults)
``observer``                                                     ``event/+/+``, ``deadletter/+``
                                                                 (monitoring, tests)
``trace``              nothing: its own outbox, dead letters     ``ramsim/#``, everything (the trace
                       and acks are denied (``topic deny``)      tap: ``ramsim trace``, the tour, the
                                                                 console; it yields only redacted
                                                                 descriptions, protocol/trace.py)
=====================  ========================================  =====================================

Only the operator sets faults (``control/<node>``, :mod:`services.runtime.chaos`), and each node
reads only its own. No other identity publishes events (the operator only the workload's ``event/app/+``) or host topics, and nothing reads another node's inbox, so the
``from`` segment of a direct message names its real sender (receivers drop an envelope whose
``src`` disagrees) and only ECS can hand credentials to a host. A node's dead letters (what it
dropped, and why: never the payload) are written by that node alone and read by the observer
alone. Retained messages are off in the broker (``retain_available false``); the bus never sets
the retain flag.

**Client ids are bound to identities**, so that no identity can take another's session (an MQTT
broker keeps one connection per client id and closes the older one when a second connects with
it). Mosquitto has two listeners (:func:`services.cli.up.mosquitto_conf`): services and agents
connect to the *services* listener, where ``use_username_as_clientid`` replaces whatever client
id a client sends with its username, so the session of ``ecs`` is held by whoever holds ECS's
password and nobody else; tools (``ramsim app``, the recorder, tests) connect to the *tools*
listener with a client id of their own, :func:`tool_client_id`. Every client id a client sends
must start with :data:`CLIENT_ID_PREFIX` (Mosquitto's ``clientid_prefixes``) and no username
does, so a tool's id can never be a service's (its username), whatever it sends.

Passwords are stored the way ``mosquitto_passwd`` (Mosquitto 2) stores them: ``$7$``,
PBKDF2-HMAC-SHA512 with a 12-byte salt and 101 iterations (Mosquitto's default; the passwords
are 192 random bits, so the iteration count adds nothing), base64.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from protocol import topics

CLIENT_ID_PREFIX = "ramsim-"  # every client id a client sends starts with it; no username does
OPERATOR = "operator"   # ``ramsim up``'s readiness pings; tools and tests that join the bus
OBSERVER = "observer"   # reads every event and every dead letter (monitoring, tests)
TRACE = "trace"         # reads everything, writes nothing (services/runtime/tap.py)
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_BYTES = 24


@dataclass(frozen=True)
class Rule:
    access: str  # "read" | "write" | "deny" (no access at all, checked before any grant)
    topic: str   # a topic filter; in PATTERNS, %u stands for the connecting username


# Every identity: send direct messages only under its own name (from/<me>), read only its own inbox,
# record only its own dead letters, obey only the faults set on it (and acknowledge them).
PATTERNS: tuple[Rule, ...] = (
    Rule("write", topics.outbox_filter("%u")),
    Rule("read", topics.inbox_filter("%u")),
    Rule("write", topics.deadletter("%u")),
    Rule("read", topics.control("%u")),
    Rule("write", topics.control_applied("%u")),
)

# What each identity may do beyond the patterns. Metadata agents are added per host.
RULES: Mapping[str, tuple[Rule, ...]] = {
    "ram": (Rule("write", topics.events("ram")),),
    "sts": (Rule("write", topics.events("sts")),),
    "ecs": (Rule("write", topics.events("ecs")), Rule("write", topics.host_instances()),
            Rule("read", topics.events("ram"))),
    "gateway": (),
    "console": (),  # the web console answers Pings and obeys faults; it reads and writes through the gateway
    "oss": (Rule("read", topics.events("ram")),),
    OPERATOR: (Rule("write", topics.events("app")),  # `ramsim app` joins as the operator and reports each call
               Rule("write", topics.control()), Rule("read", topics.control_applied())),  # experiments set faults
    OBSERVER: (Rule("read", topics.events()), Rule("read", topics.deadletters())),
    # Read-only: Mosquitto checks a user's denials before anything else (its patterns included),
    # so the writes every identity's patterns grant are taken back for this one.
    TRACE: (Rule("read", topics.everything()), Rule("deny", topics.outbox_filter(TRACE)),
            Rule("deny", topics.deadletter(TRACE)), Rule("deny", topics.control_applied(TRACE))),
}


def service_client_id(node_id: str, password: str | None = None) -> str:
    """The client id a service or agent sends (the services listener replaces it by its username);
    with its ``password``, the exact id, suffixed with a value derived from the password
    (:func:`services.runtime.mqtt_bus.session_client_id`), which is what binds it on RabbitMQ."""
    from services.runtime.mqtt_bus import session_client_id

    return session_client_id(f"{CLIENT_ID_PREFIX}{node_id}", password)


def tool_client_id(identity: str, random: Callable[[int], bytes] = os.urandom) -> str:
    """A client id for one tool connection as ``identity``: unique, so two tools never take each other's."""
    return f"{CLIENT_ID_PREFIX}{identity}-{random(6).hex()}"


def host_identity(host_id: str) -> str:
    """The broker identity (and node id) of the metadata agent of ``host_id``."""
    return f"metadata-{host_id}"


WORKERS = ("sts", "gateway")  # stateless services that may run as several workers sharing one node id (``--sts-workers``, ``--gateway-workers``)


def worker_identity(node_id: str, number: int) -> str:
    """The broker identity of worker ``number`` of ``node_id`` (its node id stays ``node_id``)."""
    return f"{node_id}-{number}"


def acl_rules(host_ids: Iterable[str], workers: Mapping[str, int] | None = None) -> dict[str, tuple[Rule, ...]]:
    """Every identity of a cluster with these hosts (and workers), and its rules (beyond :data:`PATTERNS`).

    A worker of ``sts`` (or ``gateway``) is its own identity (so its session is its own) with everything
    ``sts`` may do: the patterns for ``sts`` and the rules of ``sts``; the patterns for its own name add its own inbox
    and dead letters, which it does not use."""
    rules = dict(RULES)
    for host_id in host_ids:
        rules[host_identity(host_id)] = (Rule("read", topics.host_instances(host_id)),)
    for node_id, count in (workers or {}).items():
        if count > 1:
            shared = tuple(Rule(r.access, r.topic.replace("%u", node_id)) for r in PATTERNS) + tuple(RULES[node_id])
            rules.update({worker_identity(node_id, k): shared for k in range(1, count + 1)})
    return rules


def acl_text(rules: Mapping[str, tuple[Rule, ...]]) -> str:
    """Mosquitto's ``acl_file`` for ``rules``. Anything not granted is denied."""
    lines = ["# ramsim broker ACL, generated by `ramsim up` (services/cli/broker.py). Anything not granted is denied.",
             "# Every identity: write direct messages only as itself, read only its own inbox, write only its own dead letters."]
    lines += [f"pattern {r.access} {r.topic}" for r in PATTERNS]
    for user, granted in rules.items():
        lines += ["", f"user {user}"]
        lines += [f"topic {r.access} {r.topic}" for r in granted] or ["# direct messages only"]
    return "\n".join(lines) + "\n"


def new_password(random: bytes) -> str:
    """A password from ``random`` bytes, safe inside a URL (base64url, no padding)."""
    return base64.urlsafe_b64encode(random).decode().rstrip("=")


def password_entry(user: str, password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> str:
    """One line of Mosquitto 2's ``password_file``: ``user:$7$<iterations>$<salt>$<hash>``."""
    if not user or ":" in user or "\n" in user or user.startswith(CLIENT_ID_PREFIX):
        raise ValueError(f"not usable as a broker username: {user!r}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_text(passwords: Mapping[str, str], salts: Mapping[str, bytes]) -> str:
    return "".join(password_entry(user, password, salts[user]) + "\n" for user, password in passwords.items())


def url(host: str, port: int, user: str, password: str) -> str:
    """``mqtt://user:password@host:port`` (what ``services.runtime.mqtt_bus.parse_url`` reads)."""
    return f"mqtt://{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{host}:{port}"


def without_password(broker_url: str) -> str:
    """``broker_url`` fit to print: the password, if any, left out."""
    parts = urllib.parse.urlsplit(broker_url)
    if parts.password is None:
        return broker_url
    userinfo, hostport = parts.netloc.rsplit("@", 1)
    netloc = f"{userinfo.split(':', 1)[0]}@{hostport}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Endpoint:
    """Where a cluster's identities connect to the broker, and under which username.

    Mosquitto (started by ``ramsim up``): the username is the identity. An external RabbitMQ
    (``ramsim up --broker``): users are global to a RabbitMQ cluster, so each ramsim cluster has
    its own virtual host and its users are ``<identity>@<vhost>``, named at connect time as
    ``<vhost>:<identity>@<vhost>`` (RabbitMQ's MQTT ``vhost:user`` form)."""

    host: str
    port: int
    vhost: str = ""
    version: str = ""  # the MQTT version the URL names ("": the bus's default, 5)

    def broker_user(self, identity: str) -> str:
        """The user the broker knows (RabbitMQ: ``<identity>@<vhost>``)."""
        return f"{identity}@{self.vhost}" if self.vhost else identity

    def username(self, identity: str) -> str:
        """What the identity sends as its MQTT username."""
        return f"{self.vhost}:{self.broker_user(identity)}" if self.vhost else identity

    def url(self, identity: str, password: str) -> str:
        address = url(self.host, self.port, self.username(identity), password)
        return f"{address}?version={self.version}" if self.version else address


@dataclass(frozen=True)
class Identities:
    """The identities of one cluster: their rules and passwords (kept in memory, handed to each
    process in its environment; the operator's also goes into the 0600 cluster file)."""

    rules: Mapping[str, tuple[Rule, ...]]
    passwords: Mapping[str, str]

    @classmethod
    def generate(cls, host_ids: Iterable[str], random: Callable[[int], bytes] = os.urandom) -> "Identities":
        rules = acl_rules(host_ids)
        return cls(rules, {user: new_password(random(PASSWORD_BYTES)) for user in rules})

    def url(self, user: str, host: str, port: int) -> str:
        return url(host, port, user, self.passwords[user])

    def at(self, endpoint: Endpoint, user: str) -> str:
        """The broker URL of ``user`` at ``endpoint`` (with its password)."""
        return endpoint.url(user, self.passwords[user])


@dataclass(frozen=True)
class BrokerFiles:
    password_file: Path
    acl_file: Path


def write_files(directory: Path, identities: Identities, random: Callable[[int], bytes] = os.urandom) -> BrokerFiles:
    """Write the password file and the ACL file into ``directory``, both mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(directory / "mosquitto.passwd", directory / "mosquitto.acl")
    salts = {user: random(SALT_BYTES) for user in identities.passwords}
    _write_private(files.password_file, password_text(identities.passwords, salts))
    _write_private(files.acl_file, acl_text(identities.rules))
    return files


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)

