"""NodeCore: a shard node's request handling, sans-IO.

Request frames in; reply frames out, and records through the ``Store`` (which the node's
log and replication stream listen to). It owns the checks a node makes before touching
data (limits, the role it serves in, the epoch the broker stamped, whether its log can take
writes), exactly-once writes (a write whose request id was applied before is answered with
its first outcome, from the store's RESULT records), and pipelines (a BATCH runs its
operations in order, each result or error in place).

The node's driver (``server.py``) sets what the core serves as at each turn boundary:
``epoch``, ``replica_state`` (None for a primary) and ``refusal`` (the error that answers
writes while the log cannot take them). No sockets, no clock: unit-tested directly.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, Final

from zkv import protocol
from zkv.config import LimitsConfig
from zkv.errors import (
    InvalidRequest,
    KeyExists,
    ServerError,
    StorageError,
    Unavailable,
    ZkvError,
    code_of,
    show_key,
)
from zkv.node.migration import SlotMover
from zkv.protocol import Consistency, NodeState, Op, Request
from zkv.slots import slot_of
from zkv.storage.engine import RecordOp, Store

__all__ = ["REQUEST_ID_SEQ", "NodeCore"]

log = logging.getLogger(__name__)

REQUEST_ID_SEQ: Final = struct.Struct(">Q")
#: Reads any node answers whatever the consistency asked: the broker's own walks.
_ANY_NODE: Final = frozenset({Op.SCAN, Op.COUNT})
_GET: Final = int(Op.GET)
_SINGLE_KEY_BY_CODE: Final = {int(op): op for op in protocol.SINGLE_KEY_OPS}


def _ok_header(seq: int) -> bytes:
    """The header of a success reply whose body is msgpack (a remembered write outcome)."""
    return protocol.REPLY_HEADER.pack(protocol.VERSION, 0, protocol.FORM_MSGPACK, seq)


class NodeCore:
    """Answers the requests the broker forwards to one node."""

    def __init__(self, store: Store, limits: LimitsConfig, slots: int, name: str, shard: str):
        self.store = store
        self.limits = limits
        self.slots = slots
        self.name = name
        self.shard = shard
        #: The shard epoch this node serves at; writes stamped with another are refused.
        self.epoch = 0
        #: None while primary; a replica's state otherwise (it serves reads only following).
        self.replica_state: NodeState | None = NodeState.IDLE
        #: While the log cannot take writes, the error that answers them.
        self.refusal: StorageError | None = None
        #: Whether a primary may serve strong operations: with several brokers, only while
        #: the controller's lease holds (the driver sets it each turn; always with one).
        self.lease_ok = True
        self.requests = 0
        self.errors = 0
        #: This node's share of slot moves (marks, tracking; ``zkv.node.migration``).
        self.mover = SlotMover(store)
        self._handlers: dict[Op, Callable[[Request], Any]] = {
            Op.GET: lambda r: self.store.get(r.key),
            Op.PUT: lambda r: self.store.put(r.key, self._value(r, r.args[0]), r.args[1]),
            Op.DELETE: lambda r: self.store.delete(r.key),
            Op.CREATE: self._create,
            Op.EXISTS: lambda r: self.store.exists(r.key),
            Op.CAS: lambda r: self.store.cas(r.key, r.args[0], self._value(r, r.args[1])),
            Op.EXPIRE: lambda r: self.store.expire(r.key, r.args[0]),
            Op.TTL: lambda r: self.store.ttl(r.key),
            Op.MGET: lambda r: self.store.mget(r.args[0]),
            Op.MPUT: self._mput,
            Op.SCAN: self._scan,
            Op.CLEAR: lambda r: self.store.clear(),
            Op.COUNT: self._count,
            Op.BATCH: self._batch,
        }

    def handle(self, frames: list[bytes], epoch: int | None = None) -> tuple[list[bytes], bool]:
        """The reply frames for one request's ``[head, body]``, and whether it is a
        ``strong`` write (whose reply waits for the in-sync replicas).

        ``epoch`` is the shard epoch the broker stamped on the request: a write stamped with
        another epoch than this node's is refused (it was meant for another primary). A
        write whose request id (client id, sequence number) was applied before is answered
        with its first outcome, not applied again. Nothing a peer sends raises: malformed
        input is answered with an error, and an unexpected failure is logged and answered
        ``ServerError``.
        """
        self.requests += 1
        request: Request | None = None
        try:
            request = protocol.decode_request(frames, protocol.NODE_OPS)
            protocol.check_key(request.key, self.limits.max_key_bytes)
            write = request.op in protocol.WRITE_OPS
            self._check_may_serve(write)
            strong_read = not write and request.consistency is Consistency.STRONG
            if strong_read and self.replica_state is not None and request.op not in _ANY_NODE:
                # a strong read belongs to the primary: a replica may lag (a broker that has
                # not seen a promotion yet may still send one here)
                raise Unavailable(
                    f"node {self.name} is a replica of shard {self.shard}; strong reads go to "
                    "its primary"
                )
            if not self.lease_ok and (write or request.consistency is Consistency.STRONG):
                raise Unavailable(
                    f"primary {self.name}'s lease from the controller ran out (it may have "
                    "been replaced); try again"
                )
            if request.op in protocol.MOVE_OPS:
                return self._move(request, epoch)
            if self.mover.refused_slots:
                self._check_slots_served(request)
            if not write:
                result = self._handlers[request.op](request)
                return protocol.encode_reply(request.seq, result), False
            strong = request.consistency is Consistency.STRONG
            if epoch is not None and epoch != self.epoch:
                raise Unavailable(f"request for epoch {epoch}; {self.name} is at {self.epoch}")
            rid = request.client_id + REQUEST_ID_SEQ.pack(request.seq)
            first = self.store.results.get(rid)
            if first is not None:  # a retry of a write applied before: its first outcome
                return [_ok_header(request.seq), first], strong
            before = self.store.seq
            reply = protocol.encode_reply(request.seq, self._handlers[request.op](request))
            if self.store.seq != before:  # it changed something: remember the outcome
                self.store.emit((RecordOp.RESULT, rid, reply[1]))
            return reply, strong
        except ZkvError as exc:
            self.errors += 1
            seq = request.seq if request is not None else exc.seq
            return protocol.encode_error(seq or 0, exc), False
        except Exception as exc:
            self.errors += 1
            log.exception("failed to handle %s", request.op.name if request else "a request")
            seq = request.seq if request is not None else 0
            return protocol.encode_error(seq, ServerError(f"{type(exc).__name__}: {exc}")), False

    def use_store(self, store: Store) -> None:
        """Serve from ``store`` from now on (a node that set damaged data aside)."""
        self.store = store
        self.mover = SlotMover(store)

    def _move(self, request: Request, epoch: int | None) -> tuple[list[bytes], bool]:
        """A step of a slot move (from the broker only): the primary answers it; IMPORT and
        SETTLE change data, so they carry the shard's epoch and their reply waits for the
        in-sync replicas (no outcome is remembered: the broker numbers its steps anew)."""
        if self.replica_state is not None:
            raise Unavailable(f"node {self.name} is a replica; slot moves go to its primary")
        write = request.op in protocol.WRITE_OPS
        if write and epoch is not None and epoch != self.epoch:
            raise Unavailable(f"request for epoch {epoch}; {self.name} is at {self.epoch}")
        result = self.mover.handle(request.op, request.args)
        return protocol.encode_reply(request.seq, result), write

    def _check_slots_served(self, request: Request) -> None:
        """Refuse (retryably) a request on a slot this node is giving away or gave away: the
        client's retry goes through the broker again, which routes it by the map as it is."""
        op = request.op
        if op in protocol.SINGLE_KEY_OPS:
            keys: list[bytes] = [request.key]
        elif op is Op.MGET:
            keys = request.args[0]
        elif op is Op.MPUT:
            keys = [item[0] for item in request.args[0]]
        elif op is Op.BATCH:
            keys = [entry[1] for entry in request.args[0]]
        else:
            return
        for key in keys:
            if self.mover.refuses(slot_of(key, self.slots)):
                raise Unavailable(
                    f"{op.name} {show_key(key)}: its slot is moving to another shard; try again",
                    key=key,
                )

    def _count(self, _request: Request) -> int:
        """Live keys, less those of slots this node is importing or gave away."""
        total = len(self.store)
        hidden = self.mover.hidden()
        if not hidden:
            return total
        now = self.store.clock()
        for slot in hidden:
            flat = self.store.slot_items(slot)
            total -= sum(
                1 for i in range(0, len(flat), 3) if flat[i + 2] is None or flat[i + 2] > now
            )
        return total

    def _check_may_serve(self, write: bool) -> None:
        state = self.replica_state
        if state is not None:
            if write:
                raise Unavailable(
                    f"node {self.name} is a replica of shard {self.shard}; writes go to its primary"
                )
            if state != NodeState.FOLLOWING:
                raise Unavailable(f"replica {self.name} is {state}; ask its primary or try again")
        if write and self.refusal is not None:
            raise self.refusal

    def _value(self, request: Request, value: bytes) -> bytes:
        protocol.check_value(request.key, value, self.limits.max_value_bytes)
        return value

    def _create(self, request: Request) -> None:
        if not self.store.create(
            request.key, self._value(request, request.args[0]), request.args[1]
        ):
            raise KeyExists(f"key {show_key(request.key)} already exists", key=request.key)

    def _mput(self, request: Request) -> None:
        items, ttl = request.args
        protocol.check_items(items, self.limits.max_key_bytes, self.limits.max_value_bytes)
        self.store.mput(items, ttl)

    def _batch(self, request: Request) -> list[list[Any]]:
        """Run a pipeline's operations for this shard in order; each one's result or error."""
        results: list[list[Any]] = []
        get, max_key_bytes = self.store.get, self.limits.max_key_bytes
        for op_code, key, args in request.args[0]:
            if op_code == _GET and not args and len(key) <= max_key_bytes:
                results.append([0, get(key)])  # the common case, without a Request
                continue
            sub = Request(
                Op.GET,
                key,
                args,
                request.client_id,
                request.seq,
                request.consistency,
                request.timeout_ms,
            )
            try:
                op = _SINGLE_KEY_BY_CODE.get(op_code)
                if op is None:
                    raise InvalidRequest(f"a batch holds single-key operations, not {op_code}")
                sub.op = op
                protocol.check_args(sub)
                protocol.check_key(key, self.limits.max_key_bytes)
                results.append([0, self._handlers[sub.op](sub)])
            except ZkvError as exc:
                results.append([code_of(exc), exc.message, exc.key])
        return results

    def _scan(self, request: Request) -> list[Any]:
        prefix, slot, after, limit = request.args
        if slot >= self.slots:
            raise InvalidRequest(f"slot {slot} is out of range")
        keys, cursor = self.store.scan(prefix, slot, after, limit)
        hidden = self.mover.hidden()
        if hidden:  # importing or given away: another shard lists them
            keys = [k for k in keys if slot_of(k, self.slots) not in hidden]
        return [keys, list(cursor) if cursor is not None else None]
