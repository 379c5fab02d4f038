"""I/O shell: HTTP servers that refuse unreadable requests in the service's own error shape.

aiohttp's parser rejects what it cannot read (a request line over 8190 bytes, such as a 1 MB
query; ``Content-Length: abc``; a request line that is not HTTP) before any handler or
middleware runs, and answers with its own plain-text 400. A :class:`RefusingServer` is a
``web.Server`` whose connections hand those to ``refuse(request, status, reason)`` instead, so
the gateway answers Alibaba's JSON error, OSS its XML error document and a metadata view its
plain text, each with the status :func:`unreadable` picks:

=====================================  ======  ============================================
what could not be read                 status  reason (never the request's own bytes)
=====================================  ======  ============================================
the request line (its URL) too long    414     ``The request line is longer than N bytes.``
a header line too long                 431     ``A request header is longer than N bytes.``
a request line that is not HTTP        400     ``The request line is not HTTP: ...``
anything else (a bad Content-Length)   400     ``The request is not valid HTTP: ...``
=====================================  ======  ============================================

The request handed to ``refuse`` is aiohttp's placeholder (``GET /``, no headers). Each
refusal is one log line; the connection is closed after the answer, as aiohttp does.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

Refuse = Callable[[web.BaseRequest, int, str], web.StreamResponse]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
log = structlog.get_logger("http")
_LIMIT = re.compile(r"Got more than (\d+) bytes when reading: (?:bytearray\()?b?['\"]?(.{0,8})")
TARGETS = ("/", "*", "http://", "https://")  # how a request line's target starts (origin, asterisk or absolute form)


def unreadable(exc: HttpProcessingError) -> tuple[int, str]:
    """The status and reason for a request aiohttp could not parse (see the table above)."""
    text = exc.message if isinstance(exc.message, str) else str(exc)
    if isinstance(exc, LineTooLong):
        found = _LIMIT.search(text)
        limit, first = (found.group(1), found.group(2)) if found else ("the limit of", "")
        if first.startswith(TARGETS):  # the line too long is a request target: the request line
            return 414, f"The request line is longer than {limit} bytes."
        return 431, f"A request header is longer than {limit} bytes."
    summary = re.split(r"[:'\"\n]|\bb'", text, maxsplit=1)[0].strip()[:120] or type(exc).__name__  # never the bytes
    if isinstance(exc, BadStatusLine):
        return 400, f"The request line is not HTTP: {summary}."
    return 400, f"The request is not valid HTTP: {summary}."


class RefusingServer(web.Server):
    """``web.Server(handler)`` whose unreadable requests are answered by ``refuse``."""

    def __init__(self, handler: Handler, refuse: Refuse, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.refuse = refuse

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class _Connection(RequestHandler):
    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        server = self._manager
        if not isinstance(exc, HttpProcessingError) or not isinstance(server, RefusingServer) or request.writer.output_size:
            return super().handle_error(request, status, exc, message)  # a handler's failure, or an answer already begun
        status, reason = unreadable(exc)
        log.warning("http_request_unreadable", status=status, reason=reason, error=type(exc).__name__, remote=request.remote)
        try:
            response = server.refuse(request, status, reason)
        except Exception:  # noqa: BLE001 - a broken refusal must not cost the answer
            return super().handle_error(request, status, exc, reason)
        response.force_close()
        return response
