"""Secrets never reach a log line."""

from __future__ import annotations

import io
import json

import structlog

from services.runtime import logs

SECRET = "v9RiZKrfNS35nEpSIFkGvOpDt5YFfi"
TOKEN = "CAISlbxTVFMuc3Y0TU5qZURRc3FDb2to"


def capture(**event: object) -> str:
    out = io.StringIO()
    logs.configure(fmt="json", level="debug", service="test", stream=out)
    structlog.get_logger("t").info("event", **event)
    return out.getvalue()


def test_secret_keys_are_redacted_at_any_depth() -> None:
    line = capture(AccessKeySecret=SECRET, nested={"SecurityToken": TOKEN, "list": [{"access_key_secret": SECRET}]},
                   signature="sig==", AccessKeyId="STS.visible")
    assert SECRET not in line and TOKEN not in line and "sig==" not in line
    record = json.loads(line)
    assert record["AccessKeyId"] == "STS.visible"  # identifiers stay: they are how operators trace
    assert record["nested"]["SecurityToken"] == logs.REDACTED
    assert record["service"] == "test"


def test_secrets_inside_strings_are_masked() -> None:
    line = capture(url=f"/?AccessKeyId=LTAIx&Signature=abc%3D&SecurityToken={TOKEN}&AccessKeySecret={SECRET}")
    assert SECRET not in line and TOKEN not in line and "abc%3D" not in line
    assert "AccessKeyId=LTAIx" in line


def test_console_format_is_readable() -> None:
    out = io.StringIO()
    logs.configure(fmt="console", level="info", stream=out)
    structlog.get_logger("t").info("service_ready", node="ram")
    structlog.get_logger("t").debug("hidden")
    text = out.getvalue()
    assert "service_ready" in text and "node=ram" in text and "hidden" not in text
