"""I/O shell: a small Alibaba OpenAPI client (RPC style, HMAC-SHA1 signature), as the
``aliyun`` CLI and ``aliyun-python-sdk-core`` send requests."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from protocol.products import VERSIONS
from services.cli.errors import CliError
from services.runtime import signing


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    access_key_secret: str
    security_token: str = ""


class ApiError(CliError):
    """An error answer: Alibaba's Code and Message, and the HTTP status."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body

    exit_status = 1

    def line(self, command: str) -> str:
        text = f"ERROR: {self.code}: {self.message}" + (f" (HTTP {self.status})" if self.status else "")
        decided = decided_by(self.body.get("AccessDeniedDetail"))
        return text + (f"\nDecided by: {decided}" if decided else "")

    @property
    def decided(self) -> str:
        """Which policy statement decided this denial, from RAM's explanation ("" when not a denial)."""
        return decided_by(self.body.get("AccessDeniedDetail"))


def decided_by(detail: object) -> str:
    """The "Decided by:" line of a denial's ``AccessDeniedDetail`` (Alibaba's shape; ramsim puts RAM's
    explanation in its ``EncodedDiagnosticMessage``): the statement that decided, or none."""
    if not isinstance(detail, Mapping):
        return ""
    reason = str(detail.get("EncodedDiagnosticMessage") or "")
    kind = str(detail.get("NoPermissionType") or "")
    who = " ".join(str(detail.get(k)) for k in ("AuthPrincipalType", "AuthPrincipalDisplayName") if detail.get(k))
    action = str(detail.get("AuthAction") or "the action")
    policy_type = str(detail.get("PolicyType") or "")
    about = ", ".join(x for x in (f"{action} for {who}".strip(), policy_type) if x)
    if kind == "ExplicitDeny":
        statement = reason.removeprefix("explicitly denied by ") or "a Deny statement"
        return f"{statement} (ExplicitDeny: a Deny wins over every Allow; {about})"
    return f"none: no statement allows it (ImplicitDeny; {about})" + (f"; RAM: {reason}" if reason else "")


class Unreachable(CliError, OSError):
    """Nothing answers at one of the cluster's addresses (it is not running, or not yet)."""


def signed_query(product: str, action: str, params: Mapping[str, str], credential: Credential, method: str = "POST") -> str:
    if product not in VERSIONS:
        raise ValueError(f"unknown product {product!r}; choose one of {', '.join(sorted(VERSIONS))}")
    query = {
        **params, "Action": action, "Version": VERSIONS[product], "Format": "JSON",
        "AccessKeyId": credential.access_key_id, "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex, "Timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if credential.security_token:
        query["SecurityToken"] = credential.security_token
    query["Signature"] = signing.hmac_sha1(credential.access_key_secret, signing.rpc_string_to_sign(method, query))
    return urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


# Our own opener, never urllib's global one: ramsim talks to loopback directly, and building the
# global opener here would freeze the proxy settings an SDK in the same process relies on.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(endpoint: str, product: str, action: str, params: Mapping[str, str], credential: Credential,
         *, timeout: float = 15.0) -> dict[str, Any]:
    """POST one signed call; return the JSON answer or raise :class:`ApiError`."""
    url = f"{endpoint.rstrip('/')}/?{signed_query(product, action, params, credential)}"
    request = urllib.request.Request(url, data=b"", method="POST", headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"Code": "InvalidResponse", "Message": raw.decode(errors="replace")[:200]}
        raise ApiError(exc.code, body.get("Code", "Unknown"), body.get("Message", ""), body) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the gateway at {endpoint}: {reason}; is `ramsim up` running?") from None
