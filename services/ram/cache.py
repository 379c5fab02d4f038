"""Pure core: the effective-policy cache an enforcement point (ECS, OSS) keeps, so it decides
by itself instead of asking RAM on every call.

Entries are RAM's answer to ``GetEffectivePolicies`` for one principal, compiled once. Any
RAM event carries RAM's new ``generation``; seeing one drops every entry older than it, and an
answer older than the newest event seen is used for its own request but not kept. RAM publishes
its event before replying to the change, and the broker delivers in order, so a call made after
a change returns is decided with the change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.messages import common, ram as m
from protocol.times import iso
from services.ram import explain, policy


@dataclass(frozen=True)
class Entry:
    generation: int
    all_allowed: bool
    policies: tuple[policy.NamedPolicy, ...]
    # Decisions already made with these policies, by (session policy, action, resource). Only
    # when no policy has a Condition: then nothing else (time, source IP, ...) can change them.
    # The memo lives and dies with the entry, which a RAM event drops.
    decisions: dict[tuple[str, str, str], m.Decision] = field(default_factory=dict, compare=False, repr=False)
    conditional: bool = True


MAX_MEMO = 4096  # remembered decisions per entry


class PolicyCache:
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self.generation = 0  # the newest RAM generation seen
        self._entries: dict[str, Entry] = {}
        self._sessions: dict[str, policy.Document] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(principal: common.Principal) -> str:
        """Policies attach to users and roles, not to sessions or keys."""
        if principal.identity_type == "AssumedRoleUser":
            return f"{principal.account_id}:role/{principal.role_name}"
        if principal.identity_type == "RAMUser":
            return f"{principal.account_id}:user/{principal.user_name}"
        return f"{principal.account_id}:{principal.identity_type}"

    def get(self, principal: common.Principal) -> Entry | None:
        entry = self._entries.get(self.key(principal))
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, principal: common.Principal, answer: m.GetEffectivePoliciesOk) -> Entry:
        policies = tuple(policy.NamedPolicy(p.name, p.version, policy.parse(p.document)) for p in answer.policies)
        entry = Entry(answer.generation, answer.all_allowed, policies,
                      conditional=any(p.document.conditional for p in policies))
        if answer.generation >= self.generation:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[self.key(principal)] = entry
        return entry

    def observed(self, msg: object) -> bool:
        """Take in ``msg`` if it is a RAM event (an enforcement point's first check on every
        message); True when it was one."""
        if getattr(msg, "dest", None) == "*" and getattr(msg, "src", None) == "ram":
            self.observe(getattr(getattr(msg, "body", None), "generation", 0))
            return True
        return False

    def clear(self, generation: int) -> None:
        """Forget every entry (they may have missed events); ``generation`` is RAM's current one."""
        self._entries.clear()
        self.generation = max(self.generation, generation)

    def observe(self, generation: int) -> None:
        """A RAM event: anything cached before ``generation`` may be stale."""
        if generation > self.generation:
            self.generation = generation
            self._entries = {k: e for k, e in self._entries.items() if e.generation >= generation}

    def decide(self, entry: Entry, principal: common.Principal, check: m.Check, now: float) -> m.Decision:
        if entry.all_allowed:
            return m.Decision(allowed=True, reason=f"{principal.arn} is the account owner", decision="Allow")
        session = []
        conditional = entry.conditional
        if principal.session_policy:
            document = self._sessions.get(principal.session_policy)
            if document is None:
                document = self._sessions[principal.session_policy] = policy.parse(principal.session_policy, max_chars=2048)
            session = [policy.NamedPolicy("session-policy", "", document)]
            conditional = conditional or document.conditional
        memo = None if conditional else (principal.session_policy, check.action, check.resource)
        if memo is not None and memo in entry.decisions:
            return entry.decisions[memo]
        context = {"acs:CurrentTime": iso(now), "acs:PrincipalARN": principal.arn, **check.context}
        request = policy.RequestContext(action=check.action, resource=check.resource, keys=context)
        decision = explain.decision(policy.decide(entry.policies, request, session=session))
        if memo is not None and len(entry.decisions) < MAX_MEMO:
            entry.decisions[memo] = decision
        return decision
