"""Replication messages frame by frame, sans-IO: an encoder and a decoder for each.

Nothing here touches a socket; ``primary.py`` and ``replica.py`` send and receive these
frames, the pure cores (``follower.py``, ``replication.py``) act on the decoded messages,
and the unit tests feed the decoders garbage.

The stream (primary PUB -> replica SUB), in sequence order::

    [b"R", STREAM_HEADER(epoch, seq, history), payload...]
                                one loop turn's records, the first numbered seq: each a log
                                payload [seq, op, *args] (``zkv.storage.records``)
    [b"H", STREAM_HEADER(epoch, seq, history)]
                                heartbeat when idle: "I am at seq"

``history`` is the primary's history id (``zkv.node.history``; 0: none): a replica applies
records only from the history it adopted.

The sync channel (replica DEALER -> primary ROUTER ``sync``; the ROUTER's identity frame is
not shown, and the decoders take the frames after it)::

    replica -> primary: [b"HELLO", msgpack {"name", "seq"}]   I follow you
                        [b"SNAP"]                              send me your state
                        [b"ACK", SEQ(seq), name]               I applied and logged up to seq
                        [b"CATCHUP", SEQ(S), SEQ(history)]     send me the records after S; I
                                                               hold history up to S
    primary -> replica: [b"BEGIN", SEQ(S)(, HISTORY)]          a snapshot as of S follows
                        [b"CHUNK", msgpack [key, value, expires_at, ...]]
                        [b"RESULTS", msgpack [[request id, reply body], ...]]
                        [b"END", SEQ(keys)]                    then follow the stream from S+1
                        [b"CONTINUE", SEQ(S), SEQ(T), HISTORY] the answer to CATCHUP from S:
                                                               records S+1..T follow, then
                                                               follow the stream from T+1
                        [b"RECORDS", SEQ(seq), payload...]     catch-up records, the first
                                                               numbered seq (log payloads)

``HISTORY`` is msgpack ``[current id, [[past id, last shared seq], ...]]``
(``zkv.node.history.History``); a BEGIN without it adopts no history. A CATCHUP the primary
cannot serve (see ``History.allows``, and the records must still be in its backlog) is
answered by a snapshot (BEGIN ...) instead.

Decoding is bounded as for client messages (``zkv.protocol``): the frame count, the kind and
every fixed-size frame are checked before anything is decoded; msgpack (``protocol.unpackb``)
bounds every length by its frame's size; decoded bodies are checked field by field, never
walked recursively (a record's shape by ``zkv.storage.records``). Anything malformed raises
``RemoteProtocolError`` and nothing else; an encoder given values no peer could decode
raises ``LocalProtocolError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from zkv import protocol
from zkv.errors import LocalProtocolError, RemoteProtocolError
from zkv.node.history import EMPTY, MAX_ID, MAX_PAST, History
from zkv.storage.engine import Record
from zkv.storage.records import RecordError, decode_record, is_expiry

__all__ = [
    "ACK",
    "BEGIN",
    "CATCHUP",
    "CHUNK",
    "CONTINUE",
    "END",
    "HELLO",
    "MAX_CATCHUP_RECORDS",
    "MAX_NAME_BYTES",
    "MAX_STREAM_FRAMES",
    "RECORDS",
    "RESULTS",
    "SEQ",
    "SNAP",
    "STREAM_HEADER",
    "STREAM_HEARTBEAT",
    "STREAM_RECORD",
    "Ack",
    "Begin",
    "CatchUp",
    "CatchUpRecords",
    "Chunk",
    "Continue",
    "End",
    "Hello",
    "Results",
    "Snap",
    "StreamHeartbeat",
    "StreamMessage",
    "StreamRecords",
    "ToPrimary",
    "ToReplica",
    "decode_ack",
    "decode_begin",
    "decode_catchup",
    "decode_catchup_records",
    "decode_chunk",
    "decode_continue",
    "decode_end",
    "decode_heartbeat",
    "decode_hello",
    "decode_records",
    "decode_results",
    "decode_snap",
    "decode_stream",
    "decode_to_primary",
    "decode_to_replica",
    "encode_ack",
    "encode_begin",
    "encode_catchup",
    "encode_catchup_records",
    "encode_chunk",
    "encode_continue",
    "encode_end",
    "encode_heartbeat",
    "encode_hello",
    "encode_records",
    "encode_results",
    "encode_snap",
]

STREAM_RECORD: Final = b"R"
STREAM_HEARTBEAT: Final = b"H"
STREAM_HEADER: Final = struct.Struct(">QQQ")
SEQ: Final = struct.Struct(">Q")
HELLO: Final = b"HELLO"
SNAP: Final = b"SNAP"
ACK: Final = b"ACK"
BEGIN: Final = b"BEGIN"
CHUNK: Final = b"CHUNK"
RESULTS: Final = b"RESULTS"
END: Final = b"END"
CATCHUP: Final = b"CATCHUP"
CONTINUE: Final = b"CONTINUE"
RECORDS: Final = b"RECORDS"

#: The most frames one stream message may have (its records plus two); the node reads no
#: longer message either.
MAX_STREAM_FRAMES: Final = 1_000_000
#: The longest node name a HELLO or ACK may carry (config allows 64 characters).
MAX_NAME_BYTES: Final = 255
#: The largest HELLO body (a name and a number).
MAX_HELLO_BYTES: Final = 1024
#: The most records one catch-up RECORDS message may carry (the node reads no more frames).
MAX_CATCHUP_RECORDS: Final = 4096
#: The largest HISTORY frame.
MAX_HISTORY_BYTES: Final = 16 + MAX_PAST * 20


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class StreamRecords:
    """One loop turn's records, numbered ``seq``, ``seq + 1``, ...; each ``(op, *args)``."""

    epoch: int
    seq: int
    records: list[Record]
    #: The primary's history id.
    history: int = 0


@dataclass(frozen=True, slots=True)
class StreamHeartbeat:
    """The primary at ``epoch`` is at ``seq`` (sent when the stream is idle)."""

    epoch: int
    seq: int
    #: The primary's history id.
    history: int = 0


@dataclass(frozen=True, slots=True)
class Hello:
    """A replica called ``name``, at ``seq``, follows this primary."""

    name: str
    seq: int


@dataclass(frozen=True, slots=True)
class Snap:
    """A replica asks for a snapshot."""


@dataclass(frozen=True, slots=True)
class Ack:
    """Replica ``name`` applied and logged every record up to ``seq``."""

    seq: int
    name: str


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A replica holding ``history`` up to ``seq`` asks for the records after ``seq``."""

    seq: int
    history: int


@dataclass(frozen=True, slots=True)
class Begin:
    """A snapshot as of ``seq`` follows, of the primary's ``history``."""

    seq: int
    history: History = EMPTY


@dataclass(frozen=True, slots=True)
class Continue:
    """The answer to ``CatchUp(after)``: records ``after + 1`` to ``target`` follow; the
    primary's history is ``history``."""

    after: int
    target: int
    history: History


@dataclass(frozen=True, slots=True)
class CatchUpRecords:
    """Catch-up records numbered ``seq``, ``seq + 1``, ..."""

    seq: int
    records: list[Record]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Snapshot keys: ``[key, value, expires_at, ...]``."""

    flat: list[Any]


@dataclass(frozen=True, slots=True)
class Results:
    """Snapshot write outcomes: ``[[request id, reply body], ...]``."""

    pairs: list[list[bytes]]


@dataclass(frozen=True, slots=True)
class End:
    """The snapshot is complete: it held ``keys`` keys."""

    keys: int


StreamMessage: TypeAlias = StreamRecords | StreamHeartbeat
ToPrimary: TypeAlias = Hello | Snap | Ack | CatchUp
ToReplica: TypeAlias = Begin | Chunk | Results | End | Continue | CatchUpRecords


# --------------------------------------------------------------------------- stream


def encode_records(
    epoch: int, seq: int, payloads: Sequence[bytes], history: int = 0
) -> list[bytes]:
    """A stream message carrying log ``payloads`` (``encode_record``), the first numbered
    ``seq``: the primary sends the very bytes it logged."""
    if not payloads:
        raise LocalProtocolError("a records message carries at least one record")
    return [STREAM_RECORD, _stream_header(epoch, seq, history), *payloads]


def decode_records(frames: Sequence[bytes]) -> StreamRecords:
    """A ``StreamRecords`` whose every payload is a valid record numbered in order."""
    if not 3 <= len(frames) <= MAX_STREAM_FRAMES or frames[0] != STREAM_RECORD:
        raise RemoteProtocolError(f"not a records message ({_shape(frames)})")
    epoch, seq, history = _unpack_stream_header(frames[1])
    return StreamRecords(epoch, seq, _decode_payloads(frames[2:], seq, "a stream message"), history)


def _decode_payloads(payloads: Sequence[bytes], seq: int, where: str) -> list[Record]:
    records: list[Record] = []
    for i, payload in enumerate(payloads):
        try:
            record_seq, record = decode_record(payload)
        except RecordError as exc:
            raise RemoteProtocolError(f"record {seq + i} of {where}: {exc}") from None
        if record_seq != seq + i:
            raise RemoteProtocolError(f"{where} says seq {seq + i}, its record says {record_seq}")
        records.append(record)
    return records


def encode_heartbeat(epoch: int, seq: int, history: int = 0) -> list[bytes]:
    """A stream heartbeat: the primary at ``epoch`` is at ``seq``."""
    return [STREAM_HEARTBEAT, _stream_header(epoch, seq, history)]


def decode_heartbeat(frames: Sequence[bytes]) -> StreamHeartbeat:
    """A ``StreamHeartbeat`` from its two frames."""
    if len(frames) != 2 or frames[0] != STREAM_HEARTBEAT:
        raise RemoteProtocolError(f"not a stream heartbeat ({_shape(frames)})")
    return StreamHeartbeat(*_unpack_stream_header(frames[1]))


def decode_stream(frames: Sequence[bytes]) -> StreamMessage:
    """Any stream message."""
    if frames and frames[0] == STREAM_RECORD:
        return decode_records(frames)
    if frames and frames[0] == STREAM_HEARTBEAT:
        return decode_heartbeat(frames)
    raise RemoteProtocolError(f"unknown stream message ({_shape(frames)})")


# --------------------------------------------------------------------------- replica -> primary


def encode_hello(name: str, seq: int) -> list[bytes]:
    """HELLO from replica ``name`` at ``seq``."""
    _check_name(name)
    _check_seq(seq)
    return [HELLO, protocol.packb({"name": name, "seq": seq})]


def decode_hello(frames: Sequence[bytes]) -> Hello:
    """A ``Hello``: a name of 1..``MAX_NAME_BYTES`` bytes and a sequence number."""
    if len(frames) != 2 or frames[0] != HELLO or len(frames[1]) > MAX_HELLO_BYTES:
        raise RemoteProtocolError(f"not a HELLO ({_shape(frames)})")
    body = protocol.unpackb(frames[1])
    if type(body) is not dict:
        raise RemoteProtocolError("HELLO body is not a map")
    name, seq = body.get("name"), body.get("seq")
    if type(name) is not str or not 0 < len(name.encode()) <= MAX_NAME_BYTES:
        raise RemoteProtocolError("HELLO has no valid name")
    if type(seq) is not int or not 0 <= seq <= protocol.MAX_SEQ:
        raise RemoteProtocolError("HELLO has no valid seq")
    return Hello(name, seq)


def encode_snap() -> list[bytes]:
    """SNAP: send me a snapshot."""
    return [SNAP]


def decode_snap(frames: Sequence[bytes]) -> Snap:
    """A ``Snap`` from its one frame."""
    if len(frames) != 1 or frames[0] != SNAP:
        raise RemoteProtocolError(f"not a SNAP ({_shape(frames)})")
    return Snap()


def encode_ack(seq: int, name: str) -> list[bytes]:
    """ACK from replica ``name``: it applied and logged up to ``seq``."""
    _check_name(name)
    return [ACK, _pack_seq(seq), name.encode()]


def decode_ack(frames: Sequence[bytes]) -> Ack:
    """An ``Ack`` from its three frames."""
    if len(frames) != 3 or frames[0] != ACK:
        raise RemoteProtocolError(f"not an ACK ({_shape(frames)})")
    seq = _unpack_seq(frames[1], "ACK")
    if not 0 < len(frames[2]) <= MAX_NAME_BYTES:
        raise RemoteProtocolError(f"ACK name of {len(frames[2])} bytes")
    try:
        name = frames[2].decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("ACK name is not UTF-8") from None
    return Ack(seq, name)


def encode_catchup(seq: int, history: int) -> list[bytes]:
    """CATCHUP: send me the records after ``seq``; I hold ``history`` up to it."""
    _check_history_id(history)
    return [CATCHUP, _pack_seq(seq), SEQ.pack(history)]


def decode_catchup(frames: Sequence[bytes]) -> CatchUp:
    """A ``CatchUp`` from its three frames."""
    if len(frames) != 3 or frames[0] != CATCHUP:
        raise RemoteProtocolError(f"not a CATCHUP ({_shape(frames)})")
    seq = _unpack_seq(frames[1], "CATCHUP")
    history = _unpack_seq(frames[2], "CATCHUP history")
    if history > MAX_ID:
        raise RemoteProtocolError(f"CATCHUP history id {history} out of range")
    return CatchUp(seq, history)


_TO_PRIMARY: Final[dict[bytes, Callable[[Sequence[bytes]], ToPrimary]]] = {
    HELLO: decode_hello,
    SNAP: decode_snap,
    ACK: decode_ack,
    CATCHUP: decode_catchup,
}


def decode_to_primary(frames: Sequence[bytes]) -> ToPrimary:
    """Any replica -> primary message (the frames after the ROUTER's identity)."""
    decode = _TO_PRIMARY.get(frames[0]) if frames else None
    if decode is None:
        raise RemoteProtocolError(f"unknown sync message ({_shape(frames)})")
    return decode(frames)


# --------------------------------------------------------------------------- primary -> replica


def encode_begin(seq: int, history: History = EMPTY) -> list[bytes]:
    """BEGIN: a snapshot as of ``seq`` of ``history`` follows (no HISTORY frame if EMPTY)."""
    if history == EMPTY:
        return [BEGIN, _pack_seq(seq)]
    return [BEGIN, _pack_seq(seq), encode_history(history)]


def decode_begin(frames: Sequence[bytes]) -> Begin:
    """A ``Begin`` from its two or three frames."""
    if len(frames) not in (2, 3) or frames[0] != BEGIN:
        raise RemoteProtocolError(f"not a BEGIN ({_shape(frames)})")
    history = decode_history(frames[2]) if len(frames) == 3 else EMPTY
    return Begin(_unpack_seq(frames[1], "BEGIN"), history)


def encode_continue(after: int, target: int, history: History) -> list[bytes]:
    """CONTINUE: records ``after + 1`` to ``target`` of ``history`` follow."""
    if target < after:
        raise LocalProtocolError(f"CONTINUE from {after} to {target}")
    return [CONTINUE, _pack_seq(after), _pack_seq(target), encode_history(history)]


def decode_continue(frames: Sequence[bytes]) -> Continue:
    """A ``Continue`` from its four frames."""
    if len(frames) != 4 or frames[0] != CONTINUE:
        raise RemoteProtocolError(f"not a CONTINUE ({_shape(frames)})")
    after = _unpack_seq(frames[1], "CONTINUE")
    target = _unpack_seq(frames[2], "CONTINUE")
    if target < after:
        raise RemoteProtocolError(f"CONTINUE from {after} back to {target}")
    history = decode_history(frames[3])
    if not history.current:
        raise RemoteProtocolError("CONTINUE without a history id")
    return Continue(after, target, history)


def encode_catchup_records(seq: int, payloads: Sequence[bytes]) -> list[bytes]:
    """RECORDS: catch-up log ``payloads``, the first numbered ``seq``."""
    if not 0 < len(payloads) <= MAX_CATCHUP_RECORDS:
        raise LocalProtocolError(f"a RECORDS message carries 1..{MAX_CATCHUP_RECORDS} records")
    return [RECORDS, _pack_seq(seq), *payloads]


def decode_catchup_records(frames: Sequence[bytes]) -> CatchUpRecords:
    """A ``CatchUpRecords`` whose every payload is a valid record numbered in order."""
    if not 3 <= len(frames) <= MAX_CATCHUP_RECORDS + 2 or frames[0] != RECORDS:
        raise RemoteProtocolError(f"not a RECORDS ({_shape(frames)})")
    seq = _unpack_seq(frames[1], "RECORDS")
    return CatchUpRecords(seq, _decode_payloads(frames[2:], seq, "a RECORDS message"))


def encode_history(history: History) -> bytes:
    """The HISTORY frame: msgpack ``[current, [[id, last seq], ...]]``."""
    _check_history_id(history.current)
    if len(history.past) > MAX_PAST:
        raise LocalProtocolError(f"a history of {len(history.past)} past ids")
    for i, end in history.past:
        _check_history_id(i)
        _check_seq(end)
    return protocol.packb([history.current, [[i, end] for i, end in history.past]])


def decode_history(frame: bytes) -> History:
    """A ``History`` from its HISTORY frame."""
    if len(frame) > MAX_HISTORY_BYTES:
        raise RemoteProtocolError(f"HISTORY frame of {len(frame)} bytes")
    body = protocol.unpackb(frame)
    if type(body) is not list or len(body) != 2:
        raise RemoteProtocolError("HISTORY is not [current, past]")
    current, past = body
    if not _is_history_id(current) or type(past) is not list or len(past) > MAX_PAST:
        raise RemoteProtocolError("HISTORY has no valid current id or past list")
    entries: list[tuple[int, int]] = []
    for entry in past:
        if (
            type(entry) is not list
            or len(entry) != 2
            or not _is_history_id(entry[0])
            or not entry[0]
            or type(entry[1]) is not int
            or not 0 <= entry[1] <= protocol.MAX_SEQ
        ):
            raise RemoteProtocolError("HISTORY past entry is not [id, seq]")
        entries.append((entry[0], entry[1]))
    return History(current, tuple(entries))


def encode_chunk(flat: list[Any]) -> list[bytes]:
    """CHUNK of snapshot keys, ``[key, value, expires_at, ...]`` (``Store.walk``)."""
    return [CHUNK, protocol.packb(flat)]


def decode_chunk(frames: Sequence[bytes]) -> Chunk:
    """A ``Chunk``: triples of bytes key, bytes value and nil or a number."""
    if len(frames) != 2 or frames[0] != CHUNK:
        raise RemoteProtocolError(f"not a CHUNK ({_shape(frames)})")
    flat = protocol.unpackb(frames[1])
    if type(flat) is not list or len(flat) % 3:
        raise RemoteProtocolError("CHUNK body is not an array of key, value, expiry triples")
    for i in range(0, len(flat), 3):
        if type(flat[i]) is not bytes or type(flat[i + 1]) is not bytes:
            raise RemoteProtocolError(f"CHUNK entry {i // 3}: key or value is not bytes")
        if not is_expiry(flat[i + 2]):
            raise RemoteProtocolError(f"CHUNK entry {i // 3}: expiry is not nil or a number")
    return Chunk(flat)


def encode_results(pairs: list[list[bytes]]) -> list[bytes]:
    """RESULTS: the write outcomes the snapshot carries (``Store.result_items``)."""
    return [RESULTS, protocol.packb(pairs)]


def decode_results(frames: Sequence[bytes]) -> Results:
    """A ``Results``: ``[request id, reply body]`` pairs of bytes."""
    if len(frames) != 2 or frames[0] != RESULTS:
        raise RemoteProtocolError(f"not a RESULTS ({_shape(frames)})")
    pairs = protocol.unpackb(frames[1])
    if type(pairs) is not list or not all(
        type(p) is list and len(p) == 2 and type(p[0]) is bytes and type(p[1]) is bytes
        for p in pairs
    ):
        raise RemoteProtocolError("RESULTS body is not an array of [bytes, bytes]")
    return Results(pairs)


def encode_end(keys: int) -> list[bytes]:
    """END: the snapshot is complete, with ``keys`` keys."""
    return [END, _pack_seq(keys)]


def decode_end(frames: Sequence[bytes]) -> End:
    """An ``End`` from its two frames."""
    if len(frames) != 2 or frames[0] != END:
        raise RemoteProtocolError(f"not an END ({_shape(frames)})")
    return End(_unpack_seq(frames[1], "END"))


_TO_REPLICA: Final[dict[bytes, Callable[[Sequence[bytes]], ToReplica]]] = {
    BEGIN: decode_begin,
    CHUNK: decode_chunk,
    RESULTS: decode_results,
    END: decode_end,
    CONTINUE: decode_continue,
    RECORDS: decode_catchup_records,
}


def decode_to_replica(frames: Sequence[bytes]) -> ToReplica:
    """Any primary -> replica message on the sync channel."""
    decode = _TO_REPLICA.get(frames[0]) if frames else None
    if decode is None:
        raise RemoteProtocolError(f"unknown sync message ({_shape(frames)})")
    return decode(frames)


# --------------------------------------------------------------------------- helpers


def _check_seq(seq: int) -> None:
    if type(seq) is not int or not 0 <= seq <= protocol.MAX_SEQ:
        raise LocalProtocolError(f"sequence number {seq!r} out of range")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not 0 < len(name.encode()) <= MAX_NAME_BYTES:
        raise LocalProtocolError(f"node name {name!r} is empty or too long")


def _pack_seq(seq: int) -> bytes:
    _check_seq(seq)
    return SEQ.pack(seq)


def _unpack_seq(frame: bytes, what: str) -> int:
    if len(frame) != SEQ.size:
        raise RemoteProtocolError(f"{what} number frame is {len(frame)} bytes; expected 8")
    (seq,) = SEQ.unpack(frame)
    return int(seq)


def _is_history_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def _check_history_id(history: int) -> None:
    if not _is_history_id(history):
        raise LocalProtocolError(f"history id {history!r} out of range")


def _stream_header(epoch: int, seq: int, history: int) -> bytes:
    _check_seq(epoch)
    _check_seq(seq)
    _check_history_id(history)
    return STREAM_HEADER.pack(epoch, seq, history)


def _unpack_stream_header(frame: bytes) -> tuple[int, int, int]:
    if len(frame) != STREAM_HEADER.size:
        raise RemoteProtocolError(
            f"stream header is {len(frame)} bytes; expected {STREAM_HEADER.size}"
        )
    epoch, seq, history = STREAM_HEADER.unpack(frame)
    if history > MAX_ID:
        raise RemoteProtocolError(f"stream history id {history} out of range")
    return int(epoch), int(seq), int(history)


def _shape(frames: Sequence[bytes]) -> str:
    kind = frames[0][:16] if frames else b""
    return f"kind {kind!r}, {len(frames)} frames"
