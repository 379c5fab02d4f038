"""Pure protocol: every topic ramsim uses is built here, and matched by :func:`matches`.

Layout (``ramsim/v1`` prefix)::

    ramsim/v1/node/<node>                          direct messages to one node (commands, replies)
    ramsim/v1/event/<service>/<EventName>          broadcast events
    ramsim/v1/host/<host>/instance/<instance>      ECS -> the metadata agent of <host>

Per-host topics let broker ACLs confine an agent to its own instances.
"""

from __future__ import annotations

from protocol.errors import TopicError

PREFIX = "ramsim/v1"


def _segment(value: str) -> str:
    if not value or any(ch in value for ch in "/+#\0"):
        raise TopicError(f"not usable as a topic segment: {value!r}")
    return value


def node(node_id: str) -> str:
    return f"{PREFIX}/node/{_segment(node_id)}"


def event(service: str, name: str) -> str:
    return f"{PREFIX}/event/{_segment(service)}/{_segment(name)}"


def events(service: str = "+") -> str:
    """Filter for every event of ``service`` (default: of every service)."""
    return f"{PREFIX}/event/{service if service == '+' else _segment(service)}/+"


def instance(host_id: str, instance_id: str) -> str:
    return f"{PREFIX}/host/{_segment(host_id)}/instance/{_segment(instance_id)}"


def host_instances(host_id: str) -> str:
    """Filter for every instance topic of one host."""
    return f"{PREFIX}/host/{_segment(host_id)}/instance/+"


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
