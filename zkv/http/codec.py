"""JSON on the HTTP side, zkv values on the other: values, keys and listing cursors.

Values are JSON, with two additions so that every value a Python client can store
survives the trip:

- bytes travel as ``{"$b64": "<standard base64>"}``, in both directions and at any depth
  (an object with the single member ``"$b64"`` and a string value is always bytes; any other
  object is a map);
- the non-finite floats a Python client can store come out as the strings ``"NaN"``,
  ``"Infinity"`` and ``"-Infinity"`` (as in protobuf's JSON mapping); JSON offers no way in
  for them, so they are refused on input.

Map keys that are not strings (a Python client may store ``{1: "a"}`` or ``{b"k": 1}``)
come out as strings: numbers, booleans and null as their JSON text, bytes as UTF-8 text
when they are valid UTF-8 (else ``"$b64:<base64>"``), anything else as its ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Final

from zkv.client._core import Key
from zkv.client.watch import Resync, WatchEvent
from zkv.errors import InvalidRequest, KeyTooLarge
from zkv.protocol import MAX_KEY_FRAME_BYTES

__all__ = [
    "B64",
    "MAX_DEPTH",
    "check_text",
    "decode_cursor",
    "encode_cursor",
    "event_json",
    "json_type",
    "key_from_json",
    "key_to_json",
    "parse_json",
    "value_from_json",
    "value_to_json",
]

#: The member name that marks bytes.
B64: Final = "$b64"
#: Deepest nesting of arrays and objects accepted in a value (msgpack packs 511 at most).
MAX_DEPTH: Final = 256
#: The range of integers msgpack can store.
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text} is out of the range of a double")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes) -> Any:
    """The JSON document in ``data``; ``InvalidRequest`` if it is not JSON (RFC 8259).

    ``NaN``, ``Infinity`` and numbers too large for a double are refused, not read as
    non-finite floats.
    """
    if not data.strip():
        raise InvalidRequest("the request body is empty; a JSON document was expected")
    try:
        return json.loads(data, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, _finite_float
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


def _bytes_from(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidRequest(f'{where}: "{B64}" must be a base64 string')
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidRequest(f'{where}: "{B64}" is not valid base64') from None


def check_text(text: str, where: str) -> str:
    """``text``, or ``InvalidRequest`` naming ``where`` if it holds a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where}: a string holds a lone surrogate (not Unicode)") from None
    return text


def value_from_json(doc: Any, where: str = "value", depth: int = 0) -> Any:
    """The zkv value a parsed JSON document stands for (``{"$b64": ...}`` becomes bytes).

    ``InvalidRequest`` names ``where`` if the value cannot be stored: invalid base64, an
    integer outside msgpack's 64-bit range, or nesting deeper than ``MAX_DEPTH``.
    """
    if isinstance(doc, str):
        return check_text(doc, where)
    if isinstance(doc, bool) or doc is None or isinstance(doc, float):
        return doc
    if isinstance(doc, int):
        if not MIN_INT <= doc <= MAX_INT:
            raise InvalidRequest(f"{where}: integer {doc} is outside the 64-bit range zkv stores")
        return doc
    if depth >= MAX_DEPTH:
        raise InvalidRequest(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(doc, list):
        return [value_from_json(item, where, depth + 1) for item in doc]
    if isinstance(doc, dict):
        if len(doc) == 1 and B64 in doc:
            return _bytes_from(doc[B64], where)
        return {check_text(k, where): value_from_json(v, where, depth + 1) for k, v in doc.items()}
    raise InvalidRequest(f"{where}: {type(doc).__name__} is not a JSON value")  # not reached


def _map_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return "$b64:" + base64.b64encode(key).decode("ascii")
    if key is None or isinstance(key, bool | int):
        return json.dumps(key)
    if isinstance(key, float):
        return json.dumps(value_to_json(key))
    return repr(key)


def value_to_json(value: Any) -> Any:
    """A stored value as a JSON-ready document (bytes become ``{"$b64": ...}``)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return {B64: base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [value_to_json(item) for item in value]
    if isinstance(value, dict):
        return {_map_key(k): value_to_json(v) for k, v in value.items()}
    return repr(value)  # e.g. a msgpack ExtType stored by another client


def key_from_json(doc: Any, where: str) -> str:
    """A key given in a request: a non-empty string (``InvalidRequest`` otherwise).

    A key too long for the wire (64 KiB) raises ``KeyTooLarge`` here, as the store
    would for a key over its ``limits.max_key_bytes`` (usually far lower); the broker would
    only drop such a request as malformed.
    """
    if not isinstance(doc, str):
        raise InvalidRequest(f"{where} must be a string, not {json_type(doc)}")
    if not doc:
        raise InvalidRequest(f"{where} must not be empty")
    size = len(check_text(doc, where).encode("utf-8"))
    if size > MAX_KEY_FRAME_BYTES:
        raise KeyTooLarge(f"{where} is {size} bytes; no key can exceed {MAX_KEY_FRAME_BYTES}")
    return doc


def key_to_json(key: Key) -> Any:
    """A key as it appears in a listing: its text, or ``{"$b64": ...}`` if not UTF-8."""
    return key if isinstance(key, str) else value_to_json(key)


def json_type(doc: Any) -> str:
    """How a parsed JSON value is named in error messages ("a string", "null", ...)."""
    if doc is None:
        return "null"
    if isinstance(doc, bool):
        return "a boolean"
    if isinstance(doc, int | float):
        return "a number"
    if isinstance(doc, str):
        return "a string"
    if isinstance(doc, list):
        return "an array"
    if isinstance(doc, dict):
        return "an object"
    return type(doc).__name__


# --------------------------------------------------------------------------- cursors

_CURSOR_VERSION: Final = 1


def encode_cursor(prefix: str, position: list[Any]) -> str:
    """The opaque ``cursor`` string of a key listing: the prefix, and where the walk stands.

    ``position`` is the broker's ``[shard, slot, after]`` (``after`` a key as bytes, or
    None); the string is URL-safe base64 of a small JSON object, without padding.
    """
    shard, slot, after = position
    doc = {
        "v": _CURSOR_VERSION,
        "p": prefix,
        "s": shard,
        "n": slot,
        "a": None if after is None else base64.b64encode(after).decode("ascii"),
    }
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> tuple[str, list[Any]]:
    """``(prefix, [shard, slot, after])`` from a cursor string (``InvalidRequest`` if bad)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("v") != _CURSOR_VERSION:
            raise ValueError("unknown cursor version")
        prefix, shard, slot, after = doc["p"], doc["s"], doc["n"], doc["a"]
        if not (
            isinstance(prefix, str)
            and isinstance(shard, str)
            and type(slot) is int
            and slot >= 0
            and (after is None or isinstance(after, str))
        ):
            raise ValueError("malformed cursor")
        after_bytes = None if after is None else base64.b64decode(after, validate=True)
    except (ValueError, KeyError, TypeError, RecursionError):  # binascii.Error is a ValueError
        raise InvalidRequest(
            "invalid cursor: pass the cursor string of the previous page unchanged"
        ) from None
    return prefix, [shard, slot, after_bytes]


def event_json(event: WatchEvent | Resync) -> dict[str, Any]:
    """An event as the JSON object of its ``data:`` line (the CLI prints the same)."""
    if isinstance(event, Resync):
        return {
            "kind": "resync",
            "shard": event.shard,
            "reason": event.reason,
            "snapshot": event.snapshot,
            "cursor": str(event.cursor),
        }
    return {
        "kind": event.kind,
        "key": key_to_json(event.key),
        "value": value_to_json(event.value),
        "expires_at": event.expires_at,
        "shard": event.shard,
        "seq": event.seq,
        "epoch": event.epoch,
        "cursor": str(event.cursor),
    }
