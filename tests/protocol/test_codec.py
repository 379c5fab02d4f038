"""The wire format: plain msgpack, one typed decoder, one typed error naming the field."""

from __future__ import annotations

import msgpack
import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from protocol import codec
from protocol.envelope import Envelope
from protocol.errors import Error, ProtocolError
from protocol.messages import ALL, common, ecs, ram, sts


def _sample(kind: type) -> object:
    """A valid instance of every message type, built from its own field types."""
    return msgspec.convert(_fill(kind), kind)


def _fill(kind: type) -> dict[str, object]:
    values: dict[str, object] = {}
    for field in msgspec.structs.fields(kind):
        if field.required:
            values[field.encode_name] = _value(field.type)
    return values


def _value(kind: object) -> object:
    if kind is str:
        return "x"
    if kind is int:
        return 3
    if kind is float:
        return 1.5
    if kind is bool:
        return True
    origin = getattr(kind, "__origin__", None)
    if origin is list:
        return [_value(kind.__args__[0])]  # type: ignore[attr-defined]
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return _fill(kind)
    if getattr(kind, "__args__", None):  # Literal / Optional
        first = kind.__args__[0]  # type: ignore[attr-defined]
        return first if isinstance(first, str) else _value(first)
    raise AssertionError(f"no sample for {kind!r}")


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.__name__)
def test_every_message_round_trips_and_is_plain_msgpack(kind: type) -> None:
    env = Envelope(src="ecs", dest="sts", msg_id=42, body=_sample(kind), in_reply_to=7, trace_id="abc", sent_at=1.25)
    data = codec.encode(env)
    assert codec.decode(data) == env
    plain = msgpack.unpackb(data)  # the reference library reads it
    assert plain["src"] == "ecs" and plain["msg_id"] == 42 and plain["in_reply_to"] == 7
    assert plain["body"]["type"] == kind.__name__


def test_fields_travel_in_alibaba_spelling() -> None:
    body = ecs.AttachInstanceRamRole(region_id="cn-hangzhou", ram_role_name="R", instance_ids='["i-1"]')
    plain = msgpack.unpackb(codec.encode(Envelope(src="gateway", dest="ecs", msg_id=1, body=body)))
    assert plain["body"] == {"type": "AttachInstanceRamRole", "RegionId": "cn-hangzhou", "RamRoleName": "R", "InstanceIds": '["i-1"]'}


def test_messages_written_by_another_msgpack_library_decode() -> None:
    data = msgpack.packb({"src": "cli", "dest": "ram", "msg_id": 9,
                          "body": {"type": "GetRole", "RoleName": "MyApplicationRole"}})
    env = codec.decode(data)
    assert env.body == ram.GetRole(role_name="MyApplicationRole")
    assert env.in_reply_to is None and env.trace_id == ""


# Golden bytes: a message as version 1 of the wire wrote it must keep decoding.
GOLDEN_GET_ROLE = bytes.fromhex("84a3737263a161a464657374a162a66d73675f6964" "01a4626f647982a474797065a7476574526f6c65a8526f6c654e616d65a178")


def test_golden_bytes_keep_decoding() -> None:
    assert codec.decode(GOLDEN_GET_ROLE) == Envelope(src="a", dest="b", msg_id=1, body=ram.GetRole(role_name="x"))


@pytest.mark.parametrize(("data", "field"), [
    (msgpack.packb({"src": "a", "dest": "b", "msg_id": 1, "body": {"type": "GetRole", "RoleName": 5}}), "$.body.RoleName"),
    (msgpack.packb({"src": "a", "dest": "b", "msg_id": "one", "body": {"type": "Ping"}}), "$.msg_id"),
    (msgpack.packb({"src": "a", "dest": "b", "msg_id": 1, "body": {"type": "NoSuchMessage"}}), "$.body.type"),
    (msgpack.packb({"src": "a", "dest": "b", "msg_id": 1, "body": {"type": "GetRole"}}), "$.body"),
    (msgpack.packb({"dest": "b", "msg_id": 1, "body": {"type": "Ping"}}), "$"),
    (msgpack.packb([1, 2, 3]), "$"),
    (b"\xc1garbage", "$"),
    (b"", "$"),
])
def test_bad_bytes_raise_one_typed_error_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        codec.decode(data)
    assert caught.value.field == field
    assert caught.value.reason


def test_oversized_messages_are_refused_before_decoding() -> None:
    big = msgpack.packb({"src": "a", "dest": "b", "msg_id": 1, "body": {"type": "GetRole", "RoleName": "x" * codec.MAX_MESSAGE_BYTES}})
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.decode(big)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["src", "dest", "msg_id", "body", "in_reply_to", "trace_id", "sent_at"]),
                       st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.floats(allow_nan=False),
                                 st.fixed_dictionaries({"type": st.sampled_from([k.__name__ for k in ALL])}))))
def test_mutated_envelopes_never_raise_anything_but_protocol_error(fields: dict) -> None:
    try:
        codec.decode(msgpack.packb(fields))
    except ProtocolError:
        pass


def test_error_body_carries_code_status_and_definiteness() -> None:
    env = Envelope(src="ecs", dest="gateway", msg_id=3, body=Error(code="InvalidUser.PassRoleForbidden", message="no", http_status=403))
    decoded = codec.decode(codec.encode(env)).body
    assert isinstance(decoded, Error)
    assert (decoded.code, decoded.http_status, decoded.definite) == ("InvalidUser.PassRoleForbidden", 403, True)


def test_message_modules_list_every_type_once() -> None:
    names = [k.__name__ for k in ALL]
    assert len(names) == len(set(names))
    for module in (common, ram, sts, ecs):
        for kind in module.ALL:
            assert kind in ALL


def test_deeply_nested_junk_is_a_protocol_error_not_a_recursion_error() -> None:
    deep = b"\x91" * 200_000 + b"\xc0"  # fits under the size cap; msgspec's depth limit is far lower
    head = msgpack.packb({"src": "a", "dest": "b", "msg_id": 1, "body": {"type": "Ping"}})
    in_a_skipped_field = b"\x85" + head[1:] + msgpack.packb("Junk") + deep  # an unknown field: msgspec still walks it
    in_the_body = b"\x84" + head[1:-len(msgpack.packb({"type": "Ping"}))] + b"\x82" + msgpack.packb("type") + \
        msgpack.packb("Ping") + msgpack.packb("Junk") + deep
    for data in (in_a_skipped_field, in_the_body):
        with pytest.raises(ProtocolError, match="nested too deeply"):
            codec.decode(data)


def test_a_string_that_is_not_utf8_is_a_protocol_error() -> None:
    good = codec.encode(Envelope(src="a", dest="b", msg_id=1, body=ram.GetRole(role_name="x"), trace_id="t\u00e9"))
    broken = good.replace("t\u00e9".encode(), b"t\xc3\x00", 1)  # a two-byte sequence cut short
    with pytest.raises(ProtocolError, match="not UTF-8"):
        codec.decode(broken)
    for text in (b"\xa2\xc3\x28", b"\xa1\xff"):  # a bare str, and inside the envelope
        with pytest.raises(ProtocolError):
            codec.decode(text)
        with pytest.raises(ProtocolError):
            codec.decode(good.replace(msgpack.packb("a"), text, 1))
