"""A node's role changes, as the broker's heartbeats name them: becoming primary (a new
history, the primary's replication state), becoming a replica (fenced at a newer epoch:
rejoin and resync), the lease a controller grants, and following the primary it names.

A part of ``Node`` of its own (a mixin): ``Node`` provides the attributes and methods
declared below; the turn applies these changes at its end (``Node._timers``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from zkv import protocol
from zkv.config import ClusterConfig, NodeConfig
from zkv.errors import ZkvError
from zkv.node.catchup import Backlog
from zkv.node.history import EMPTY, HistoryFile, new_id
from zkv.node.primary import Primary
from zkv.node.replica import Replica
from zkv.protocol import Role
from zkv.runtime import Throttle
from zkv.storage.engine import Store

if TYPE_CHECKING:
    import zmq

__all__ = ["NodeRoles"]

log = logging.getLogger(__name__)


class NodeRoles:
    """The role changes of ``Node`` (see the module docstring)."""

    config: ClusterConfig
    me: NodeConfig
    store: Store
    backlog: Backlog
    histories: HistoryFile | None
    primary: Primary | None
    replica: Replica | None
    role: Role
    epoch: int
    _brokers: list[bytes]
    _beat_now: bool
    _lease_until: float
    _bad: Throttle

    if TYPE_CHECKING:
        _pub: zmq.Socket[bytes]
        _sync: zmq.Socket[bytes]

        def _new_replica(self) -> Replica: ...

        def _to_broker(self, frames: list[bytes]) -> None: ...

    def _become_primary(self, epoch: int, in_sync: list[str], now: float) -> None:
        if self.replica is not None:
            self.replica.close()
            self.replica = None
        if self.primary is None:
            # a new history from here on: this node's records up to now are shared with the
            # one it had; the records it writes now are its own (``history.py``)
            files = self.histories
            history = (files.history if files else EMPTY).promote(self.store.seq, new_id())
            if files is not None:
                files.set(history)
            self.primary = Primary(
                self.store,
                self._pub,
                self._sync,
                epoch=epoch,
                heartbeat_s=self.config.heartbeat.interval_s,
                ack_timeout_s=self.config.replication.ack_timeout_s,
                in_sync=in_sync,
                now=now,
                history=history,
                backlog=self.backlog,
            )
        self.primary.epoch = epoch
        log.info("primary of shard %s at epoch %d (seq %d)", self.me.shard, epoch, self.store.seq)
        self.role, self.epoch, self.store.primary = Role.PRIMARY, epoch, True

    def _become_replica(self, epoch: int) -> None:
        if self.primary is not None:
            log.warning(
                "fenced: epoch %d is stale (shard %s is at epoch %d); no longer primary, "
                "rejoining as a replica and resyncing",
                self.epoch,
                self.me.shard,
                epoch,
            )
            self.primary = None  # strong replies it held are dropped: the clients retry
            # its last writes may not be the new primary's: its history tells (a catch-up
            # only up to where the new primary's history forked from it, else a snapshot)
            self.replica = self._new_replica()
        self.role, self.epoch, self.store.primary = Role.REPLICA, epoch, False

    def _on_broker_heartbeat(self, body: bytes, now: float) -> bool:
        """Take the role and epoch the broker names, and follow the primary it names.

        True if sockets changed (the loop then polls anew).
        """
        try:
            beat = protocol.unpackb(body)
            role, epoch = beat["role"], beat["epoch"]
            primary = beat.get("primary")
            in_sync = beat.get("in_sync", [])
            if role not in (Role.PRIMARY, Role.REPLICA) or type(epoch) is not int:
                raise KeyError("role or epoch")
            if not isinstance(in_sync, list) or not all(isinstance(n, str) for n in in_sync):
                raise TypeError("in_sync is not a list of names")
        except (ZkvError, KeyError, TypeError) as exc:
            self._bad.warning("dropped a malformed broker heartbeat: %s", exc)
            return False
        if epoch < self.epoch and len(self._brokers) > 1:
            # several brokers: one that has not seen the controller's newest decision yet
            return False
        if epoch < self.epoch:  # only the broker decides: its table wins, even if behind
            log.warning(
                "the broker names epoch %d for shard %s, behind this node's %d; obeying it",
                epoch,
                self.me.shard,
                self.epoch,
            )
        changed = False
        if role == Role.PRIMARY and (self.role != Role.PRIMARY or epoch != self.epoch):
            self._become_primary(epoch, in_sync, now)
            self._beat_now = changed = True
        elif role == Role.REPLICA and (self.role != Role.REPLICA or epoch != self.epoch):
            self._become_replica(epoch)
            self._beat_now = changed = True
        lease_s = beat.get("lease_s")
        if role == Role.PRIMARY and epoch == self.epoch and isinstance(lease_s, int | float):
            # the lease runs from when we sent the heartbeat the controller last heard (it
            # echoes our clock), not from now: a grant held up in the network (a partition
            # that heals) extends nothing the controller has counted as over
            since = beat.get("lease_from")
            start = min(now, since) if isinstance(since, float) and since > 0 else now
            self._lease_until = max(self._lease_until, start + float(lease_s))
        if role == Role.PRIMARY and self.primary is not None:
            # the broker's record of the in-sync set: replies a dropped replica held go now
            for reply in self.primary.replicas.confirm(in_sync):
                self._to_broker(reply)
        if self.replica is not None and isinstance(primary, dict):
            try:
                target = (str(primary["name"]), str(primary["publish"]), str(primary["sync"]))
            except KeyError as exc:
                self._bad.warning("dropped a malformed broker heartbeat: %s", exc)
                return changed
            changed = self.replica.follow(*target, epoch=epoch, now=now) or changed
        return changed
