"""Unit tests for zkv.protocol: the sans-IO wire format (no sockets)."""

from __future__ import annotations

import contextlib
import math
import random
import struct
import time
from typing import Any

import msgpack
import pytest

from zkv import protocol
from zkv.errors import (
    ERROR_CLASSES,
    ClientClosed,
    ConfigError,
    ErrorCode,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    KeyTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RequestError,
    ServerError,
    ValueTooLarge,
    ZkvError,
)
from zkv.protocol import (
    ARG_SPECS,
    CLIENT_OPS,
    MAX_KEY_FRAME_BYTES,
    MAX_PAGE,
    MAX_SEQ,
    MAX_TIMEOUT_MS,
    MOVE_OPS,
    NO_ARGS,
    REPLY_HEADER,
    REQUEST_HEADER,
    VERSION,
    Consistency,
    NodeInfo,
    Op,
    Request,
)

ALL_OPS = frozenset(Op)
CLIENT_ID = bytes(range(16))

#: Valid argument lists for every op (several per op where the spec allows variants).
VALID_ARGS: dict[Op, list[list[Any]]] = {
    Op.GET: [[]],
    Op.PUT: [[b"v", None], [b"", 1], [b"\x00\xff", 0.25]],
    Op.DELETE: [[]],
    Op.CREATE: [[b"v", None], [b"v", 3600]],
    Op.EXISTS: [[]],
    Op.CAS: [[b"old", b"new"], [b"", b""]],
    Op.EXPIRE: [[10], [0], [-5], [2.5]],
    Op.TTL: [[]],
    Op.MGET: [[[]], [[b"a", b"b", b""]]],
    Op.MPUT: [[[], None], [[[b"a", b"1"], [b"b", b"2"]], 7.5]],
    Op.KEYS: [
        [b"", None, 1],
        [b"user:", ["s1", 17, b"user:9"], MAX_PAGE],
        [b"p", ["s", 0, None], 5],
    ],
    Op.CLEAR: [[]],
    Op.COUNT: [[]],
    Op.SCAN: [[b"", 0, None, 10], [b"p", 16383, b"after", MAX_PAGE]],
    Op.STATUS: [[]],
    Op.BATCH: [[[[1, b"k", []]]], [[[2, b"a", [b"v", None]], [3, b"b", []]]]],
    Op.FAILOVER: [["s0", None], ["s1", "s1b"]],
    Op.RESHARD: [[None, None, None], ["s0", "s3", 100]],
    Op.EXPORT: [[[0, 1, 2], None, 1000], [[5], 3, 10]],
    Op.CHANGES: [[[0], 1000, False], [[7, 8], 10, True]],
    Op.IMPORT: [[[0], [], []], [[0], [[b"k", b"v", None], [b"d", None, 12.5]], [[b"r", b"o"]]]],
    Op.SETTLE: [[[0], "own", 1], [[1, 2], "drop", 1000], [[3], "abort", 5]],
    Op.WATCH: [
        ["s0", None, [b""], 1000, 5000, True, None],
        ["s1", [3, 120, 2], [b"a:", b"b:"], 1, 0, False, None],
        ["s1", [3, 120, 0], [b"a:"], 10, 0, True, [17, b"a:x"]],
    ],
}


def _key_for(op: Op) -> bytes:
    return b"some-key" if op in protocol.SINGLE_KEY_OPS else b""


def _frames(
    op: Op,
    args: list[Any],
    *,
    key: bytes | None = None,
    seq: int = 42,
    consistency: Consistency = Consistency.STRONG,
) -> list[bytes]:
    return protocol.encode_request(
        Request(
            op,
            _key_for(op) if key is None else key,
            args,
            client_id=CLIENT_ID,
            seq=seq,
            consistency=consistency,
            timeout_ms=1500,
        )
    )


def _header(
    *,
    version: int = VERSION,
    op: int = Op.GET,
    consistency: int = 0,
    client_id: bytes = CLIENT_ID,
    seq: int = 99,
    timeout_ms: int = 1000,
) -> bytes:
    return REQUEST_HEADER.pack(version, op, consistency, client_id, seq, timeout_ms)


def _nested(depth: int) -> Any:
    """A list nested ``depth`` levels deep: 1 -> [], 2 -> [[]], ..."""
    obj: Any = []
    for _ in range(depth - 1):
        obj = [obj]
    return obj


# --------------------------------------------------------------------------- requests


def test_valid_args_cover_every_op() -> None:
    assert set(VALID_ARGS) == set(ARG_SPECS) == set(Op)


@pytest.mark.parametrize(
    ("op", "args"),
    [(op, args) for op, variants in VALID_ARGS.items() for args in variants],
    ids=lambda v: v.name if isinstance(v, Op) else None,
)
@pytest.mark.parametrize("consistency", list(Consistency))
def test_request_round_trip(op: Op, args: list[Any], consistency: Consistency) -> None:
    request = Request(
        op,
        _key_for(op),
        args,
        client_id=CLIENT_ID,
        seq=123456789,
        consistency=consistency,
        timeout_ms=2500,
    )
    frames = protocol.encode_request(request)
    assert len(frames) == 2
    assert all(type(f) is bytes for f in frames)
    # the head is the fixed header followed by the key's bytes (none for multi-key ops)
    assert REQUEST_HEADER.size == 31
    assert len(frames[0]) == REQUEST_HEADER.size + len(_key_for(op))
    assert frames[0][REQUEST_HEADER.size :] == _key_for(op)
    assert protocol.request_key(frames[0]) == _key_for(op)
    assert frames[1] == (msgpack.packb(args) if args else NO_ARGS)

    decoded = protocol.decode_request(frames, allowed=ALL_OPS)
    assert decoded == request
    assert decoded.op is op
    assert decoded.consistency is consistency
    assert decoded.args == args
    # the types survive too (bytes stay bytes, ints stay ints, floats stay floats)
    assert [type(a) for a in decoded.args] == [type(a) for a in args]


def test_request_round_trip_extremes() -> None:
    request = Request(
        Op.GET,
        b"k" * MAX_KEY_FRAME_BYTES,
        [],
        client_id=b"\xff" * 16,
        seq=MAX_SEQ,
        consistency=Consistency.EVENTUAL,
        timeout_ms=MAX_TIMEOUT_MS,
    )
    assert protocol.decode_request(protocol.encode_request(request)) == request


def test_request_header_layout() -> None:
    frames = _frames(Op.PUT, [b"v", None], seq=7, consistency=Consistency.EVENTUAL)
    assert len(frames) == 2
    fixed = (
        bytes([VERSION, Op.PUT, 1]) + CLIENT_ID + (7).to_bytes(8, "big") + (1500).to_bytes(4, "big")
    )
    assert len(fixed) == REQUEST_HEADER.size
    assert frames[0] == fixed + b"some-key"
    assert msgpack.unpackb(frames[1]) == [b"v", None]
    # a multi-key op's head is the fixed header alone; no arguments is an empty array
    head, body = _frames(Op.COUNT, [], seq=7)
    assert len(head) == REQUEST_HEADER.size
    assert body == NO_ARGS == msgpack.packb([])


def test_decode_request_no_args_body() -> None:
    request = protocol.decode_request([_header(seq=3) + b"k", NO_ARGS])
    assert (request.op, request.key, request.args, request.seq) == (Op.GET, b"k", [], 3)
    # NO_ARGS still goes through the arguments check
    with pytest.raises(InvalidRequest, match="takes 2 arguments") as info:
        protocol.decode_request([_header(op=Op.PUT, seq=4) + b"k", NO_ARGS])
    assert info.value.seq == 4


def test_new_client_id_is_random_16_bytes() -> None:
    ids = {protocol.new_client_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == protocol.CLIENT_ID_BYTES == 16 for i in ids)


@pytest.mark.parametrize(
    "request_",
    [
        Request(Op.GET, client_id=b"short"),
        Request(Op.GET, client_id=b"x" * 17),
        Request(Op.GET, seq=-1),
        Request(Op.GET, seq=MAX_SEQ + 1),
        Request(Op.GET, timeout_ms=-1),
        Request(Op.GET, timeout_ms=MAX_TIMEOUT_MS + 1),
        Request(Op.PUT, b"k", [object(), None]),
        Request(Op.MGET, args=[{1, 2}]),
    ],
)
def test_encode_request_rejects_unencodable(request_: Request) -> None:
    with pytest.raises(LocalProtocolError):
        protocol.encode_request(request_)


@pytest.mark.parametrize("count", [0, 1, 3, 4])
def test_decode_request_wrong_frame_count(count: int) -> None:
    frames = _frames(Op.GET, [])
    frames = [*frames, b"", b""][:count]
    with pytest.raises(RemoteProtocolError, match=f"a request has 2 frames, got {count}"):
        protocol.decode_request(frames)


def test_decode_request_old_three_frame_layout_is_refused() -> None:
    # version 1's [header, key, body] is refused, whatever the header says
    frames = [_header(seq=5), b"k", msgpack.packb([])]
    with pytest.raises(RemoteProtocolError, match="a request has 2 frames, got 3"):
        protocol.decode_request(frames)


@pytest.mark.parametrize("size", [0, 1, 10, 30])
def test_decode_request_short_header(size: int) -> None:
    frames = [_header(seq=7)[:size], msgpack.packb([])]
    with pytest.raises(RemoteProtocolError, match=f"header is {size} bytes") as info:
        protocol.decode_request(frames)
    assert info.value.seq is None  # the header could not be read


@pytest.mark.parametrize("size", [32, 100])
def test_decode_request_head_past_the_header_is_the_key(size: int) -> None:
    key = b"k" * (size - REQUEST_HEADER.size)
    request = protocol.decode_request([_header(seq=8) + key, msgpack.packb([])])
    assert request.key == key
    assert request.seq == 8
    # garbage of that length is read as a header of another version, and refused
    with pytest.raises(RemoteProtocolError, match="protocol version 1"):
        protocol.decode_request([b"\x01" * size, msgpack.packb([])])


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_decode_request_wrong_version(version: int) -> None:
    frames = [_header(version=version, seq=31337) + b"k", msgpack.packb([])]
    with pytest.raises(RemoteProtocolError, match=f"protocol version {version}") as info:
        protocol.decode_request(frames)
    assert info.value.seq == 31337


@pytest.mark.parametrize("op", [0, 9, 19, 27, 31, 43, 54, 255])
def test_decode_request_unknown_op_code(op: int) -> None:
    frames = [_header(op=op, seq=5), msgpack.packb([])]
    with pytest.raises(RemoteProtocolError, match=f"unknown op {op}") as info:
        protocol.decode_request(frames, allowed=ALL_OPS)
    assert info.value.seq == 5


@pytest.mark.parametrize("code", [2, 3, 255])
def test_decode_request_unknown_consistency(code: int) -> None:
    frames = [_header(consistency=code, seq=6) + b"k", msgpack.packb([])]
    with pytest.raises(RemoteProtocolError, match=f"consistency {code}") as info:
        protocol.decode_request(frames)
    assert info.value.seq == 6


def test_decode_request_consistency_codes() -> None:
    for code, level in [(0, Consistency.STRONG), (1, Consistency.EVENTUAL)]:
        frames = [_header(consistency=code) + b"k", msgpack.packb([])]
        assert protocol.decode_request(frames).consistency is level


@pytest.mark.parametrize("op", sorted(ALL_OPS - protocol.SINGLE_KEY_OPS), ids=lambda o: Op(o).name)
def test_decode_request_key_on_multi_key_op(op: Op) -> None:
    frames = _frames(op, VALID_ARGS[op][0], key=b"oops", seq=8)
    assert frames[0].endswith(b"oops")
    with pytest.raises(RemoteProtocolError, match=f"{op.name} takes no key") as info:
        protocol.decode_request(frames, allowed=ALL_OPS)
    assert info.value.seq == 8


def test_decode_request_oversize_key() -> None:
    ok = _frames(Op.GET, [], key=b"k" * MAX_KEY_FRAME_BYTES)
    assert protocol.decode_request(ok).key == b"k" * MAX_KEY_FRAME_BYTES
    frames = _frames(Op.GET, [], key=b"k" * (MAX_KEY_FRAME_BYTES + 1), seq=9)
    assert len(frames[0]) == REQUEST_HEADER.size + MAX_KEY_FRAME_BYTES + 1
    with pytest.raises(
        RemoteProtocolError, match=f"key of {MAX_KEY_FRAME_BYTES + 1} bytes"
    ) as info:
        protocol.decode_request(frames)
    assert info.value.seq == 9


def test_decode_request_empty_key_on_single_key_op_is_allowed() -> None:
    frames = _frames(Op.GET, [], key=b"")
    assert len(frames[0]) == REQUEST_HEADER.size
    assert protocol.decode_request(frames).key == b""


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x92\x01",  # array of 2, only one element
        b"\x90\x90",  # extra data after the array
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G elements
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4G bytes
        b"\x91\xa3\xff\xfe\xfd",  # str with invalid UTF-8
        b"\x91\x81\x91\x01\x02",  # map with an array as key
        b"\x91\x81\x01\x02",  # map with an int key (strict_map_key)
    ],
)
def test_decode_request_body_not_msgpack(body: bytes) -> None:
    frames = [_header(seq=10) + b"k", body]
    with pytest.raises(RemoteProtocolError, match="invalid msgpack body") as info:
        protocol.decode_request(frames)
    assert info.value.seq == 10  # the header was read, so the error can be answered


@pytest.mark.parametrize("body", [b"\xc1", b"", b"\x91" * 100_000 + b"\x90"])
def test_body_decode_errors_carry_seq(body: bytes) -> None:
    frames = [_header(op=Op.MGET, seq=10), body]
    with pytest.raises(RemoteProtocolError) as info:
        protocol.decode_request(frames)
    assert info.value.seq == 10


@pytest.mark.parametrize("body", [None, 1, "str", b"bin", {"a": 1}, 1.5, True])
def test_decode_request_body_not_array(body: Any) -> None:
    frames = [_header(seq=11) + b"k", msgpack.packb(body, use_bin_type=True)]
    with pytest.raises(RemoteProtocolError, match="not an array") as info:
        protocol.decode_request(frames)
    assert info.value.seq == 11


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (Op.GET, [b"extra"]),
        (Op.PUT, []),
        (Op.PUT, [b"v"]),
        (Op.PUT, [b"v", None, None]),
        (Op.CAS, [b"a"]),
        (Op.EXPIRE, []),
        (Op.MGET, []),
        (Op.MPUT, [[]]),
        (Op.KEYS, [b"", None]),
        (Op.SCAN, [b"", 0, None]),
        (Op.STATUS, [1]),
    ],
)
def test_decode_request_wrong_arg_count(op: Op, args: list[Any]) -> None:
    frames = _frames(op, args, seq=12)
    with pytest.raises(InvalidRequest, match=f"takes {len(ARG_SPECS[op])} arguments") as info:
        protocol.decode_request(frames, allowed=ALL_OPS)
    assert info.value.seq == 12
    assert info.value.key == (_key_for(op) or None)
    assert info.value.code is ErrorCode.INVALID_REQUEST


NAN = float("nan")
INF = float("inf")


@pytest.mark.parametrize(
    ("op", "args", "name"),
    [
        (Op.PUT, ["v", None], "value"),
        (Op.PUT, [None, None], "value"),
        (Op.PUT, [b"v", "5"], "ttl"),
        (Op.PUT, [b"v", True], "ttl"),
        (Op.PUT, [b"v", 0], "ttl"),
        (Op.PUT, [b"v", -1], "ttl"),
        (Op.PUT, [b"v", -0.5], "ttl"),
        (Op.PUT, [b"v", NAN], "ttl"),
        (Op.PUT, [b"v", INF], "ttl"),
        (Op.PUT, [b"v", -INF], "ttl"),
        (Op.PUT, [b"v", [1]], "ttl"),
        (Op.CREATE, [b"v", NAN], "ttl"),
        (Op.CREATE, [1, None], "value"),
        (Op.CAS, [b"a", "b"], "new"),
        (Op.CAS, [None, b"b"], "expected"),
        (Op.EXPIRE, [NAN], "seconds"),
        (Op.EXPIRE, [INF], "seconds"),
        (Op.EXPIRE, [False], "seconds"),
        (Op.EXPIRE, ["10"], "seconds"),
        (Op.EXPIRE, [None], "seconds"),
        (Op.MGET, [b"a"], "keys"),
        (Op.MGET, [["a"]], "keys"),
        (Op.MGET, [[b"a", None]], "keys"),
        (Op.MPUT, [[[b"a"]], None], "items"),
        (Op.MPUT, [[[b"a", b"1", b"x"]], None], "items"),
        (Op.MPUT, [[[b"a", "1"]], None], "items"),
        (Op.MPUT, [[b"a", b"1"], None], "items"),
        (Op.MPUT, [[[b"a", b"1"]], 0], "ttl"),
        (Op.MPUT, [[[b"a", b"1"]], NAN], "ttl"),
        (Op.KEYS, ["p", None, 1], "prefix"),
        (Op.KEYS, [b"p", "cursor", 1], "cursor"),
        (Op.KEYS, [b"p", ["s", -1, None], 1], "cursor"),
        (Op.KEYS, [b"p", ["s", 1], 1], "cursor"),
        (Op.KEYS, [b"p", [b"s", 1, None], 1], "cursor"),
        (Op.KEYS, [b"p", ["s", 1, "after"], 1], "cursor"),
        (Op.KEYS, [b"p", None, 0], "limit"),
        (Op.KEYS, [b"p", None, MAX_PAGE + 1], "limit"),
        (Op.KEYS, [b"p", None, 1.0], "limit"),
        (Op.KEYS, [b"p", None, True], "limit"),
        (Op.SCAN, [b"", -1, None, 1], "slot"),
        (Op.SCAN, [b"", 0, "a", 1], "after"),
        (Op.SCAN, [b"", 0, None, -1], "limit"),
    ],
)
def test_decode_request_wrong_arg_types(op: Op, args: list[Any], name: str) -> None:
    frames = _frames(op, args, seq=13)
    with pytest.raises(InvalidRequest, match=f"^{op.name}: {name} must be ") as info:
        protocol.decode_request(frames, allowed=ALL_OPS)
    assert info.value.seq == 13
    assert info.value.key == (_key_for(op) or None)


def test_check_args_directly() -> None:
    protocol.check_args(Request(Op.PUT, b"k", [b"v", 1.0]))
    with pytest.raises(InvalidRequest) as info:
        protocol.check_args(Request(Op.PUT, b"k", [b"v", math.nan], seq=77))
    assert info.value.seq == 77
    assert info.value.key == b"k"


def test_deep_nesting_is_refused() -> None:
    # past msgpack's decoder stack: a protocol error
    with pytest.raises(RemoteProtocolError, match="invalid msgpack"):
        protocol.unpackb(b"\x91" * 100_000 + b"\x90")
    # decodable but deep: refused by the field-by-field shape check, never walked
    frames = [_header(op=Op.MGET, seq=14), msgpack.packb([_nested(1000)])]
    with pytest.raises(InvalidRequest, match="keys must be") as info:
        protocol.decode_request(frames)
    assert info.value.seq == 14
    deep_map: Any = {}
    for _ in range(500):
        deep_map = {"a": deep_map}
    frames = [_header(op=Op.PUT, seq=15) + b"k", msgpack.packb([deep_map, None])]
    with pytest.raises(InvalidRequest, match="value must be bytes"):
        protocol.decode_request(frames)


def test_decode_request_scan_not_allowed_from_clients() -> None:
    assert Op.SCAN not in CLIENT_OPS
    frames = _frames(Op.SCAN, [b"", 0, None, 10], seq=15)
    with pytest.raises(RemoteProtocolError, match="unknown operation SCAN") as info:
        protocol.decode_request(frames)
    assert info.value.seq == 15
    assert protocol.decode_request(frames, allowed=protocol.NODE_OPS).op is Op.SCAN


@pytest.mark.parametrize("op", [Op.KEYS, Op.STATUS])
def test_decode_request_node_ops_exclude_broker_ops(op: Op) -> None:
    frames = _frames(op, VALID_ARGS[op][0])
    assert protocol.decode_request(frames).op is op
    with pytest.raises(RemoteProtocolError, match=f"unknown operation {op.name}"):
        protocol.decode_request(frames, allowed=protocol.NODE_OPS)


def test_decode_request_allowed_restricts() -> None:
    frames = _frames(Op.PUT, [b"v", None])
    with pytest.raises(RemoteProtocolError, match="unknown operation PUT"):
        protocol.decode_request(frames, allowed=frozenset({Op.GET}))
    assert protocol.decode_request(frames, allowed=frozenset({Op.PUT})).op is Op.PUT


# --------------------------------------------------------------------------- peek_request


def test_peek_request_reads_the_header_in_place() -> None:
    head, _body = _frames(Op.PUT, [b"v", None], seq=MAX_SEQ, consistency=Consistency.EVENTUAL)
    assert protocol.peek_request(head) == (Op.PUT, 1, MAX_SEQ, 1500)
    assert protocol.request_key(head) == b"some-key"
    head, _body = _frames(Op.COUNT, [], seq=3)
    assert protocol.peek_request(head) == (Op.COUNT, 0, 3, 1500)
    assert protocol.request_key(head) == b""


def test_peek_request_does_not_check_codes() -> None:
    # the broker checks op and consistency codes itself; peek only reads them
    head = _header(op=255, consistency=9, seq=4, timeout_ms=0) + b"key"
    assert protocol.peek_request(head) == (255, 9, 4, 0)


@pytest.mark.parametrize("size", [0, 1, 10, REQUEST_HEADER.size - 1])
def test_peek_request_short_head(size: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"header is {size} bytes") as info:
        protocol.peek_request(_header(seq=6)[:size])
    assert info.value.seq is None  # the seq could not be read


@pytest.mark.parametrize("version", [0, 1, 3, 255])
@pytest.mark.parametrize("key", [b"", b"k"])
def test_peek_request_wrong_version_carries_seq(version: int, key: bytes) -> None:
    head = _header(version=version, seq=31337) + key
    with pytest.raises(RemoteProtocolError, match=f"protocol version {version}") as info:
        protocol.peek_request(head)
    assert info.value.seq == 31337  # so the error can be answered


def test_op_sets() -> None:
    assert frozenset(Op) - CLIENT_OPS == {Op.SCAN} | MOVE_OPS
    assert protocol.WRITE_OPS - MOVE_OPS <= CLIENT_OPS
    assert Op.GET not in protocol.WRITE_OPS
    assert {Op.KEYS, Op.STATUS}.isdisjoint(protocol.NODE_OPS)


# --------------------------------------------------------------------------- limits


def test_show_key() -> None:
    assert protocol.show_key(b"user:1") == "'user:1'"
    assert protocol.show_key(b"\xff\x00") == "b'\\xff\\x00'"
    assert protocol.show_key(b"k" * 64) == repr("k" * 64)
    assert protocol.show_key(b"k" * 65) == repr("k" * 64) + "..."


def test_check_key() -> None:
    protocol.check_key(b"k" * 10, 10)
    with pytest.raises(KeyTooLarge) as info:
        protocol.check_key(b"k" * 100, 10)
    assert str(info.value) == (
        f"key {'k' * 64!r}... is 100 bytes; the limit is 10 bytes (limits.max_key_bytes)"
    )
    assert info.value.key == b"k" * 64
    assert isinstance(info.value, ValueError)


def test_check_value() -> None:
    protocol.check_value(b"k", b"v" * 5, 5)
    with pytest.raises(ValueTooLarge) as info:
        protocol.check_value(b"k", b"v" * 6, 5)
    assert str(info.value) == (
        "value for 'k' is 6 bytes; the limit is 5 bytes (limits.max_value_bytes)"
    )
    assert info.value.key == b"k"


def test_check_items() -> None:
    protocol.check_items([[b"a", b"1"], [b"b", b"2"]], 1, 1)
    protocol.check_items([], 1, 1)
    with pytest.raises(KeyTooLarge):
        protocol.check_items([[b"a", b"1"], [b"bb", b"2"]], 1, 1)
    with pytest.raises(ValueTooLarge) as info:
        protocol.check_items([[b"a", b"1"], [b"b", b"22"]], 1, 1)
    assert info.value.key == b"b"


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize(
    "result",
    [None, True, 0, -1, 2**63, 1.5, "text", b"bytes", [b"a", None], {"k": [1, 2]}],
)
def test_reply_round_trip(result: Any) -> None:
    frames = protocol.encode_reply(77, result)
    assert len(frames) == 2
    assert len(frames[0]) == REPLY_HEADER.size == 11
    form = protocol.FORM_VALUE if type(result) is bytes else protocol.FORM_MSGPACK
    assert protocol.decode_reply_header(frames[0]) == (77, ErrorCode.OK, form)
    assert protocol.reply_seq(frames[0]) == 77
    seq, decoded = protocol.decode_reply(frames)
    assert seq == 77
    assert decoded == result
    assert type(decoded) is type(result)


def test_reply_header_layout() -> None:
    header, body = protocol.encode_reply(7, [1])
    assert header == bytes([VERSION, ErrorCode.OK, protocol.FORM_MSGPACK]) + (7).to_bytes(8, "big")
    assert msgpack.unpackb(body) == [1]
    header, _body = protocol.encode_error(8, KeyNotFound("no", key=b"k"))
    assert header == bytes([VERSION, ErrorCode.KEY_NOT_FOUND, protocol.FORM_MSGPACK]) + (
        8
    ).to_bytes(8, "big")


@pytest.mark.parametrize(
    "value", [b"", b"v", b"\xc1\x00\xff", msgpack.packb({"a": [1, 2]}), b"x" * 100_000]
)
def test_bytes_reply_is_sent_as_it_is(value: bytes) -> None:
    # a stored value (a GET's result) is the body itself, form 1: no msgpack wrapping
    frames = protocol.encode_reply(MAX_SEQ, value)
    assert len(frames) == 2
    assert frames[0] == bytes([VERSION, ErrorCode.OK, protocol.FORM_VALUE]) + MAX_SEQ.to_bytes(
        8, "big"
    )
    assert protocol.FORM_VALUE == 1
    assert frames[1] is value  # not copied
    assert protocol.decode_reply_header(frames[0]) == (MAX_SEQ, ErrorCode.OK, protocol.FORM_VALUE)
    seq, decoded = protocol.decode_reply(frames)
    assert seq == MAX_SEQ
    assert decoded == value
    assert type(decoded) is bytes
    # only a bytes result itself: bytes inside a result, or a bytearray, stay msgpack
    for result in ([value], bytearray(value)):
        header, _body = protocol.encode_reply(1, result)
        assert protocol.decode_reply_header(header)[2] == protocol.FORM_MSGPACK


@pytest.mark.parametrize("form", [2, 3, 255])
def test_unknown_reply_form_is_refused(form: int) -> None:
    frames = [REPLY_HEADER.pack(VERSION, ErrorCode.OK, form, 5), msgpack.packb(None)]
    assert protocol.decode_reply_header(frames[0]) == (5, ErrorCode.OK, form)
    with pytest.raises(RemoteProtocolError, match=f"unknown form {form}"):
        protocol.decode_reply(frames)


def test_reply_seq_reads_any_reply_header() -> None:
    assert protocol.reply_seq(protocol.encode_reply(12, None)[0]) == 12
    assert protocol.reply_seq(protocol.encode_reply(13, b"value")[0]) == 13
    assert protocol.reply_seq(protocol.encode_error(MAX_SEQ, KeyNotFound("x"))[0]) == MAX_SEQ


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.OK])
@pytest.mark.parametrize("key", [None, b"the-key"])
def test_error_round_trip_every_code(code: ErrorCode, key: bytes | None) -> None:
    cls = ERROR_CLASSES[code]
    frames = protocol.encode_error(MAX_SEQ, cls(f"boom {code.name}", key=key))
    assert protocol.decode_reply_header(frames[0]) == (MAX_SEQ, code, protocol.FORM_MSGPACK)
    with pytest.raises(ZkvError) as info:
        protocol.decode_reply(frames)
    err = info.value
    assert type(err) is cls
    assert err.message == f"boom {code.name}"
    assert str(err) == f"boom {code.name}"
    assert err.key == key
    assert err.seq == MAX_SEQ


def test_error_classes_cover_every_code() -> None:
    assert set(ERROR_CLASSES) == set(ErrorCode) - {ErrorCode.OK}
    for code, cls in ERROR_CLASSES.items():
        assert cls.code is code


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RemoteProtocolError("bad"), ProtocolError),
        (LocalProtocolError("bad"), ProtocolError),
        (ConfigError("bad"), ServerError),
        (ClientClosed("bad"), ServerError),
        (ZkvError("bad"), ServerError),
        (RequestError("bad"), ServerError),
    ],
)
def test_error_subclasses_map_to_their_wire_class(exc: ZkvError, expected: type) -> None:
    with pytest.raises(expected) as info:
        protocol.decode_reply(protocol.encode_error(3, exc))
    assert type(info.value) is expected
    assert info.value.message == "bad"


@pytest.mark.parametrize("code", [15, 99, 255])
def test_unknown_error_code_is_plain_request_error(code: int) -> None:
    frames = [REPLY_HEADER.pack(VERSION, code, 0, 5), msgpack.packb(["weird", b"k"])]
    with pytest.raises(RequestError) as info:
        protocol.decode_reply(frames)
    assert type(info.value) is RequestError
    assert str(info.value) == f"error code {code}: weird"
    assert info.value.key == b"k"
    assert info.value.seq == 5


@pytest.mark.parametrize(
    "body",
    [None, "message", [], ["only"], ["m", b"k", 3], [b"m", None], ["m", "k"], ["m", 1], {"m": 1}],
)
def test_malformed_error_body(body: Any) -> None:
    frames = [
        REPLY_HEADER.pack(VERSION, ErrorCode.KEY_NOT_FOUND, 0, 5),
        msgpack.packb(body, use_bin_type=True),
    ]
    with pytest.raises(RemoteProtocolError, match="malformed error reply"):
        protocol.decode_reply(frames)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [REPLY_HEADER.pack(VERSION, 0, 0, 1)],
        [REPLY_HEADER.pack(VERSION, 0, 0, 1), b"\xc0", b""],
        [REPLY_HEADER.pack(VERSION, 0, 1, 1), b"v", b""],
        [b"\x02" * 10, b"\xc0"],
        [b"\x02" * 12, b"\xc0"],
        [b"\x02\x00\x00" + b"\x00" * 7, b"\xc0"],  # version 1's 10-byte header
        [REPLY_HEADER.pack(1, 0, 0, 1), b"\xc0"],
        [REPLY_HEADER.pack(3, 0, 1, 1), b"v"],
        [REPLY_HEADER.pack(VERSION, 0, 0, 1), b"\xc1"],
        [REPLY_HEADER.pack(VERSION, 0, 0, 1), b""],
        [REPLY_HEADER.pack(VERSION, 0, 2, 1), b"\xc0"],
        [REPLY_HEADER.pack(VERSION, ErrorCode.KEY_NOT_FOUND, 1, 1), b"not msgpack \xc1"],
    ],
)
def test_decode_reply_malformed(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        protocol.decode_reply(frames)


def test_error_reply_keeps_typed_hierarchy() -> None:
    frames = protocol.encode_error(1, KeyNotFound("no such key", key=b"k"))
    with pytest.raises(KeyError):
        protocol.decode_reply(frames)
    with pytest.raises(KeyExists):
        protocol.decode_reply(protocol.encode_error(1, KeyExists("there")))


# --------------------------------------------------------------------------- node messages


def test_node_info_round_trip() -> None:
    info = NodeInfo(
        name="n1",
        shard="s1",
        role="replica",
        pid=4242,
        epoch=3,
        seq=2**40,
        keys=17,
        publish="tcp://127.0.0.1:7500",
        sync="tcp://127.0.0.1:7501",
        requests=100,
        errors=2,
    )
    frames = protocol.encode_node_info(protocol.NODE_HEARTBEAT, info)
    assert len(frames) == 2
    assert protocol.decode_node_header(frames[0]) == (protocol.NODE_HEARTBEAT, 3)
    assert protocol.decode_node_info(frames[1]) == info


def test_node_info_defaults_and_unknown_fields() -> None:
    raw = msgpack.packb({"name": "n", "shard": "s", "future": [1, 2]})
    assert protocol.decode_node_info(raw) == NodeInfo(name="n", shard="s")


@pytest.mark.parametrize(
    "raw",
    [
        [],
        "n1",
        None,
        {"shard": "s"},
        {"name": "n"},
        {"name": b"n", "shard": "s"},
        {"name": "n", "shard": 1},
        {"name": "n", "shard": "s", "pid": "1"},
        {"name": "n", "shard": "s", "pid": True},
        {"name": "n", "shard": "s", "epoch": 1.0},
        {"name": "n", "shard": "s", "role": None},
    ],
)
def test_decode_node_info_rejects(raw: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        protocol.decode_node_info(msgpack.packb(raw, use_bin_type=True))


def test_decode_node_info_garbage() -> None:
    with pytest.raises(RemoteProtocolError):
        protocol.decode_node_info(b"\xc1")


def test_node_header() -> None:
    for kind in (
        protocol.NODE_REQUEST,
        protocol.NODE_REPLY,
        protocol.NODE_READY,
        protocol.NODE_HEARTBEAT,
        protocol.BROKER_HEARTBEAT,
    ):
        frame = protocol.node_header(kind, 2**63)
        assert len(frame) == protocol.NODE_HEADER.size == 10
        assert frame == kind + (2**63).to_bytes(8, "big") + b"\x00"  # no envelope
        assert protocol.decode_node_header(frame) == (kind, 2**63)
        assert protocol.split_node_frame(frame) == (kind, 2**63, b"", b"")
    for bad in (b"", b"Q", b"Q" * 9):
        with pytest.raises(RemoteProtocolError, match=f"node header is {len(bad)} bytes"):
            protocol.decode_node_header(bad)


@pytest.mark.parametrize("envelope", [b"", b"C" + b"i" * 5, b"e" * 255])
def test_node_frame_round_trip(envelope: bytes) -> None:
    head, _body = _frames(Op.PUT, [b"v", None], seq=9)
    frame = protocol.node_frame(protocol.NODE_REQUEST, 2**64 - 1, envelope, head)
    assert frame == b"Q" + b"\xff" * 8 + bytes([len(envelope)]) + envelope + head
    assert protocol.split_node_frame(frame) == (protocol.NODE_REQUEST, 2**64 - 1, envelope, head)
    assert protocol.decode_node_header(frame) == (protocol.NODE_REQUEST, 2**64 - 1)
    reply_header, _body = protocol.encode_reply(9, b"v")
    frame = protocol.node_frame(protocol.NODE_REPLY, 3, envelope, reply_header)
    assert protocol.split_node_frame(frame) == (protocol.NODE_REPLY, 3, envelope, reply_header)
    # an envelope longer than its one-byte length is refused, not cut short
    with pytest.raises(struct.error):
        protocol.node_frame(protocol.NODE_REQUEST, 0, b"e" * 256, head)


@pytest.mark.parametrize("size", [0, 1, 9])
def test_split_node_frame_short_frame(size: int) -> None:
    frame = protocol.node_frame(protocol.NODE_REQUEST, 1, b"env", b"head")[:size]
    with pytest.raises(RemoteProtocolError, match=f"node header is {size} bytes"):
        protocol.split_node_frame(frame)


@pytest.mark.parametrize(("claimed", "actual"), [(1, 0), (5, 4), (255, 0), (255, 254)])
def test_split_node_frame_envelope_longer_than_frame(claimed: int, actual: int) -> None:
    frame = protocol.NODE_HEADER.pack(protocol.NODE_REQUEST, 1, claimed) + b"e" * actual
    with pytest.raises(RemoteProtocolError, match=f"has an envelope of {claimed}"):
        protocol.split_node_frame(frame)
    # exactly as long as it claims: an empty head
    full = protocol.NODE_HEADER.pack(protocol.NODE_REQUEST, 1, claimed) + b"e" * claimed
    assert protocol.split_node_frame(full) == (protocol.NODE_REQUEST, 1, b"e" * claimed, b"")


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (0, 0),
        (-(2**63), -(2**63)),
        (2**64 - 1, 2**64 - 1),
        (1.25, 1.25),
        ("héllo", "héllo"),
        ("", ""),
        (b"\x00\xff", b"\x00\xff"),
        (bytearray(b"ba"), b"ba"),
        ((1, 2, (3,)), [1, 2, [3]]),
        ([1, "a", b"b"], [1, "a", b"b"]),
        ({1: "one", 2: "two"}, {1: "one", 2: "two"}),
        ({"a": {"b": [1, (2,)]}}, {"a": {"b": [1, [2]]}}),
        ({b"k": 1}, {b"k": 1}),
    ],
)
def test_pack_value_round_trip(value: Any, expected: Any) -> None:
    data = protocol.pack_value(value)
    assert type(data) is bytes
    out = protocol.unpack_value(data)
    assert out == expected
    assert type(out) is type(expected)


def test_pack_value_keeps_bytes_and_str_apart() -> None:
    assert protocol.unpack_value(protocol.pack_value(b"abc")) == b"abc"
    assert protocol.unpack_value(protocol.pack_value("abc")) == "abc"
    assert protocol.pack_value(b"abc") != protocol.pack_value("abc")


def test_pack_value_nan() -> None:
    assert math.isnan(protocol.unpack_value(protocol.pack_value(math.nan)))


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, 2**64, -(2**63) - 1, 1j, "\ud800", len],
)
def test_pack_value_unserialisable(value: Any) -> None:
    with pytest.raises(TypeError, match="not msgpack-serialisable"):
        protocol.pack_value(value)


def test_pack_value_datetime_is_refused() -> None:
    import datetime

    with pytest.raises(TypeError):
        protocol.pack_value(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))


def test_unpack_value_garbage() -> None:
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        protocol.unpack_value(b"\xc1")
    with pytest.raises(RemoteProtocolError):
        protocol.unpack_value(b"")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({(1, 2): "x"}, {(1, 2): "x"}),
        ({((1, 2), "a"): 1, 3: 4}, {((1, 2), "a"): 1, 3: 4}),
        ({(1,): [1, (2,)]}, {(1,): [1, [2]]}),  # keys become tuples, values stay lists
        ([{(): None}], [{(): None}]),
    ],
)
def test_pack_value_tuple_keys_round_trip(value: Any, expected: Any) -> None:
    assert protocol.unpack_value(protocol.pack_value(value)) == expected


# --------------------------------------------------------------------------- fuzz


def _valid_frame_sets() -> list[list[bytes]]:
    out = []
    for op, variants in VALID_ARGS.items():
        for args in variants:
            out.append(_frames(op, args, seq=1000 + len(out)))
    return out


def _random_msgpack(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 10 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, rng.random()])
    if kind == 4:
        return rng.randbytes(rng.randrange(6))
    if kind == 5:
        return "".join(rng.choice("ab{}é") for _ in range(rng.randrange(4)))
    if kind == 6:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(4)))
    if kind in (7, 8):
        return [_random_msgpack(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["a", "b", "c"]): _random_msgpack(rng, depth + 1)
        for _ in range(rng.randrange(3))
    }


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1 and b:  # byte replacement
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 2:  # truncation
        del b[rng.randrange(len(b) + 1) :]
    elif kind == 3:  # extension
        b += rng.randbytes(rng.randint(1, 16))
    elif kind == 4 and b:  # insertion
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 4))
    elif b:  # deletion
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 4)]
    return bytes(b)


def test_fuzz_decode_request_only_raises_protocol_errors() -> None:
    rng = random.Random(1234)
    valid = _valid_frame_sets()
    outcomes = {"ok": 0, RemoteProtocolError: 0, InvalidRequest: 0}
    started = time.perf_counter()
    for i in range(6000):
        mode = i % 4
        if mode == 0:  # random frame lists
            frames = [
                rng.randbytes(rng.choice([0, 1, 10, 30, 31, 32, 50]))
                for _ in range(rng.randrange(4))
            ]
        elif mode == 1:  # a valid head with a random (but well-formed) msgpack body
            base = rng.choice(valid)
            body = msgpack.packb(_random_msgpack(rng), use_bin_type=True)
            frames = [base[0], body]
        else:  # mutations of valid frames
            frames = list(rng.choice(valid))
            for _ in range(rng.randint(1, 3)):
                j = rng.randrange(2)
                frames[j] = _mutate(rng, frames[j])
            if rng.random() < 0.05:
                frames = frames[: rng.randrange(2)] + [b""] * rng.randrange(3)
        allowed = ALL_OPS if rng.random() < 0.5 else CLIENT_OPS
        error: ZkvError | None = None
        try:
            request = protocol.decode_request(frames, allowed=allowed)
        except (RemoteProtocolError, InvalidRequest) as exc:  # anything else fails the test
            error = exc
        if error is not None:
            assert type(error) in (RemoteProtocolError, InvalidRequest)
            assert str(error)
            outcomes[type(error)] += 1
        else:
            outcomes["ok"] += 1
            # anything accepted is a valid request that re-encodes to the same meaning
            assert request.op in allowed
            assert protocol.decode_request(protocol.encode_request(request), allowed) == request
    print(f"6000 fuzzed requests decoded in {time.perf_counter() - started:.2f} s")
    # the fuzz reached every outcome, so it tested more than the header checks
    assert all(n > 50 for n in outcomes.values()), outcomes


def test_fuzz_decode_reply_and_node_info_only_raise_zkv_errors() -> None:
    rng = random.Random(1234)
    valid_replies = [
        protocol.encode_reply(1, [b"a", None]),
        protocol.encode_reply(2, {"k": 1}),
        protocol.encode_reply(4, b"a stored value"),
        protocol.encode_error(3, KeyNotFound("nope", key=b"k")),
    ]
    node = protocol.encode_node_info(protocol.NODE_READY, NodeInfo("n", "s"))[1]
    head = _frames(Op.PUT, [b"v", None])[0]
    node_frames = [
        protocol.node_frame(protocol.NODE_REQUEST, 7, b"C" + b"i" * 5, head),
        protocol.node_frame(protocol.NODE_REPLY, 7, b"F" * 13, valid_replies[0][0]),
        protocol.node_header(protocol.NODE_HEARTBEAT, 7),
    ]
    for _ in range(3000):
        frames = [_mutate(rng, f) if rng.random() < 0.6 else f for f in rng.choice(valid_replies)]
        with contextlib.suppress(ZkvError):  # anything else fails the test
            protocol.decode_reply(frames)
        with contextlib.suppress(RemoteProtocolError):
            protocol.decode_node_info(_mutate(rng, node))
        with contextlib.suppress(RemoteProtocolError):
            protocol.peek_request(_mutate(rng, head))
        frame = _mutate(rng, rng.choice(node_frames))
        try:
            kind, epoch, envelope, rest = protocol.split_node_frame(frame)
        except RemoteProtocolError:
            continue
        assert protocol.node_frame(kind, epoch, envelope, rest) == frame  # nothing lost
