"""The effective-policy cache of an enforcement point: entries follow RAM's generations, and
decisions are remembered only where nothing but the action and resource can change them."""

from __future__ import annotations

import json

from protocol.messages import ram as m
from protocol.messages.common import Principal
from protocol.times import iso
from services.ram.cache import PolicyCache
from tests.helpers import ACCOUNT, T0

ROLE = Principal(identity_type="AssumedRoleUser", account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:assumed-role/r/s",
                 principal_id="1:s", role_name="r", role_id="1")
GET = m.Check(action="oss:GetObject", resource=f"acs:oss:*:{ACCOUNT}:b/k")
PUT = m.Check(action="oss:PutObject", resource=f"acs:oss:*:{ACCOUNT}:b/k")


def answer(statement: dict, generation: int = 1) -> m.GetEffectivePoliciesOk:
    text = json.dumps({"Version": "1", "Statement": [statement]})
    return m.GetEffectivePoliciesOk(policies=[m.PolicyDocument(name="Custom:p", version="v1", document=text)], generation=generation)


def test_unconditional_decisions_are_remembered_per_action_resource_and_session() -> None:
    cache = PolicyCache()
    entry = cache.put(ROLE, answer({"Effect": "Allow", "Action": "oss:Get*", "Resource": "*"}))
    assert not entry.conditional
    first = cache.decide(entry, ROLE, GET, T0)
    assert first.allowed and cache.decide(entry, ROLE, GET, T0 + 1) is first  # the same object: remembered
    assert not cache.decide(entry, ROLE, PUT, T0).allowed
    narrowed = Principal(**{**{f: getattr(ROLE, f) for f in ROLE.__struct_fields__},
                            "session_policy": json.dumps({"Version": "1", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]})})
    assert not cache.decide(entry, narrowed, GET, T0).allowed  # another session policy: decided on its own
    assert len(entry.decisions) == 3


def test_conditional_policies_are_decided_every_time() -> None:
    cache = PolicyCache()
    until = iso(T0 + 10)
    entry = cache.put(ROLE, answer({"Effect": "Allow", "Action": "oss:Get*", "Resource": "*",
                                    "Condition": {"DateLessThan": {"acs:CurrentTime": until}}}))
    assert entry.conditional
    assert cache.decide(entry, ROLE, GET, T0).allowed
    assert not cache.decide(entry, ROLE, GET, T0 + 20).allowed  # time moved on: a remembered Allow would be wrong
    assert entry.decisions == {}


def test_a_ram_event_drops_the_entry_and_what_it_remembered() -> None:
    cache = PolicyCache()
    entry = cache.put(ROLE, answer({"Effect": "Allow", "Action": "oss:*", "Resource": "*"}))
    assert cache.decide(entry, ROLE, PUT, T0).allowed
    cache.observe(2)
    assert cache.get(ROLE) is None
    fresh = cache.put(ROLE, answer({"Effect": "Allow", "Action": "oss:Get*", "Resource": "*"}, generation=2))
    assert not cache.decide(fresh, ROLE, PUT, T0).allowed
