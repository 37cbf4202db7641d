"""The zkv wire format, sans-IO: frames in, dataclasses out, and back.

Nothing here touches a socket; the client, broker, node and the fuzz tests share it.

Client <-> broker (client DEALER, broker ROUTER; the ROUTER's identity frame is not shown)::

    request:  [head, body]
        head    REQUEST_HEADER (31 bytes): version u8, op u8, consistency u8,
                client_id 16 bytes, seq u64, timeout_ms u32; then the key's bytes (none for
                multi-key and cluster-wide ops). The broker reads the fixed header in place
                and hashes the key to a slot; it never decodes the body of a single-key
                request.
        body    msgpack array of the op's arguments (see ``ARG_SPECS``); values inside it
                are opaque bin blobs, themselves msgpack produced by the client. WATCH
                names its shard in the body (its key frame is empty); the broker forwards
                it to that shard's primary, its prefixes narrowed to the client's grant
    reply:    [header, body]
        header  REPLY_HEADER (11 bytes): version u8, code u8 (0 = OK), form u8, seq u64
        body    code 0, form 0 (``FORM_MSGPACK``): the msgpack-encoded result;
                code 0, form 1 (``FORM_VALUE``): the result is ``body`` itself, a stored
                value's bytes sent as they are (a GET: no bin wrapping, no second decode);
                else msgpack [message, key or nil]

``(client_id, seq)`` names a request uniquely cluster-wide: ``client_id`` is random and fixed
for the life of a client, ``seq`` counts up per client.

Broker <-> node (broker ROUTER, node DEALER; a ROUTER to every broker with several)::

    broker -> node: [NODE_HEADER(b"Q", epoch, n) + envelope + request head, body]  a request
                    [NODE_HEADER(b"B", epoch, 0), msgpack map]                   heartbeat
    node -> broker: [NODE_HEADER(b"A", epoch, n) + envelope + reply header, body]  a reply
                    [NODE_HEADER(b"R", epoch, 0), msgpack NodeInfo]              READY
                    [NODE_HEADER(b"H", epoch, 0), msgpack NodeInfo]              heartbeat

NODE_HEADER (10 bytes) is kind u8, epoch u64 and the envelope's length n u8; node header,
envelope and request (or reply) header share one frame, so a request is two frames on every
hop and the body (a value) is never copied into another frame.
``envelope`` is the broker's return address, echoed untouched by the node. The epoch is 0
until replication bumps it on promotion.

Every decoder here checks counts and sizes before decoding; msgpack bounds every length by
the frame's size and its nesting by a fixed stack, so no input can make it allocate without
bound; anything malformed raises ``RemoteProtocolError`` (or ``InvalidRequest`` for
well-formed but wrong arguments, shapes checked field by field, never walked recursively).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, Final

import msgpack

from zkv.errors import (
    ErrorCode,
    InvalidRequest,
    KeyTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    ValueTooLarge,
    ZkvError,
    code_of,
    error_from_code,
)
from zkv.errors import show_key as show_key  # its home is errors: every layer may import it

if TYPE_CHECKING:
    from zkv.config import LimitsConfig

#: Version 2: a request's key shares its header's frame, node header and envelope share the
#: request's, and a reply says in what form its body is (``FORM_*``).
VERSION: Final = 2
REQUEST_HEADER: Final = struct.Struct(">BBB16sQI")
REPLY_HEADER: Final = struct.Struct(">BBBQ")
NODE_HEADER: Final = struct.Struct(">cQB")
#: A reply body's form: msgpack of the result, or the result itself (a stored value's bytes).
FORM_MSGPACK: Final = 0
FORM_VALUE: Final = 1
#: The msgpack body of a request without arguments (an empty array).
NO_ARGS: Final = b"\x90"
#: The msgpack of the commonest results, packed once (a put's None, a delete's bool).
_CONSTANTS: Final[dict[Any, bytes]] = {None: b"\xc0", True: b"\xc3", False: b"\xc2"}
CLIENT_ID_BYTES: Final = 16
MAX_SEQ: Final = 2**64 - 1
MAX_TIMEOUT_MS: Final = 2**32 - 1
#: How long a switch-over (FAILOVER) may take by default: the client's wait, from which the
#: broker derives its own deadline so that its answer arrives before the client gives up.
FAILOVER_TIMEOUT_S: Final = 10.0
#: A hard ceiling on any key on the wire, whatever the config says (keys are small by design).
MAX_KEY_FRAME_BYTES: Final = 64 * 1024
#: The most keys one KEYS/SCAN page may ask for.
MAX_PAGE: Final = 10_000

# Node message kinds (the first byte of NODE_HEADER).
NODE_REQUEST: Final = b"Q"
NODE_REPLY: Final = b"A"
NODE_READY: Final = b"R"
NODE_HEARTBEAT: Final = b"H"
BROKER_HEARTBEAT: Final = b"B"


class Op(IntEnum):
    """Wire operation codes."""

    GET = 1
    PUT = 2
    DELETE = 3
    CREATE = 4
    EXISTS = 5
    CAS = 6
    EXPIRE = 7
    TTL = 8
    MGET = 20
    MPUT = 21
    KEYS = 22
    CLEAR = 23
    COUNT = 24
    BATCH = 25  # single-key operations of a pipeline, grouped per shard
    WATCH = 26  # a page of one shard's change feed (long poll; ``zkv.node.watching``)
    SCAN = 30  # broker -> node page of KEYS; clients send KEYS
    STATUS = 40
    FAILOVER = 41  # move a shard's primary role on purpose (broker only)
    RESHARD = 42  # move slots between shards while serving (broker only)
    # Moving slots, broker -> node only (never accepted from a client):
    EXPORT = 50  # source primary: a chunk of the moving slots' keys; starts tracking changes
    CHANGES = 51  # source primary: the keys changed since; ``final`` stops serving the slots
    IMPORT = 52  # target primary: store copied keys (and write outcomes) of the moving slots
    SETTLE = 53  # either: end a move ("own", "drop" a chunk of keys, or "abort")


class Consistency(StrEnum):
    """Per-request consistency level: ``strong`` (the primary) or ``eventual`` (any replica)."""

    STRONG = "strong"
    EVENTUAL = "eventual"


CONSISTENCY_CODES: Final = {Consistency.STRONG: 0, Consistency.EVENTUAL: 1}
CONSISTENCY_BY_CODE: Final = {v: k for k, v in CONSISTENCY_CODES.items()}
_OP_BY_CODE: Final = {int(op): op for op in Op}  # a dict lookup: Op(code) is slow

#: Ops that carry one key in their head and go to that key's shard.
SINGLE_KEY_OPS: Final = frozenset(
    {Op.GET, Op.PUT, Op.DELETE, Op.CREATE, Op.EXISTS, Op.CAS, Op.EXPIRE, Op.TTL}
)
#: Ops that change data (retries, consistency and logging treat them apart).
WRITE_OPS: Final = frozenset(
    {Op.PUT, Op.DELETE, Op.CREATE, Op.CAS, Op.EXPIRE, Op.MPUT, Op.CLEAR, Op.BATCH}
    | {Op.IMPORT, Op.SETTLE}
)
#: The most operations one BATCH may carry.
MAX_BATCH: Final = 100_000
#: Ops the client may send (SCAN is broker -> node only).
#: The ops of a slot move, between the broker and nodes only.
MOVE_OPS: Final = frozenset({Op.EXPORT, Op.CHANGES, Op.IMPORT, Op.SETTLE})
CLIENT_OPS: Final = frozenset(Op) - {Op.SCAN} - MOVE_OPS
#: Ops a node serves.
NODE_OPS: Final = frozenset(Op) - {Op.KEYS, Op.STATUS, Op.FAILOVER, Op.RESHARD}


# --------------------------------------------------------------------------- arguments


def _is_bytes(v: object) -> bool:
    return type(v) is bytes


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and type(v) is not bool and math.isfinite(v)


def _is_ttl(v: object) -> bool:
    return v is None or (isinstance(v, int | float) and _is_number(v) and v > 0)


def _is_opt_bytes(v: object) -> bool:
    return v is None or type(v) is bytes


def _is_limit(v: object) -> bool:
    return type(v) is int and 0 < v <= MAX_PAGE


def _is_key_list(v: object) -> bool:
    return type(v) is list and all(type(k) is bytes for k in v)


def _is_items(v: object) -> bool:
    return type(v) is list and all(
        type(i) is list and len(i) == 2 and type(i[0]) is bytes and type(i[1]) is bytes for i in v
    )


def _is_client_cursor(v: object) -> bool:
    return v is None or (
        type(v) is list
        and len(v) == 3
        and type(v[0]) is str
        and type(v[1]) is int
        and v[1] >= 0
        and _is_opt_bytes(v[2])
    )


def _is_batch(v: object) -> bool:
    return (
        type(v) is list
        and 0 < len(v) <= MAX_BATCH
        and all(
            type(o) is list
            and len(o) == 3
            and type(o[0]) is int
            and type(o[1]) is bytes
            and type(o[2]) is list
            for o in v
        )
    )


#: The most prefixes one WATCH may filter on (a grant's prefixes narrowed to the watch's).
MAX_WATCH_PREFIXES: Final = 64
#: The longest a WATCH may wait on its node for changes (milliseconds).
MAX_WATCH_WAIT_MS: Final = 60_000


def _is_watch_cursor(v: object) -> bool:
    """nil (from now on) or ``[epoch, seq, skip]``: a position in one shard's feed."""
    return v is None or (
        type(v) is list and len(v) == 3 and all(type(n) is int and 0 <= n <= MAX_SEQ for n in v)
    )


def _is_prefixes(v: object) -> bool:
    return (
        type(v) is list
        and 0 < len(v) <= MAX_WATCH_PREFIXES
        and all(type(p) is bytes and len(p) <= MAX_KEY_FRAME_BYTES for p in v)
    )


def _is_wait_ms(v: object) -> bool:
    return type(v) is int and 0 <= v <= MAX_WATCH_WAIT_MS


def _is_watch_page(v: object) -> bool:
    """nil (the feed) or ``[slot, after]``: where a snapshot page of the keys starts."""
    return v is None or (
        type(v) is list
        and len(v) == 2
        and type(v[0]) is int
        and v[0] >= 0
        and (v[1] is None or type(v[1]) is bytes)
    )


def _is_str(v: object) -> bool:
    return type(v) is str and 0 < len(v) <= 64


def _is_opt_str(v: object) -> bool:
    return v is None or _is_str(v)


def _is_slot(v: object) -> bool:
    return type(v) is int and v >= 0


def _is_slot_list(v: object) -> bool:
    return type(v) is list and 0 < len(v) <= 65536 and all(type(s) is int and s >= 0 for s in v)


def _is_opt_count(v: object) -> bool:
    return v is None or (type(v) is int and v >= 0)


def _is_bool(v: object) -> bool:
    return type(v) is bool


def _is_copies(v: object) -> bool:
    """``[[key, value or None (deleted), expires_at or None], ...]`` of a slot move."""
    return type(v) is list and all(
        type(i) is list
        and len(i) == 3
        and type(i[0]) is bytes
        and (i[1] is None or type(i[1]) is bytes)
        and (i[2] is None or _is_number(i[2]))
        for i in v
    )


def _is_outcomes(v: object) -> bool:
    return type(v) is list and all(
        type(i) is list and len(i) == 2 and type(i[0]) is bytes and type(i[1]) is bytes for i in v
    )


def _is_settle(v: object) -> bool:
    return v in ("own", "drop", "abort")


_Check = Callable[[object], bool]

#: Per op: (argument name, check) for each positional argument of the body.
ARG_SPECS: Final[dict[Op, tuple[tuple[str, _Check], ...]]] = {
    Op.GET: (),
    Op.PUT: (("value", _is_bytes), ("ttl", _is_ttl)),
    Op.DELETE: (),
    Op.CREATE: (("value", _is_bytes), ("ttl", _is_ttl)),
    Op.EXISTS: (),
    Op.CAS: (("expected", _is_bytes), ("new", _is_bytes)),
    Op.EXPIRE: (("seconds", _is_number),),
    Op.TTL: (),
    Op.MGET: (("keys", _is_key_list),),
    Op.MPUT: (("items", _is_items), ("ttl", _is_ttl)),
    Op.KEYS: (("prefix", _is_bytes), ("cursor", _is_client_cursor), ("limit", _is_limit)),
    Op.CLEAR: (),
    Op.COUNT: (),
    Op.BATCH: (("ops", _is_batch),),
    Op.SCAN: (
        ("prefix", _is_bytes),
        ("slot", _is_slot),
        ("after", _is_opt_bytes),
        ("limit", _is_limit),
    ),
    Op.WATCH: (
        ("shard", _is_str),
        ("cursor", _is_watch_cursor),
        ("prefixes", _is_prefixes),
        ("max_events", _is_limit),
        ("wait_ms", _is_wait_ms),
        ("values", _is_bool),
        ("page", _is_watch_page),
    ),
    Op.STATUS: (),
    Op.FAILOVER: (("shard", _is_str), ("target", _is_opt_str)),
    Op.RESHARD: (("from_shard", _is_opt_str), ("to_shard", _is_opt_str), ("count", _is_opt_count)),
    Op.EXPORT: (("slots", _is_slot_list), ("pos", _is_opt_count), ("max_keys", _is_limit)),
    Op.CHANGES: (("slots", _is_slot_list), ("max_keys", _is_limit), ("final", _is_bool)),
    Op.IMPORT: (("slots", _is_slot_list), ("copies", _is_copies), ("outcomes", _is_outcomes)),
    Op.SETTLE: (("slots", _is_slot_list), ("how", _is_settle), ("max_keys", _is_limit)),
}

_ARG_HINTS: Final = {
    "value": "bytes",
    "expected": "bytes",
    "new": "bytes",
    "ttl": "nil or a positive number",
    "seconds": "a finite number",
    "keys": "an array of bin",
    "items": "an array of [bin, bin]",
    "prefix": "bytes",
    "cursor": "nil or [shard, slot, after] (KEYS), nil or [epoch, seq, skip] (WATCH)",
    "limit": f"an int in 1..{MAX_PAGE}",
    "slot": "a non-negative int",
    "shard": "a shard name",
    "ops": f"an array of 1..{MAX_BATCH} [op, key, args]",
    "target": "nil or a node name",
    "after": "nil or bytes",
    "from_shard": "nil or a shard name",
    "to_shard": "nil or a shard name",
    "count": "nil or a non-negative int",
    "slots": "an array of 1..65536 slot numbers",
    "pos": "nil or a non-negative int",
    "max_keys": f"an int in 1..{MAX_PAGE}",
    "final": "a boolean",
    "copies": "an array of [bin, bin or nil, nil or a number]",
    "outcomes": "an array of [bin, bin]",
    "how": "own, drop or abort",
    "prefixes": f"an array of 1..{MAX_WATCH_PREFIXES} bin",
    "max_events": f"an int in 1..{MAX_PAGE}",
    "wait_ms": f"an int in 0..{MAX_WATCH_WAIT_MS}",
    "values": "a boolean",
    "page": "nil or [slot, nil or bin]",
}


# --------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Request:
    """One client request. ``args`` are the op's arguments, in ``ARG_SPECS`` order."""

    op: Op
    key: bytes = b""
    args: list[Any] = field(default_factory=list)
    client_id: bytes = b"\x00" * CLIENT_ID_BYTES
    seq: int = 0
    consistency: Consistency = Consistency.STRONG
    timeout_ms: int = 0


def new_client_id() -> bytes:
    """Random bytes naming one client for its whole life."""
    return os.urandom(CLIENT_ID_BYTES)


def encode_request(request: Request) -> list[bytes]:
    """Frames for ``request``; ``LocalProtocolError`` if it could not be decoded by a peer."""
    if request.op not in CLIENT_OPS and request.op not in NODE_OPS:
        raise LocalProtocolError(f"unknown op {request.op!r}")
    if len(request.client_id) != CLIENT_ID_BYTES:
        raise LocalProtocolError(f"client_id must be {CLIENT_ID_BYTES} bytes")
    if not 0 <= request.seq <= MAX_SEQ or not 0 <= request.timeout_ms <= MAX_TIMEOUT_MS:
        raise LocalProtocolError("seq or timeout_ms out of range")
    header = REQUEST_HEADER.pack(
        VERSION,
        request.op,
        CONSISTENCY_CODES[request.consistency],
        request.client_id,
        request.seq,
        request.timeout_ms,
    )
    return [header + request.key, packb(request.args) if request.args else NO_ARGS]


def peek_request(head: bytes) -> tuple[int, int, int, int]:
    """``(op code, consistency code, seq, timeout_ms)`` read in place from a request's head,
    without building a ``Request``: what the broker needs to route one it forwards untouched.
    ``RemoteProtocolError`` (with ``.seq`` when it could be read) for a short head or another
    protocol version; the codes are not checked here."""
    if len(head) < REQUEST_HEADER.size:
        raise RemoteProtocolError(
            f"request header is {len(head)} bytes; expected at least {REQUEST_HEADER.size}"
        )
    version, op_code, consistency_code, _client, seq, timeout_ms = REQUEST_HEADER.unpack_from(head)
    if version != VERSION:
        err = RemoteProtocolError(f"protocol version {version}; this server speaks {VERSION}")
        err.seq = seq
        raise err
    return op_code, consistency_code, seq, timeout_ms


def request_key(head: bytes) -> bytes:
    """The key a request's head carries after its fixed header."""
    return head[REQUEST_HEADER.size :]


def decode_request_header(head: bytes) -> Request:
    """The header fields and key of a request, with empty args."""
    if len(head) < REQUEST_HEADER.size:
        raise RemoteProtocolError(
            f"request header is {len(head)} bytes; expected at least {REQUEST_HEADER.size}"
        )
    version, op_code, consistency_code, client_id, seq, timeout_ms = REQUEST_HEADER.unpack_from(
        head
    )
    op = _OP_BY_CODE.get(op_code)
    consistency = CONSISTENCY_BY_CODE.get(consistency_code)
    request = Request(
        op or Op.GET, b"", [], client_id, seq, consistency or Consistency.STRONG, timeout_ms
    )
    if version != VERSION:
        raise _malformed(request, f"protocol version {version}; this server speaks {VERSION}")
    if op is None or consistency is None:
        raise _malformed(request, f"unknown op {op_code} or consistency {consistency_code}")
    if len(head) > REQUEST_HEADER.size:
        if len(head) - REQUEST_HEADER.size > MAX_KEY_FRAME_BYTES:
            raise _malformed(request, f"key of {len(head) - REQUEST_HEADER.size} bytes")
        request.key = request_key(head)
    return request


def decode_request(frames: Sequence[bytes], allowed: frozenset[Op] = CLIENT_OPS) -> Request:
    """A validated ``Request`` from ``[head, body]``.

    Raises ``RemoteProtocolError`` for malformed frames and ``InvalidRequest`` for arguments
    of the wrong shape; either carries ``.seq`` when the header could be read, so the error
    can be answered.
    """
    if len(frames) != 2:
        raise RemoteProtocolError(f"a request has 2 frames, got {len(frames)}")
    request = decode_request_header(frames[0])
    if request.op not in allowed:
        raise _malformed(request, f"unknown operation {request.op.name}")
    if request.op not in SINGLE_KEY_OPS and request.key:
        raise _malformed(request, f"{request.op.name} takes no key")
    body = frames[1]
    if body == NO_ARGS:
        args: Any = []
    else:
        try:
            args = unpackb(body)
        except RemoteProtocolError as exc:
            exc.seq = request.seq
            raise
        if type(args) is not list:
            raise _malformed(request, "request body is not an array")
    request.args = args
    check_args(request)
    return request


def check_args(request: Request) -> None:
    """Raise ``InvalidRequest`` unless ``request.args`` fits the op's ``ARG_SPECS``."""
    spec = ARG_SPECS[request.op]
    if len(request.args) != len(spec):
        err = InvalidRequest(
            f"{request.op.name} takes {len(spec)} arguments, got {len(request.args)}",
            key=request.key or None,
        )
        err.seq = request.seq
        raise err
    for (name, check), value in zip(spec, request.args, strict=True):
        if not check(value):
            err = InvalidRequest(
                f"{request.op.name}: {name} must be {_ARG_HINTS[name]}",
                key=request.key or None,
            )
            err.seq = request.seq
            raise err


def _malformed(request: Request, message: str) -> RemoteProtocolError:
    err = RemoteProtocolError(message)
    err.seq = request.seq
    return err


# --------------------------------------------------------------------------- limits


#: Room for the envelope, headers and msgpack framing around a request's own bytes.
FRAME_OVERHEAD_BYTES: Final = 4096
#: msgpack framing of one key, value and expiry in a reply or record.
ENTRY_OVERHEAD_BYTES: Final = 64
#: The largest message a replica sends its primary's sync socket (HELLO, SNAP, ACK: a name
#: of at most 64 bytes and a few numbers).
MAX_SYNC_TO_PRIMARY_BYTES: Final = 64 * 1024


def max_request_frame_bytes(limits: LimitsConfig) -> int:
    """``MAXMSGSIZE`` of a socket receiving requests (the broker's, a node's from the
    broker): one frame carries at most one request of ``limits.max_request_bytes``."""
    return limits.max_request_bytes + FRAME_OVERHEAD_BYTES


def max_reply_frame_bytes(limits: LimitsConfig) -> int:
    """``MAXMSGSIZE`` of a socket receiving replies or the replication stream.

    The largest frame a node sends back is a request's own size (a write's record), or a
    reply of at most ``max(limits.max_keys_per_request, MAX_PAGE)`` entries of a key and a
    value at their limits (an MGET or pipeline reply, a KEYS page; a write's RESULT record
    carries such a reply too). Nothing legitimate is larger, so nothing legitimate is refused.
    """
    entries = max(limits.max_keys_per_request, MAX_PAGE)
    per_entry = limits.max_key_bytes + limits.max_value_bytes + ENTRY_OVERHEAD_BYTES
    return max(limits.max_request_bytes, entries * per_entry) + FRAME_OVERHEAD_BYTES


def check_key_count(op_name: str, count: int, limit: int, what: str = "keys") -> None:
    """Raise ``InvalidRequest`` if a multi-key request carries more than ``limit`` keys
    (``limits.max_keys_per_request``)."""
    if count > limit:
        raise InvalidRequest(
            f"{op_name} of {count} {what}; the limit is {limit} "
            "(limits.max_keys_per_request): split it"
        )


def check_key(key: bytes, max_key_bytes: int) -> None:
    """Raise ``KeyTooLarge`` if ``key`` is over the limit."""
    if len(key) > max_key_bytes:
        raise KeyTooLarge(
            f"key {show_key(key)} is {len(key)} bytes; the limit is {max_key_bytes} bytes "
            "(limits.max_key_bytes)",
            key=key[:64],
        )


def check_value(key: bytes, value: bytes, max_value_bytes: int) -> None:
    """Raise ``ValueTooLarge`` if the encoded ``value`` is over the limit."""
    if len(value) > max_value_bytes:
        raise ValueTooLarge(
            f"value for {show_key(key)} is {len(value)} bytes; the limit is "
            f"{max_value_bytes} bytes (limits.max_value_bytes)",
            key=key[:64],
        )


def check_items(items: list[list[bytes]], max_key_bytes: int, max_value_bytes: int) -> None:
    """Check every ``[key, value]`` of a batch, so a refused batch stores nothing."""
    for key, value in items:
        check_key(key, max_key_bytes)
        check_value(key, value, max_value_bytes)


# --------------------------------------------------------------------------- replies


def encode_reply(seq: int, result: Any) -> list[bytes]:
    """A success reply to request ``seq``; a ``bytes`` result (a stored value) goes as it is
    (``FORM_VALUE``), anything else as msgpack."""
    if type(result) is bytes:
        return [REPLY_HEADER.pack(VERSION, ErrorCode.OK, FORM_VALUE, seq), result]
    body = _CONSTANTS.get(result) if result is None or type(result) is bool else None
    return [REPLY_HEADER.pack(VERSION, ErrorCode.OK, FORM_MSGPACK, seq), body or packb(result)]


def encode_error(seq: int, exc: ZkvError) -> list[bytes]:
    """An error reply to request ``seq`` carrying ``exc``'s code, message and key."""
    body = packb([exc.message, exc.key])
    return [REPLY_HEADER.pack(VERSION, code_of(exc), FORM_MSGPACK, seq), body]


def decode_reply_header(frame: bytes) -> tuple[int, int, int]:
    """``(seq, code, form)`` from a reply header."""
    if len(frame) != REPLY_HEADER.size:
        raise RemoteProtocolError(f"reply header is {len(frame)} bytes")
    version, code, form, seq = REPLY_HEADER.unpack(frame)
    if version != VERSION:
        raise RemoteProtocolError(f"reply of protocol version {version}")
    return seq, code, form


def reply_seq(frame: bytes) -> int:
    """The request sequence number a reply header answers (not validated)."""
    return int(REPLY_HEADER.unpack(frame)[3])


def decode_reply(frames: Sequence[bytes]) -> tuple[int, Any]:
    """``(seq, result)`` for a success reply; for an error reply, the typed error is raised."""
    if len(frames) != 2:
        raise RemoteProtocolError(f"a reply has 2 frames, got {len(frames)}")
    seq, code, form = decode_reply_header(frames[0])
    if code == ErrorCode.OK:
        if form == FORM_VALUE:
            return seq, frames[1]
        if form != FORM_MSGPACK:
            raise RemoteProtocolError(f"reply body of unknown form {form}")
        return seq, unpackb(frames[1])
    body = unpackb(frames[1])
    if not (
        type(body) is list and len(body) == 2 and type(body[0]) is str and _is_opt_bytes(body[1])
    ):
        raise RemoteProtocolError(f"malformed error reply (code {code})")
    err = error_from_code(code, body[0], body[1])
    err.seq = seq
    raise err


# --------------------------------------------------------------------------- node messages


class Role(StrEnum):
    """A node's role in its shard (on the wire as its value)."""

    PRIMARY = "primary"
    REPLICA = "replica"


class NodeState(StrEnum):
    """What a node is doing (on the wire as its value).

    A primary is ``serving``. A replica is ``idle`` (no primary known), ``waiting`` (for
    the first stream message), ``syncing`` (a snapshot is arriving: it holds only part of
    the data), ``following`` (applying the stream in order) or ``suspended`` (it cannot
    log). A node whose data folder is damaged is ``damaged`` until it discards it.
    """

    SERVING = "serving"
    IDLE = "idle"
    WAITING = "waiting"
    SYNCING = "syncing"
    FOLLOWING = "following"
    SUSPENDED = "suspended"
    DAMAGED = "damaged"


@dataclass(slots=True)
class NodeInfo:
    """What a node tells the broker in READY and each heartbeat."""

    name: str
    shard: str
    role: str = Role.PRIMARY
    state: str = NodeState.SERVING
    lag: int = 0
    in_sync: list[str] = field(default_factory=list)
    pid: int = 0
    epoch: int = 0
    seq: int = 0
    keys: int = 0
    publish: str = ""
    sync: str = ""
    requests: int = 0
    errors: int = 0
    fsyncs: int = 0
    log_bytes: int = 0
    compactions: int = 0
    max_stall_ms: float = 0.0
    #: The last sequence number of data this node discarded as damaged (-1: none).
    discarded_seq: int = -1
    #: Whether it can log writes: ``ok``, ``low`` (under storage.min_free_bytes), ``full``
    #: (ENOSPC/EDQUOT) or ``error`` (another I/O error); with the last error's text.
    storage: str = "ok"
    storage_error: str = ""
    #: Free bytes on its data folder's volume (-1: unknown).
    free_bytes: int = -1
    #: Bytes its data takes by the store's accounting (``zkv.storage.eviction``), its
    #: ``memory.max_bytes`` (0: no limit), keys evicted since it started (a replica counts
    #: its primary's evictions it applied) and its ``memory.policy``.
    used_bytes: int = 0
    max_bytes: int = 0
    evictions: int = 0
    policy: str = "noeviction"
    #: As a primary: snapshots (full resyncs) and catch-ups from the backlog (partial
    #: resyncs) it started for its replicas, and the bytes it sent for them.
    resync_full: int = 0
    resync_partial: int = 0
    resync_bytes: int = 0
    #: The node's monotonic clock when it sent this (0: unknown). The controller echoes the
    #: latest it heard with each lease, and the lease runs from then (a late grant is void).
    sent_at: float = 0.0
    #: Its change feed: records and bytes of history kept, and watches waiting on it.
    watch_records: int = 0
    watch_bytes: int = 0
    watchers: int = 0


_NODE_INFO_TYPES: Final = {
    "name": str,
    "shard": str,
    "role": str,
    "state": str,
    "lag": int,
    "in_sync": list,
    "pid": int,
    "epoch": int,
    "seq": int,
    "keys": int,
    "publish": str,
    "sync": str,
    "requests": int,
    "errors": int,
    "fsyncs": int,
    "log_bytes": int,
    "compactions": int,
    "max_stall_ms": float,
    "sent_at": float,
    "discarded_seq": int,
    "storage": str,
    "storage_error": str,
    "free_bytes": int,
    "used_bytes": int,
    "max_bytes": int,
    "evictions": int,
    "policy": str,
    "resync_full": int,
    "resync_partial": int,
    "resync_bytes": int,
    "watch_records": int,
    "watch_bytes": int,
    "watchers": int,
}


def encode_node_info(kind: bytes, info: NodeInfo) -> list[bytes]:
    """READY or heartbeat frames from a node."""
    return [node_header(kind, info.epoch), packb(asdict(info))]


def decode_node_info(frame: bytes) -> NodeInfo:
    """A ``NodeInfo`` from a READY or heartbeat body; unknown fields are ignored."""
    raw = unpackb(frame)
    if type(raw) is not dict:
        raise RemoteProtocolError("node info is not a map")
    fields: dict[str, Any] = {}
    for name, typ in _NODE_INFO_TYPES.items():
        if name in raw:
            if type(raw[name]) is not typ:
                raise RemoteProtocolError(f"node info field {name!r} is not {typ.__name__}")
            fields[name] = raw[name]
    if "name" not in fields or "shard" not in fields:
        raise RemoteProtocolError("node info lacks name or shard")
    if fields.get("role", Role.PRIMARY) not in set(Role):
        raise RemoteProtocolError(f"node info has an unknown role {fields['role']!r}")
    if fields.get("state", NodeState.SERVING) not in set(NodeState):
        raise RemoteProtocolError(f"node info has an unknown state {fields['state']!r}")
    return NodeInfo(**fields)


def peek_op(head: bytes) -> int:
    """The op code of a request's head without decoding it (-1 if it is no request head)."""
    return head[1] if len(head) >= REQUEST_HEADER.size else -1


def decode_node_header(frame: bytes) -> tuple[bytes, int]:
    """``(kind, epoch)`` from the first frame of a node message."""
    if len(frame) < NODE_HEADER.size:
        raise RemoteProtocolError(f"node header is {len(frame)} bytes")
    kind, epoch, _n = NODE_HEADER.unpack_from(frame)
    return kind, epoch


def node_header(kind: bytes, epoch: int) -> bytes:
    """The first frame of a node message without an envelope (READY, heartbeats)."""
    return NODE_HEADER.pack(kind, epoch, 0)


def node_frame(kind: bytes, epoch: int, envelope: bytes, head: bytes) -> bytes:
    """The first frame of a request or reply between broker and node: node header, the
    broker's ``envelope`` (at most 255 bytes) and the request's head or reply's header."""
    return NODE_HEADER.pack(kind, epoch, len(envelope)) + envelope + head


def split_node_frame(frame: bytes) -> tuple[bytes, int, bytes, bytes]:
    """``(kind, epoch, envelope, head)`` of a request's or reply's first frame."""
    if len(frame) < NODE_HEADER.size:
        raise RemoteProtocolError(f"node header is {len(frame)} bytes")
    kind, epoch, n = NODE_HEADER.unpack_from(frame)
    end = NODE_HEADER.size + n
    if len(frame) < end:
        raise RemoteProtocolError(f"node message of {len(frame)} bytes has an envelope of {n}")
    return kind, epoch, frame[NODE_HEADER.size : end], frame[end:]


# --------------------------------------------------------------------------- msgpack


def packb(obj: Any) -> bytes:
    """msgpack-encode a control body (bin for bytes, str for str)."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(obj).__name__}: {exc}") from exc
    return data


def unpackb(data: bytes) -> Any:
    """msgpack-decode a control body; ``RemoteProtocolError`` on anything malformed.

    msgpack bounds every length by the buffer's size, so allocation is bounded by
    ``len(data)``, and its C decoder refuses nesting past its fixed stack. Nothing here walks
    a decoded body recursively: every decoder checks the shape it expects, field by field
    (``check_args``, ``decode_node_info``), so a deep but decodable body is refused there.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types for garbage
        raise RemoteProtocolError(f"invalid msgpack body: {exc}") from exc


def pack_value(value: Any) -> bytes:
    """Encode a user's value as the opaque bytes zkv stores."""
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"value of type {type(value).__name__} is not msgpack-serialisable: {exc}"
        ) from exc
    return data


def unpack_value(data: bytes) -> Any:
    """Decode stored bytes back into the user's value (tuples come back as lists).

    Map keys that were tuples (arrays in msgpack) come back as tuples, since a list cannot
    be a dict key; that slower path runs only for such values.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except TypeError:  # an unhashable (array) map key
        try:
            return msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=False,
                use_list=True,
                object_pairs_hook=_hashable_pairs,
            )
        except Exception as exc:
            raise RemoteProtocolError(f"stored value is not valid msgpack: {exc}") from exc
    except Exception as exc:
        raise RemoteProtocolError(f"stored value is not valid msgpack: {exc}") from exc


def _hashable_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_hashable(k): v for k, v in pairs}


def _hashable(key: Any) -> Any:
    if type(key) is list:
        return tuple(_hashable(k) for k in key)
    if type(key) is dict:
        return tuple((_hashable(k), _hashable(v)) for k, v in key.items())
    return key
