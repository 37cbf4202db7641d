"""Key -> slot -> shard: the routing arithmetic of a zkv cluster.

``slot_of(key) = crc16(routing_key(key)) % slots`` with CRC-16/XMODEM from the standard
library (``binascii.crc_hqx``, the hash Redis Cluster uses), so no Python-level loop runs
per key. A ``{tag}`` inside a key routes by the tag alone, so ``{user:1}:name`` and
``{user:1}:email`` always share a shard. ``SlotMap`` assigns every slot to one shard.

Standard library only.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Iterable, Sequence

__all__ = ["SlotMap", "routing_key", "slot_of"]


def routing_key(key: bytes) -> bytes:
    """The part of ``key`` that is hashed: the first non-empty ``{tag}``, else the whole key."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def slot_of(key: bytes, slots: int) -> int:
    """The slot of ``key`` in a cluster of ``slots`` slots."""
    return crc_hqx(routing_key(key), 0) % slots


class SlotMap:
    """Which shard owns each slot.

    The initial map splits the slot range into contiguous, nearly equal runs, one per shard,
    in the order the shards are given (the config file's order).
    """

    def __init__(self, owners: Sequence[str]) -> None:
        if not owners:
            raise ValueError("a slot map needs at least one slot")
        self._owners = list(owners)
        self._runs: dict[str, list[tuple[int, int]]] | None = None  # by shard, made once

    @classmethod
    def even(cls, shards: Sequence[str], slots: int) -> SlotMap:
        """Split ``slots`` slots into contiguous runs over ``shards``."""
        if not shards:
            raise ValueError("a slot map needs at least one shard")
        n = len(shards)
        return cls([shards[slot * n // slots] for slot in range(slots)])

    @property
    def slots(self) -> int:
        """The number of slots."""
        return len(self._owners)

    def owner(self, slot: int) -> str:
        """The shard that owns ``slot``."""
        return self._owners[slot]

    def shard_of(self, key: bytes) -> str:
        """The shard that owns ``key``."""
        return self._owners[slot_of(key, len(self._owners))]

    def slots_of(self, shard: str) -> list[int]:
        """Every slot ``shard`` owns, ascending."""
        return [slot for slot, owner in enumerate(self._owners) if owner == shard]

    def ranges_of(self, shard: str) -> list[tuple[int, int]]:
        """``shard``'s slots as inclusive ``(first, last)`` runs, for people to read.

        All shards' runs are found in one walk over the slots, the first time any is asked
        for, and kept: a map never changes (a new map is a new ``SlotMap``), so STATUS costs
        O(shards), not O(slots) per shard.
        """
        if self._runs is None:
            runs: dict[str, list[tuple[int, int]]] = {}
            for slot, owner in enumerate(self._owners):
                mine = runs.setdefault(owner, [])
                if mine and mine[-1][1] == slot - 1:
                    mine[-1] = (mine[-1][0], slot)
                else:
                    mine.append((slot, slot))
            self._runs = runs
        return list(self._runs.get(shard, []))

    def count_of(self, shard: str) -> int:
        """How many slots ``shard`` owns (from the cached runs)."""
        return sum(last - first + 1 for first, last in self.ranges_of(shard))

    def shards(self) -> list[str]:
        """The shards that own at least one slot, in order of their first slot."""
        return list(dict.fromkeys(self._owners))

    def group(self, keys: Iterable[bytes]) -> dict[str, list[int]]:
        """Positions of ``keys`` grouped by owning shard (for fanning out multi-key ops)."""
        owners = self._owners
        slots = len(owners)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            # slot_of inlined: a key without a {tag} hashes whole (most keys)
            slot = slot_of(key, slots) if b"{" in key else crc_hqx(key, 0) % slots
            shard = owners[slot]
            group = groups.get(shard)
            if group is None:
                groups[shard] = [i]
            else:
                group.append(i)
        return groups
