"""Membership: which nodes are alive, what they last said, and who serves each shard.

Pure state: no sockets, the clock is passed in, so tests step time by hand. A node is
alive from its READY (or any heartbeat, which carries the same information, so a restarted
broker relearns every node within one heartbeat) until it has been silent for
``heartbeat.liveness x heartbeat.interval_s``. Only names listed in the config may join,
and only for the shard the config gives them; everything else a node reports (endpoints,
pid, counters) comes from the node itself.

What a node reports never changes routing (``RoutingTable`` holds the broker's decisions);
it is only evidence for them:

- **In-sync set.** The replicas the shard's primary last reported in sync, taken only from
  the table's primary reporting the primary role at the table's epoch, and kept across a
  restart of that primary (which is told the set again and waits for those replicas before
  acknowledging strong writes). A promotion starts the set afresh.
- **Successor.** When a shard's primary is down (silent, unreachable, or back with damaged
  data), the in-sync replica that is following with the highest sequence number; none if
  no replica was in sync, since promoting one could lose acknowledged writes.
- **Election** (no routing file): once every configured node of the shard has reported,
  or ``election_wait_s`` after the first of them reported, the reporting node with the highest
  logged sequence (then the highest epoch, then config order). This trusts what nodes
  report about their own data; CURVE (the security issue) authenticates who reports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from zkv.broker.routing import RoutingTable
from zkv.config import ClusterConfig
from zkv.protocol import NodeInfo, NodeState, Role

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
    #: When the controller of several brokers last granted it a primary lease (its clock).
    lease_granted: float = -1e18

    @property
    def usable(self) -> bool:
        """Alive, reported, and not holding damaged data."""
        return self.alive and self.info is not None and self.info.state != NodeState.DAMAGED

    @property
    def seq(self) -> int:
        """The last sequence number it reported (-1 if none)."""
        return self.info.seq if self.info is not None else -1


class Membership:
    """Liveness and roles of every node in the config."""

    def __init__(self, config: ClusterConfig, routing: RoutingTable, now: float = 0.0) -> None:
        self.routing = routing
        #: Shards whose primary is being switched on purpose: no writes are routed meanwhile.
        self.switching: set[str] = set()
        self.expiry_s = config.heartbeat.expiry_s
        #: Without a routing file, how long to wait for a shard's nodes before electing.
        self.election_wait_s = max(1.0, 4 * self.expiry_s)
        #: When each shard's first node reported (the election wait starts there).
        self._first_report: dict[str, float] = {}
        self.started = now
        self.members: dict[str, Member] = {
            node.name: Member(node.name, node.shard) for node in config.nodes()
        }
        self._turn = 0
        self._by_identity: dict[bytes, Member] = {}
        self.shards: dict[str, list[str]] = {
            shard: [n.name for n in nodes] for shard, nodes in config.shards.items()
        }
        #: Per shard, the replicas its primary last reported in sync (see the module doc).
        self.in_sync: dict[str, list[str]] = {shard: [] for shard in self.shards}

    def set_shards(self, shards: dict[str, list[str]]) -> None:
        """Take a new topology (the config file read again): nodes and shards it adds join
        as not yet heard from; those it drops are forgotten. The caller checked that no
        dropped node is a primary and no dropped shard owns slots."""
        for name in [n for n in self.members if not any(n in ns for ns in shards.values())]:
            member = self.members.pop(name)
            self._by_identity.pop(member.identity, None)
            log.info("node %s (shard %s) left the config", name, member.shard)
        for shard, names in shards.items():
            for name in names:
                if name not in self.members:
                    self.members[name] = Member(name, shard)
                    log.info("node %s (shard %s) joined the config", name, shard)
        self.shards = {shard: list(names) for shard, names in shards.items()}
        self.in_sync = {
            shard: [n for n in self.in_sync.get(shard, []) if n in names]
            for shard, names in self.shards.items()
        }
        self.switching &= set(shards)

    def seen(self, identity: bytes, info: NodeInfo, now: float) -> str | None:
        """Record a READY or heartbeat; returns why it was refused, or None if accepted."""
        member = self.members.get(info.name)
        if member is None:
            return f"unknown node {info.name!r} (not in the config)"
        if info.shard != member.shard:
            return f"node {info.name!r} says shard {info.shard!r}; the config says {member.shard!r}"
        self._first_report.setdefault(member.shard, now)
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
        if info.discarded_seq >= 0 and (
            member.info is None or member.info.discarded_seq != info.discarded_seq
        ):
            # it holds nothing yet: in the in-sync set again only once its primary says so
            self.in_sync[member.shard] = [n for n in self.in_sync[member.shard] if n != info.name]
            log.warning(
                "node %s discarded its damaged data (it had seq %d); it resyncs as a replica "
                "and cannot be promoted before it has caught up",
                info.name,
                info.discarded_seq,
            )
        member.identity = identity
        self._by_identity[identity] = member
        member.info = info
        member.alive = True
        member.last_seen = now
        if self.is_table_primary(member):
            names = self.shards[member.shard]
            self.in_sync[member.shard] = [n for n in info.in_sync if n in names and n != info.name]
        return None

    def is_table_primary(self, member: Member) -> bool:
        """Whether ``member`` reports being the primary the table names, at its epoch."""
        shard = member.shard
        info = member.info
        return (
            info is not None
            and self.routing.primaries[shard] == member.name
            and info.role == Role.PRIMARY
            and info.epoch == self.routing.epochs[shard]
        )

    def disagreement(self, member: Member) -> str | None:
        """Why ``member``'s report contradicts the table, beyond a role change in flight.

        A node claiming the primary role the table does not give it, or an epoch ahead of
        the table's, is fenced: told the table's role and epoch, and routed nothing until it
        reports them. (A node behind the table is just catching up with a decision.)
        """
        info = member.info
        if info is None or not self.routing.decided(member.shard):
            return None
        epoch = self.routing.epochs[member.shard]
        if info.epoch > epoch:
            return (
                f"node {member.name} reports epoch {info.epoch} for shard {member.shard}, "
                f"ahead of the table's {epoch}"
            )
        if info.role == Role.PRIMARY and self.routing.primaries[member.shard] != member.name:
            return (
                f"node {member.name} claims to be primary of shard {member.shard}; the table "
                f"says {self.routing.primaries[member.shard]} at epoch {epoch}"
            )
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
        name = self.routing.primaries[shard]
        if shard in self.switching or name is None:
            return None
        member = self.members[name]
        return member if member.alive and self.is_table_primary(member) else None

    def best_in_sync(self, shard: str, exclude: Member | None = None) -> Member | None:
        """Of the live replicas in ``shard``'s in-sync set, the most advanced.

        A replica in the middle of a snapshot (``syncing``) holds only part of the data and
        is never chosen; one that lost its primary (``idle``, ``waiting``) holds all it logged.
        """
        candidates = [
            m
            for name in self.in_sync[shard]
            if (m := self.members[name]) is not exclude
            and m.usable
            and m.info is not None
            and m.info.state != NodeState.SYNCING
        ]
        return max(candidates, key=lambda m: m.seq, default=None)

    def successor(self, shard: str) -> Member | None:
        """The replica to promote if ``shard``'s primary is down (see the module doc)."""
        name = self.routing.primaries[shard]
        if name is None or shard in self.switching:
            return None
        old = self.members[name]
        if old.usable:
            return None
        return self.best_in_sync(shard, exclude=old)

    def candidate(self, shard: str, now: float) -> Member | None:
        """The node to elect as ``shard``'s first primary (no routing file), or None yet."""
        if self.routing.decided(shard):
            return None
        members = [self.members[n] for n in self.shards[shard]]
        reported = [m for m in members if m.alive and m.info is not None]
        if not reported:
            return None
        # counted from the shard's first report, not the broker's start: nodes that are slow
        # to start (a loaded machine) still all get their say
        first = max(self.started, self._first_report.get(shard, now))
        if len(reported) < len(members) and now - first < self.election_wait_s:
            return None  # wait for the others: one of them may hold more
        order = {name: i for i, name in enumerate(self.shards[shard])}
        usable = [m for m in reported if m.usable and m.info is not None]
        return max(
            usable,
            key=lambda m: (m.seq, m.info.epoch if m.info else 0, -order[m.name]),
            default=None,
        )

    def reported_epoch(self, shard: str) -> int:
        """The highest epoch any live node of ``shard`` reports."""
        return max(
            (m.info.epoch for n in self.shards[shard] if (m := self.members[n]).info), default=0
        )

    def reader(self, shard: str) -> Member | None:
        """A node for an ``eventual`` read: the following replicas in turn, else the primary."""
        replicas = [
            self.members[name]
            for name in self.shards[shard]
            if (m := self.members[name]).alive
            and m.info is not None
            and m.info.role == Role.REPLICA
            and m.info.state == NodeState.FOLLOWING
            and m.info.epoch == self.routing.epochs[shard]
        ]
        if not replicas:
            return self.primary(shard)
        self._turn += 1
        return replicas[self._turn % len(replicas)]

    def promoted(self, shard: str) -> None:
        """A new primary took over ``shard``: its in-sync set starts afresh."""
        self.in_sync[shard] = []

    def by_identity(self, identity: bytes) -> Member | None:
        """The member a node socket identity (``node:<name>``) belongs to, once it joined."""
        return self._by_identity.get(identity)

    def alive(self) -> list[Member]:
        """Every live member."""
        return [m for m in self.members.values() if m.alive]
