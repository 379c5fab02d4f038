"""I/O shell: a ramsim cluster's identities and ACLs on an external RabbitMQ (its MQTT plugin).

``ramsim up --broker mqtt://host:port?version=3.1.1 --broker-setup rabbitmqctl`` runs on a
RabbitMQ instead of starting Mosquitto. RabbitMQ users are global to the RabbitMQ cluster, so
each ramsim cluster gets its own virtual host ``ramsim-<account id>`` and its identities are the
users ``<identity>@<vhost>`` (:class:`services.cli.broker.Endpoint`). Everything RabbitMQ needs is
one definitions document (:func:`definitions`, pure), imported with one ``rabbitmqctl
import_definitions`` (:func:`provision`; idempotent: a resumed cluster imports the same users,
passwords and permissions again). Without ``--broker-setup`` ramsim writes that document to
``<state>/rabbitmq-definitions.json`` for an operator to import.

How Mosquitto's ACL (:mod:`services.cli.broker`) maps onto RabbitMQ. MQTT topics are routing
keys on the ``amq.topic`` exchange (``/`` becomes ``.``, ``+`` becomes ``*``), and RabbitMQ's
*topic permissions* are two regular expressions per user and exchange: ``write`` is matched
against the routing key of a PUBLISH, ``read`` against the binding key of a SUBSCRIBE.

* every rule (PATTERNS with ``%u`` = the identity, RULES) becomes one alternative of the
  user's write or read expression (:func:`topic_regex`). A ``+`` in a *write* rule matches one
  level; in a *read* rule it matches one level or ``*`` (a subscription at least as narrow as the
  rule), never ``#``. So ``#`` and another node's inbox are refused;
* unlike Mosquitto (which grants such a SUBSCRIBE and then delivers nothing), RabbitMQ 3.10
  refuses it by closing the connection; a forbidden PUBLISH also closes the connection;
* the vhost's resource permissions confine a user to ``amq.topic`` and to the queues of its own
  client ids (``mqtt-subscription-ramsim-<identity>-…``);
* not enforced: RabbitMQ does not bind a client id to a username (Mosquitto's
  ``use_username_as_clientid``) nor require a prefix (``clientid_prefixes``). A second
  connection with a client id closes the first, whoever makes it. ramsim's services therefore
  connect with a client id derived from their password (:func:`services.runtime.mqtt_bus.session_client_id`),
  which nobody else can guess; tools use random ones. Retained messages cannot be switched off
  (Mosquitto: ``retain_available false``): the bus never sets the flag, and RabbitMQ delivers
  retained messages only to subscriptions on the exact topic, never to a wildcard (every
  subscription ramsim makes is a wildcard). An identity's password also opens AMQP 0-9-1 on the
  vhost, under the same permissions (topic permissions apply to AMQP publishes to ``amq.topic``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterable, Mapping

from services.cli import broker
from services.cli.errors import CliError

EXCHANGE = "amq.topic"
HASHING = "rabbit_password_hashing_sha256"
DEFINITIONS_FILE = "rabbitmq-definitions.json"


class RabbitError(CliError):
    """RabbitMQ could not be set up; the message says why."""


def vhost_for(account_id: str) -> str:
    return f"ramsim-{account_id}"


def routing_key(topic_filter: str) -> str:
    """An MQTT topic (filter) as RabbitMQ's MQTT plugin writes it on ``amq.topic``."""
    return ".".join("*" if level == "+" else level.replace(".", "/") for level in topic_filter.split("/"))


def topic_regex(topic_filter: str, access: str) -> str:
    """An anchored regular expression for one rule, matched against a routing key (write) or a
    binding key (read)."""
    one_level = "[^.*#]+" if access == "write" else "[^.#]+"
    levels = [one_level if level == "+" else re.escape(level.replace(".", "/")) for level in topic_filter.split("/")]
    return "^" + r"\.".join(levels) + "$"


def _either(expressions: list[str]) -> str:
    # a user without any rule of this kind: an expression that matches no routing key
    return "|".join(expressions) if expressions else "^$"


def granted(identity: str, rules: Iterable[broker.Rule]) -> list[broker.Rule]:
    """What ``identity`` may do: every pattern with ``%u`` filled in, but those its ``deny`` rules
    take back (the trace identity's own outbox, dead letters and acks), then its own grants.
    RabbitMQ's topic permissions are one allow-expression, so a deny is a grant left out."""
    rules = list(rules)
    denied = {r.topic for r in rules if r.access == "deny"}
    patterns = [broker.Rule(r.access, r.topic.replace("%u", identity)) for r in broker.PATTERNS]
    return [r for r in patterns if r.topic not in denied] + [r for r in rules if r.access != "deny"]


def topic_permissions(identity: str, rules: Iterable[broker.Rule]) -> dict[str, str]:
    granted_ = granted(identity, rules)
    return {access: _either([topic_regex(r.topic, access) for r in granted_ if r.access == access]) for access in ("write", "read")}


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(endpoint: broker.Endpoint, identities: broker.Identities, random: Callable[[int], bytes] = os.urandom) -> dict:
    """The RabbitMQ definitions document of a cluster: its vhost, users, permissions."""
    vhost = endpoint.vhost
    users, permissions, topics = [], [], []
    for identity, rules in identities.rules.items():
        user = endpoint.broker_user(identity)
        users.append({"name": user, "password_hash": password_hash(identities.passwords[identity], random(4)),
                      "hashing_algorithm": HASHING, "tags": []})
        own_queues = f"mqtt-subscription-{re.escape(broker.CLIENT_ID_PREFIX + identity)}-.*"
        permissions.append({"user": user, "vhost": vhost, "configure": f"^{own_queues}$",
                            "write": f"^({re.escape(EXCHANGE)}|{own_queues})$", "read": f"^({re.escape(EXCHANGE)}|{own_queues})$"})
        topics.append({"user": user, "vhost": vhost, "exchange": EXCHANGE, **topic_permissions(identity, rules)})
    return {"users": users, "vhosts": [{"name": vhost}], "permissions": permissions, "topic_permissions": topics}


def rabbitmqctl() -> str:
    found = os.environ.get("RAMSIM_RABBITMQCTL") or shutil.which("rabbitmqctl") or \
        next((p for p in ("/usr/sbin/rabbitmqctl", "/usr/local/sbin/rabbitmqctl") if os.access(p, os.X_OK)), None)
    if not found:
        raise RabbitError("--broker-setup rabbitmqctl: rabbitmqctl is not installed here (RAMSIM_RABBITMQCTL names it)")
    return found


def cli_environment() -> dict[str, str]:
    """The environment for RabbitMQ's CLI tools. Each is an Erlang node that listens for the
    distribution on a port of 35672-35682 unless told otherwise; when other programs hold those
    (a big ramsim cluster's metadata views can), it fails with ``nodistribution``. So it gets one
    free port of its own, unless the caller's environment chose (RABBITMQ_CTL_DIST_PORT_MIN/MAX)."""
    env = dict(os.environ)
    if "RABBITMQ_CTL_DIST_PORT_MIN" not in env:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        env.update(RABBITMQ_CTL_DIST_PORT_MIN=port, RABBITMQ_CTL_DIST_PORT_MAX=port)
    return env


def run(*args: str, timeout: float = 120, stdin: str | None = None) -> str:
    done = subprocess.run([rabbitmqctl(), *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                          env=cli_environment())
    if done.returncode != 0:
        raise RabbitError(f"rabbitmqctl {args[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def write_definitions(path: Path, document: Mapping[str, object]) -> Path:
    """Write the definitions (password hashes: private, 0600)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=1)
    os.replace(tmp, path)
    return path


def provision(document: Mapping[str, object]) -> None:
    """Import the definitions (adds or updates; never removes), on rabbitmqctl's stdin: it runs
    as the ``rabbitmq`` user, who cannot read our private files."""
    run("import_definitions", "--format", "json", stdin=json.dumps(document))


def remove(vhost: str) -> None:
    """Delete a cluster's vhost (its queues with it) and its users (``*@<vhost>``): one ``rabbitmqctl eval``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", vhost):
        raise RabbitError(f"not a ramsim vhost name: {vhost!r}")
    run("eval", f'V = <<"{vhost}">>, S = <<"@", V/binary>>, rabbit_vhost:delete(V, <<"ramsim">>), '
                '[rabbit_auth_backend_internal:delete_user(N, <<"ramsim">>) || U <- rabbit_auth_backend_internal:all_users(), '
                'N <- [internal_user:get_username(U)], binary:longest_common_suffix([N, S]) == byte_size(S)], ok.')


def ensure_mqtt_listener(port: int, conf: Path = Path("/etc/rabbitmq/rabbitmq.conf")) -> None:
    """The MQTT plugin enabled and listening on 127.0.0.1:``port``, anonymous access off, now
    and after a restart (``conf``), without restarting RabbitMQ. Idempotent."""
    settings = {"mqtt.listeners.tcp.default": f"127.0.0.1:{port}", "mqtt.allow_anonymous": "false"}
    run("eval", f'application:set_env(rabbitmq_mqtt, tcp_listeners, [{{"127.0.0.1", {port}}}], [{{persistent, true}}]), '
                'application:set_env(rabbitmq_mqtt, allow_anonymous, false, [{persistent, true}]).')
    if "rabbitmq_mqtt" not in run("eval", "[A || {A, _, _} <- application:which_applications()]."):
        plugins = shutil.which("rabbitmq-plugins") or "/usr/sbin/rabbitmq-plugins"
        done = subprocess.run([plugins, "enable", "rabbitmq_mqtt"], capture_output=True, text=True, timeout=180, env=cli_environment())
        if done.returncode != 0:
            raise RabbitError(f"rabbitmq-plugins enable rabbitmq_mqtt failed: {(done.stderr or done.stdout).strip()[-500:]}")
    try:
        lines = conf.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    kept = [line for line in lines if line.split("=", 1)[0].strip() not in settings]
    wanted = kept + [f"{key} = {value}" for key, value in settings.items()]
    if wanted != lines and os.access(conf.parent, os.W_OK):
        conf.write_text("\n".join(wanted) + "\n")


def emqx_acl_text(rules: Mapping[str, tuple[broker.Rule, ...]]) -> str:
    """The same rules as EMQX 5's file authorizer (``acl.conf``): a pattern's ``%u`` is EMQX's
    ``${username}``; anything not granted is denied (``authorization.no_match = deny``)."""
    verb = {"write": "publish", "read": "subscribe"}
    lines = ["%% ramsim broker ACL for EMQX 5, generated from services/cli/broker.py (services.cli.rabbitmq.emqx_acl_text).",
             "%% Every identity: write direct messages only as itself, read only its own inbox, write only its own dead letters."]
    # EMQX takes the first rule that matches: an identity's denials go before the patterns that grant to all
    lines += [f'{{deny, {{username, "{user}"}}, all, ["{r.topic}"]}}.' for user, own in rules.items() for r in own if r.access == "deny"]
    lines += [f'{{allow, all, {verb[r.access]}, ["{r.topic.replace("%u", "${username}")}"]}}.' for r in broker.PATTERNS]
    for user, own in rules.items():
        lines += [f'{{allow, {{username, "{user}"}}, {verb[r.access]}, ["{r.topic}"]}}.' for r in own if r.access != "deny"]
    lines.append("{deny, all}.")
    return "\n".join(lines) + "\n"
