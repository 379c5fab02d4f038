"""Pure core: turning a policy verdict into what callers see: a ``Decision`` on the bus, and a
denial error carrying Alibaba's ``AccessDeniedDetail`` with a short reason."""

from __future__ import annotations

from protocol.errors import AccessDeniedDetail, Error
from protocol.messages import common, ram as m
from services.ram import policy


def decision(verdict: policy.Verdict) -> m.Decision:
    return m.Decision(allowed=verdict.allowed, reason=verdict.reason, decision=verdict.decision,
                      matches=[m.Match(policy=x.policy, version=x.version, statement=x.statement, effect=x.effect, sid=x.sid)
                               for x in verdict.matches])


def denied(code: str, message: str, status: int, principal: common.Principal, action: str, why: m.Decision) -> Error:
    """A 403-style error that says which action was refused, for whom, and why."""
    kind = {"RAMUser": "SubUser", "AssumedRoleUser": "AssumedRoleUser"}.get(principal.identity_type, principal.identity_type)
    name = principal.user_name or (f"{principal.role_name}:{principal.session_name}" if principal.role_name else principal.arn)
    detail = AccessDeniedDetail(auth_action=action, auth_principal_type=kind, auth_principal_display_name=name,
                                auth_principal_owner_id=principal.account_id,
                                no_permission_type="ExplicitDeny" if why.decision == "ExplicitDeny" else "ImplicitDeny",
                                encoded_diagnostic_message=why.reason)
    return Error(code=code, message=f"{message} ({why.reason})", http_status=status, access_denied_detail=detail)
