"""Pure protocol: the one failure body and the Alibaba error codes ramsim uses.

Exceptions (only two are raised by the protocol package)::

    ProtocolError            bytes that are not a valid envelope (names the failing field)
    TopicError(ValueError)   an identifier that cannot be used as a topic segment

Domain failures are never exceptions: they are :class:`Error` replies.
"""

from __future__ import annotations

from protocol.base import Message, Shape


class AccessDeniedDetail(Shape):
    """Why access was denied, as Alibaba's ``AccessDeniedDetail`` carries it."""

    auth_action: str
    auth_principal_type: str
    auth_principal_display_name: str
    auth_principal_owner_id: str
    no_permission_type: str  # ImplicitDeny | ExplicitDeny
    policy_type: str = "AccountLevelIdentityBasedPolicy"
    encoded_diagnostic_message: str = ""  # ramsim: the decision's reason, in plain text


class Error(Message):
    """A failed request. ``code`` is Alibaba's error code string where one exists.

    ``definite`` follows Maelstrom: True means the request certainly had no effect; False
    (timeouts, crashes mid-request) means it may or may not have happened.
    """

    code: str
    message: str
    http_status: int = 400
    definite: bool = True
    access_denied_detail: AccessDeniedDetail | None = None


class ProtocolError(Exception):
    """Bytes that do not decode to a valid envelope. ``field`` is a JSON-path-like locator."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{reason} (at {field})")
        self.field = field
        self.reason = reason


class TopicError(ValueError):
    """An identifier that cannot be placed in a topic (empty, or containing / + # or NUL)."""


def error(code: str, message: str, http_status: int = 400, *, definite: bool = True) -> Error:
    return Error(code=code, message=message, http_status=http_status, definite=definite)


# -- common -------------------------------------------------------------------------------
def missing_parameter(name: str) -> Error:
    return error("MissingParameter", f'The input parameter "{name}" that is mandatory for processing this request is not supplied.')


def invalid_parameter(name: str, detail: str = "") -> Error:
    text = f'The parameter "{name}" is invalid.'
    return error("InvalidParameter", f"{text} {detail}".strip())


def unknown_action(product: str, action: str) -> Error:
    return error("InvalidApi.NotFound", f"Specified api is not found, please check your url and method. ({product} {action})", 404)


def no_permission(reason: str = "") -> Error:
    text = "You are not authorized to do this action. You should be authorized by RAM."
    return error("NoPermission", f"{text} {reason}".strip(), 403)


def internal_error() -> Error:
    return error("InternalError", "An internal error occurred.", 500)


TIMEOUT = "ServiceUnavailable.Timeout"


def timeout(dest: str) -> Error:
    return error(TIMEOUT, f"No reply from {dest} in time; the request may or may not have taken effect.", 503, definite=False)


def malformed(field: str, reason: str) -> Error:
    return error("InvalidParameter.Malformed", f"Malformed message: {reason} (at {field})")
