"""Topics: built in one module, matched by one function (shared by the memory bus and MQTT)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from protocol import topics
from protocol.errors import TopicError


def test_builders() -> None:
    assert topics.inbox("ram", "gateway") == "ramsim/v1/node/ram/from/gateway"
    assert topics.inbox_filter("ram") == "ramsim/v1/node/ram/from/+"
    assert topics.outbox_filter("gateway") == "ramsim/v1/node/+/from/gateway"
    assert topics.event("ram", "PolicyAttachedToRole") == "ramsim/v1/event/ram/PolicyAttachedToRole"
    assert topics.instance("host-1", "i-abc") == "ramsim/v1/host/host-1/instance/i-abc"
    assert topics.host_instances("host-1") == "ramsim/v1/host/host-1/instance/+"
    assert topics.host_instances() == "ramsim/v1/host/+/instance/+"
    assert topics.events() == "ramsim/v1/event/+/+"
    assert topics.events("ecs") == "ramsim/v1/event/ecs/+"
    assert topics.deadletter("metadata-host-1") == "ramsim/v1/deadletter/metadata-host-1"
    assert topics.deadletters() == "ramsim/v1/deadletter/+"
    assert topics.matches(topics.deadletters(), topics.deadletter("ram"))
    assert topics.sender(topics.deadletter("ram")) is None  # not a direct message


@pytest.mark.parametrize("bad", ["", "a/b", "+", "x#", "nul\0"])
def test_unusable_segments_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.inbox(bad, "gateway")
    with pytest.raises(TopicError):
        topics.inbox("ram", bad)


def test_the_sender_of_a_direct_message_is_its_topics_from_segment() -> None:
    assert topics.sender(topics.inbox("sts", "ecs")) == "ecs"
    assert topics.matches(topics.inbox_filter("sts"), topics.inbox("sts", "ecs"))
    assert not topics.matches(topics.inbox_filter("sts"), topics.inbox("ecs", "sts"))
    assert topics.matches(topics.outbox_filter("ecs"), topics.inbox("sts", "ecs"))
    assert not topics.matches(topics.outbox_filter("gateway"), topics.inbox("sts", "ecs"))
    for other in (topics.event("ram", "RoleCreated"), topics.instance("host-1", "i-1"), "ramsim/v1/node/sts",
                  "ramsim/v1/node/sts/from/", "ramsim/v1/node/sts/from/ecs/x", "other/v1/node/sts/from/ecs"):
        assert topics.sender(other) is None, other


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("a/b/c", "a/b/c", True),
    ("a/b/c", "a/b/d", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/x/c", False),
    ("a/+", "a", False),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("+/+", "a/b", True),
    ("a/#/c", "a/b/c", False),  # '#' only matches as the last level
])
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topics.matches(topic_filter, topic) is expected


def test_host_filter_confines_an_agent_to_its_own_instances() -> None:
    mine = topics.host_instances("host-1")
    assert topics.matches(mine, topics.instance("host-1", "i-1"))
    assert not topics.matches(mine, topics.instance("host-2", "i-1"))
    assert not topics.matches(mine, topics.instance("host-10", "i-1"))


level = st.text(alphabet="abcxyz01-", min_size=1, max_size=4)


@given(st.lists(level, min_size=1, max_size=5))
def test_a_topic_matches_itself_and_hash(levels: list[str]) -> None:
    topic = "/".join(levels)
    assert topics.matches(topic, topic)
    assert topics.matches("#", topic)
    assert topics.matches("/".join("+" for _ in levels), topic)


@given(st.lists(level, min_size=2, max_size=5), st.integers(min_value=0, max_value=3))
def test_plus_replaces_exactly_one_level(levels: list[str], index: int) -> None:
    index %= len(levels)
    pattern = levels.copy()
    pattern[index] = "+"
    assert topics.matches("/".join(pattern), "/".join(levels))
    assert not topics.matches("/".join(pattern), "/".join(levels + ["extra"]))


def test_a_shared_subscription_matches_what_its_inner_filter_matches() -> None:
    shared = topics.shared("sts", topics.inbox_filter("sts"))
    assert shared == "$share/sts/ramsim/v1/node/sts/from/+"
    assert topics.unshared(shared) == topics.inbox_filter("sts")
    assert topics.matches(topics.unshared(shared), topics.inbox("sts", "ecs"))
    assert topics.unshared(topics.events()) == topics.events()
