"""Replication messages (zkv.node.wire) and log records (zkv.storage.records), without sockets:
round trips, refusals, and decoder fuzz (seeded garbage raises RemoteProtocolError and
nothing else)."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import pytest

from zkv.errors import LocalProtocolError, RemoteProtocolError
from zkv.node import wire
from zkv.node.history import History
from zkv.storage.engine import RecordOp
from zkv.storage.records import RecordError, decode_record, encode_record

HIST = History(9, ((3, 4),))

RECORDS: list[tuple[Any, ...]] = [
    (RecordOp.SET, b"k", b"v", None),
    (RecordOp.SET, b"k", b"v", 1234.5),
    (RecordOp.DEL, b"k"),
    (RecordOp.EXPIRE_AT, b"k", 99.0),
    (RecordOp.EXPIRE_AT, b"k", None),
    (RecordOp.MSET, [[b"a", b"1"], [b"b", b"2"]], None),
    (RecordOp.CLEAR,),
    (RecordOp.RESULT, b"r" * 24, b"\x93\x01"),
]


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("record", RECORDS)
def test_record_round_trip(record: tuple[Any, ...]) -> None:
    payload = encode_record(7, record)
    assert payload == msgpack.packb((7, *record), use_bin_type=True)  # the log's format
    assert decode_record(payload) == (7, record)


@pytest.mark.parametrize(
    "items",
    [
        [],
        [7],
        ["7", RecordOp.DEL, b"k"],
        [7, 99, b"k"],
        [7, "SET", b"k"],
        [7, RecordOp.SET, b"k", b"v"],
        [7, RecordOp.SET, "k", b"v", None],
        [7, RecordOp.SET, b"k", b"v", "soon"],
        [7, RecordOp.SET, b"k", b"v", True],
        [7, RecordOp.DEL],
        [7, RecordOp.MSET, [[b"a"]], None],
        [7, RecordOp.MSET, [b"a", b"b"], None],
        [7, RecordOp.CLEAR, b"x"],
        [7, RecordOp.RESULT, b"r", 5],
        {"seq": 7},
    ],
)
def test_malformed_records_are_refused(items: Any) -> None:
    with pytest.raises(RecordError):
        decode_record(msgpack.packb(items, use_bin_type=True))


def test_record_decoder_fuzz() -> None:
    rng = random.Random(14)
    valid = [encode_record(i, r) for i, r in enumerate(RECORDS, 1)]
    refused = 0
    for payload in _garbage(rng, valid, 3000):
        try:
            seq, record = decode_record(payload)
        except RecordError:  # and nothing else
            refused += 1
            continue
        assert type(seq) is int and type(record) is tuple
    assert refused > 1000


# --------------------------------------------------------------------------- round trips


def test_stream_records_round_trip() -> None:
    payloads = [encode_record(10 + i, r) for i, r in enumerate(RECORDS)]
    frames = wire.encode_records(3, 10, payloads)
    assert frames[0] == wire.STREAM_RECORD and frames[2:] == payloads  # the logged bytes
    message = wire.decode_stream(frames)
    assert message == wire.StreamRecords(3, 10, RECORDS)


def test_stream_messages_carry_the_history_id() -> None:
    payloads = [encode_record(10, RECORDS[0])]
    assert wire.decode_stream(wire.encode_records(3, 10, payloads, 2**63 - 1)).history == 2**63 - 1
    assert wire.decode_stream(wire.encode_heartbeat(3, 10, 77)) == wire.StreamHeartbeat(3, 10, 77)
    bad = [b"H", struct.pack(">QQQ", 1, 5, 2**64 - 1)]  # past MAX_ID
    with pytest.raises(RemoteProtocolError, match="history id"):
        wire.decode_stream(bad)


def test_catchup_messages_round_trip() -> None:
    payloads = [encode_record(10 + i, r) for i, r in enumerate(RECORDS)]
    pairs = [
        (wire.encode_begin(9, HIST), wire.Begin(9, HIST), wire.decode_begin),
        (wire.encode_continue(4, 6, HIST), wire.Continue(4, 6, HIST), wire.decode_continue),
        (wire.encode_continue(4, 4, HIST), wire.Continue(4, 4, HIST), wire.decode_continue),
        (
            wire.encode_catchup_records(10, payloads),
            wire.CatchUpRecords(10, RECORDS),
            wire.decode_catchup_records,
        ),
    ]
    for frames, message, decode in pairs:
        assert decode(frames) == message
        assert wire.decode_to_replica(frames) == message
    frames = wire.encode_catchup(41, 2**63 - 1)
    assert wire.decode_catchup(frames) == wire.CatchUp(41, 2**63 - 1)
    assert wire.decode_to_primary(frames) == wire.CatchUp(41, 2**63 - 1)


@pytest.mark.parametrize(
    "frames",
    [
        [b"CATCHUP", struct.pack(">Q", 1)],
        [b"CATCHUP", struct.pack(">Q", 1), struct.pack(">Q", 2**64 - 1)],
        [b"CONTINUE", struct.pack(">Q", 5), struct.pack(">Q", 4), msgpack.packb([9, []])],
        [b"CONTINUE", struct.pack(">Q", 4), struct.pack(">Q", 5), msgpack.packb([0, []])],
        [b"CONTINUE", struct.pack(">Q", 4), struct.pack(">Q", 5), msgpack.packb([9, [[0, 1]]])],
        [b"CONTINUE", struct.pack(">Q", 4), struct.pack(">Q", 5), msgpack.packb([9, [[1]]])],
        [b"CONTINUE", struct.pack(">Q", 4), struct.pack(">Q", 5), msgpack.packb([9, [[1, -1]]])],
        [b"CONTINUE", struct.pack(">Q", 4), struct.pack(">Q", 5), msgpack.packb([9] * 2 + [1])],
        [b"CONTINUE", struct.pack(">Q", 4), struct.pack(">Q", 5), msgpack.packb([9, [[1, 2]] * 8])],
        [b"CONTINUE", struct.pack(">Q", 4), struct.pack(">Q", 5), b"\x92" + b"\xc0" * 400],
        [b"BEGIN", struct.pack(">Q", 4), msgpack.packb({"current": 9})],
        [b"RECORDS", struct.pack(">Q", 4)],
        [b"RECORDS", struct.pack(">Q", 4), encode_record(5, RECORDS[0])],  # numbered 5, not 4
        [b"RECORDS", struct.pack(">Q", 4), *[encode_record(4, RECORDS[0])] * 5000],
    ],
)
def test_malformed_catchup_messages_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode_to_replica(frames) if frames[0] != b"CATCHUP" else wire.decode_to_primary(
            frames
        )


def test_stream_heartbeat_round_trip() -> None:
    frames = wire.encode_heartbeat(2, 2**64 - 1)
    assert wire.decode_stream(frames) == wire.StreamHeartbeat(2, 2**64 - 1)
    assert wire.decode_heartbeat(frames) == wire.StreamHeartbeat(2, 2**64 - 1)


def test_sync_messages_round_trip() -> None:
    to_primary = [
        (wire.encode_hello("s0b", 41), wire.Hello("s0b", 41), wire.decode_hello),
        (wire.encode_snap(), wire.Snap(), wire.decode_snap),
        (wire.encode_ack(41, "s0b"), wire.Ack(41, "s0b"), wire.decode_ack),
    ]
    for frames, message, decode in to_primary:
        assert decode(frames) == message
        assert wire.decode_to_primary(frames) == message
    flat = [b"k", b"v", None, b"t", b"w", 12.5, b"i", b"x", 7]
    pairs = [[b"r" * 24, b"body"]]
    to_replica = [
        (wire.encode_begin(9), wire.Begin(9), wire.decode_begin),
        (wire.encode_chunk(flat), wire.Chunk(flat), wire.decode_chunk),
        (wire.encode_chunk([]), wire.Chunk([]), wire.decode_chunk),
        (wire.encode_results(pairs), wire.Results(pairs), wire.decode_results),
        (wire.encode_end(3), wire.End(3), wire.decode_end),
    ]
    for frames, message, decode in to_replica:
        assert decode(frames) == message
        assert wire.decode_to_replica(frames) == message


def test_the_frames_are_as_documented() -> None:
    assert wire.encode_snap() == [b"SNAP"]
    assert wire.encode_ack(5, "r") == [b"ACK", struct.pack(">Q", 5), b"r"]
    assert wire.encode_begin(5) == [b"BEGIN", struct.pack(">Q", 5)]
    assert wire.encode_end(2) == [b"END", struct.pack(">Q", 2)]
    assert wire.encode_heartbeat(1, 5) == [b"H", struct.pack(">QQQ", 1, 5, 0)]
    assert wire.encode_heartbeat(1, 5, 9) == [b"H", struct.pack(">QQQ", 1, 5, 9)]
    assert wire.encode_catchup(5, 9) == [b"CATCHUP", struct.pack(">Q", 5), struct.pack(">Q", 9)]
    assert wire.encode_begin(5, HIST)[2] == msgpack.packb([9, [[3, 4]]])
    assert wire.encode_continue(4, 6, HIST) == [
        b"CONTINUE",
        struct.pack(">Q", 4),
        struct.pack(">Q", 6),
        msgpack.packb([9, [[3, 4]]]),
    ]
    payload = encode_record(5, RECORDS[0])
    assert wire.encode_catchup_records(5, [payload]) == [b"RECORDS", struct.pack(">Q", 5), payload]
    kind, body = wire.encode_hello("r", 5)
    assert kind == b"HELLO" and msgpack.unpackb(body) == {"name": "r", "seq": 5}


@pytest.mark.parametrize(
    "encode",
    [
        lambda: wire.encode_hello("", 1),
        lambda: wire.encode_hello("x" * 300, 1),
        lambda: wire.encode_hello("r", -1),
        lambda: wire.encode_ack(2**64, "r"),
        lambda: wire.encode_begin(-1),
        lambda: wire.encode_heartbeat(-1, 0),
        lambda: wire.encode_records(0, 1, []),
        lambda: wire.encode_chunk([object()]),
    ],
)
def test_encoders_refuse_what_no_peer_could_decode(encode: Callable[[], Any]) -> None:
    with pytest.raises(LocalProtocolError):
        encode()


# --------------------------------------------------------------------------- refusals


HEADER = struct.pack(">QQ", 1, 10)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"R"],
        [b"R", HEADER],  # no records
        [b"R", HEADER[:-1], encode_record(10, (RecordOp.CLEAR,))],
        [b"R", HEADER, encode_record(11, (RecordOp.CLEAR,))],  # numbered out of order
        [b"R", HEADER, encode_record(10, (RecordOp.CLEAR,)), encode_record(10, (RecordOp.CLEAR,))],
        [b"R", HEADER, b"\xc1"],
        [b"H", HEADER, b""],
        [b"H", HEADER + b"x"],
        [b"X", HEADER],
    ],
)
def test_malformed_stream_messages_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode_stream(frames)


def test_a_stream_message_past_the_frame_limit_is_refused() -> None:
    record = encode_record(1, (RecordOp.CLEAR,))
    frames = [b"R", struct.pack(">QQ", 0, 1), *[record] * (wire.MAX_STREAM_FRAMES - 1)]
    with pytest.raises(RemoteProtocolError, match="not a records message"):
        wire.decode_stream(frames)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"SNAP", b""],
        [b"HELLO"],
        [b"HELLO", b"\xc1"],
        [b"HELLO", msgpack.packb(["s0b", 1])],
        [b"HELLO", msgpack.packb({"name": "s0b"})],
        [b"HELLO", msgpack.packb({"name": "", "seq": 1})],
        [b"HELLO", msgpack.packb({"name": 5, "seq": 1})],
        [b"HELLO", msgpack.packb({"name": "s0b", "seq": -1})],
        [b"HELLO", msgpack.packb({"name": "s0b", "seq": 1, "pad": "x" * 2000})],
        [b"ACK", b"\x00" * 7, b"s0b"],
        [b"ACK", b"\x00" * 8, b""],
        [b"ACK", b"\x00" * 8, b"\xff\xfe"],
        [b"ACK", b"\x00" * 8, b"x" * 256],
        [b"ACK", b"\x00" * 8],
        [b"BEGIN", b"\x00" * 8],  # a primary -> replica kind
        [b"ack", b"\x00" * 8, b"s0b"],
    ],
)
def test_malformed_messages_to_the_primary_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode_to_primary(frames)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"BEGIN"],
        [b"BEGIN", b"\x00" * 9],
        [b"END", b"\x00" * 8, b""],
        [b"CHUNK", msgpack.packb([b"k", b"v"])],
        [b"CHUNK", msgpack.packb([b"k", "v", None])],
        [b"CHUNK", msgpack.packb([b"k", b"v", "never"])],
        [b"CHUNK", msgpack.packb([b"k", b"v", float("nan")])],
        [b"CHUNK", msgpack.packb({"k": "v"})],
        [b"RESULTS", msgpack.packb([[b"r"]])],
        [b"RESULTS", msgpack.packb([[b"r", "body"]])],
        [b"RESULTS", b"\x91"],  # truncated
        [b"SNAP"],  # a replica -> primary kind
    ],
)
def test_malformed_messages_to_a_replica_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode_to_replica(frames)


# --------------------------------------------------------------------------- fuzz


DECODERS: list[Callable[[Sequence[bytes]], Any]] = [
    wire.decode_stream,
    wire.decode_records,
    wire.decode_heartbeat,
    wire.decode_to_primary,
    wire.decode_hello,
    wire.decode_snap,
    wire.decode_ack,
    wire.decode_to_replica,
    wire.decode_begin,
    wire.decode_chunk,
    wire.decode_results,
    wire.decode_end,
    wire.decode_catchup,
    wire.decode_continue,
    wire.decode_catchup_records,
]


def _valid_messages() -> list[list[bytes]]:
    payloads = [encode_record(5 + i, r) for i, r in enumerate(RECORDS)]
    return [
        wire.encode_records(1, 5, payloads),
        wire.encode_heartbeat(1, 5),
        wire.encode_hello("s0b", 5),
        wire.encode_snap(),
        wire.encode_ack(5, "s0b"),
        wire.encode_begin(5),
        wire.encode_chunk([b"k", b"v", None, b"t", b"w", 3.5]),
        wire.encode_results([[b"r" * 24, b"body"]]),
        wire.encode_end(2),
        wire.encode_catchup(5, 77),
        wire.encode_begin(5, HIST),
        wire.encode_continue(4, 7, HIST),
        wire.encode_catchup_records(5, payloads),
    ]


def _garbage(rng: random.Random, valid: list[bytes], n: int) -> list[bytes]:
    """``n`` byte strings: random bytes, and valid ones cut, flipped and spliced."""
    out = []
    for _ in range(n):
        choice = rng.random()
        if choice < 0.3:
            out.append(rng.randbytes(rng.randrange(0, 40)))
        elif choice < 0.5:
            out.append(msgpack.packb(_random_value(rng, 3), use_bin_type=True))
        else:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                op = rng.random()
                if op < 0.4 and data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
                elif op < 0.7:
                    del data[rng.randrange(len(data) + 1) :]
                else:
                    at = rng.randrange(len(data) + 1)
                    data[at:at] = rng.randbytes(rng.randrange(1, 6))
            out.append(bytes(data))
    return out


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randrange(-(2**63), 2**64)
    if kind == 2:
        return rng.random() * 1e6
    if kind == 3:
        return rng.randbytes(rng.randrange(0, 8))
    if kind == 4:
        return "".join(rng.choice("ab\u00e9") for _ in range(rng.randrange(0, 6)))
    if kind == 5:
        return rng.choice([True, False])
    if kind == 6:
        return [_random_value(rng, depth - 1) for _ in range(rng.randrange(0, 7))]
    return {str(i): _random_value(rng, depth - 1) for i in range(rng.randrange(0, 3))}


def _fuzzed_messages(rng: random.Random, n: int) -> list[list[bytes]]:
    valid = _valid_messages()
    frames_pool = [f for message in valid for f in message]
    kinds = [m[0] for m in valid] + [b"", b"\x00" * 16]
    out: list[list[bytes]] = []
    for _ in range(n):
        choice = rng.random()
        if choice < 0.2:  # random frames
            out.append([rng.randbytes(rng.randrange(0, 24)) for _ in range(rng.randrange(0, 6))])
        elif choice < 0.5:  # a known kind, garbage after it
            frames = [rng.choice(kinds)]
            frames += _garbage(rng, frames_pool, rng.randrange(0, 5))
            out.append(frames)
        else:  # a valid message with frames mutated, added or removed
            frames = list(rng.choice(valid))
            i = rng.randrange(len(frames))
            op = rng.random()
            if op < 0.6:
                frames[i] = _garbage(rng, [frames[i], *frames_pool], 1)[0]
            elif op < 0.8:
                frames.insert(i, rng.choice(frames_pool))
            else:
                del frames[i]
            out.append(frames)
    return out


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
def test_decoder_fuzz_raises_only_remote_protocol_error(
    decode: Callable[[Sequence[bytes]], Any],
) -> None:
    rng = random.Random(f"zkv-wire-{decode.__name__}")
    decoded = refused = 0
    for frames in _fuzzed_messages(rng, 3000):
        try:
            message = decode(frames)
        except RemoteProtocolError:
            refused += 1
            continue
        decoded += 1
        assert type(message).__module__ == wire.__name__
    assert refused > 1000  # the fuzz reached the checks, and
    assert decoded + refused == 3000  # nothing else escaped
