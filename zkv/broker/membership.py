"""Membership: which nodes are alive, what they last said, and who serves each shard.

Pure state: no sockets, the clock is passed in, so tests step time by hand. A node is
alive from its READY (or any heartbeat, which carries the same information, so a restarted
broker relearns every node within one heartbeat) until it has been silent for
``heartbeat.liveness x heartbeat.interval_s``. Only names listed in the config may join,
and only for the shard the config gives them; everything else a node reports (endpoints,
pid, counters) comes from the node itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from zkv.broker.routing import RoutingTable
from zkv.config import ClusterConfig
from zkv.protocol import NodeInfo

__all__ = ["Member", "Membership"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Member:
    """The broker's view of one configured node."""

    name: str
    shard: str
    identity: bytes = b""
    info: NodeInfo | None = None
    alive: bool = False
    last_seen: float = 0.0


class Membership:
    """Liveness and roles of every node in the config."""

    def __init__(self, config: ClusterConfig, routing: RoutingTable) -> None:
        self.routing = routing
        #: Shards whose primary is being switched on purpose: no writes are routed meanwhile.
        self.switching: set[str] = set()
        self.expiry_s = config.heartbeat.expiry_s
        self.members: dict[str, Member] = {
            node.name: Member(node.name, node.shard) for node in config.nodes()
        }
        self._turn = 0
        self._by_identity: dict[bytes, Member] = {}
        self.shards: dict[str, list[str]] = {
            shard: [n.name for n in nodes] for shard, nodes in config.shards.items()
        }

    def seen(self, identity: bytes, info: NodeInfo, now: float) -> str | None:
        """Record a READY or heartbeat; returns why it was refused, or None if accepted."""
        member = self.members.get(info.name)
        if member is None:
            return f"unknown node {info.name!r} (not in the config)"
        if info.shard != member.shard:
            return f"node {info.name!r} says shard {info.shard!r}; the config says {member.shard!r}"
        if not member.alive:
            log.info(
                "node %s (shard %s, pid %d) is up; publish %s, sync %s",
                info.name,
                info.shard,
                info.pid,
                info.publish,
                info.sync,
            )
        elif member.info is not None and member.info.pid != info.pid:
            log.info("node %s restarted (pid %d -> %d)", info.name, member.info.pid, info.pid)
        member.identity = identity
        self._by_identity[identity] = member
        member.info = info
        member.alive = True
        member.last_seen = now
        return None

    def expire(self, now: float) -> list[str]:
        """Declare dead every node silent for too long; the names newly dead."""
        dead = []
        for member in self.members.values():
            if member.alive and now - member.last_seen > self.expiry_s:
                member.alive = False
                dead.append(member.name)
                log.warning(
                    "node %s (shard %s) missed its heartbeats for %.1f s; marked down",
                    member.name,
                    member.shard,
                    now - member.last_seen,
                )
        return dead

    def lost(self, name: str) -> None:
        """Mark ``name`` dead at once (the broker could not reach it)."""
        member = self.members.get(name)
        if member is not None and member.alive:
            member.alive = False
            log.warning("node %s (shard %s) is unreachable; marked down", name, member.shard)

    def primary(self, shard: str) -> Member | None:
        """The live node serving ``shard``'s writes, or None if there is none.

        That is the routing table's primary once it has taken the role at the shard's
        current epoch (it says so in its next heartbeat).
        """
        if shard in self.switching:
            return None
        member = self.members[self.routing.primaries[shard]]
        info = member.info
        if (
            member.alive
            and info is not None
            and info.role == "primary"
            and info.epoch == self.routing.epochs[shard]
        ):
            return member
        return None

    def successor(self, shard: str) -> Member | None:
        """The replica to promote if ``shard``'s primary is dead: of the live replicas the
        primary last reported in sync, the one with the highest sequence number."""
        old = self.members[self.routing.primaries[shard]]
        if old.alive or old.info is None:
            return None
        candidates = [
            m
            for name in old.info.in_sync
            if (m := self.members.get(name)) is not None
            and m.alive
            and m.info is not None
            and m.shard == shard
        ]
        return max(candidates, key=lambda m: m.info.seq if m.info else -1, default=None)

    def reader(self, shard: str) -> Member | None:
        """A node for an ``eventual`` read: the following replicas in turn, else the primary."""
        replicas = [
            self.members[name]
            for name in self.shards[shard]
            if (m := self.members[name]).alive
            and m.info is not None
            and m.info.role == "replica"
            and m.info.state == "following"
            and m.info.epoch == self.routing.epochs[shard]
        ]
        if not replicas:
            return self.primary(shard)
        self._turn += 1
        return replicas[self._turn % len(replicas)]

    def by_identity(self, identity: bytes) -> Member | None:
        """The member a node socket identity (``node:<name>``) belongs to, once it joined."""
        return self._by_identity.get(identity)

    def alive(self) -> list[Member]:
        """Every live member."""
        return [m for m in self.members.values() if m.alive]
