"""Whether a config file read again (SIGHUP) may replace the running topology.

Pure: the broker's ``_reload_config`` asks ``check_topology`` before it changes anything.
"""

from __future__ import annotations

from zkv.config import ClusterConfig
from zkv.errors import ConfigError
from zkv.slots import SlotMap

__all__ = ["check_topology"]


def check_topology(
    old: ClusterConfig,
    new: ClusterConfig,
    slot_map: SlotMap,
    primaries: dict[str, str | None],
) -> None:
    """``ConfigError`` if ``new``'s shards and nodes cannot replace ``old``'s now: a dropped
    shard that still owns slots (its data would be unreachable), a node moved to another
    shard, or a dropped node that is its shard's primary (move the role first)."""
    where = f"{new.path}: " if new.path else ""
    for shard in old.shards:
        if shard not in new.shards and slot_map.count_of(shard):
            raise ConfigError(
                f"{where}shard {shard} owns {slot_map.count_of(shard)} slots; move them "
                f"away first (zkv reshard --from {shard})"
            )
    old_shard = {n.name: n.shard for n in old.nodes()}
    for node in new.nodes():
        if old_shard.get(node.name, node.shard) != node.shard:
            raise ConfigError(
                f"{where}node {node.name} moved from shard {old_shard[node.name]} to "
                f"{node.shard}; remove it, then add it under another name"
            )
    kept = {n.name for n in new.nodes()}
    for shard, primary in primaries.items():
        if primary is not None and primary not in kept and shard in new.shards:
            raise ConfigError(
                f"{where}node {primary} is the primary of shard {shard}; move the role "
                f"first (zkv failover {shard})"
            )
