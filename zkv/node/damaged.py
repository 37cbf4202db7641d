"""A node whose data folder is damaged: it sets the damaged files aside and starts empty as a
replica, but only once a primary of its shard serves (so another copy exists to resync
from); the shard's only node, or one that no serving primary answers in time, refuses to
start instead, and nothing is discarded.

A part of ``Node`` of its own (a mixin): ``Node`` provides what is declared below.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import zmq

from zkv import protocol
from zkv.config import ClusterConfig, NodeConfig
from zkv.errors import StorageCorrupted, ZkvError
from zkv.node.core import NodeCore
from zkv.node.watching import History
from zkv.protocol import NodeInfo, NodeState, Role
from zkv.runtime import recv_frames
from zkv.storage.engine import Store
from zkv.storage.persistence import Persistence

__all__ = ["DamagedData"]

log = logging.getLogger(__name__)


class DamagedData:
    """Setting a damaged data folder aside, for ``Node`` (see the module docstring)."""

    config: ClusterConfig
    me: NodeConfig
    store: Store
    core: NodeCore
    history: History
    persistence: Persistence
    discarded_seq: int
    _stopping: bool
    _single_broker: bool

    if TYPE_CHECKING:

        def _broker_socket(self) -> zmq.Socket[bytes]: ...

        def _to_brokers(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None: ...

        def _new_store(self) -> Store: ...

        def _new_persistence(self) -> Persistence: ...

    def _discard_damaged(self, damage: StorageCorrupted) -> None:
        """Set damaged data aside and start empty, if a serving primary of the shard holds it.

        The node tells the broker it is ``damaged`` (with the last sequence it had) and waits
        for a heartbeat naming a primary of its shard that serves: the broker promotes an
        in-sync replica if this node was the primary. Only then are the damaged files moved
        to ``damaged-<timestamp>/`` in the data folder (never deleted); the node starts empty
        as a replica and resyncs by snapshot, and reports ``discarded_seq`` so the broker
        knows; it cannot be promoted before it is back in sync. The shard's only node, or a
        node whose shard has no serving primary within the wait, refuses to start instead.
        """
        shard = self.me.shard
        if len(self.config.shards[shard]) == 1:
            raise StorageCorrupted(
                f"{damage}; {self.me.name} is the only node of shard {shard}, so no other "
                "copy exists: nothing was discarded"
            )
        log.error("damaged data folder: %s", damage)
        wait_s = max(3.0, 10 * self.config.heartbeat.expiry_s)
        primary = self._serving_primary(damage.last_seq, wait_s)
        if primary is None:
            raise StorageCorrupted(
                f"{damage}; no primary of shard {shard} served within {wait_s:g} s to resync "
                "from, so nothing was discarded"
            )
        aside = self.persistence.set_aside(
            f"{damage} (discarded by {self.me.name}: {primary} serves shard {shard})"
        )
        log.warning(
            "discarded damaged data (last seq %d), kept in %s; starting empty as a replica "
            "of %s to resync",
            damage.last_seq,
            aside,
            primary,
        )
        self.discarded_seq = damage.last_seq
        self.store = self._new_store()
        self.store.primary = False
        self.core.use_store(self.store)
        self.history.attach(self.store)
        self.persistence = self._new_persistence()

    def _serving_primary(self, last_seq: int, wait_s: float) -> str | None:
        """Report ``damaged`` to the broker; the name of a serving primary it names in time."""
        sock = self._broker_socket()
        info = NodeInfo(
            self.me.name, self.me.shard, role=Role.REPLICA, state=NodeState.DAMAGED, pid=os.getpid()
        )
        info.seq = max(last_seq, 0)
        interval = self.config.heartbeat.interval_s
        deadline = time.monotonic() + wait_s
        kind = protocol.NODE_READY
        try:
            while not self._stopping and time.monotonic() < deadline:
                self._to_brokers(sock, protocol.encode_node_info(kind, info))
                kind = protocol.NODE_HEARTBEAT
                if not sock.poll(int(interval * 1000)):
                    continue
                while True:
                    try:
                        frames = recv_frames(sock)
                    except zmq.Again:
                        break
                    if frames and not self._single_broker:
                        frames = frames[1:]  # [broker, ...]
                    name = _serving_primary_in(frames, self.me.name)
                    if name is not None:
                        return name
        finally:
            sock.close(linger=0)
        return None


def _serving_primary_in(frames: list[bytes] | None, me: str) -> str | None:
    """The primary a broker heartbeat names as serving this node's shard, if any."""
    if frames is None or len(frames) != 2:
        return None
    try:
        kind, _epoch = protocol.decode_node_header(frames[0])
        beat = protocol.unpackb(frames[1]) if kind == protocol.BROKER_HEARTBEAT else None
    except ZkvError:
        return None
    if not isinstance(beat, dict) or beat.get("role") != Role.REPLICA:
        return None
    primary = beat.get("primary")
    if not isinstance(primary, dict) or primary.get("serving") is not True:
        return None
    name = primary.get("name")
    return name if isinstance(name, str) and name != me else None
