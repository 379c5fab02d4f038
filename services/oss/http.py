"""I/O shell: the OSS HTTP front: one aiohttp server moving bytes between the SDKs, the pure
core (addressing, signatures, decisions, documents) and the store.

Per request: the core parses it (bucket, key, operation, what was signed); RAM or STS verify
the signature over the bus; the core decides with its policy cache (asking RAM
``GetEffectivePolicies`` on a miss); then the operation runs against the store. Every answer
carries ``x-oss-request-id``; errors are OSS error documents (for HEAD, in ``x-oss-err``).
"""

from __future__ import annotations

import base64
import contextvars
import email.utils
import secrets
import time
from typing import AsyncIterator

import msgspec
import structlog
from aiohttp import web

from protocol.errors import Error
from protocol.messages import ram
from protocol.messages.common import AuthenticateOk
from services.oss import core, documents
from services.oss.core import OssError, oss_error
from services.oss.store import BadDigest, Incomplete, Object, Store, TooLarge
from services.runtime import signing
from services.runtime.client import BusBarrier, BusClient
from services.runtime.clock import Clock

log = structlog.get_logger("oss.http")
CHUNK = 256 * 1024
REQUEST_ID = "x-oss-request-id"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("oss_request_id", default="")  # one request per task


class OssHttp:
    def __init__(self, oss: core.OssCore, store: Store, client: BusClient, clock: Clock, *, request_timeout: float = 5.0,
                 max_object_size: int = core.MAX_OBJECT_SIZE, authorize: bool = True) -> None:
        self.core = oss
        self.store = store
        self.client = client
        self.clock = clock
        self.request_timeout = request_timeout
        self.max_object_size = max_object_size
        self.authorize = authorize  # False only for bench/oss.py's baseline (RAMSIM_OSS_AUTHORIZE=false)
        self.barrier = BusBarrier(client, timeout=request_timeout)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = secrets.token_hex(12).upper()
        _request_id.set(request_id)  # for answers whose headers leave before handle() returns (streamed bodies)
        try:
            answer = await self._serve(request, request_id)
        except Exception:  # noqa: BLE001 - the service keeps serving
            log.exception("oss_request_failed", method=request.method, path=request.raw_path)
            answer = oss_error("InternalError", "We encountered an internal error. Please try again.", 500)
        if isinstance(answer, OssError):
            return self._error(request, answer, request_id)
        answer.headers[REQUEST_ID] = request_id
        return answer

    def refused(self, request: web.BaseRequest, status: int, reason: str) -> web.Response:
        """A request the HTTP parser could not read (see services/runtime/refusals.py), as an OSS error document."""
        code = {414: "InvalidURI", 431: "RequestHeaderTooLarge"}.get(status, "InvalidRequest")
        return self._error(request, oss_error(code, reason, status), secrets.token_hex(12).upper())

    def _error(self, request: web.BaseRequest, problem: OssError, request_id: str) -> web.Response:
        body = documents.error(problem, request_id, request.host)
        headers = {"x-oss-request-id": request_id, "Date": _http_date(time.time())}
        if problem.ec:
            headers["x-oss-ec"] = problem.ec
        if request.method == "HEAD":
            headers["x-oss-err"] = documents.error_header(body)
            return web.Response(status=problem.status, headers=headers)
        return web.Response(status=problem.status, body=body, headers=headers, content_type="application/xml")

    async def _serve(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse | OssError:
        raw_path, _, raw_query = request.raw_path.partition("?")
        if raw_path.startswith("http://"):  # absolute-form (through a proxy)
            raw_path = "/" + raw_path.split("/", 3)[3] if raw_path.count("/") >= 3 else "/"
        http = core.HttpRequest(method=request.method, host=request.host, raw_path=raw_path, raw_query=raw_query,
                                headers={k.lower(): v for k, v in request.headers.items()})
        call = core.parse(http, self.core.account_id, time.time())
        if isinstance(call, OssError):
            return call
        op = call.operation
        if not self.authorize:  # benchmark-only baseline: the same path without authentication and authorization
            return await self._perform(request, op, call.query, "unauthenticated")
        now = self.clock.now()
        principal = self.core.verify_locally(call.credential, now)
        if principal is not None and not self.core.watching and not await self.barrier.wait():
            # verified without a bus round trip, and RAM does not wait for our acknowledgements:
            # first let every RAM event sent before this request land
            return oss_error("ServiceUnavailable", "Authorization is unavailable, try again.", 503)
        if principal is None:
            asked = msgspec.structs.replace(call.credential, want_signing_key=call.credential.signature_method == signing.OSS_V4)
            who = await self.client.request(core.verifier(call.credential.access_key_id), asked,
                                            timeout=self.request_timeout, trace_id=request_id[:16].lower())
            if not isinstance(who, AuthenticateOk):
                code = who.code if isinstance(who, Error) else type(who).__name__
                log.info("oss_unauthenticated", code=code, access_key_id=call.credential.access_key_id)
                return core.authentication_error(who if isinstance(who, Error) else Error(code=code, message=""), call)
            self.core.remember_key(call.credential, who)
            principal = who.principal
        entry = self.core.cached(principal)
        if entry is None:
            answer = await self.client.request("ram", ram.GetEffectivePolicies(principal=principal),
                                               timeout=self.request_timeout, trace_id=request_id[:16].lower())
            if not isinstance(answer, ram.GetEffectivePoliciesOk):
                return oss_error("ServiceUnavailable", "Authorization is unavailable, try again.", 503)
            entry = self.core.learn(principal, answer)
        verdict = self.core.authorize(principal, entry, op.checks, now)
        if not verdict.allowed:
            log.info("oss_access_denied", principal=principal.arn, action=verdict.action, reason=verdict.reason)
            return core.policy_denied(verdict)
        return await self._perform(request, op, call.query, principal.arn)

    async def _perform(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str],
                       principal: str) -> web.StreamResponse | OssError:
        result = await getattr(self, "_" + op.name)(request, op, query)
        log.info("oss_request_served", action=op.name, principal=principal, bucket=op.bucket,
                 outcome=result.code if isinstance(result, OssError) else "ok")
        return result

    def _existing(self, op: core.Operation) -> "Object | OssError":
        """The stored object an operation names, or the OSS error saying why not."""
        if self.store.bucket(op.bucket) is None:
            return _no_bucket(op.bucket)
        return self.store.object(op.bucket, op.key) or _no_key(op.key)

    # -- buckets -----------------------------------------------------------------------------
    async def _ListBuckets(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        limit = core.max_keys(query)
        if isinstance(limit, OssError):
            return limit
        prefix, marker = query.get("prefix", ""), query.get("marker", "")
        found = self.store.buckets(prefix, marker, limit)
        truncated = len(found) > limit
        shown = found[:limit]
        body = documents.list_buckets(shown, self.core.account_id, self.core.region_id, prefix=prefix, marker=marker,
                                      max_keys=limit, truncated=truncated, next_marker=shown[-1].name if truncated else "")
        return _xml(body)

    async def _PutBucket(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        body = await request.content.read(documents.MAX_REQUEST_XML + 1)
        storage = documents.create_bucket_configuration(body)
        if isinstance(storage, OssError):
            return storage
        if not self.store.create_bucket(op.bucket, time.time(), storage):
            return oss_error("BucketAlreadyExists", "The requested bucket name is not available. The bucket namespace is "
                             "shared by all users of the system. Please select a different name and try again.", 409,
                             BucketName=op.bucket)
        return web.Response(status=200, headers={"Location": f"/{op.bucket}"})

    async def _GetBucketInfo(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        bucket = self.store.bucket(op.bucket)
        if bucket is None:
            return _no_bucket(op.bucket)
        return _xml(documents.bucket_info(bucket, self.core.account_id, self.core.region_id))

    async def _GetBucketLocation(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        if self.store.bucket(op.bucket) is None:
            return _no_bucket(op.bucket)
        return _xml(documents.location(self.core.region_id))

    async def _DeleteBucket(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        outcome = self.store.delete_bucket(op.bucket)
        if outcome == "missing":
            return _no_bucket(op.bucket)
        if outcome == "not_empty":
            return oss_error("BucketNotEmpty", "The bucket you tried to delete is not empty.", 409, BucketName=op.bucket)
        return web.Response(status=204)

    async def _ListObjects(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        if self.store.bucket(op.bucket) is None:
            return _no_bucket(op.bucket)
        limit = core.max_keys(query)
        if isinstance(limit, OssError):
            return limit
        prefix, delimiter, marker = query.get("prefix", ""), query.get("delimiter", ""), query.get("marker", "")
        url = query.get("encoding-type", "") == "url"
        page = core.list_page(self.store.objects(op.bucket, prefix, marker), prefix=prefix, delimiter=delimiter,
                              after=marker, max_keys=limit)
        return _xml(documents.list_objects(op.bucket, page, prefix=prefix, marker=marker, delimiter=delimiter,
                                           max_keys=limit, url=url, account_id=self.core.account_id))

    async def _ListObjectsV2(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        if self.store.bucket(op.bucket) is None:
            return _no_bucket(op.bucket)
        limit = core.max_keys(query)
        if isinstance(limit, OssError):
            return limit
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        token, start_after = query.get("continuation-token", ""), query.get("start-after", "")
        after = documents.untoken(token) if token else start_after
        if isinstance(after, OssError):
            return after
        url = query.get("encoding-type", "") == "url"
        page = core.list_page(self.store.objects(op.bucket, prefix, after), prefix=prefix, delimiter=delimiter,
                              after=after, max_keys=limit)
        owner = self.core.account_id if query.get("fetch-owner") == "true" else None
        return _xml(documents.list_objects_v2(op.bucket, page, prefix=prefix, start_after=start_after, token=token,
                                              next_token=documents.token(page.next_marker) if page.truncated else "",
                                              delimiter=delimiter, max_keys=limit, url=url, account_id=owner))

    # -- objects -----------------------------------------------------------------------------
    async def _PutObject(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        if self.store.bucket(op.bucket) is None:
            return _no_bucket(op.bucket)
        length = request.headers.get("Content-Length")
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if length is None and not chunked:
            return oss_error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        expected = int(length) if length is not None and length.isdigit() else None
        if expected is not None and expected > self.max_object_size:
            return oss_error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.", 400,
                             MaxSizeAllowed=str(self.max_object_size))
        meta = _user_meta(request)
        if isinstance(meta, OssError):
            return meta
        try:
            stored = await self.store.put(op.bucket, op.key, _chunks(request), expected=expected, limit=self.max_object_size,
                                          content_type=request.headers.get("Content-Type", "application/octet-stream"),
                                          meta=meta, now=time.time(), content_md5=request.headers.get("Content-MD5"))
        except BadDigest:
            return oss_error("InvalidDigest", "The Content-MD5 you specified was invalid.", 400)
        except TooLarge:
            return oss_error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.", 400,
                             MaxSizeAllowed=str(self.max_object_size))
        except (Incomplete, ConnectionError, web.HTTPException) as exc:
            log.info("oss_upload_incomplete", bucket=op.bucket, error=type(exc).__name__)
            return oss_error("IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header.", 400)
        except KeyError:
            return _no_bucket(op.bucket)
        return web.Response(status=200, headers={"ETag": f'"{stored.etag.upper()}"'})

    async def _CopyObject(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        assert op.source is not None
        if self.store.bucket(op.source[0]) is None:
            return _no_bucket(op.source[0])
        if self.store.bucket(op.bucket) is None:
            return _no_bucket(op.bucket)
        source = self.store.object(*op.source)
        if source is None:
            return _no_key(op.source[1])
        replace = request.headers.get("x-oss-metadata-directive", "COPY").upper() == "REPLACE"
        meta = _user_meta(request) if replace else source.meta
        if isinstance(meta, OssError):
            return meta
        content_type = request.headers.get("Content-Type", source.content_type) if replace else source.content_type
        try:
            stored = await self.store.copy(source, op.bucket, op.key, content_type=content_type, meta=meta, now=time.time())
        except KeyError:
            return _no_bucket(op.bucket)
        return _xml(documents.copy_result(stored.etag, stored.last_modified), {"ETag": f'"{stored.etag.upper()}"'})

    async def _GetObject(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        obj = self._existing(op)
        if isinstance(obj, OssError):
            return obj
        headers = _object_headers(obj)
        for name in ("content-type", "content-language", "cache-control", "content-encoding", "expires", "content-disposition"):
            if f"response-{name}" in query:
                headers[name.title()] = query[f"response-{name}"]
        start, end, status = 0, obj.size - 1, 200
        if "Range" in request.headers:
            standard = request.headers.get("x-oss-range-behavior", "") == "standard"
            span = core.byte_range(request.headers["Range"], obj.size, standard)
            if isinstance(span, OssError):
                return span
            if span is not None:
                (start, end), status = span, 206
                headers["Content-Range"] = f"bytes {start}-{end}/{obj.size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        headers[REQUEST_ID] = _request_id.get()
        response = web.StreamResponse(status=status, headers=headers)
        if request.method == "HEAD":
            return response
        await response.prepare(request)
        with open(self.store.path(obj), "rb") as body:
            body.seek(start)
            left = length
            while left > 0:
                chunk = body.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _HeadObject(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        obj = self._existing(op)
        if isinstance(obj, OssError):
            return obj
        headers = _object_headers(obj)
        headers["Content-Length"] = str(obj.size)
        return web.Response(status=200, headers=headers)

    _GetObjectMeta = _HeadObject

    async def _DeleteObject(self, request: web.BaseRequest, op: core.Operation, query: dict[str, str]) -> web.StreamResponse | OssError:
        if self.store.bucket(op.bucket) is None:
            return _no_bucket(op.bucket)
        self.store.delete(op.bucket, op.key)
        return web.Response(status=204)


# -- helpers -------------------------------------------------------------------------------
async def _chunks(request: web.BaseRequest) -> AsyncIterator[bytes]:
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            return
        yield chunk


def _user_meta(request: web.BaseRequest) -> dict[str, str] | OssError:
    meta = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-oss-meta-")}
    if sum(len(k) + len(v) for k, v in meta.items()) > core.MAX_META_BYTES:
        return oss_error("InvalidArgument", "Your metadata headers exceed the maximum allowed metadata size.", 400)
    return meta


def _object_headers(obj) -> dict[str, str]:  # noqa: ANN001
    return {"ETag": f'"{obj.etag.upper()}"', "Last-Modified": _http_date(obj.last_modified),
            "Content-Type": obj.content_type, "Accept-Ranges": "bytes", "x-oss-object-type": "Normal",
            "x-oss-storage-class": "Standard", "Content-MD5": _b64_md5(obj.etag), **obj.meta}


def _b64_md5(hex_md5: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_md5)).decode()


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _xml(body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=200, body=body, content_type="application/xml", headers=headers)


def _no_bucket(name: str) -> OssError:
    return oss_error("NoSuchBucket", "The specified bucket does not exist.", 404, BucketName=name)


def _no_key(key: str) -> OssError:
    return oss_error("NoSuchKey", "The specified key does not exist.", 404, Key=key)
