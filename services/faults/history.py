"""Pure core: the event history of a run, as records that a checker reads afterwards.

A :class:`History` is an ordered list of records, each a frozen msgspec Struct of a tagged union
(the tag is the field ``"type"``, the class name). Every time is **wall-clock epoch seconds**
(``time.time()`` of the recording process); credentials' expirations, which the cluster states in
simulated time, are converted with :func:`wall_time` by whoever records them.

==============  ===============================================================================
record          what it says
==============  ===============================================================================
``Probe``       one read of an instance's ``/latest/meta-data/ram/security-credentials/<role>``:
                ``status`` 200 (a credential was served), 404 (no role), another HTTP status,
                or :data:`NO_ANSWER` (0: refused, timed out, malformed; ``error`` says which)
``Write``       a write the run made (``acknowledged``: its success was confirmed to the caller)
``Present``     the keys of one ``kind`` read back after the run (the final state)
``Attach``      AttachInstanceRamRole (or RunInstances with a role): requested / acknowledged
``Detach``      DetachInstanceRamRole: requested / acknowledged
``Exchange``    replies seen for one request (several records for one id add up)
``Call``        one call of the workload (``ramsim app``'s ``AppCallCompleted`` event)
``Fault``       a window in which ``target`` was faulty (``kind``: kill, stop, pause, outage, ...)
``Event``       any other event seen on the bus (ECS's role and refresh events, RAM, STS)
``Mark``        a free-text annotation (what the experiment was doing)
==============  ===============================================================================

JSON lines (:func:`encode_jsonl` / :func:`decode_jsonl`): one record per line, so a run can be
saved, appended to while it runs, and checked later (``ramsim check run.jsonl``).
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar, Union

import msgspec

NO_ANSWER = 0  # Probe.status when no HTTP answer came back (refused, timed out, unreadable)


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type", tag=True):
    """Base of every history record."""


class Probe(Record, kw_only=True):
    """One read of an instance's credential path. ``at``: when the read was sent (the answer
    reflects the instance's state at some moment in ``[at, at + took]``); ``role`` is the role the
    listing named (also on a 404 for that role, a race with a detach); ``expiration`` is the served
    ``Expiration`` as wall-clock epoch seconds."""

    at: float
    instance_id: str
    status: int
    role: str = ""
    access_key_id: str = ""
    expiration: float = 0.0
    host_id: str = ""
    took: float = 0.0
    error: str = ""


class Write(Record, kw_only=True):
    """A write of ``key`` (a ``kind`` of thing: "ram.Role", "oss.Object", ...). ``deleted``: the
    write removes the key. ``acknowledged``: the caller was told it succeeded."""

    at: float
    kind: str
    key: str
    acknowledged: bool
    deleted: bool = False


class Present(Record, kw_only=True):
    """The keys of ``kind`` that exist at the end of the run (read back after it). The last
    ``Present`` of a kind is the one that counts."""

    kind: str
    keys: list[str]
    at: float = 0.0


class Attach(Record, kw_only=True):
    """A role attached to an instance. ``at_acknowledged`` is ``None`` when no answer came back;
    ``ok`` only when the answer said this instance succeeded; ``existing``: already attached when
    the recording began (``at_requested`` is then the moment that was read)."""

    at_requested: float
    at_acknowledged: float | None
    instance_id: str
    role: str
    ok: bool
    code: str = ""
    existing: bool = False


class Detach(Record, kw_only=True):
    """DetachInstanceRamRole for one instance; as :class:`Attach`."""

    at_requested: float
    at_acknowledged: float | None
    instance_id: str
    role: str
    ok: bool
    code: str = ""


class Exchange(Record, kw_only=True):
    """``replies`` answers were seen for request ``request_id`` (every request must get exactly
    one; records with the same id add up, so replies can be counted as they arrive)."""

    request_id: str
    replies: int
    at: float = 0.0
    what: str = ""


class Call(Record, kw_only=True):
    """One workload call and its outcome (ok, denied, expired, error). ``at``: when it ended."""

    at: float
    instance_id: str
    operation: str
    outcome: str
    latency_ms: float
    code: str = ""
    request_id: str = ""


class Fault(Record, kw_only=True):
    """``target`` (a node id such as "sts", "ecs", "metadata-host-1", or "mosquitto") was faulty
    from ``start`` to ``end`` (``None``: until the end of the history). The window should end
    when the target is back (restarted, continued); recovery time is the checker's ``grace``."""

    start: float
    end: float | None = None
    kind: str
    target: str


class Event(Record, kw_only=True):
    """An event seen on the bus (its sender's time, converted to wall-clock)."""

    at: float
    name: str
    src: str = ""
    instance_id: str = ""
    role: str = ""
    access_key_id: str = ""
    expiration: float = 0.0


class Mark(Record, kw_only=True):
    """A note from the experiment ("killing sts", "broker back")."""

    at: float
    text: str


AnyRecord = Union[Probe, Write, Present, Attach, Detach, Exchange, Call, Fault, Event, Mark]
R = TypeVar("R", bound=Record)


class HistoryError(ValueError):
    """A history file that cannot be read; says which line and why."""


class History:
    """Records in the order they were added (which need not be time order)."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.records: list[Record] = list(records)

    def add(self, record: Record) -> Record:
        self.records.append(record)
        return record

    def extend(self, records: Iterable[Record]) -> None:
        self.records.extend(records)

    def of(self, kind: type[R]) -> list[R]:
        """Every record of one type, in order."""
        return [r for r in self.records if isinstance(r, kind)]

    def probes(self, instance_id: str | None = None) -> list[Probe]:
        return [r for r in self.records if isinstance(r, Probe) and (instance_id is None or r.instance_id == instance_id)]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self.records == other.records

    def __repr__(self) -> str:
        return f"History({len(self.records)} records)"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyRecord)


def encode_record(record: Record) -> bytes:
    """One record as one JSON line (with its newline)."""
    return _encoder.encode(record) + b"\n"


def encode_jsonl(history: History | Iterable[Record]) -> bytes:
    return b"".join(encode_record(r) for r in history)


def decode_jsonl(data: bytes) -> History:
    """Inverse of :func:`encode_jsonl`; blank lines are skipped. Raises :class:`HistoryError`."""
    records: list[Record] = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(_decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise HistoryError(f"line {number}: {exc}") from None
    return History(records)


def wall_time(simulated: float, scale: float, origin: float) -> float:
    """A simulated epoch time as wall-clock epoch seconds, for a cluster whose simulated time
    is ``origin + (wall - origin) * scale`` (see ``services.runtime.clock``)."""
    return origin + (simulated - origin) / scale
