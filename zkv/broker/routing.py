"""RoutingTable: the slot map and each shard's primary and epoch, kept on disk so a broker
restart keeps them.

The slot map (which shard owns each slot) is runtime state, like the primaries: it starts as
the even split of the config file's shards and changes only by the broker's own decisions
(moving slots between shards), each under a new map ``version``. A shard added to the file
owns no slots until slots are moved to it; a shard removed from the file while it still owns
slots is refused (``ConfigError``): move its slots away first.

Only the broker decides routing: a shard's primary and epoch change only by its own
decisions (``elect`` when it has no table, ``promote`` on a failover or switch-over), never
because a node claims a role. The epoch of a shard grows by one at every decision. The
broker stamps each request it sends to a node with the shard's epoch and tells every node
the epoch in its heartbeats; a reply stamped with an older epoch (from a fenced former
primary) is dropped, so a node that lost the primary role never acknowledges a write again.

The table lives in ``<storage.dir>/broker/routing.json``, written atomically: a temporary
file, fsynced, renamed over the old one, then the folder fsynced so the rename survives a
machine crash. Without that file (a new cluster, or a lost or unreadable file) no shard has
a primary yet (``primaries[shard] is None``, epoch 0): the broker waits for the shard's
nodes and elects one (see ``Membership.candidate``); it never takes a node's word for it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from zkv.config import ClusterConfig
from zkv.errors import ConfigError
from zkv.slots import SlotMap
from zkv.storage.log import fsync_dir

__all__ = ["RoutingTable"]

log = logging.getLogger(__name__)


class Backing(Protocol):
    """A store the routing table is kept in, shared by several brokers."""

    def read(self) -> dict[str, Any] | None:
        """The saved document, or None if there is none yet."""

    def write(self, document: dict[str, Any]) -> None:
        """Save ``document``; ``OSError`` if it is not saved (then nothing changed)."""


class RoutingTable:
    """The slot map and its version; primary name (None until elected) and epoch per shard."""

    def __init__(
        self, config: ClusterConfig, path: Path | None = None, backing: Backing | None = None
    ) -> None:
        self.path = path
        #: Where several brokers share the table (etcd); None: the file at ``path``.
        self.backing = backing
        self._nodes = {shard: [n.name for n in nodes] for shard, nodes in config.shards.items()}
        self.primaries: dict[str, str | None] = dict.fromkeys(self._nodes)
        self.epochs: dict[str, int] = dict.fromkeys(self._nodes, 0)
        #: Which shard owns each slot; replaced whole (a ``SlotMap`` never changes).
        self.slot_map = SlotMap.even(list(config.shards), config.slots)
        #: Grows by one with every change of the topology: the slot map, or the shards and
        #: nodes (0: the config's even split). Each shard's primary has its own epoch.
        self.version = 0
        #: The slot move in progress (``{"slots", "from", "to"}``), saved before its slots
        #: are touched, so that a restarted broker can finish or roll it back; None if none.
        self.move: dict[str, Any] | None = None

    def load(self) -> None:
        """Read the table from its backing: ``path`` (the caller holds the folder's lock),
        or the shared store of several brokers (``backing``)."""
        if self.backing is not None:
            saved = self.backing.read()
            if saved is None:
                log.info(
                    "no routing state in %s yet: each shard's primary will be elected", self.backing
                )
                return
            self.apply(saved, str(self.backing))
            log.info("routing state loaded from %s: %s", self.backing, self.describe())
            return
        path = self.path
        if path is None:
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            log.info("no routing table at %s: each shard's primary will be elected", path)
            return
        except (OSError, ValueError) as exc:
            log.warning(
                "unreadable routing table %s (%s): each shard's primary will be elected", path, exc
            )
            return
        if isinstance(saved, dict):
            self.apply(saved, str(path))
        log.info("routing table loaded from %s: %s", path, self.describe())

    def apply(self, saved: dict[str, Any], where: str) -> None:
        """Take a saved table (``document()``'s shape): what it says replaces what this one
        held; a part it lacks or gets wrong stays as it was."""
        if "slots" in saved:
            self._load_slots(saved, where)
        self.move = saved["move"] if _is_move(saved.get("move")) else None
        for shard, entry in saved.get("shards", {}).items():
            names = self._nodes.get(shard)
            if (
                names
                and isinstance(entry, dict)
                and entry.get("primary") in names
                and type(entry.get("epoch")) is int
                and entry["epoch"] > 0
            ):
                self.primaries[shard] = entry["primary"]
                self.epochs[shard] = entry["epoch"]

    def _load_slots(self, saved: dict[str, object], path: str) -> None:
        """Take the saved slot map, if it is whole; ``ConfigError`` if it gives slots to a
        shard the config file no longer has (its data would be unreachable)."""
        ranges, version = saved.get("slots"), saved.get("version")
        slots = self.slot_map.slots
        owners: list[str | None] = [None] * slots
        if not isinstance(ranges, dict) or type(version) is not int or version < 0:
            log.warning("routing table %s: no usable slot map; using the even split", path)
            return
        for shard, runs in ranges.items():
            if not isinstance(runs, list):
                continue
            for run in runs:
                if not (
                    isinstance(run, list)
                    and len(run) == 2
                    and all(type(x) is int for x in run)
                    and 0 <= run[0] <= run[1] < slots
                ):
                    log.warning(
                        "routing table %s: bad slot run %r; using the even split", path, run
                    )
                    return
                owners[run[0] : run[1] + 1] = [shard] * (run[1] - run[0] + 1)
        if None in owners:
            log.warning("routing table %s: the slot map leaves slots unowned; even split", path)
            return
        gone = sorted({o for o in owners if o not in self._nodes and o is not None})
        if gone:
            raise ConfigError(
                f"{path}: shard {gone[0]} owns slots but is not in the config file; put it "
                "back and move its slots to other shards first (zkv rebalance)"
            )
        self.slot_map = SlotMap([o for o in owners if o is not None])
        self.version = version

    def set_shards(self, shards: dict[str, list[str]], *, save: bool = True) -> None:
        """Take a new topology: a new shard has no primary yet (one is elected once its nodes
        report); a dropped shard must own no slots (``ValueError``); the table is saved
        (unless ``save`` is false: a broker that is not the controller of several)."""
        owning = [s for s in self._nodes if s not in shards and self.slot_map.count_of(s)]
        if owning:
            raise ValueError(f"shard {owning[0]} still owns slots")
        new = {shard: list(names) for shard, names in shards.items()}
        if new == self._nodes:
            return
        previous = self._nodes, self.primaries, self.epochs, self.version
        self._nodes = new
        self.primaries = {s: self.primaries.get(s) for s in shards}
        self.epochs = {s: self.epochs.get(s, 0) for s in shards}
        self.version += 1  # the topology changed: a new version, as for the slot map
        if not save:
            return
        try:
            self.save()
        except OSError:
            self._nodes, self.primaries, self.epochs, self.version = previous
            raise

    def record_move(self, move: dict[str, Any] | None) -> None:
        """Save the move in progress (None: no move); ``OSError`` if it cannot be saved."""
        previous, self.move = self.move, move
        try:
            self.save()
        except OSError:
            self.move = previous
            raise

    def reassign(self, slots: list[int], shard: str) -> int:
        """Give ``slots`` to ``shard`` under a new map version, saved before it counts; the
        version. Raises ``OSError`` (and changes nothing) if the table cannot be saved."""
        if shard not in self._nodes:
            raise ValueError(f"no shard {shard!r}")
        owners = [self.slot_map.owner(s) for s in range(self.slot_map.slots)]
        for slot in slots:
            owners[slot] = shard
        previous = self.slot_map, self.version
        self.slot_map, self.version = SlotMap(owners), self.version + 1
        try:
            self.save()
        except OSError:  # a decision that is not on disk is not taken
            self.slot_map, self.version = previous
            raise
        return self.version

    def document(self) -> dict[str, Any]:
        """The table as saved: a JSON document."""
        return {
            "shards": {
                s: {"primary": self.primaries[s], "epoch": self.epochs[s]}
                for s in self._nodes
                if self.primaries[s] is not None
            },
            "version": self.version,
            "nodes": self._nodes,
            "move": self.move,
            "slots": {
                shard: [list(run) for run in self.slot_map.ranges_of(shard)]
                for shard in self.slot_map.shards()
            },
        }

    def save(self) -> None:
        """Write the table atomically and durably: to the shared store (``backing``), or to
        ``path`` (a no-op without either). ``OSError`` if it is not written: then the
        decision that changed the table is not taken (the caller puts it back)."""
        if self.backing is not None:
            self.backing.write(self.document())
            return
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.document(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def promote(self, shard: str, name: str) -> int:
        """Make ``name`` the primary of ``shard`` at a new epoch; the epoch."""
        return self.elect(shard, name, self.epochs[shard] + 1)

    def elect(self, shard: str, name: str, epoch: int) -> int:
        """Make ``name`` the primary of ``shard`` at ``epoch`` (above the current one).

        Raises ``OSError`` (and changes nothing) if the table cannot be saved.
        """
        if epoch <= self.epochs[shard]:
            raise ValueError(f"epoch {epoch} is not above shard {shard}'s {self.epochs[shard]}")
        previous = self.primaries[shard], self.epochs[shard]
        self.primaries[shard] = name
        self.epochs[shard] = epoch
        try:
            self.save()
        except OSError:  # a decision that is not on disk is not taken
            self.primaries[shard], self.epochs[shard] = previous
            raise
        return epoch

    def decided(self, shard: str) -> bool:
        """Whether ``shard`` has a primary in the table (elected or loaded)."""
        return self.primaries[shard] is not None

    def describe(self) -> str:
        """One line: each shard's primary and epoch."""
        return ", ".join(
            f"{s}: {self.primaries[s] or 'undecided'} (epoch {self.epochs[s]})" for s in self._nodes
        )


def _is_move(move: object) -> bool:
    return (
        isinstance(move, dict)
        and _is_slots(move.get("slots"))
        and isinstance(move.get("from"), str)
        and isinstance(move.get("to"), str)
        and isinstance(move.get("queue", []), list)
        and all(
            isinstance(q, list)
            and len(q) == 3
            and _is_slots(q[0])
            and isinstance(q[1], str)
            and isinstance(q[2], str)
            for q in move.get("queue", [])
        )
    )


def _is_slots(slots: object) -> bool:
    return isinstance(slots, list) and all(type(s) is int and s >= 0 for s in slots)
