"""Log records as bytes: msgpack ``[seq, op, *args]``, one encoder and one decoder.

The same payload is appended to the log (``persistence.py``), read back by recovery and
``zkv check`` (``recovery.py``), and carried to replicas on the replication stream
(``zkv.node.wire``), so all of them encode and decode it here.

``decode_record`` checks the record's shape op by op (argument count and types, never
walked recursively) before anything applies it; msgpack bounds every length by the
payload's size. Anything else raises ``RecordError``. This module imports neither
``zkv.protocol`` nor ``zmq``: the node layer turns ``RecordError`` into its own errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import msgpack

from zkv.storage.engine import Record, RecordOp

__all__ = ["RecordError", "decode_record", "encode_record", "is_expiry"]


class RecordError(ValueError):
    """A payload that is not a valid log record."""


def encode_record(seq: int, record: Record) -> bytes:
    """The payload of ``record`` numbered ``seq``: msgpack ``[seq, op, *args]``."""
    payload: bytes = msgpack.packb((seq, *record), use_bin_type=True)
    return payload


def decode_record(payload: bytes) -> tuple[int, Record]:
    """``(seq, (op, *args))`` from a payload; ``RecordError`` unless it is a valid record."""
    try:
        items = msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises many types for garbage
        raise RecordError(f"not msgpack: {exc}") from None
    if type(items) is not list or len(items) < 2:
        raise RecordError("not an array [seq, op, *args]")
    seq, op = items[0], items[1]
    if type(seq) is not int:
        raise RecordError(f"its sequence number is {seq!r}")
    check = _CHECKS.get(op) if type(op) is int else None
    if check is None:
        raise RecordError(f"unknown record op {op!r}")
    args = items[2:]
    if not check(args):
        raise RecordError(f"malformed {RecordOp(op).name} record")
    return seq, tuple(items[1:])


def is_expiry(value: object) -> bool:
    """Whether ``value`` is an absolute expiry time as records hold it: nil or a number."""
    return value is None or ((type(value) is float and math.isfinite(value)) or type(value) is int)


def _is_items(items: object) -> bool:
    return type(items) is list and all(
        type(i) is list and len(i) == 2 and type(i[0]) is bytes and type(i[1]) is bytes
        for i in items
    )


_CHECKS: Final[dict[int, Callable[[list[Any]], bool]]] = {
    RecordOp.SET: lambda a: (
        len(a) == 3 and type(a[0]) is bytes and type(a[1]) is bytes and is_expiry(a[2])
    ),
    RecordOp.DEL: lambda a: len(a) == 1 and type(a[0]) is bytes,
    RecordOp.EXPIRE_AT: lambda a: len(a) == 2 and type(a[0]) is bytes and is_expiry(a[1]),
    RecordOp.MSET: lambda a: len(a) == 2 and _is_items(a[0]) and is_expiry(a[1]),
    RecordOp.CLEAR: lambda a: not a,
    RecordOp.RESULT: lambda a: len(a) == 2 and type(a[0]) is bytes and type(a[1]) is bytes,
    RecordOp.EVICT: lambda a: len(a) == 1 and type(a[0]) is bytes,
    RecordOp.COPY: lambda a: (
        len(a) == 3 and type(a[0]) is bytes and type(a[1]) is bytes and is_expiry(a[2])
    ),
    RecordOp.DROP: lambda a: len(a) == 1 and type(a[0]) is bytes,
    RecordOp.EXPIRED: lambda a: len(a) == 1 and type(a[0]) is bytes,
}
