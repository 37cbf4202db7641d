"""Store: one node's data, in memory, changed only by replayable records.

Keys and values are opaque bytes (values are msgpack the client produced; the store never
decodes them). Keys live in one dict per slot, so a page of ``scan`` resumes from a
stateless ``(slot, after)`` cursor and a slot's keys can be moved as a unit. Expiry times
live in a separate dict (keys without a TTL cost nothing there) and in a min-heap that the
active sweep pops, so expired keys are reclaimed even when nobody reads them.

Every change is expressed as a *record* with absolute times: a ``cas`` that succeeds becomes
``SET``, ``put(ttl=5)`` becomes ``SET ... expires_at``, an expired key becomes ``EXPIRED``.
``apply_record`` is the only code that changes the maps, so a log replay (durability) or a
replica (replication) applying the same records reaches the same state. Each record gets
the next sequence number; listeners (the log, the replication stream) see each one.

Only a store in the primary role deletes expired keys (emitting ``EXPIRED``); any store hides a
key past its expiry on every read path.

With ``max_bytes`` set, a primary makes room before a write that would pass it
(``make_room``): it refuses the write with ``OutOfMemory`` under ``noeviction``, or evicts
keys chosen by its policy (``eviction.py``), each one an ``EVICT`` record, so the log, the
replicas and a restart all see the same evictions. A replica never evicts by itself.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import Any, Final

from zkv.errors import KeyNotFound, OutOfMemory, show_key
from zkv.slots import slot_of
from zkv.storage.eviction import (
    KEY_OVERHEAD_BYTES,
    ORDER_OVERHEAD_BYTES,
    SAMPLES,
    TTL_OVERHEAD_BYTES,
    Order,
    Policy,
    sample_heap,
    sample_slots,
)

__all__ = ["Record", "RecordOp", "Store"]

#: How many keys one ``scan`` page may examine beyond the page size before it returns
#: (so a page with a sparse prefix still answers quickly; the cursor resumes the walk).
SCAN_BUDGET_FACTOR: Final = 16
#: The most expired keys one ``sweep`` call deletes (bounds the pause it can cause).
SWEEP_BATCH: Final = 2000
#: Write outcomes remembered for exactly-once retries (the oldest are forgotten first).
MAX_RESULTS: Final = 100_000


class RecordOp(IntEnum):
    """What a record does."""

    SET = 1  # key, value, expires_at | None
    DEL = 2  # key
    EXPIRE_AT = 3  # key, expires_at | None
    MSET = 4  # [[key, value], ...], expires_at | None
    CLEAR = 5  # (no arguments)
    RESULT = 6  # request id, reply body: a write's outcome, for exactly-once retries
    EVICT = 7  # key: removed to keep the node under memory.max_bytes
    # Changes that are not a user's write: same effect as SET / DEL, told apart so that a
    # change feed (``zkv.node.watching``) can tell what happened.
    COPY = 8  # key, value, expires_at | None: a slot move's copy of a key (target side)
    DROP = 9  # key: a slot move removing a key this shard no longer owns (either side)
    EXPIRED = 10  # key: its expiry time passed (lazy on access or the active sweep)


#: Records that change one key (``record[1]``).
#: Records that change one key (``record[1]``).
ONE_KEY_OPS: Final = frozenset(
    {
        RecordOp.SET,
        RecordOp.DEL,
        RecordOp.EXPIRE_AT,
        RecordOp.EVICT,
        RecordOp.COPY,
        RecordOp.DROP,
        RecordOp.EXPIRED,
    }
)

Record = tuple[Any, ...]
"""``(RecordOp, *arguments)`` with absolute wall-clock expiry times."""


class Store:
    """The key space of one node.

    ``clock`` returns wall-clock seconds (``time.time``); tests pass their own. ``max_bytes``
    (0: no limit) bounds ``used_bytes`` under ``policy``; ``rng`` draws eviction samples.
    """

    def __init__(
        self,
        slots: int,
        clock: Callable[[], float] = time.time,
        *,
        max_bytes: int = 0,
        policy: Policy | str = Policy.NOEVICTION,
        rng: random.Random | None = None,
    ) -> None:
        self.slots = slots
        self.clock = clock
        #: The memory limit (0: none) and what a primary does to stay under it.
        self.max_bytes = max_bytes
        self.policy = Policy(policy)
        self._rng = rng or random.Random()
        kind = self.policy.ordered
        #: Access marks for an LRU or LFU policy (None for the others).
        self.order: Order | None = None if kind is None else Order(kind, self._rng)
        #: Keys removed by EVICT records this store applied (a replica counts its primary's).
        self.evictions = 0
        self._slot_list: list[int] | None = None
        #: Sequence number of the last record applied.
        self.seq = 0
        #: Only a primary deletes expired keys; a replica hides them until told.
        self.primary = True
        self._by_slot: dict[int, dict[bytes, bytes]] = {}
        self._expires: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._count = 0
        #: Bytes of live keys and values (what a snapshot must hold), for compaction.
        self.data_bytes = 0
        self._listeners: list[Callable[[int, Record], None]] = []
        #: Called when the store's history is replaced (``reset``: a replica's resync).
        self.reset_listeners: list[Callable[[], None]] = []
        #: Reply bodies of recent writes, by request id (client id + sequence number), so a
        #: retried write is answered with its first outcome instead of being applied twice.
        #: Kept by every node through RESULT records, so a promoted replica has them too.
        self.results: OrderedDict[bytes, bytes] = OrderedDict()
        #: Before-images of this turn's changes while a turn is open (``begin``).
        self._journal: list[tuple[Any, ...]] | None = None
        self._journal_seq = 0

    # ------------------------------------------------------------------ turns

    def begin(self) -> None:
        """Open a turn: the changes from here on can be undone by ``rollback``.

        The node opens one per loop turn and commits it once the turn's records are logged;
        if logging fails, the turn's writes are rolled back and refused, so memory never
        holds a change the log does not.
        """
        self._journal = []
        self._journal_seq = self.seq

    def commit(self) -> None:
        """Close the turn: its changes stay."""
        self._journal = None

    def rollback(self) -> None:
        """Undo every change since ``begin`` (newest first) and close the turn.

        An outcome remembered for exactly-once retries that a rolled-back RESULT pushed out
        of the bounded table (``MAX_RESULTS``) is not brought back.
        """
        journal, self._journal = self._journal, None
        if journal is None:
            return
        for entry in reversed(journal):
            kind = entry[0]
            if kind == "key":
                _, key, value, expires_at = entry
                if value is None:
                    self._del(key)
                else:
                    self._set(key, value, expires_at)
            elif kind == "result":
                _, rid, body = entry
                if body is None:
                    self.results.pop(rid, None)
                else:
                    self.results[rid] = body
            else:  # "all": the maps as they were before a CLEAR
                _, by_slot, expires, count, data_bytes = entry
                self._by_slot, self._expires = by_slot, expires
                self._heap = [(t, k) for k, t in expires.items()]
                heapq.heapify(self._heap)
                self._count, self.data_bytes = count, data_bytes
                self._slot_list = None
                if self.order is not None:  # the marks start again from the keys' order
                    for table in by_slot.values():
                        for key in table:
                            self.order.touch(key)
        self.seq = self._journal_seq

    def _remember(self, record: Record) -> None:
        """Journal what ``record`` is about to change."""
        journal = self._journal
        assert journal is not None
        op = record[0]
        if op in ONE_KEY_OPS:
            journal.append(self._before(record[1]))
        elif op == RecordOp.MSET:
            journal.extend(self._before(key) for key, _ in record[1])
        elif op == RecordOp.RESULT:
            journal.append(("result", record[1], self.results.get(record[1])))
        elif op == RecordOp.CLEAR:
            copy = {slot: dict(table) for slot, table in self._by_slot.items()}
            journal.append(("all", copy, dict(self._expires), self._count, self.data_bytes))

    def _before(self, key: bytes) -> tuple[Any, ...]:
        table = self._by_slot.get(slot_of(key, self.slots))
        value = None if table is None else table.get(key)
        return ("key", key, value, self._expires.get(key))

    # ------------------------------------------------------------------ records

    def subscribe(self, listener: Callable[[int, Record], None]) -> None:
        """Call ``listener(seq, record)`` after each record is applied."""
        self._listeners.append(listener)

    def emit(self, record: Record) -> None:
        """Apply ``record`` as the next change and tell the listeners."""
        if self._journal is not None:
            self._remember(record)
        self.apply_record(record)
        self.seq += 1
        for listener in self._listeners:
            listener(self.seq, record)

    def replicate(self, seq: int, record: Record) -> None:
        """Apply a record a primary numbered ``seq`` (the next one) and tell the listeners."""
        if self._journal is not None:
            self._remember(record)
        self.apply_record(record)
        self.seq = seq
        for listener in self._listeners:
            listener(seq, record)

    def apply_record(self, record: Record) -> None:
        """Change the maps as ``record`` says (no sequence number, no listeners)."""
        op = record[0]
        if op == RecordOp.SET or op == RecordOp.COPY:
            self._set(record[1], record[2], record[3])
        elif op == RecordOp.DEL or op == RecordOp.DROP or op == RecordOp.EXPIRED:
            self._del(record[1])
        elif op == RecordOp.EVICT:
            if self._del(record[1]):
                self.evictions += 1
        elif op == RecordOp.EXPIRE_AT:
            key = record[1]
            table = self._by_slot.get(slot_of(key, self.slots))
            if table is not None and key in table:  # replayed over a fuzzy snapshot it may
                self._set_expiry(key, record[2])  # be gone already: then there is nothing
        elif op == RecordOp.MSET:
            for key, value in record[1]:
                self._set(key, value, record[2])
        elif op == RecordOp.RESULT:
            self.results[record[1]] = record[2]
            if len(self.results) > MAX_RESULTS:
                self.results.popitem(last=False)
        elif op == RecordOp.CLEAR:
            self._by_slot.clear()
            self._expires.clear()
            self._heap.clear()
            self._count = 0
            self.data_bytes = 0
            self._slot_list = None
            if self.order is not None:
                self.order.clear()
        else:
            raise ValueError(f"unknown record op {op!r}")

    def _set(self, key: bytes, value: bytes, expires_at: float | None) -> None:
        table = self._by_slot.get(slot := slot_of(key, self.slots))
        if table is None:
            table = self._by_slot[slot] = {}
            self._slot_list = None
        old = table.get(key)
        if old is None:
            self._count += 1
            self.data_bytes += len(key) + len(value)
        else:
            self.data_bytes += len(value) - len(old)
        table[key] = value
        self._set_expiry(key, expires_at)
        if self.order is not None:
            self.order.touch(key)

    def _set_expiry(self, key: bytes, expires_at: float | None) -> None:
        if expires_at is None:
            self._expires.pop(key, None)
            return
        self._expires[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        if len(self._heap) > 2 * len(self._expires) + 1024:
            self._heap = [(t, k) for k, t in self._expires.items()]
            heapq.heapify(self._heap)

    def _del(self, key: bytes) -> bool:
        slot = slot_of(key, self.slots)
        table = self._by_slot.get(slot)
        value = None if table is None else table.pop(key, None)
        if value is None:
            self._expires.pop(key, None)
            return False
        self.data_bytes -= len(key) + len(value)
        if not table:
            del self._by_slot[slot]
            self._slot_list = None
        self._expires.pop(key, None)
        self._count -= 1
        if self.order is not None:
            self.order.forget(key)
        return True

    def load(self, flat: list[Any]) -> None:
        """Add ``[key, value, expires_at, ...]`` from a snapshot (no records, no listeners)."""
        for i in range(0, len(flat), 3):
            self._set(flat[i], flat[i + 1], flat[i + 2])

    def result_items(self) -> list[list[bytes]]:
        """``[request id, reply body]`` of each remembered write outcome, oldest first."""
        return [[rid, body] for rid, body in self.results.items()]

    def reset(self) -> None:
        """Forget everything: keys, expiry times and the outcomes of past writes.

        For a store about to receive a whole snapshot in place of its own history (a
        replica's resync). Unlike a CLEAR record (the ``clear`` operation), which removes the
        keys but keeps the outcomes for exactly-once retries, this drops the outcomes too: a
        write this node applied in a history it is giving up may never have reached the
        shard, and answering its retry with that outcome would acknowledge a write that is
        not there. The snapshot brings the outcomes of the history it stands for.
        """
        self.apply_record((RecordOp.CLEAR,))
        self.results.clear()
        for listener in self.reset_listeners:
            listener()

    def load_results(self, pairs: list[list[bytes]]) -> None:
        """Remember write outcomes from a snapshot (no records, no listeners)."""
        for rid, body in pairs:
            self.results[rid] = body
        while len(self.results) > MAX_RESULTS:
            self.results.popitem(last=False)

    def slot_numbers(self) -> list[int]:
        """The slots that hold keys, ascending."""
        return sorted(self._by_slot)

    def slot_items(self, slot: int) -> list[Any]:
        """``[key, value, expires_at, ...]`` for every key held in ``slot`` (expired included)."""
        table = self._by_slot.get(slot)
        if not table:
            return []
        expires = self._expires
        flat: list[Any] = []
        for key, value in table.items():
            flat += (key, value, expires.get(key))
        return flat

    def walk(self, slots: list[int], pos: int, max_keys: int) -> tuple[list[Any], int]:
        """One step of a chunked walk over ``slots`` (taken from ``slot_numbers``).

        Returns ``[key, value, expires_at, ...]`` of whole slots from ``slots[pos]`` on,
        stopping once it holds at least ``max_keys`` keys or the slots run out, and the
        position to resume from (``len(slots)`` when the walk is done). Writes between steps
        make the walk fuzzy, as snapshots allow (see ``storage/snapshot.py``).
        """
        flat: list[Any] = []
        limit = max_keys * 3
        while pos < len(slots) and len(flat) < limit:
            flat += self.slot_items(slots[pos])
            pos += 1
        return flat, pos

    # ------------------------------------------------------------------ reads

    def _lookup(self, key: bytes) -> bytes | None:
        """The live value of ``key``, expiring it first if its time has passed."""
        table = self._by_slot.get(slot_of(key, self.slots))
        if table is None:
            return None
        value = table.get(key)
        if value is None:
            return None
        if self._expires:
            expires_at = self._expires.get(key)
            if expires_at is not None and expires_at <= self.clock():
                if self.primary:
                    self.emit((RecordOp.EXPIRED, key))
                return None
        if self.order is not None:
            self.order.touch(key)
        return value

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None if it is absent or expired."""
        return self._lookup(key)

    def exists(self, key: bytes) -> bool:
        """Whether ``key`` is present and not expired."""
        return self._lookup(key) is not None

    def mget(self, keys: Iterable[bytes]) -> list[bytes | None]:
        """The value of each key (None where absent), in order."""
        return [self._lookup(key) for key in keys]

    def ttl(self, key: bytes) -> float | None:
        """Seconds left before ``key`` expires, or None if it has no TTL.

        Raises ``KeyNotFound`` when the key is absent or expired.
        """
        if self._lookup(key) is None:
            raise KeyNotFound(f"key {show_key(key)} not found", key=key)
        expires_at = self._expires.get(key)
        return None if expires_at is None else max(0.0, expires_at - self.clock())

    def __len__(self) -> int:
        """The number of live keys (a primary expires every due key first)."""
        if self.primary:
            self.sweep(limit=None)
            return self._count
        now = self.clock()
        return self._count - sum(1 for t in self._expires.values() if t <= now)

    @property
    def held(self) -> int:
        """Keys held in memory, counting expired ones the sweep has not removed yet."""
        return self._count

    def scan(
        self, prefix: bytes, slot: int, after: bytes | None, limit: int
    ) -> tuple[list[bytes], tuple[int, bytes | None] | None]:
        """One page of live keys starting with ``prefix``, from cursor ``(slot, after)``.

        Returns the keys and the cursor of the next page (None when the walk is done). Keys
        present for the whole walk are returned exactly once; keys added or removed during
        it may or may not be.
        """
        keys: list[bytes] = []
        budget = limit * SCAN_BUDGET_FACTOR + 1024
        now = self.clock()
        expires = self._expires
        for s in sorted(s for s in self._by_slot if s >= slot):
            table = self._by_slot[s]
            budget -= len(table)  # every key of the slot is examined, matching or not
            names = sorted(
                k
                for k in table
                if k.startswith(prefix) and (after is None or s != slot or k > after)
            )
            for key in names:
                expires_at = expires.get(key)
                if expires_at is None or expires_at > now:
                    keys.append(key)
                    if len(keys) >= limit:
                        return keys, (s, key)
            if budget <= 0:
                return keys, ((s + 1, None) if s + 1 < self.slots else None)
        return keys, None

    # ------------------------------------------------------------------ writes

    def put(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        """Set ``key``; a put without ``ttl`` removes any TTL the key had."""
        expires_at = self._deadline(ttl)
        self.make_room(self.growth(key, value, expires_at), (key,))
        self.emit((RecordOp.SET, key, value, expires_at))

    def create(self, key: bytes, value: bytes, ttl: float | None = None) -> bool:
        """Set ``key`` only if it is absent; False (nothing changed) if it is present."""
        if self._lookup(key) is not None:
            return False
        expires_at = self._deadline(ttl)
        self.make_room(self.growth(key, value, expires_at), (key,))
        self.emit((RecordOp.SET, key, value, expires_at))
        return True

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False if it was absent."""
        if self._lookup(key) is None:
            return False
        self.emit((RecordOp.DEL, key))
        return True

    def cas(self, key: bytes, expected: bytes, new: bytes) -> bool:
        """Set ``key`` to ``new`` only if its value is ``expected``; the TTL is kept."""
        if self._lookup(key) != expected:
            return False
        expires_at = self._expires.get(key)
        self.make_room(self.growth(key, new, expires_at), (key,))
        self.emit((RecordOp.SET, key, new, expires_at))
        return True

    def expire(self, key: bytes, seconds: float) -> bool:
        """Give ``key`` a TTL; a non-positive one deletes it (as Redis EXPIRE). False if absent."""
        if self._lookup(key) is None:
            return False
        if seconds <= 0:
            self.emit((RecordOp.DEL, key))
        else:
            self.emit((RecordOp.EXPIRE_AT, key, self.clock() + seconds))
        return True

    def mput(self, items: list[list[bytes]], ttl: float | None = None) -> None:
        """Set every ``[key, value]`` pair (one record, so it is applied as one)."""
        if items:
            expires_at = self._deadline(ttl)
            growth = sum(self.growth(key, value, expires_at) for key, value in items)
            self.make_room(growth, [key for key, _ in items])
            self.emit((RecordOp.MSET, items, expires_at))

    def clear(self) -> None:
        """Remove every key."""
        self.emit((RecordOp.CLEAR,))

    def _deadline(self, ttl: float | None) -> float | None:
        return None if ttl is None else self.clock() + ttl

    # ------------------------------------------------------------------ expiry

    def sweep(self, limit: int | None = SWEEP_BATCH) -> int:
        """Delete keys whose expiry has passed (at most ``limit``); the number deleted.

        Only a primary deletes; a replica's sweep does nothing.
        """
        if not self.primary:
            return 0
        now = self.clock()
        heap, expires = self._heap, self._expires
        done = 0
        while heap and heap[0][0] <= now and (limit is None or done < limit):
            expires_at, key = heapq.heappop(heap)
            if expires.get(key) == expires_at:
                self.emit((RecordOp.EXPIRED, key))
                done += 1
        return done

    def next_expiry(self) -> float | None:
        """The earliest expiry time pending in the heap, if any."""
        return self._heap[0][0] if self._heap else None

    # ------------------------------------------------------------------ memory

    @property
    def used_bytes(self) -> int:
        """The bytes the data takes by the accounting formula (``eviction.py``)."""
        per_key = KEY_OVERHEAD_BYTES + (ORDER_OVERHEAD_BYTES if self.order is not None else 0)
        return self.data_bytes + self._count * per_key + len(self._expires) * TTL_OVERHEAD_BYTES

    def growth(self, key: bytes, value: bytes, expires_at: float | None) -> int:
        """How much ``used_bytes`` would grow if ``key`` were set to ``value``."""
        table = self._by_slot.get(slot_of(key, self.slots))
        old = None if table is None else table.get(key)
        ttl = TTL_OVERHEAD_BYTES if expires_at is not None else 0
        if old is None:
            per_key = KEY_OVERHEAD_BYTES + (ORDER_OVERHEAD_BYTES if self.order is not None else 0)
            return len(key) + len(value) + per_key + ttl
        had = TTL_OVERHEAD_BYTES if key in self._expires else 0
        return len(value) - len(old) + ttl - had

    def _size_of(self, key: bytes) -> int:
        """What removing ``key`` frees, by the accounting formula."""
        table = self._by_slot.get(slot_of(key, self.slots))
        value = b"" if table is None else table.get(key, b"")
        per_key = KEY_OVERHEAD_BYTES + (ORDER_OVERHEAD_BYTES if self.order is not None else 0)
        ttl = TTL_OVERHEAD_BYTES if key in self._expires else 0
        return len(key) + len(value) + per_key + ttl

    def make_room(self, growth: int, keep: Iterable[bytes] = ()) -> None:
        """Before a write that grows the data by ``growth`` bytes: keep under ``max_bytes``.

        Nothing to do without a limit, on a replica (it applies its primary's evictions), or
        while the write fits. Otherwise keys past their expiry go first; then ``noeviction``
        refuses a write that grows the data (``OutOfMemory``, nothing changed), and the other
        policies evict keys other than ``keep`` (the write's own keys), one ``EVICT`` record
        each, until it fits. ``OutOfMemory`` when the write is larger than the whole limit or
        the policy finds nothing more to evict (a ``volatile-*`` policy and no key with a TTL).
        """
        limit = self.max_bytes
        if not limit or not self.primary or self.used_bytes + growth <= limit:
            return
        if self._expires:
            self.sweep()
        used = self.used_bytes
        if used + growth <= limit or (growth <= 0 and self.policy is Policy.NOEVICTION):
            return
        if self.policy is Policy.NOEVICTION or growth > limit:
            raise OutOfMemory(self._oom_message(growth, used, ""))
        protect = frozenset(keep)
        while self.used_bytes + growth > limit:
            victim = self._victim(protect)
            if victim is None:
                raise OutOfMemory(
                    self._oom_message(growth, self.used_bytes, "; no key left to evict")
                )
            self.emit((RecordOp.EVICT, victim))

    def _oom_message(self, growth: int, used: int, why: str) -> str:
        return (
            f"out of memory: this write needs {growth:,} more bytes; {used:,} of "
            f"{self.max_bytes:,} bytes are used (memory.max_bytes, policy {self.policy}){why}; "
            "delete keys, raise memory.max_bytes or choose an evicting memory.policy"
        )

    def _victim(self, protect: frozenset[bytes]) -> bytes | None:
        """The next key the policy evicts (never one in ``protect``), or None."""
        policy, rng = self.policy, self._rng
        if policy is Policy.VOLATILE_TTL:
            return self._soonest(protect)
        count = 1 if self.order is None else SAMPLES
        if policy.volatile:
            sample = sample_heap(self._heap, self._expires, rng, count, protect)
        else:
            sample = sample_slots(self._by_slot, self._slots_held, rng, count, protect)
        victim = self.order.coldest(sample) if self.order is not None else next(sample, None)
        if victim is None:  # sampling found nothing: take any candidate there is
            pool = self._expires if policy.volatile else self._held_keys()
            victim = next((k for k in pool if k not in protect), None)
        return victim

    def _soonest(self, protect: frozenset[bytes]) -> bytes | None:
        """The key with a TTL that expires first (not in ``protect``)."""
        heap, expires = self._heap, self._expires
        while heap and expires.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # a stale entry: the key's TTL changed or it is gone
        if heap and heap[0][1] not in protect:
            return heap[0][1]
        for expires_at, key in sorted(heap):
            if expires.get(key) == expires_at and key not in protect:
                return key
        return None

    def _slots_held(self) -> list[int]:
        if self._slot_list is None:
            self._slot_list = list(self._by_slot)
        return self._slot_list

    def _held_keys(self) -> Iterable[bytes]:
        for table in self._by_slot.values():
            yield from table
