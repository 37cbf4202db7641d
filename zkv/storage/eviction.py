"""Memory accounting and eviction order for a ``Store``: Redis's eight ``maxmemory`` policies.

**Accounting.** A node's data takes, by this module's count::

    used_bytes = sum(len(key) + len(value) + KEY_OVERHEAD_BYTES)   # every key held
               + TTL_OVERHEAD_BYTES  * keys with a TTL
               + ORDER_OVERHEAD_BYTES * keys             (an LRU or LFU policy only)

``KEY_OVERHEAD_BYTES`` is what CPython spends around one key's bytes: two ``bytes`` headers
(33 bytes each, rounded up by the allocator) and the key's entry in its slot's dict (24
bytes, plus the index and the free third a dict keeps). ``TTL_OVERHEAD_BYTES`` is the key's
entry in the expiry dict, its float and its ``(time, key)`` tuple in the expiry heap.
``ORDER_OVERHEAD_BYTES`` is one entry in the access-order dict (its values are small ints,
which CPython shares, or an int shared by every key touched in the same tick).
``examples/bench_memory.py`` checks the formula against the process's RSS.

**Order.** Exact LRU would need a linked order (``OrderedDict``: 107 bytes per key, which
takes a node past 1.5x Redis's bytes per key); a plain dict kept in access order costs 42
bytes but evicting from its front is O(n) (its deleted entries stay until it is resized).
So, like Redis, eviction samples: ``SAMPLES`` random candidates, and the one with the
oldest access tick (LRU), the lowest access counter (LFU), or the soonest expiry
(``volatile-ttl``, exact: the expiry heap's top) goes. Each key's tick or counter is one
entry in ``Order.marks``:

- LRU: a logical clock that ticks every ``keys / 16384`` accesses, at least 1 and at most
  ``TICK_ACCESSES`` (one int object per tick, shared by the keys touched in it: a large
  store pays no int per key, and the order's grain stays a 16384th of the keys).
- LFU: Redis's logarithmic 8-bit counter (new keys start at ``LFU_INIT``; each access raises
  it with probability ``1 / ((counter - LFU_INIT) * LFU_LOG_FACTOR + 1)``, so 255 stands
  for about a million accesses), without Redis's time decay.

Only a primary evicts (``Store.make_room``); every store keeps the marks up to date from the
records it applies and the reads it serves, so a promoted replica has an order to start from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from enum import StrEnum
from itertools import islice
from typing import Final

__all__ = [
    "KEY_OVERHEAD_BYTES",
    "ORDER_OVERHEAD_BYTES",
    "SAMPLES",
    "TTL_OVERHEAD_BYTES",
    "Order",
    "Policy",
]

#: Bytes a key costs beyond its key and value bytes (see the module docstring).
KEY_OVERHEAD_BYTES: Final = 110
#: Bytes a TTL adds to a key: its expiry dict entry, float and heap tuple.
TTL_OVERHEAD_BYTES: Final = 130
#: Bytes an LRU or LFU policy adds to each key: its entry in ``Order.marks``.
ORDER_OVERHEAD_BYTES: Final = 42
#: Candidates examined per key evicted.
SAMPLES: Final = 16
#: The LRU clock ticks at least once per this many accesses.
TICK_ACCESSES: Final = 64
#: ...and once per ``keys >> TICK_SHIFT`` accesses below that.
TICK_SHIFT: Final = 14
#: A new key's LFU counter, and the factor that slows its growth (Redis's defaults).
LFU_INIT: Final = 5
LFU_LOG_FACTOR: Final = 10
#: The most keys of one slot a sample looks at (a slot that holds every key under a {tag}
#: is sampled among its first keys, the oldest written).
SLOT_SAMPLE_SPAN: Final = 256


class Policy(StrEnum):
    """What a node does when a write would pass ``memory.max_bytes`` (Redis's names)."""

    NOEVICTION = "noeviction"
    ALLKEYS_LRU = "allkeys-lru"
    ALLKEYS_LFU = "allkeys-lfu"
    ALLKEYS_RANDOM = "allkeys-random"
    VOLATILE_LRU = "volatile-lru"
    VOLATILE_LFU = "volatile-lfu"
    VOLATILE_RANDOM = "volatile-random"
    VOLATILE_TTL = "volatile-ttl"

    @property
    def volatile(self) -> bool:
        """Whether only keys with a TTL may be evicted."""
        return self.value.startswith("volatile-")

    @property
    def ordered(self) -> str | None:
        """``lru``, ``lfu`` or None: which marks the policy keeps per key."""
        tail = self.value.rsplit("-", 1)[-1]
        return tail if tail in ("lru", "lfu") else None


class Order:
    """Per-key access marks (LRU ticks or LFU counters) and the choice of a victim."""

    def __init__(self, kind: str, rng: random.Random) -> None:
        #: ``lru`` or ``lfu``.
        self.kind = kind
        #: The mark of each key held: its last tick (LRU) or its counter (LFU).
        self.marks: dict[bytes, int] = {}
        self._rng = rng
        self._accesses = 0
        self._tick = 0

    def touch(self, key: bytes) -> None:
        """Record an access to (or a write of) ``key``."""
        if self.kind == "lru":
            self._accesses += 1
            if self._accesses >= min(TICK_ACCESSES, max(1, len(self.marks) >> TICK_SHIFT)):
                self._accesses = 0
                self._tick += 1
            self.marks[key] = self._tick
            return
        counter = self.marks.get(key)
        if counter is None:
            self.marks[key] = LFU_INIT
        elif counter < 255:
            base = counter - LFU_INIT
            if base <= 0 or self._rng.random() * (base * LFU_LOG_FACTOR + 1) < 1.0:
                self.marks[key] = counter + 1

    def forget(self, key: bytes) -> None:
        """``key`` is gone."""
        self.marks.pop(key, None)

    def clear(self) -> None:
        """Every key is gone."""
        self.marks.clear()

    def coldest(self, candidates: Iterator[bytes]) -> bytes | None:
        """The candidate with the oldest tick or lowest counter (None if there is none)."""
        marks = self.marks
        best: bytes | None = None
        best_mark = 0
        for key in candidates:
            mark = marks.get(key, 0)
            if best is None or mark < best_mark:
                best, best_mark = key, mark
        return best


def sample_slots(
    by_slot: dict[int, dict[bytes, bytes]],
    slot_list: Callable[[], list[int]],
    rng: random.Random,
    count: int,
    skip: frozenset[bytes],
) -> Iterator[bytes]:
    """Up to ``count`` random keys from the slot tables (never one in ``skip``)."""
    slots = slot_list()
    if not slots:
        return
    for _ in range(count * 2):
        table = by_slot.get(slots[rng.randrange(len(slots))])
        if not table:
            continue
        offset = rng.randrange(min(len(table), SLOT_SAMPLE_SPAN))
        key = next(islice(table, offset, None))
        if key not in skip:
            yield key
            count -= 1
            if count <= 0:
                return


def sample_heap(
    heap: list[tuple[float, bytes]],
    expires: dict[bytes, float],
    rng: random.Random,
    count: int,
    skip: frozenset[bytes],
) -> Iterator[bytes]:
    """Up to ``count`` random keys with a TTL, drawn from the expiry heap's live entries."""
    if not heap:
        return
    for _ in range(count * 3):
        expires_at, key = heap[rng.randrange(len(heap))]
        if expires.get(key) == expires_at and key not in skip:
            yield key
            count -= 1
            if count <= 0:
                return
