"""ClientCore: everything a zkv client does that is not waiting on a socket.

It turns calls into ``Request`` frames (assigning the client id and sequence numbers),
converts keys and values, matches replies to requests (a reply for another sequence number,
late from a call that timed out, is dropped), raises the typed error a reply carries, and
decides retries. Each call is a generator that yields ``Send`` and ``Sleep`` actions and
receives the reply frames (or None on timeout); ``Client`` drives it with a blocking
``zmq.Socket``, and ``AsyncClient`` drives the same generator with ``await``.

``keys()``, ``items()`` and ``values()`` are walks (``walk_keys`` and its siblings): a
generator that yields the call of each page (and of that page's values), is sent its result,
and yields ``Emit`` with what the iterator should hand out; each client runs every call of a
walk as a call of its own, so that other calls can run between pages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from zkv import protocol
from zkv.config import ClusterConfig, load_config
from zkv.errors import (
    ConfigError,
    InvalidRequest,
    LocalProtocolError,
    RemoteProtocolError,
    Timeout,
    Unavailable,
    ValueTooLarge,
    ZkvError,
    error_from_code,
)
from zkv.protocol import Consistency, Op

if TYPE_CHECKING:
    from zkv.security import CurveKeys

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MISSING",
    "Call",
    "ClientCore",
    "Emit",
    "Key",
    "Missing",
    "Send",
    "Sleep",
    "Walk",
    "check_ttl",
    "key_bytes",
    "key_out",
]

Key: TypeAlias = str | bytes
DEFAULT_TIMEOUT_S: Final = 5.0
#: Keys per page of ``keys()``.
KEYS_PAGE: Final = 1000
#: First and largest pause between attempts to reach an unreachable broker (seconds).
BACKOFF_FIRST_S: Final = 0.01
BACKOFF_MAX_S: Final = 0.5
#: How long a read waits for its first answer before it is sent again, and the cap as the
#: wait doubles (seconds).
FIRST_ATTEMPT_S: Final = 0.5
#: No attempt is made with less time than this left before the deadline (seconds).
MIN_ATTEMPT_S: Final = 0.02
MAX_ATTEMPT_S: Final = 2.0


class Missing(Enum):
    """The type of ``MISSING``, whose only value it is."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


#: "No value", where None is a value like any other: ``get(key, MISSING) is MISSING`` tells
#: an absent key from one holding None. The one such sentinel of the client and the gateway.
MISSING: Final = Missing.MISSING


@dataclass(slots=True)
class Send:
    """Send ``frames``, then wait until ``deadline`` (on the core's clock) for the reply to
    ``seq``.

    The driver answers with the reply frames, or None on timeout; if the frames could not
    even be handed to a connection (no broker), it answers with ``NOT_SENT``.
    """

    frames: list[bytes]
    seq: int
    deadline: float


@dataclass(slots=True)
class Sleep:
    """Pause for ``seconds`` before the next action."""

    seconds: float


NOT_SENT: Final = [b"not sent"]

Action: TypeAlias = Send | Sleep
Call: TypeAlias = Generator[Action, list[bytes] | None, Any]


@dataclass(frozen=True, slots=True)
class Emit:
    """A step of a walk: hand ``items`` (never empty) to the iterator's user, then go on
    (send None)."""

    items: list[Any]


#: ``keys()``, ``items()`` or ``values()``, sans-IO: yields each ``Call`` to run (and is sent
#: its result) and ``Emit`` steps (and is sent None); ends when the walk is done.
Walk: TypeAlias = Generator[Call | Emit, Any, None]


def key_bytes(key: Key) -> bytes:
    """A key as its wire bytes: ``str`` as UTF-8, ``bytes`` as is."""
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"a zkv key is str or bytes, not {type(key).__name__}")


def key_out(key: bytes) -> Key:
    """A key as users see it: ``str`` when it is valid UTF-8, else ``bytes``."""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_ttl(
    ttl: Any,
    where: str = "ttl",
    *,
    wrong_type: type[Exception] = TypeError,
    describe: Callable[[Any], str] = _type_name,
) -> float | None:
    """``ttl`` as given, if it is a TTL: None (no TTL), or a finite number of seconds > 0.

    Not a number (a ``bool`` is not one) raises ``wrong_type``: "{where} must be a number of
    seconds, not {describe(ttl)}"; a number that is not finite and positive raises
    ``InvalidRequest``: "{where} must be a positive number of seconds, got {ttl!r}". The
    client raises ``TypeError`` for a wrong type, as Python does for a wrong argument; the
    HTTP gateway passes ``InvalidRequest`` (its 400) and names JSON's types.
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise wrong_type(f"{where} must be a number of seconds, not {describe(ttl)}")
    if not (math.isfinite(ttl) and ttl > 0):
        raise InvalidRequest(f"{where} must be a positive number of seconds, got {ttl!r}")
    return ttl


def config_defaults(
    path: str | Path,
    kwargs: dict[str, Any],
    client: str | None,
    load_keys: Callable[[ClusterConfig, str], CurveKeys],
) -> str:
    """The broker endpoint of the cluster file at ``path``; fills client defaults from it.

    When the file has a ``security`` section, ``kwargs["curve"]`` becomes the keys of
    client ``client`` (``load_keys(config, client)``: ``CurveKeys.for_client``, passed in
    by the driver so that this module stays free of ZeroMQ),
    unless ``kwargs`` holds a ``curve`` already. ``ConfigError`` if such a file is given
    neither (the broker would admit no connection), or if ``client`` is given for a file
    without a ``security`` section. ``TypeError`` if both ``client`` and ``curve`` are.
    """
    config = load_config(path)
    curve = kwargs.get("curve")
    if client is not None and curve is not None:
        raise TypeError("pass client=NAME or curve=KEYS, not both")
    security = config.security
    if security is None:
        if client is not None:
            raise ConfigError(
                f"{path}: has no security section, so client={client!r} names no key; "
                "drop client= (this cluster's links are not encrypted)"
            )
    elif curve is None:
        if client is None:
            listed = ", ".join(security.clients)
            raise ConfigError(
                f"{path}: has a security section: pass client=NAME (one of security.clients: "
                f"{listed}) to connect with that client's key, or curve=CurveKeys.load(FILE)"
            )
        kwargs["curve"] = load_keys(config, client)
    kwargs.setdefault("timeout_s", config.defaults.timeout_s)
    kwargs.setdefault("consistency", config.defaults.consistency)
    kwargs.setdefault("max_request_bytes", config.limits.max_request_bytes)
    kwargs.setdefault("max_keys_per_request", config.limits.max_keys_per_request)
    kwargs.setdefault("max_reply_bytes", protocol.max_reply_frame_bytes(config.limits))
    return ",".join(b.clients for b in config.broker_list())  # every broker of the cluster


@dataclass(frozen=True, slots=True)
class Operation:
    """One single-key operation, encoded and checked, with the decoder of its result."""

    op: Op
    key: bytes
    args: list[Any]
    decode: Callable[[Any], Any]


def _unpack_or(default: Any) -> Callable[[Any], Any]:
    return lambda raw: default if raw is None else protocol.unpack_value(raw)


def _nothing(_raw: Any) -> None:
    return None


def get_op(key: Key, default: Any = None) -> Operation:
    """``get``: the value, or ``default``."""
    return Operation(Op.GET, key_bytes(key), [], _unpack_or(default))


def put_op(key: Key, value: Any, ttl: float | None = None) -> Operation:
    """``put``."""
    args = [protocol.pack_value(value), check_ttl(ttl)]
    return Operation(Op.PUT, key_bytes(key), args, _nothing)


def create_op(key: Key, value: Any, ttl: float | None = None) -> Operation:
    """``create`` (``KeyExists`` if present)."""
    args = [protocol.pack_value(value), check_ttl(ttl)]
    return Operation(Op.CREATE, key_bytes(key), args, _nothing)


def delete_op(key: Key) -> Operation:
    """``delete``: whether it was there."""
    return Operation(Op.DELETE, key_bytes(key), [], bool)


def exists_op(key: Key) -> Operation:
    """``exists``."""
    return Operation(Op.EXISTS, key_bytes(key), [], bool)


def cas_op(key: Key, expected: Any, new: Any) -> Operation:
    """``cas``: whether it swapped."""
    args = [protocol.pack_value(expected), protocol.pack_value(new)]
    return Operation(Op.CAS, key_bytes(key), args, bool)


def expire_op(key: Key, seconds: float) -> Operation:
    """``expire``: whether the key was there."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
    if not math.isfinite(seconds):
        raise InvalidRequest(f"seconds must be finite, got {seconds!r}")
    return Operation(Op.EXPIRE, key_bytes(key), [seconds], bool)


def ttl_op(key: Key) -> Operation:
    """``ttl``: seconds left or None (``KeyNotFound`` when absent)."""
    return Operation(Op.TTL, key_bytes(key), [], lambda raw: raw)


def _batch_result(operation: Operation, result: Any) -> Any:
    if type(result) is not list or not result or type(result[0]) is not int:
        raise RemoteProtocolError(f"malformed batch result {result!r:.60}")
    if result[0] == 0 and len(result) == 2:
        return operation.decode(result[1])
    message = result[1] if len(result) > 1 and type(result[1]) is str else ""
    key = result[2] if len(result) > 2 and type(result[2]) is bytes else None
    return error_from_code(result[0], message, key)


_pack_header: Final = protocol.REQUEST_HEADER.pack

#: The requests whose first argument lists keys (or operations): ``limits.max_keys_per_request``.
_MULTI_KEY_OPS: Final = frozenset({Op.MGET, Op.MPUT, Op.BATCH})


class ClientCore:
    """Request building, reply matching and retry decisions for one client.

    ``clock`` (seconds, never going back; ``time.monotonic`` by default) is what every
    deadline and back-off decision reads: the deadlines of ``Send`` actions are on it, so a
    driver waits on the same clock (``Client`` and ``AsyncClient`` keep the default), and a
    test can drive time by hand.
    """

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        consistency: Consistency | str = Consistency.STRONG,
        max_request_bytes: int = 64 * 1024 * 1024,
        max_keys_per_request: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = protocol.new_client_id()
        self.clock = clock
        self.timeout_s = timeout_s
        self.consistency = consistency  # the setter converts
        self.max_request_bytes = max_request_bytes
        #: The most keys an mget, mput or pipeline may carry (``limits.max_keys_per_request``).
        self.max_keys_per_request = max_keys_per_request
        self._seq = 0

    @property
    def consistency(self) -> Consistency:
        """The consistency of a call that names none."""
        return self._consistency

    @consistency.setter
    def consistency(self, value: Consistency | str) -> None:
        self._consistency = Consistency(value)
        self._consistency_code = protocol.CONSISTENCY_CODES[self._consistency]

    # ------------------------------------------------------------------ one exchange

    def call(
        self,
        op: Op,
        key: bytes = b"",
        args: Iterable[Any] = (),
        *,
        timeout: float | None = None,
        consistency: Consistency | str | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> Call:
        """Send one request and return its result (``decode(result)`` if ``decode`` is
        given), raising the reply's error.

        Retries until the call's timeout: a request no broker connection would take (the
        broker is down or restarting) and a request answered ``Unavailable`` (no live node
        for the shard, e.g. during a failover), with a back-off that doubles; a request that
        gets no answer is sent again, the same request with the same sequence number, after a
        wait that grows. That is safe for writes too: a primary (and, through the
        replication stream, any replica promoted after it) remembers the outcome of each
        write by request id and answers a retry with it instead of applying it twice.

        Out of time, a read raises the last error (``Unavailable`` if the cluster said so,
        else ``Timeout``); a write that was sent and not answered raises ``Timeout``, since
        it may or may not have been applied.
        """
        timeout_s = self.timeout_s if timeout is None else timeout
        if not timeout_s > 0:
            raise InvalidRequest(f"timeout must be a positive number of seconds, got {timeout!r}")
        timeout_s = min(timeout_s, protocol.MAX_TIMEOUT_MS / 1000)  # inf: about 49 days
        deadline = self.clock() + timeout_s
        arguments = args if type(args) is list else list(args)
        if op in _MULTI_KEY_OPS and arguments and isinstance(arguments[0], list | dict):
            protocol.check_key_count(
                op.name,
                len(arguments[0]),
                self.max_keys_per_request,
                "operations" if op is Op.BATCH else "keys",
            )
        self._seq += 1
        seq = self._seq
        if consistency is None:
            level = self._consistency_code
        else:
            level = protocol.CONSISTENCY_CODES[Consistency(consistency)]
        if len(key) > protocol.MAX_KEY_FRAME_BYTES:
            raise LocalProtocolError(f"a key of {len(key)} bytes cannot be sent")
        timeout_ms = min(protocol.MAX_TIMEOUT_MS, math.ceil(timeout_s * 1000))
        # the frames as ``protocol.encode_request`` makes them, without building a Request
        frames = [
            _pack_header(protocol.VERSION, op, level, self.client_id, seq, timeout_ms) + key,
            protocol.packb(arguments) if arguments else protocol.NO_ARGS,
        ]
        size = len(frames[0]) + len(frames[1])
        if size > self.max_request_bytes:
            raise ValueTooLarge(
                f"{op.name} request is {size} bytes; the limit is {self.max_request_bytes} "
                "bytes (limits.max_request_bytes): split the batch"
            )
        write = op in protocol.WRITE_OPS
        backoff, attempt_s = BACKOFF_FIRST_S, FIRST_ATTEMPT_S
        last: ZkvError | None = None
        while True:
            wait_until = min(deadline, self.clock() + attempt_s)
            reply = yield Send(frames, seq, wait_until)
            if reply is None:
                if self.clock() >= deadline:
                    if write:  # the write went out: its outcome is unknown
                        raise Timeout(
                            f"{op.name} got no reply within {timeout_s:g} s; "
                            "the write may or may not have been applied"
                        )
                    raise last or Timeout(f"{op.name} got no reply within {timeout_s:g} s")
                attempt_s = min(attempt_s * 2, MAX_ATTEMPT_S)
                continue  # send it again at once
            if reply is NOT_SENT:
                last = Unavailable(f"no broker connection to {op.name} within {timeout_s:g} s")
            else:
                try:
                    result = protocol.decode_reply(reply)[1]
                except Unavailable as exc:
                    last = exc
                else:
                    return result if decode is None else decode(result)
            left = deadline - self.clock()
            if left <= MIN_ATTEMPT_S:  # too late for another attempt to be answered
                raise last
            yield Sleep(min(backoff, left - MIN_ATTEMPT_S))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    @staticmethod
    def result(frames: list[bytes]) -> Any:
        """The result carried by a reply (raising its error)."""
        return protocol.decode_reply(frames)[1]

    @staticmethod
    def reply_seq(frames: list[bytes]) -> int | None:
        """The sequence number a reply answers, or None if it is not a reply."""
        if len(frames) != 2:
            return None
        try:
            return protocol.decode_reply_header(frames[0])[0]
        except RemoteProtocolError:
            return None

    # ------------------------------------------------------------------ operations

    def run(self, operation: Operation, **kw: Any) -> Call:
        """One single-key operation (the call itself: no generator around it)."""
        return self.call(operation.op, operation.key, operation.args, decode=operation.decode, **kw)

    def batch(self, operations: list[Operation], **kw: Any) -> Call:
        """Many single-key operations in one request per shard; each one's result, or the
        error instance it met, in order."""
        if not operations:
            return []
        ops = [[o.op, o.key, o.args] for o in operations]
        results = yield from self.call(Op.BATCH, args=[ops], **kw)
        if type(results) is not list or len(results) != len(operations):
            raise RemoteProtocolError("a batch reply does not match its request")
        return [_batch_result(o, r) for o, r in zip(operations, results, strict=True)]

    def get(self, key: Key, default: Any = None, **kw: Any) -> Call:
        """The value of ``key``, or ``default``."""
        return self.run(get_op(key, default), **kw)

    def put(self, key: Key, value: Any, ttl: float | None, **kw: Any) -> Call:
        """Set ``key``."""
        return self.run(put_op(key, value, ttl), **kw)

    def create(self, key: Key, value: Any, ttl: float | None, **kw: Any) -> Call:
        """Set ``key`` only if absent (``KeyExists`` otherwise)."""
        return self.run(create_op(key, value, ttl), **kw)

    def delete(self, key: Key, **kw: Any) -> Call:
        """Remove ``key``; whether it was there."""
        return self.run(delete_op(key), **kw)

    def exists(self, key: Key, **kw: Any) -> Call:
        """Whether ``key`` is present."""
        return self.run(exists_op(key), **kw)

    def cas(self, key: Key, expected: Any, new: Any, **kw: Any) -> Call:
        """Compare-and-swap; whether it swapped."""
        return self.run(cas_op(key, expected, new), **kw)

    def expire(self, key: Key, seconds: float, **kw: Any) -> Call:
        """Set a TTL; whether the key was there."""
        return self.run(expire_op(key, seconds), **kw)

    def ttl(self, key: Key, **kw: Any) -> Call:
        """Seconds left, or None without a TTL (``KeyNotFound`` when absent)."""
        return self.run(ttl_op(key), **kw)

    def mget(self, keys: Iterable[Key], **kw: Any) -> Call:
        """``{key: value}`` for the keys present, keyed as passed."""
        wanted = list(keys)
        values = yield from self.call(Op.MGET, args=[[key_bytes(k) for k in wanted]], **kw)
        return {
            k: protocol.unpack_value(v)
            for k, v in zip(wanted, values, strict=True)
            if v is not None
        }

    def mput(self, mapping: Mapping[Key, Any], ttl: float | None, **kw: Any) -> Call:
        """Set every key of ``mapping``."""
        items = [[key_bytes(k), protocol.pack_value(v)] for k, v in mapping.items()]
        yield from self.call(Op.MPUT, args=[items, check_ttl(ttl)], **kw)

    def keys_page(
        self, prefix: Key, cursor: list[Any] | None, limit: int = KEYS_PAGE, **kw: Any
    ) -> Call:
        """One page of keys: ``(keys, next cursor or None)``."""
        keys, cursor = yield from self.call(Op.KEYS, args=[key_bytes(prefix), cursor, limit], **kw)
        return [key_out(k) for k in keys], cursor

    def walk_keys(self, prefix: Key, **kw: Any) -> Walk:
        """``keys(prefix)``: every key starting with ``prefix``, a page at a time."""
        return self._walk(prefix, None, **kw)

    def walk_items(self, prefix: Key, **kw: Any) -> Walk:
        """``items(prefix)``: ``(key, value)`` of every key starting with ``prefix``."""
        return self._walk(prefix, lambda key, value: (key, value), **kw)

    def walk_values(self, prefix: Key, **kw: Any) -> Walk:
        """``values(prefix)``: the value of every key starting with ``prefix``."""
        return self._walk(prefix, lambda _key, value: value, **kw)

    def _walk(self, prefix: Key, pick: Callable[[Key, Any], Any] | None, **kw: Any) -> Walk:
        """Page through every shard with ``keys_page``; with ``pick``, ``mget`` each page and
        emit ``pick(key, value)`` for its keys still present, else emit the keys.

        Keys present for the whole walk are emitted exactly once; ``kw`` (``timeout``,
        ``consistency``) applies to each call.
        """
        cursor: list[Any] | None = None
        while True:
            page, cursor = yield self.keys_page(prefix, cursor, KEYS_PAGE, **kw)
            if page and pick is not None:
                found = yield self.mget(page, **kw)
                page = [pick(key, found[key]) for key in page if key in found]
            if page:
                yield Emit(page)
            if cursor is None:
                return

    def clear(self, **kw: Any) -> Call:
        """Remove every key in the cluster."""
        yield from self.call(Op.CLEAR, **kw)

    def count(self, **kw: Any) -> Call:
        """The number of live keys in the cluster."""
        result: int = yield from self.call(Op.COUNT, **kw)
        return result

    def failover(self, shard: str, to: str | None, *, timeout: float | None = None) -> Call:
        """Move ``shard``'s primary role (to ``to``, or the most advanced in-sync replica).

        ``timeout`` (default ``protocol.FAILOVER_TIMEOUT_S``) also bounds the broker's
        switch-over, which answers before it runs out; resends of the request join the
        switch in progress or get its outcome.
        """
        if timeout is None:
            timeout = protocol.FAILOVER_TIMEOUT_S
        result: dict[str, Any] = yield from self.call(
            Op.FAILOVER, args=[shard, to], timeout=timeout
        )
        return result

    def reshard(
        self,
        from_shard: str | None,
        to_shard: str | None,
        count: int | None,
        **kw: Any,
    ) -> Call:
        """Start moving slots: ``count`` of them from ``from_shard`` to ``to_shard``, or
        with none of the three a rebalance over the config's shards. The broker answers at
        once with ``{"moves", "slots"}``; the moves run in the background."""
        result: dict[str, Any] = yield from self.call(
            Op.RESHARD, args=[from_shard, to_shard, count], **kw
        )
        return result

    def status(self, **kw: Any) -> Call:
        """The broker's view of the cluster."""
        result: dict[str, Any] = yield from self.call(Op.STATUS, **kw)
        return result
