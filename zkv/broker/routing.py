"""RoutingTable: each shard's primary and epoch, kept on disk so a broker restart keeps them.

The epoch of a shard grows by one at every promotion. The broker stamps each request it
sends to a node with the shard's epoch and tells every node the epoch in its heartbeats; a
reply stamped with an older epoch (from a fenced former primary) is dropped, so a node that
lost the primary role never acknowledges a write again.

The table lives in ``<storage.dir>/broker/routing.json`` (written to a temporary name,
fsynced, renamed). Missing or unreadable, it starts from the config: the first node of each
shard is its primary, at epoch 1.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from zkv.config import ClusterConfig

__all__ = ["RoutingTable"]

log = logging.getLogger(__name__)


class RoutingTable:
    """Primary name and epoch per shard."""

    def __init__(self, config: ClusterConfig, path: Path | None = None) -> None:
        self.path = path
        self._nodes = {shard: [n.name for n in nodes] for shard, nodes in config.shards.items()}
        self.primaries: dict[str, str] = {s: names[0] for s, names in self._nodes.items()}
        self.epochs: dict[str, int] = dict.fromkeys(self._nodes, 1)
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable routing table %s: %s", path, exc)
            return
        for shard, entry in saved.get("shards", {}).items() if isinstance(saved, dict) else []:
            names = self._nodes.get(shard)
            if (
                names
                and isinstance(entry, dict)
                and entry.get("primary") in names
                and isinstance(entry.get("epoch"), int)
            ):
                self.primaries[shard] = entry["primary"]
                self.epochs[shard] = entry["epoch"]
        log.info("routing table loaded from %s: %s", path, self.describe())

    def save(self) -> None:
        """Write the table to disk atomically (a no-op without a path)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "shards": {
                s: {"primary": self.primaries[s], "epoch": self.epochs[s]} for s in self._nodes
            }
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def promote(self, shard: str, name: str) -> int:
        """Make ``name`` the primary of ``shard`` at a new epoch; the epoch."""
        self.primaries[shard] = name
        self.epochs[shard] += 1
        self.save()
        return self.epochs[shard]

    def adopt(self, shard: str, name: str, epoch: int) -> None:
        """A node reports a newer epoch than ours (the table was lost): believe it."""
        if epoch > self.epochs[shard]:
            log.warning(
                "node %s reports epoch %d for shard %s, ahead of this broker's %d; "
                "adopting it as primary",
                name,
                epoch,
                shard,
                self.epochs[shard],
            )
            self.primaries[shard] = name
            self.epochs[shard] = epoch
            self.save()

    def describe(self) -> str:
        """One line: each shard's primary and epoch."""
        return ", ".join(f"{s}: {self.primaries[s]} (epoch {self.epochs[s]})" for s in self._nodes)
