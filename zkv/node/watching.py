"""A shard's change feed on its node, sans-IO: the retained history and the parked watches.

``History`` is a bounded ring of the records this node applied most recently (by count and
by bytes, the ``watch:`` config section), kept by every node, primary and replica alike, so
that a promoted replica continues the feed where its primary left it. It listens to the
store: each record applied (written here, or replicated from the primary) is appended; a
record whose number is not the next one (a rolled-back turn, or the records after a
replica's snapshot) truncates or restarts the ring; a store ``reset`` (a replica's resync,
whose history is replaced) empties it.

``Watches`` answers WATCH requests (``protocol.Op.WATCH``), which the broker forwards to
the shard's primary. A position in the feed is ``(seq, skip)``: every event of the records
before ``seq`` was delivered, and the first ``skip`` events of record ``seq`` (an MSET is
one record with an event per key). A WATCH with a full page of events after its position
is answered at once; one with fewer is *parked* until new confirmed records arrive (and
``linger_s`` more, to gather a batch) or its wait runs out (then with an empty page), so
a watcher costs the node one small entry while it waits and nothing else: nothing is ever
queued per watcher. The number parked is capped
(``watch.max_watchers``); past it a WATCH is refused ``Unavailable`` and the client backs
off.

Only *confirmed* records are delivered: those every in-sync replica has acknowledged (the
node's driver passes the lowest such sequence, ``ReplicaSet.confirmed``), or every logged
record on a shard without replicas. The broker promotes only an in-sync replica, which
holds them all, so a failover never retracts an event a watcher saw: the new primary
numbers its records after them and the watcher's position stays valid there.

A position the ring no longer reaches back to (the watcher was away or read too slowly),
or one past what this node holds (a watcher that saw a history this primary does not
have), is answered ``resync`` with the position to continue from (the first record not
yet confirmed): the client may then read the current matching keys in pages (the
``page`` argument: ``[slot, after]``), as the ZeroMQ guide's Clone pattern does, and go
on from that position. The pages are read while writes go on; the events from that
position on bring the keys to their exact state.

Records that are not users' changes produce no events: write outcomes (``RESULT``) and a
slot move's ``COPY`` and ``DROP`` records (``zkv.node.migration``). A user's change to a
moving key is applied, and reported, by the shard that owned its slot when it was made.
No sockets, no clock of its own: the driver passes ``now``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from zkv import protocol
from zkv.errors import InvalidRequest, Unavailable, ZkvError
from zkv.protocol import Op
from zkv.storage.engine import Record, RecordOp, Store

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_RECORDS",
    "DEFAULT_MAX_WATCHERS",
    "FeedState",
    "History",
    "Watches",
    "record_events",
]

log = logging.getLogger(__name__)

DEFAULT_HISTORY_RECORDS: Final = 100_000
DEFAULT_HISTORY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MAX_WATCHERS: Final = 10_000
#: Accounted bytes of one record in the ring beyond its keys and values.
RECORD_OVERHEAD_BYTES: Final = 64
#: Records one WATCH examines at most per answer beyond its events (bounds a turn's work
#: for a narrow prefix over a busy shard; its position still moves past them).
SCAN_BUDGET: Final = 20_000
#: How long parked watches wait for more records once new ones are confirmed (seconds).
LINGER_S: Final = 0.005
#: The reply to one WATCH stops adding events past this many bytes of keys and values.
MAX_REPLY_BYTES: Final = 4 * 1024 * 1024

#: The event kind of each record op that has events.
KINDS: Final = {
    RecordOp.SET: "put",
    RecordOp.MSET: "put",
    RecordOp.DEL: "delete",
    RecordOp.EXPIRED: "expire",
    RecordOp.EVICT: "evict",
    RecordOp.EXPIRE_AT: "ttl",
    RecordOp.CLEAR: "clear",
}

Event = tuple[str, bytes, bytes | None, float | None]
"""``(kind, key, value or None, expires_at or None)``; a ``clear`` has the key ``b""``."""


def record_events(record: Record) -> list[Event]:
    """The users' changes ``record`` stands for, in order (none for RESULT, COPY, DROP)."""
    op = record[0]
    if op == RecordOp.SET:
        return [("put", record[1], record[2], record[3])]
    if op == RecordOp.MSET:
        return [("put", key, value, record[2]) for key, value in record[1]]
    if op == RecordOp.EXPIRE_AT:
        return [("ttl", record[1], None, record[2])]
    if op == RecordOp.CLEAR:
        return [("clear", b"", None, None)]
    kind = KINDS.get(op)
    return [] if kind is None else [(kind, record[1], None, None)]


def _size(record: Record) -> int:
    op = record[0]
    if op == RecordOp.MSET:
        return RECORD_OVERHEAD_BYTES + sum(len(k) + len(v) for k, v in record[1])
    if op in KINDS and len(record) > 1:
        return (
            RECORD_OVERHEAD_BYTES + len(record[1]) + (len(record[2]) if op == RecordOp.SET else 0)
        )
    return RECORD_OVERHEAD_BYTES


class History:
    """The records with sequence numbers ``floor + 1 .. last`` that produce events (others
    are kept as None, so that a record's place is its sequence number), bounded by
    ``max_records`` and ``max_bytes``."""

    def __init__(
        self,
        max_records: int = DEFAULT_HISTORY_RECORDS,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._items: list[Record | None] = []
        self._sizes: list[int] = []
        self._head = 0
        #: The last sequence number *not* held (None: take the store's at the next look).
        self._floor: int | None = None
        self.bytes = 0
        self._store: Store | None = None

    def attach(self, store: Store) -> None:
        """Follow ``store``'s records from its current sequence number on."""
        self._store = store
        store.subscribe(self.append)
        store.reset_listeners.append(self.reset)
        self.reset()

    def __len__(self) -> int:
        """How many records are held."""
        return len(self._items) - self._head

    @property
    def floor(self) -> int:
        """The last sequence number not held: records after it are all here."""
        if self._floor is None:
            self._floor = self._store.seq if self._store is not None else 0
        return self._floor

    @property
    def last(self) -> int:
        """The sequence number of the newest record held (``floor`` when empty)."""
        return self.floor + len(self)

    def reset(self) -> None:
        """Forget every record (the store's history was replaced)."""
        self._items, self._sizes, self._head, self.bytes = [], [], 0, 0
        self._floor = None

    def append(self, seq: int, record: Record) -> None:
        """Take the record numbered ``seq`` (a store listener)."""
        if self._floor is None:
            self._floor = seq - 1
        last = self.last
        if seq <= last:  # a rolled-back turn's numbers used again: drop what it had
            if seq <= self.floor:
                self.reset()
                self._floor = seq - 1
            else:
                for _ in range(last - seq + 1):
                    self._items.pop()
                    self.bytes -= self._sizes.pop()
        elif seq > last + 1:  # a gap (records after a snapshot): start again from here
            self.reset()
            self._floor = seq - 1
        keep = record if record[0] in KINDS else None
        size = _size(record) if keep is not None else 16
        self._items.append(keep)
        self._sizes.append(size)
        self.bytes += size
        while len(self) > self.max_records or (self.bytes > self.max_bytes and len(self) > 1):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        self.bytes -= self._sizes[self._head]
        self._items[self._head] = None
        self._head += 1
        self._floor = self.floor + 1
        if self._head > 1024 and self._head * 2 > len(self._items):
            del self._items[: self._head]
            del self._sizes[: self._head]
            self._head = 0

    def get(self, seq: int) -> Record | None:
        """Record ``seq`` if it is held and has events."""
        index = seq - self.floor - 1
        if index < 0 or index >= len(self):
            return None
        return self._items[self._head + index]


@dataclass(slots=True)
class FeedState:
    """What the node's driver tells ``Watches`` at each turn's end."""

    serving: bool
    epoch: int
    confirmed: int
    store: Store
    shard: str
    name: str
    hidden: frozenset[int] = frozenset()


@dataclass(slots=True)
class _Watch:
    token: Any
    seq: int  # the request's sequence number (for the reply header)
    position: tuple[int, int]
    prefixes: tuple[bytes, ...]
    max_events: int
    values: bool
    deadline: float


@dataclass
class Watches:
    """The WATCH requests of one node: answered at once or parked until they can be."""

    history: History
    max_watchers: int = DEFAULT_MAX_WATCHERS
    #: Parked watches are answered this long after new records are confirmed, so that a
    #: busy shard's events go out in batches rather than one reply (and one new request)
    #: per write per watcher (as Kafka's fetch.max.wait.ms, in reverse).
    linger_s: float = LINGER_S
    _parked: list[_Watch] = field(default_factory=list)
    _pending: bool = False  # new records confirmed, parked watches not looked at yet
    _linger_until: float = 0.0
    _seen: int = -1  # the confirmed sequence the parked watches were last looked at with
    _epoch: int = -1
    answered: int = 0
    events: int = 0

    def __len__(self) -> int:
        """How many watches are parked."""
        return len(self._parked)

    def next_deadline(self) -> float | None:
        """When the earliest parked watch runs out, or the linger after new records ends
        (None: none parked)."""
        first = min((w.deadline for w in self._parked), default=None)
        if first is not None and self._pending:
            return min(first, self._linger_until)
        return first

    def handle(
        self, frames: list[bytes], token: Any, now: float, state: FeedState
    ) -> list[bytes] | None:
        """The reply frames for a WATCH request, or None if it was parked (``due`` answers
        it later, with ``token``). Never raises: a bad request gets an error reply."""
        seq = 0
        try:
            request = protocol.decode_request(frames, protocol.NODE_OPS)
            seq = request.seq
            if request.op is not Op.WATCH:
                raise InvalidRequest(f"{request.op.name} is not a watch")
            shard, cursor, prefixes, max_events, wait_ms, values, page = request.args
            self._check_serving(state, shard)
            if page is not None:
                return protocol.encode_reply(seq, self._page(state, prefixes, page, max_events))
            if cursor is None:  # from now on: tell the client where "now" is, at once
                return protocol.encode_reply(seq, ["ok", state.epoch, state.confirmed + 1, 0, []])
            watch = _Watch(
                token,
                seq,
                (cursor[1], cursor[2]),
                tuple(prefixes),
                max_events,
                values,
                now + wait_ms / 1000,
            )
            if cursor[0] > state.epoch:
                raise Unavailable(
                    f"watch cursor of epoch {cursor[0]}; node {state.name} is at {state.epoch} "
                    "(a newer primary serves the shard); try again"
                )
            resync = self._resync(watch, state)
            if resync is not None:
                return protocol.encode_reply(seq, resync)
            result = self._read(watch, state)
            full = len(result[4]) >= max_events
            if wait_ms == 0 or full or (result[4] and self.linger_s <= 0):
                return protocol.encode_reply(seq, result)
            if result[4]:  # some events: wait the linger for more (a busy shard's watchers
                self._linger(now)  # would otherwise take one event per round trip)
                self.events -= len(result[4])  # counted again when it is answered
            else:  # none: past the records it has no events in, so they are not read again
                watch.position = (result[2], result[3])
            if len(self._parked) >= self.max_watchers:
                raise Unavailable(
                    f"node {state.name} has {self.max_watchers} watches waiting "
                    "(watch.max_watchers); try again"
                )
            self._parked.append(watch)
            return None
        except ZkvError as exc:
            return protocol.encode_error(seq if exc.seq is None else exc.seq, exc)

    def due(self, now: float, state: FeedState) -> list[tuple[Any, list[bytes]]]:
        """The parked watches that can be answered now: those with new confirmed events,
        those whose wait ran out, and every one if this node no longer serves."""
        if not self._parked:
            return []
        if not state.serving or (state.epoch != self._epoch and self._epoch >= 0):
            self._epoch = state.epoch
            error = Unavailable(f"node {state.name} no longer serves shard {state.shard}; retry")
            gone, self._parked = self._parked, []
            return [(w.token, protocol.encode_error(w.seq, error)) for w in gone]
        self._epoch = state.epoch
        if state.confirmed != self._seen:
            self._seen = state.confirmed
            self._linger(now)
        fresh = self._pending and now >= self._linger_until
        if fresh:
            self._pending = False
        out: list[tuple[Any, list[bytes]]] = []
        keep: list[_Watch] = []
        for watch in self._parked:
            if fresh:
                resync = self._resync(watch, state)
                result = resync if resync is not None else self._read(watch, state)
                if resync is not None or result[4]:
                    out.append((watch.token, protocol.encode_reply(watch.seq, result)))
                    continue
                watch.position = (result[2], result[3])  # past records it has no events in
            if watch.deadline <= now:
                out.append(
                    (watch.token, protocol.encode_reply(watch.seq, self._empty(watch, state)))
                )
                continue
            keep.append(watch)
        self._parked = keep
        self.answered += len(out)
        return out

    def _linger(self, now: float) -> None:
        """New events are ready for parked watches: answer them ``linger_s`` from now."""
        if not self._pending:
            self._pending, self._linger_until = True, now + self.linger_s

    def _check_serving(self, state: FeedState, shard: str) -> None:
        if shard != state.shard:
            raise Unavailable(
                f"node {state.name} serves shard {state.shard}, not {shard} (the topology "
                "changed); refresh the shard list and try again"
            )
        if not state.serving:
            raise Unavailable(
                f"node {state.name} is a replica of shard {state.shard}; watches go to its primary"
            )

    @staticmethod
    def _empty(watch: _Watch, state: FeedState) -> list[Any]:
        return ["ok", state.epoch, watch.position[0], watch.position[1], []]

    def _resync(self, watch: _Watch, state: FeedState) -> list[Any] | None:
        """A ``resync`` answer if ``watch``'s position is out of this node's reach."""
        seq, skip = watch.position
        seq = max(seq, 1)
        top = state.store.seq
        if seq > top + 1 or (seq == top + 1 and skip > 0):
            reason = f"the cursor (seq {seq}) is past what this primary holds (seq {top})"
        elif seq <= self.history.floor:
            reason = (
                f"the history kept (from seq {self.history.floor + 1}) no longer reaches back "
                f"to the cursor (seq {seq}): the watcher was away or read too slowly"
            )
        else:
            return None
        return ["resync", state.epoch, state.confirmed + 1, 0, [], reason]

    def _read(self, watch: _Watch, state: FeedState) -> list[Any]:
        """``["ok", epoch, next seq, next skip, events]`` from ``watch``'s position up to the
        confirmed sequence; each event ``[seq, index, kind, key, value, expires_at]``."""
        seq, skip = watch.position
        seq = max(seq, 1)
        upto = min(state.confirmed, self.history.last)
        prefixes, values, limit = watch.prefixes, watch.values, watch.max_events
        everything = b"" in prefixes
        out: list[list[Any]] = []
        size = 0
        budget = SCAN_BUDGET + limit
        history = self.history
        while seq <= upto and budget > 0:
            budget -= 1
            record = history.get(seq)
            if record is None:
                seq, skip = seq + 1, 0
                continue
            events = record_events(record)
            index = skip
            while index < len(events):
                kind, key, value, expires_at = events[index]
                index += 1
                if kind != "clear" and not everything and not key.startswith(prefixes):
                    continue
                shown = value if values else None
                out.append([seq, index - 1, kind, key, shown, expires_at])
                size += len(key) + (len(shown) if shown else 0)
                if len(out) >= limit or size >= MAX_REPLY_BYTES:
                    break
            if index < len(events):
                skip = index
                break
            seq, skip = seq + 1, 0
            if len(out) >= limit or size >= MAX_REPLY_BYTES:
                break
        self.events += len(out)
        return ["ok", state.epoch, seq, skip, out]

    @staticmethod
    def _page(
        state: FeedState, prefixes: Iterable[bytes], page: list[Any], limit: int
    ) -> list[Any]:
        """``["page", epoch, 0, 0, [[key, value, expires_at], ...], next page or nil]``: the
        live keys matching ``prefixes`` from ``page`` (``[slot, after]``) on."""
        store = state.store
        wanted = tuple(prefixes)
        start, after = page
        now = store.clock()
        items: list[list[Any]] = []
        examined = 0
        for slot in store.slot_numbers():
            if slot < start or slot in state.hidden:
                continue
            flat = store.slot_items(slot)
            rows = sorted(
                (flat[i], flat[i + 1], flat[i + 2])
                for i in range(0, len(flat), 3)
                if flat[i].startswith(wanted)
                and (after is None or slot != start or flat[i] > after)
                and (flat[i + 2] is None or flat[i + 2] > now)
            )
            examined += len(flat) // 3
            for key, value, expires_at in rows:
                items.append([key, value, expires_at])
                if len(items) >= limit:
                    return ["page", state.epoch, 0, 0, items, [slot, key]]
            if examined >= SCAN_BUDGET:
                return ["page", state.epoch, 0, 0, items, [slot + 1, None]]
        return ["page", state.epoch, 0, 0, items, None]
