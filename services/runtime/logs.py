"""I/O shell: structlog setup, JSON for deployments and readable in a terminal.

Secrets never reach a log line: :func:`redact` replaces the value of every key that names a
secret (AccessKeySecret, SecurityToken, Signature, passwords), at any depth, and masks
secret-looking text inside strings.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

SECRET_KEYS = frozenset(k.lower() for k in (
    "AccessKeySecret", "access_key_secret", "SecurityToken", "security_token", "Signature",
    "signature", "password", "secret", "root_access_key_secret", "signing_key", "x-acs-security-token",
    "authorization", "sts_signing_key", "string_to_sign",
))
REDACTED = "[REDACTED]"
# AccessKeySecret=..., SecurityToken=..., Signature=... inside query strings or messages
_INLINE = re.compile(r"(?i)\b(AccessKeySecret|SecurityToken|Signature)=([^&\s\"']+)")


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, str) and "=" in value:
        return _INLINE.sub(lambda m: f"{m.group(1)}={REDACTED}", value)
    return value


def redact(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return _scrub(event_dict)


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (not when logging was configured): a
    stream swapped since (a test's capture, a redirect) is followed, not written to once closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(*, fmt: str = "console", level: str = "info", service: str = "", stream: Any = None) -> None:
    """Configure structlog for one process. ``fmt`` is ``console`` or ``json``."""
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        processors.append(lambda _l, _m, ev: {"service": service, **ev})
    processors += [structlog.processors.format_exc_info, redact, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or _Stderr()),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (gmqtt, aiohttp) at warning and above only.
    logging.basicConfig(level=logging.WARNING, stream=stream or sys.stderr, format="%(levelname)s %(name)s %(message)s")
    # gmqtt warns about writes racing a deliberate close; the bus logs real connection loss itself.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
