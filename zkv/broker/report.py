"""How the broker reports the cluster (``cluster_status``, the STATUS reply) and each node in
it: what the node said, and what only the broker knows (liveness, lag behind its primary,
in-sync, the slots its shard owns)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import zmq

from zkv.broker.membership import Member
from zkv.protocol import NodeInfo, Role
from zkv.slots import SlotMap
from zkv.supervision import read_launcher_state

if TYPE_CHECKING:
    from zkv.broker.server import Broker

__all__ = ["cluster_status", "node_entry"]

#: The node's own report, passed through as is.
_REPORTED = (
    "pid",
    "epoch",
    "seq",
    "keys",
    "requests",
    "errors",
    "fsyncs",
    "log_bytes",
    "compactions",
    "max_stall_ms",
    "discarded_seq",
    "storage",
    "storage_error",
    "free_bytes",
    "used_bytes",
    "max_bytes",
    "evictions",
    "policy",
    "resync_full",
    "resync_partial",
    "resync_bytes",
    "watch_records",
    "watch_bytes",
    "watchers",
    "publish",
    "sync",
)


def node_entry(
    member: Member, primary: Member | None, slot_map: SlotMap, now: float
) -> dict[str, Any]:
    """One node of ``status()["nodes"]``: fields are None until the node has reported."""
    info = member.info
    owns = primary is member
    entry: dict[str, Any] = {
        "name": member.name,
        "shard": member.shard,
        "role": info.role if info else None,
        "state": info.state if info else None,
        "lag": _lag(info, primary) if info else None,
        "in_sync": _in_sync(member, primary),
        "alive": member.alive,
    }
    for name in _REPORTED:
        entry[name] = getattr(info, name) if info else None
    entry["slots"] = slot_map.count_of(member.shard) if owns else 0
    entry["slot_ranges"] = _ranges(slot_map.ranges_of(member.shard)) if owns else ""
    entry["last_seen_s"] = round(now - member.last_seen, 3) if info else None
    entry["error"] = None
    return entry


def _ranges(runs: list[tuple[int, int]]) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def _lag(info: NodeInfo, primary: Member | None) -> int | None:
    """How many records a node is behind its shard's primary (None if unknown)."""
    if info.role == Role.PRIMARY:
        return 0
    if primary is None or primary.info is None:
        return None
    return max(0, primary.info.seq - info.seq)


def _in_sync(member: Member, primary: Member | None) -> bool | None:
    """Whether a replica is in its primary's in-sync set (None for a primary or unknown)."""
    if primary is None or primary is member or primary.info is None:
        return None
    return member.name in primary.info.in_sync


def cluster_status(broker: Broker) -> dict[str, Any]:
    """The cluster as ``broker`` sees it (the STATUS reply)."""
    now = time.monotonic()
    launched = read_launcher_state(broker.config.storage.dir)  # processes `zkv up` gave up on
    nodes: list[dict[str, Any]] = []
    for member in broker.membership.members.values():
        primary = broker.membership.primary(member.shard)
        nodes.append(node_entry(member, primary, broker.slot_map, now))
        supervised = launched.get(member.name)
        if supervised is not None and supervised.state == "failed" and not member.alive:
            nodes[-1].update(state="failed", error=supervised.error)
    return {
        "cluster": broker.config.cluster,
        "slots": broker.config.slots,
        "slot_map_version": broker.routing.version,
        "coordination": None
        if broker.shared is None
        else {
            "broker": broker.name,
            "controller": broker.shared.controller,
            "is_controller": broker.shared.is_controller(),
            "error": broker.shared.error,
        },
        "reshard": broker.moves.describe(),
        "shards": {
            s: {
                "primary": broker.routing.primaries[s],
                "in_sync": broker.membership.in_sync[s],
                "epoch": broker.routing.epochs[s],
                "serving": broker.membership.primary(s) is not None,
            }
            for s in broker.config.shards
        },
        "broker": {
            "failovers": broker.failovers,
            "pid": os.getpid(),
            "requests": broker.requests,
            "errors": broker.errors,
            "clients": broker.clients.getsockopt_string(zmq.LAST_ENDPOINT),
        },
        "nodes": nodes,
    }
