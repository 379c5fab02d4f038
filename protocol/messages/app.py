"""Pure protocol: events of the workload (``ramsim app``), an application running on an instance."""

from __future__ import annotations

from protocol.base import Message

OUTCOMES = ("ok", "denied", "expired", "error")


class AppCallCompleted(Message):
    """Event: one call the application made with its instance's credentials, and how it ended.

    ``outcome`` is one of :data:`OUTCOMES`; ``code`` is the service's error code ("" when ok);
    ``latency_ms`` is wall-clock time of the call, credentials lookup included."""

    instance_id: str
    operation: str
    outcome: str
    latency_ms: float
    code: str = ""
    request_id: str = ""


ALL = (AppCallCompleted,)
