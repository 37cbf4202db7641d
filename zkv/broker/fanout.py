"""Fan-out and gather: split a multi-key request per shard, merge the shards' answers.

Pure functions over ``Request`` values and decoded results, and ``Gathers``, the table of
fan-outs waiting for their parts (clock passed in); the broker's loop does the sending.
``MGET`` and ``MPUT`` go to the shards their keys hash to (one message per shard);
``CLEAR`` and ``COUNT`` go to every shard; ``KEYS`` is paged one shard at a time, its cursor
``[shard, slot, after]`` naming where the walk stands, and becomes a node-level ``SCAN``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from zkv.errors import InvalidRequest, RemoteProtocolError, ServerError, Timeout, ZkvError
from zkv.protocol import Op, Request
from zkv.slots import SlotMap

__all__ = ["FANOUT_OPS", "Gather", "Gathers", "Part", "merge", "plan"]

log = logging.getLogger(__name__)

FANOUT_OPS = frozenset({Op.MGET, Op.MPUT, Op.KEYS, Op.CLEAR, Op.COUNT, Op.BATCH})


@dataclass(slots=True)
class Part:
    """One shard's share of a multi-key request."""

    shard: str
    request: Request
    positions: list[int] | None = None


def _with_args(request: Request, args: list[Any]) -> Request:
    """``request`` with other arguments (``dataclasses.replace``, without its per-call
    introspection: a pipeline makes one per shard)."""
    r = request
    return Request(r.op, r.key, args, r.client_id, r.seq, r.consistency, r.timeout_ms)


def plan(request: Request, slot_map: SlotMap) -> list[Part]:
    """The per-shard requests for ``request`` (an op in ``FANOUT_OPS``)."""
    op = request.op
    if op is Op.MGET:
        keys: list[bytes] = request.args[0]
        return [
            Part(shard, _with_args(request, [[keys[i] for i in positions]]), positions)
            for shard, positions in slot_map.group(keys).items()
        ]
    if op is Op.MPUT:
        items, ttl = request.args
        return [
            Part(shard, _with_args(request, [[items[i] for i in positions], ttl]), positions)
            for shard, positions in slot_map.group([item[0] for item in items]).items()
        ]
    if op is Op.BATCH:
        ops = request.args[0]
        return [
            Part(shard, _with_args(request, [[ops[i] for i in positions]]), positions)
            for shard, positions in slot_map.group([o[1] for o in ops]).items()
        ]
    if op in (Op.CLEAR, Op.COUNT):
        return [Part(shard, request) for shard in slot_map.shards()]
    if op is Op.KEYS:
        prefix, cursor, limit = request.args
        shards = slot_map.shards()
        if cursor is None:
            shard, slot, after = shards[0], 0, None
        else:
            shard, slot, after = cursor
            if shard not in shards or slot >= slot_map.slots:
                raise InvalidRequest(f"invalid keys cursor {cursor!r}")
        scan = replace(request, op=Op.SCAN, args=[prefix, slot, after, limit])
        return [Part(shard, scan)]
    raise ValueError(f"{op.name} is not a fan-out operation")


def merge(request: Request, parts: list[Part], results: list[Any], slot_map: SlotMap) -> Any:
    """The client's answer from each part's decoded result (in ``parts`` order)."""
    op = request.op
    if op in (Op.MGET, Op.BATCH):
        values: list[Any] = [None] * len(request.args[0])
        for part, result in zip(parts, results, strict=True):
            positions = part.positions or []
            if type(result) is not list or len(result) != len(positions):
                raise RemoteProtocolError(
                    f"shard {part.shard} answered {op.name} with {result!r:.80}"
                )
            for i, value in zip(positions, result, strict=True):
                values[i] = value
        return values
    if op is Op.COUNT:
        if not all(type(r) is int for r in results):
            raise RemoteProtocolError("a shard answered COUNT with a non-integer")
        return sum(results)
    if op is Op.KEYS:
        (part,), (result,) = parts, results
        if not (type(result) is list and len(result) == 2 and type(result[0]) is list):
            raise RemoteProtocolError(f"shard {part.shard} answered SCAN with {result!r:.80}")
        keys, node_cursor = result
        if node_cursor is not None:
            return [keys, [part.shard, node_cursor[0], node_cursor[1]]]
        shards = slot_map.shards()
        following = shards.index(part.shard) + 1
        return [keys, [shards[following], 0, None] if following < len(shards) else None]
    return None  # MPUT, CLEAR


@dataclass(slots=True)
class Gather:
    """A fan-out waiting for its parts: who asked, and what each shard answered so far."""

    client: bytes
    request: Request
    parts: list[Part]
    deadline: float
    slot_map: SlotMap
    results: list[Any] = field(default_factory=list)
    pending: int = 0


class Gathers:
    """The fan-outs in flight, by id; answers come in any order, late ones are dropped.

    Pure: ``answer`` and ``expire`` return what to tell the client, as ``(gather, result)``
    for a merged success or ``(gather, error)`` for a failure; the first part that fails
    fails the whole request (what the other shards did stands, as the README says of mput).
    """

    def __init__(self) -> None:
        self._table: dict[int, Gather] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._table)

    def start(
        self,
        client: bytes,
        request: Request,
        parts: list[Part],
        deadline: float,
        slot_map: SlotMap,
    ) -> int:
        """Wait for ``parts``' answers until ``deadline``; the gather's id. ``slot_map`` is
        the map the parts were planned with (the answers are merged with it)."""
        gid = self._next
        self._next += 1
        self._table[gid] = Gather(
            client,
            request,
            parts,
            deadline,
            slot_map,
            results=[None] * len(parts),
            pending=len(parts),
        )
        return gid

    def drop(self, gid: int) -> None:
        """Forget a gather (its request was answered otherwise)."""
        self._table.pop(gid, None)

    def answer(
        self, gid: int, index: int, result: Any | ZkvError
    ) -> tuple[Gather, Any | ZkvError] | None:
        """Part ``index`` answered ``result`` (a decoded result, or the error it carried).

        Returns the client's answer once there is one: the first error, or the merged
        results once every part answered; None while parts are pending or for an answer to a
        gather that already ended.
        """
        gather = self._table.get(gid)
        if gather is None or not 0 <= index < len(gather.parts):
            return None
        if isinstance(result, ZkvError):
            del self._table[gid]
            return gather, result
        gather.results[index] = result
        gather.pending -= 1
        if gather.pending:
            return None
        del self._table[gid]
        try:
            return gather, merge(gather.request, gather.parts, gather.results, gather.slot_map)
        except ZkvError as exc:
            log.error("could not merge %s: %s", gather.request.op.name, exc)
            return gather, ServerError(str(exc))

    def expire(self, now: float) -> list[tuple[Gather, ZkvError]]:
        """The gathers past their deadline, each with the ``Timeout`` that answers it."""
        late = [(gid, g) for gid, g in self._table.items() if now > g.deadline]
        for gid, _ in late:
            del self._table[gid]
        return [
            (g, Timeout(f"{g.request.op.name}: a shard did not answer in time")) for _, g in late
        ]
