"""Replica: a shard replica follows its primary's stream, and on a gap catches up from the
primary's backlog, or resyncs by snapshot when it cannot.

This is the socket driver of ``follower.Follower`` (the state machine: which state, when to
ask for a snapshot, what to apply, when to acknowledge, when a stalled sync starts over):
it decodes the frames its SUB and DEALER sockets receive (``wire.py``), hands them to the
follower with the store's sequence number and the time, and carries out the actions it
gets back, in order: frames to send, records to apply, snapshot file operations, the
node's history to record (``HistoryFile``), connecting and disconnecting. A snapshot also
empties the node's backlog (``catchup.Backlog``): its records are of the history given up.

Applied records go through the node's ``Store`` and ``Persistence`` like any write, so a
replica is as durable as its primary; it acknowledges its sequence after each loop turn's
log flush, and at least once per heartbeat interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from zkv.errors import RemoteProtocolError
from zkv.node import wire
from zkv.node.catchup import Backlog
from zkv.node.follower import (
    STALL_S,
    Action,
    Adopt,
    Apply,
    Connect,
    Disconnect,
    Follower,
    PrimaryAddress,
    Send,
    SnapshotAbort,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotResults,
)
from zkv.node.history import EMPTY, HistoryFile
from zkv.protocol import NodeState
from zkv.runtime import Throttle
from zkv.storage.engine import Store
from zkv.storage.persistence import Persistence
from zkv.storage.snapshot import SnapshotWriter

__all__ = ["STALL_S", "Replica"]

log = logging.getLogger(__name__)


class Replica:
    """Replication duties of a node in the replica role."""

    def __init__(
        self,
        name: str,
        store: Store,
        persistence: Persistence,
        context: zmq.Context[Any],
        *,
        hwm: int,
        heartbeat_s: float,
        max_frame_bytes: int = -1,
        clock: Callable[[], float] = time.monotonic,
        dial: Callable[[zmq.Socket[Any], str], None] | None = None,
        histories: HistoryFile | None = None,
        backlog: Backlog | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.persistence = persistence
        self.context = context
        self.hwm = hwm
        #: ``MAXMSGSIZE`` of the stream (``protocol.max_reply_frame_bytes``; -1: no limit).
        self.max_frame_bytes = max_frame_bytes
        self.heartbeat_s = heartbeat_s
        #: With CURVE: makes a socket prove this node's key to the named primary.
        self.dial = dial
        #: The node's history, recorded as the follower adopts one (None: not kept).
        self.histories = histories
        #: The node's backlog of recent records (emptied by a snapshot).
        self.backlog = backlog
        #: The follow/sync state machine this drives.
        self.core = Follower(
            name,
            heartbeat_s=heartbeat_s,
            history=histories.history if histories is not None else EMPTY,
        )
        self.sub: zmq.Socket[bytes] | None = None
        self.dealer: zmq.Socket[bytes] | None = None
        self._clock = clock
        self._writer: SnapshotWriter | None = None
        self._bad = Throttle(log)

    # ------------------------------------------------------------------ the core's state

    @property
    def state(self) -> NodeState:
        """``idle``, ``waiting``, ``syncing``, ``following`` or ``suspended``."""
        return self.core.state

    @property
    def primary(self) -> tuple[str, str, str] | None:
        """The primary followed: name, stream and sync endpoints (None: not connected)."""
        return self.core.primary

    @property
    def epoch(self) -> int:
        """The shard epoch whose stream is followed."""
        return self.core.epoch

    @property
    def suspended(self) -> bool:
        """Whether this node follows nobody because it cannot log (``suspend``)."""
        return self.core.suspended

    @property
    def force_snapshot(self) -> bool:
        """Resync by snapshot even if the sequence numbers match (a fenced former primary
        may hold writes the new primary never saw)."""
        return self.core.force_snapshot

    @force_snapshot.setter
    def force_snapshot(self, value: bool) -> None:
        self.core.force_snapshot = value

    @property
    def resyncs(self) -> int:
        """Snapshots asked for so far."""
        return self.core.resyncs

    @property
    def catchups(self) -> int:
        """Catch-ups asked for so far."""
        return self.core.catchups

    @property
    def lag(self) -> int:
        """Records the primary has that this replica does not (as last heard)."""
        return self.core.lag(self.store.seq)

    # ------------------------------------------------------------------ events

    def follow(
        self, name: str, publish: str, sync: str, epoch: int = 0, now: float | None = None
    ) -> bool:
        """Follow this primary at ``epoch``; True if the sockets changed (re-poll them)."""
        target = PrimaryAddress(name, publish, sync)
        return self._run(self.core.follow(target, epoch, self.store.seq, self._now(now)), now)

    def suspend(self, why: str, now: float | None = None) -> None:
        """Stop following while this node cannot log: no records applied, no acks sent, so
        the primary drops it from the in-sync set; ``resume`` once it can log again (it then
        catches up, by snapshot if it missed records)."""
        self._run(self.core.suspend(why, self._now(now)), now)

    def resume(self, now: float | None = None) -> None:
        """This node can log again: follow the primary the broker names next."""
        self.core.resume(self._now(now))

    def close(self, now: float | None = None) -> None:
        """Close the sockets to the primary (and drop an unfinished snapshot)."""
        self._run(self.core.close(self._now(now)), now)
        self._disconnect()
        self._abort()

    def on_stream(self, frames: list[bytes], now: float | None = None) -> None:
        """Handle one stream message from the primary."""
        try:
            message = wire.decode_stream(frames)
        except RemoteProtocolError as exc:
            self._bad.warning("dropped a malformed stream message: %s", exc)
            return
        self._run(self.core.on_stream(message, self.store.seq, self._now(now)), now)

    def on_sync(self, frames: list[bytes], now: float | None = None) -> None:
        """Handle a snapshot or catch-up message from the primary."""
        try:
            message = wire.decode_to_replica(frames)
        except RemoteProtocolError as exc:
            self._bad.warning("dropped a sync message: %s", exc)
            return
        self._run(self.core.on_sync(message, self.store.seq, self._now(now)), now)

    def tick(self, now: float) -> bool:
        """Acknowledge new records (call after the log flush), and restart a stalled sync.

        True if the sockets changed (a stalled sync reconnected: re-poll them).
        """
        return self._run(self.core.tick(self.store.seq, now), now)

    # ------------------------------------------------------------------ actions

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _run(self, actions: Iterable[Action], now: float | None) -> bool:
        """Carry out ``actions`` in order; True if the sockets changed.

        If one fails, the rest are not done and the follower is told (it then insists on a
        snapshot, after ``STALL_S``); the error is raised again for the loop to log.
        """
        changed = False
        try:
            for action in actions:
                changed = self._do(action) or changed
        except Exception as exc:
            self._run(self.core.failed(f"{type(exc).__name__}: {exc}", self._now(now)), now)
            raise
        return changed

    def _do(self, action: Action) -> bool:
        if isinstance(action, Apply):
            self.store.replicate(action.seq, action.record)
        elif isinstance(action, Send):
            self._send(action.frames)
        elif isinstance(action, SnapshotChunk):
            self.store.load(action.flat)
            self._snapshot_writer().write(action.flat)
        elif isinstance(action, SnapshotResults):
            self.store.load_results(action.pairs)
            self._snapshot_writer().write_results(action.pairs)
        elif isinstance(action, Adopt):
            if self.histories is not None:
                self.histories.set(action.history)
        elif isinstance(action, SnapshotBegin):
            self._abort()
            if self.backlog is not None:
                self.backlog.clear()
            self.store.reset()  # a stale write outcome must not answer a retry later
            self.store.begin()  # a rollback of this turn must not undo across the snapshot
            self._writer = SnapshotWriter(self.persistence.directory, action.seq)
        elif isinstance(action, SnapshotEnd):
            writer, self._writer = self._snapshot_writer(), None
            self.persistence.adopt(writer)
            self.store.seq = writer.seq
            self.store.begin()  # the snapshot is on disk: a rollback stops here
        elif isinstance(action, SnapshotAbort):
            self._abort()
        elif isinstance(action, Connect):
            self._connect(action.primary)
            return True
        elif isinstance(action, Disconnect):
            self._disconnect()
            return True
        return False

    def _snapshot_writer(self) -> SnapshotWriter:
        if self._writer is None:
            raise RuntimeError("no snapshot is being written")
        return self._writer

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _connect(self, primary: PrimaryAddress) -> None:
        self._disconnect()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, self.hwm)
        # a stream frame is one logged record: at most a request, or a write's reply
        self.sub.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        if self.dial is not None:
            self.dial(self.sub, primary.name)
            self.dial(self.dealer, primary.name)
        self.sub.connect(primary.publish)
        # No MAXMSGSIZE on the sync channel: a snapshot CHUNK holds whole slots (at least
        # CHUNK_KEYS keys, and a slot may hold any number) and RESULTS every remembered write
        # outcome, so any bound derived from the limits could refuse a legitimate snapshot.
        # The peer is the primary the broker named.
        self.dealer.connect(primary.sync)

    def _disconnect(self) -> None:
        for sock in (self.sub, self.dealer):
            if sock is not None:
                sock.close(linger=0)
        self.sub = self.dealer = None

    def _send(self, frames: list[bytes]) -> None:
        if self.dealer is None:
            return
        try:
            self.dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._bad.warning("sync connection to the primary is full; dropped a message")
