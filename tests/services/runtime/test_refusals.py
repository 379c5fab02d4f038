"""services.runtime.refusals.unreadable: the status and reason for what aiohttp's parser refused,
from the exceptions both of its parsers (C and pure Python) raise; the reason never quotes the request."""

from __future__ import annotations

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, BadStatusLine, LineTooLong

from services.runtime.refusals import unreadable


@pytest.mark.parametrize("exc, status, words", [
    (LineTooLong(bytearray(b"/?q=" + b"a" * 96) + b"...", 8190), 414, "request line is longer than 8190"),  # C parser, URL
    (LineTooLong(b"http://100.100.100.200/latest/" + b"a" * 70 + b"...", 8190), 414, "request line"),     # absolute form  # bytes only: nothing dials it (tests/conftest.py refuses any connect there anyway)
    (LineTooLong(b"b" * 100 + b"...", 8190), 431, "request header is longer than 8190"),                 # C parser, value
    (LineTooLong(b"host: " + b"b" * 94 + b"...", 8190), 431, "request header"),                          # Python parser
    (BadHttpMessage("Invalid character in Content-Length:\n\n  b'Content-Length: abc'\n   ^"), 400, "Content-Length"),
    (BadHttpMethod("NOT HTTP", "Invalid method encountered:\n\n  b'NOT HTTP AT ALL'\n  ^"), 400, "request line is not HTTP"),
    (BadStatusLine("GET / HTTX/1.1"), 400, "request line is not HTTP"),
])
def test_each_refusal_gets_its_status_and_a_reason_without_the_request_bytes(exc, status, words) -> None:  # noqa: ANN001
    got, reason = unreadable(exc)
    assert got == status and words in reason, (got, reason)
    assert "aaaa" not in reason and "bbbb" not in reason and "abc" not in reason and "HTTX" not in reason
