"""Pure protocol: every topic ramsim uses is built here, and matched by :func:`matches`.

Layout (``ramsim/v1`` prefix)::

    ramsim/v1/node/<dest>/from/<src>               direct messages (commands, replies) from <src> to <dest>
    ramsim/v1/event/<service>/<EventName>          broadcast events
    ramsim/v1/host/<host>/instance/<instance>      ECS -> the metadata agent of <host>
    ramsim/v1/deadletter/<node>                    what <node> dropped, and why (never the payload)
    ramsim/v1/control/<node>                       the faults the operator sets on <node> (experiments)
    ramsim/v1/control/<node>/applied               <node>'s acknowledgement of the faults it now obeys
    ramsim/#                                       everything (:func:`everything`: the read-only trace tap)

The topics are shaped for broker ACLs (``services/cli/broker.py``): a node's broker identity
is its node id, the broker lets it publish direct messages only under ``from/<its id>`` and
read only its own inbox, so the ``from`` segment of a direct message is vouched for by the
broker (:func:`sender`), unlike the envelope's self-declared ``src``. Per-host topics confine
an agent to its own instances; per-service event topics let only that service announce; a
node's dead-letter topic is written by that node alone.
"""

from __future__ import annotations

from protocol.errors import TopicError

PREFIX = "ramsim/v1"
ANY = "+"


def _segment(value: str) -> str:
    if not value or "/" in value or "+" in value or "#" in value or "\0" in value:  # (topics are built on hot paths)
        raise TopicError(f"not usable as a topic segment: {value!r}")
    return value


def _segment_or_any(value: str) -> str:
    return value if value == ANY else _segment(value)


def inbox(dest: str, src: str) -> str:
    """A direct message from node ``src`` to node ``dest``."""
    return f"{PREFIX}/node/{_segment(dest)}/from/{_segment(src)}"


def inbox_filter(me: str) -> str:
    """Filter for every direct message to node ``me``, from anyone."""
    return f"{PREFIX}/node/{_segment(me)}/from/+"


def outbox_filter(src: str) -> str:
    """Filter for every direct message node ``src`` sends, to anyone (what its ACL lets it write)."""
    return f"{PREFIX}/node/+/from/{_segment(src)}"


def sender(topic: str) -> str | None:
    """The ``from`` segment of a direct-message topic (``None`` for any other topic)."""
    levels = topic.split("/")
    if len(levels) == 6 and "/".join(levels[:2]) == PREFIX and levels[2] == "node" and levels[4] == "from" and levels[5]:
        return levels[5]
    return None


def event(service: str, name: str) -> str:
    return f"{PREFIX}/event/{_segment(service)}/{_segment(name)}"


def events(service: str = ANY) -> str:
    """Filter for every event of ``service`` (default: of every service)."""
    return f"{PREFIX}/event/{_segment_or_any(service)}/+"


def instance(host_id: str, instance_id: str) -> str:
    return f"{PREFIX}/host/{_segment(host_id)}/instance/{_segment(instance_id)}"


def host_instances(host_id: str = ANY) -> str:
    """Filter for every instance topic of one host (default: of every host)."""
    return f"{PREFIX}/host/{_segment_or_any(host_id)}/instance/+"


def deadletter(node: str) -> str:
    """Where ``node`` records each message it dropped (a :class:`~protocol.messages.common.DeadLetter`)."""
    return f"{PREFIX}/deadletter/{_segment(node)}"


def deadletters(node: str = ANY) -> str:
    """Filter for the dead letters of ``node`` (default: of every node)."""
    return f"{PREFIX}/deadletter/{_segment_or_any(node)}"


def control(node: str = ANY) -> str:
    """The faults the operator sets on ``node`` (default: the filter for every node's)."""
    return f"{PREFIX}/control/{_segment_or_any(node)}"


def control_applied(node: str = ANY) -> str:
    """Where ``node`` acknowledges the faults it now obeys (default: the filter for every node's)."""
    return f"{PREFIX}/control/{_segment_or_any(node)}/applied"


def everything() -> str:
    """Filter for every topic ramsim uses, of any version (what the read-only trace identity reads)."""
    return f"{PREFIX.split('/')[0]}/#"


def shared(group: str, topic_filter: str) -> str:
    """``topic_filter`` as a shared subscription of ``group`` (MQTT 5, and Mosquitto 2 for 3.1.1
    clients): each message goes to one member of the group. Never a topic to publish on."""
    return f"$share/{_segment(group)}/{topic_filter}"


def unshared(topic_filter: str) -> str:
    """The filter a shared subscription (``$share/<group>/<filter>``) matches topics with."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic matching: ``+`` is one level, a trailing ``#`` is any number (even zero)."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return i == len(filter_levels) - 1
        if i >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(filter_levels) == len(topic_levels)
