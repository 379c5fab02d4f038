"""Pure core: the gateway's translation between Alibaba RPC-style HTTP calls and bus commands.

A call is ``GET|POST /?Action=...&Version=...&<params>&<signature params>`` (parameters in the
query string or a form body). The product is chosen by ``Version``; the command type by
``Action``; parameters convert straight into the command (message fields are spelled like
Alibaba's parameters). The gateway never holds a secret: it computes what was signed and asks
RAM (AccessKeys) or STS (``STS.`` keys) to verify it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import msgspec

from protocol import errors
from protocol.base import Message
from protocol.errors import Error, error
from protocol.messages import common, ecs, ram, sts
from services.runtime import signing

PRODUCTS: dict[str, tuple[str, dict[str, type[Message]]]] = {
    "2015-05-01": ("ram", {c.__name__: c for c in ram.COMMANDS}),
    "2015-04-01": ("sts", {c.__name__: c for c in sts.COMMANDS}),
    "2014-05-26": ("ecs", {c.__name__: c for c in ecs.COMMANDS}),
}
VERSIONS = {product: version for version, (product, _) in PRODUCTS.items()}
SIGNATURE_PARAMS = ("AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce", "Timestamp")
COMMON_PARAMS = frozenset({"Action", "Version", "Format", "SecurityToken", "SignatureType", "RegionId"} | set(SIGNATURE_PARAMS))
# Message fields a client may never set: the gateway fills them in.
RESERVED = frozenset({"Caller", "type"})
_MISSING = re.compile(r"missing required field `([^`]+)`")
_AT = re.compile(r"at `\$\.([^`]+)`")


@dataclass(frozen=True)
class Call:
    product: str
    command: Message
    credential: common.Authenticate


def parse(method: str, pairs: Iterable[tuple[str, str]]) -> Call | Error:
    """Turn one HTTP call into a command and the proof of who sent it, or an Alibaba error."""
    pairs = list(pairs)
    params = dict(pairs)
    for name in ("Action", "Version", *SIGNATURE_PARAMS):
        if not params.get(name):
            return errors.missing_parameter(name)
    if params["SignatureMethod"] != "HMAC-SHA1":
        return error("InvalidParameter.SignatureMethod", f"SignatureMethod {params['SignatureMethod']} is not supported; use HMAC-SHA1.")
    product = PRODUCTS.get(params["Version"])
    if product is None:
        return error("InvalidVersion", f"Specified parameter Version {params['Version']} is not valid.", 400)
    name, commands = product
    command_type = commands.get(params["Action"])
    if command_type is None:
        return errors.unknown_action(name, params["Action"])
    fields = {k: v for k, v in params.items() if k not in COMMON_PARAMS and k not in RESERVED}
    if "RegionId" in params and "region_id" in command_type.__struct_fields__:
        fields["RegionId"] = params["RegionId"]
    try:
        command = msgspec.convert(fields, command_type, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        missing = _MISSING.search(text)
        if missing:
            return errors.missing_parameter(missing.group(1))
        at = _AT.search(text)
        return errors.invalid_parameter(at.group(1) if at else "?", text.split(" - at ")[0] + ".")
    credential = common.Authenticate(access_key_id=params["AccessKeyId"], signature=params["Signature"],
                                     string_to_sign=signing.rpc_string_to_sign(method, pairs),
                                     signature_method=params["SignatureMethod"],
                                     security_token=params.get("SecurityToken", ""))
    return Call(name, command, credential)


def verifier(access_key_id: str) -> str:
    """Who holds the secret of this AccessKeyId."""
    return "sts" if access_key_id.startswith("STS.") else "ram"


def render(body: Message, request_id: str, product: str) -> tuple[int, dict[str, object]]:
    """An Alibaba JSON response: the reply's fields plus RequestId, or the error shape."""
    if isinstance(body, Error):
        return body.http_status, {"RequestId": request_id, "HostId": f"{product}.aliyuncs.com", "Code": body.code,
                                  "Message": body.message,
                                  "Recommend": f"https://api.aliyun.com/troubleshoot?q={body.code}"}
    data = msgspec.to_builtins(body)
    data.pop("type", None)
    return 200, {"RequestId": request_id, **data}
