"""Follower: a replica's follow/sync state machine, sans-IO, with the clock passed in.

Events in: ``follow``/``close``/``suspend``/``resume`` (from the broker's heartbeats and the
node's storage), decoded stream messages (``on_stream``), decoded sync messages
(``on_sync``) and ``tick(now)``. Each event is told the store's sequence number ``seq``
(the last record it holds) and returns the actions that carry it out, to be done in order
by the driver (``replica.py``): frames to send on the sync DEALER, records to apply, the
snapshot's store and file operations, and connecting to or disconnecting from a primary.
Nothing here reads a clock or touches a socket, the store or a file.

States (``NodeState``): ``idle`` (no primary known yet), ``waiting`` (subscribed; waiting
for the first stream message, which proves the subscription is live), ``syncing`` (a
snapshot or the missed records are arriving; stream records are queued meanwhile),
``following`` (records applied strictly in sequence order) and ``suspended`` (the node
cannot log: it follows nobody).

- A replica whose history (``zkv.node.history``) is the one on the stream and that already
  holds the primary's sequence when it (re)connects follows at once.
- Otherwise, and on a gap (a record past the next sequence, or a heartbeat ahead of the
  replica), or when the stream's history id changes (the primary restarted), it resyncs:
  with a history id it asks to catch up from its sequence S (CATCHUP), else for a snapshot
  (SNAP). The primary answers CATCHUP with CONTINUE(S, T, its history) and the records
  S+1..T (RECORDS), which are applied as they come, or with a snapshot when the replica's
  history is not a prefix of its own or the records are gone.
- A record the replica already holds, or a heartbeat behind it, means the primary's history
  differs: ``force_snapshot`` is set and a snapshot asked for.
- At ``END`` (or once a catch-up reached T) the queued records at or below the snapshot's
  sequence S (or T) are dropped and the rest applied; a gap among them, or a record of
  another history, resyncs again.
- The replica adopts the primary's history (``Adopt``, made durable by the driver) once it
  holds a prefix of it: on CONTINUE, and at the end of a snapshot; it drops its own
  (``Adopt(EMPTY)``) before a snapshot replaces its data.
- No progress in ``waiting`` or ``syncing`` for ``stall_s`` starts over: reconnect.
- A following replica acknowledges its sequence whenever it changed, and at least once per
  heartbeat interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeAlias

from zkv.node import wire
from zkv.node.history import EMPTY, History
from zkv.protocol import NodeState
from zkv.storage.engine import Record

__all__ = [
    "STALL_S",
    "Action",
    "Adopt",
    "Apply",
    "Connect",
    "Disconnect",
    "Follower",
    "PrimaryAddress",
    "Send",
    "SnapshotAbort",
    "SnapshotBegin",
    "SnapshotChunk",
    "SnapshotEnd",
    "SnapshotResults",
]

log = logging.getLogger(__name__)

#: A sync that makes no progress for this long starts over (seconds).
STALL_S: Final = 10.0


class PrimaryAddress(NamedTuple):
    """The primary a replica follows: its name and its stream and sync endpoints."""

    name: str
    publish: str
    sync: str


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``frames`` on the sync DEALER (dropped if it is full or not connected)."""

    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Connect:
    """Subscribe to the primary's stream and connect a DEALER to its sync socket."""

    primary: PrimaryAddress


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the stream and sync connections."""


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply ``record``, numbered ``seq`` by the primary (the next one), and log it."""

    seq: int
    record: Record


@dataclass(frozen=True, slots=True)
class Adopt:
    """Make ``history`` this node's, durably, before the next action."""

    history: History


@dataclass(frozen=True, slots=True)
class SnapshotBegin:
    """Empty the store and start writing a snapshot as of ``seq`` (dropping any unfinished
    one)."""

    seq: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Load ``[key, value, expires_at, ...]`` into the store and the snapshot."""

    flat: list[Any]


@dataclass(frozen=True, slots=True)
class SnapshotResults:
    """Load ``[request id, reply body]`` write outcomes into the store and the snapshot."""

    pairs: list[list[bytes]]


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """Make the snapshot durable in place of the data folder; the store is at ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class SnapshotAbort:
    """Drop the unfinished snapshot file."""


Action: TypeAlias = (
    Send
    | Connect
    | Disconnect
    | Apply
    | Adopt
    | SnapshotBegin
    | SnapshotChunk
    | SnapshotResults
    | SnapshotEnd
    | SnapshotAbort
)


# --------------------------------------------------------------------------- the machine


class Follower:
    """The follow/sync decisions of one replica node called ``name``."""

    def __init__(
        self,
        name: str,
        *,
        heartbeat_s: float,
        stall_s: float = STALL_S,
        history: History = EMPTY,
    ) -> None:
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self.state = NodeState.IDLE
        #: The primary followed (None: not connected).
        self.primary: PrimaryAddress | None = None
        #: The shard epoch whose stream is followed; other epochs' messages are ignored.
        self.epoch = 0
        #: The highest sequence number heard from the primary.
        self.primary_seq = 0
        #: Resync by snapshot even if the sequence numbers match (a fenced former primary
        #: may hold writes the new primary never saw).
        self.force_snapshot = False
        #: This node cannot log (see ``suspend``): it follows nobody until ``resume``.
        self.suspended = False
        #: Snapshots asked for so far.
        self.resyncs = 0
        #: Catch-ups asked for so far.
        self.catchups = 0
        #: This node's history (``zkv.node.history``): which records its data is a prefix of.
        self.history = history
        self._queue: list[tuple[int, Record, int]] = []  # (seq, record, history id)
        self._snapshot: int | None = None  # the sequence of the snapshot being received
        self._snapshot_history = EMPTY
        self._snapshot_keys = 0
        self._asked: int | None = None  # the sequence a catch-up was asked from
        self._target: int | None = None  # the sequence the catch-up under way ends at
        self._acked = -1
        self._last_ack = 0.0
        self._progress = 0.0
        # per event: the store's sequence as the actions so far leave it, and the actions
        self._seq = 0
        self._out: list[Action] = []

    # ------------------------------------------------------------------ connection

    def follow(
        self, primary: PrimaryAddress | tuple[str, str, str], epoch: int, seq: int, now: float
    ) -> list[Action]:
        """Follow ``primary`` at ``epoch``; reconnects only if the primary changed."""
        primary = PrimaryAddress(*primary)
        self._start(seq)
        self.epoch = epoch
        if not self.suspended and self.primary != primary:
            self._close(now)
            self._connect(primary, now)
        return self._done()

    def close(self, now: float) -> list[Action]:
        """Stop following: disconnect, drop an unfinished snapshot, back to ``idle``."""
        self._start(self._seq)
        self._close(now)
        return self._done()

    def suspend(self, why: str, now: float) -> list[Action]:
        """Stop following while this node cannot log: no records applied, no acks sent, so
        the primary drops it from the in-sync set; ``resume`` once it can log again (it then
        catches up, by snapshot if it missed records)."""
        self._start(self._seq)
        if not self.suspended:
            log.warning("cannot log (%s): stopped following the primary until it can", why)
            self._close(now)
            self.suspended = True
            self.state = NodeState.SUSPENDED
        return self._done()

    def resume(self, now: float) -> None:
        """This node can log again: follow the primary the broker names next."""
        if self.suspended:
            log.info("can log again: following the primary once the broker names it")
            self.suspended = False
            self._enter(NodeState.IDLE, now)

    def failed(self, why: str, now: float) -> list[Action]:
        """The driver could not carry out this machine's last actions (e.g. a snapshot file
        could not be written): the store may hold anything, so drop an unfinished snapshot,
        insist on a snapshot next time, and wait in ``syncing``, where the stall timer
        reconnects after ``stall_s`` (no tight loop against a failing disk)."""
        self._start(self._seq)
        if self.primary is not None:
            log.warning("sync failed (%s); starting over in %g s", why, self.stall_s)
            self._abort_snapshot()
            self.force_snapshot = True
            self._asked = self._target = None
            self._enter(NodeState.SYNCING, now)
        return self._done()

    def _connect(self, primary: PrimaryAddress, now: float) -> None:
        self.primary = primary
        self._out += [Connect(primary), Send(wire.encode_hello(self.name, self._seq))]
        self._enter(NodeState.WAITING, now)
        log.info(
            "following primary %s (stream %s, sync %s) from seq %d",
            primary.name,
            primary.publish,
            primary.sync,
            self._seq,
        )

    def _close(self, now: float) -> None:
        if self.primary is not None:
            self._out.append(Disconnect())
        self._abort_snapshot()
        self.primary = None
        self._enter(NodeState.IDLE, now)

    def _abort_snapshot(self) -> None:
        if self._snapshot is not None:
            self._out.append(SnapshotAbort())
            self._snapshot = None

    def _enter(self, state: NodeState, now: float) -> None:
        self.state = state
        self._progress = now
        if state != NodeState.SYNCING:
            self._queue.clear()
            self._asked = self._target = None

    def _start(self, seq: int) -> None:
        self._seq = seq
        self._out = []

    def _done(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ stream

    def on_stream(self, message: wire.StreamMessage, seq: int, now: float) -> list[Action]:
        """Handle one stream message from the primary; the store is at ``seq``."""
        self._start(seq)
        if message.epoch != self.epoch:
            return []  # from a primary of another epoch (a fenced one, or before a failover)
        history = message.history
        if self.state == NodeState.FOLLOWING and history != self.history.current:
            self._resync(f"the primary's history id changed to {history:x} (it restarted)", now)
        if isinstance(message, wire.StreamRecords):
            for i, record in enumerate(message.records):  # one turn's records, in order
                self._on_record(message.seq + i, record, history, now)
        else:
            self._on_heartbeat(message.seq, history, now)
        return self._done()

    def _same_history(self, history: int) -> bool:
        """Whether the stream's ``history`` is this replica's own (so it is a prefix)."""
        return bool(history) and history == self.history.current and not self.force_snapshot

    def _on_heartbeat(self, seq: int, history: int, now: float) -> None:
        self.primary_seq = max(self.primary_seq, seq)
        mine = self._seq
        if self.state == NodeState.WAITING:
            if seq == mine and self._same_history(history):
                self._enter(NodeState.FOLLOWING, now)
                log.info("in step with the primary at seq %d; following", mine)
            else:
                self._resync(f"primary at seq {seq}, this replica at {mine}", now)
        elif self.state == NodeState.FOLLOWING and seq > mine:
            self._resync(f"gap: primary at seq {seq}, this replica at {mine}", now)
        elif self.state == NodeState.FOLLOWING and seq < mine:
            # the primary restarted with fewer records than this replica applied (it lost
            # some it had not fsynced): this replica holds writes the primary does not
            self.force_snapshot = True
            self._request_snapshot(
                f"ahead of the primary: primary at seq {seq}, this replica at {mine}", now
            )

    def _on_record(self, seq: int, record: Record, history: int, now: float) -> None:
        self.primary_seq = max(self.primary_seq, seq)
        if self.state == NodeState.WAITING:
            if seq == self._seq + 1 and self._same_history(history):
                self._enter(NodeState.FOLLOWING, now)
                log.info("in step with the primary at seq %d; following", self._seq)
            else:
                self._resync(f"primary at seq {seq}, this replica at {self._seq}", now)
        if self.state == NodeState.SYNCING:
            self._queue.append((seq, record, history))
        elif self.state == NodeState.FOLLOWING:
            if seq == self._seq + 1:
                self._apply(seq, record)
            elif seq > self._seq + 1:
                self._resync(f"gap: got record {seq}, expected {self._seq + 1}", now)
                self._queue.append((seq, record, history))
            else:  # a record it already has: the primary's history differs from its own
                self.force_snapshot = True
                self._request_snapshot(f"record {seq} again, this replica at {self._seq}", now)

    def _apply(self, seq: int, record: Record) -> None:
        self._out.append(Apply(seq, record))
        self._seq = seq

    def _resync(self, why: str, now: float) -> None:
        """Catch up from this replica's sequence if it has a history, else by snapshot."""
        if self.force_snapshot or not self.history.current:
            self._request_snapshot(why, now)
        else:
            self._request_catchup(why, now)

    def _request_catchup(self, why: str, now: float) -> None:
        log.info("requesting the records after seq %d (%s)", self._seq, why)
        self.catchups += 1
        self._enter(NodeState.SYNCING, now)
        self._asked, self._target = self._seq, None
        self._out.append(Send(wire.encode_catchup(self._seq, self.history.current)))

    def _request_snapshot(self, why: str, now: float) -> None:
        log.info("requesting a snapshot (%s)", why)
        self.resyncs += 1
        self._enter(NodeState.SYNCING, now)
        self._asked = self._target = None
        self._out.append(Send(wire.encode_snap()))

    # ------------------------------------------------------------------ sync channel

    def on_sync(self, message: wire.ToReplica, seq: int, now: float) -> list[Action]:
        """Handle a snapshot or catch-up message from the primary; the store is at ``seq``."""
        self._start(seq)
        if self.state != NodeState.SYNCING:
            return []
        self._progress = now
        if isinstance(message, wire.Begin):
            self._abort_snapshot()
            self._asked = self._target = None
            self._snapshot, self._snapshot_keys = message.seq, 0
            self._snapshot_history = message.history
            if self.history != EMPTY:  # its data is about to be replaced: no claim on it
                self.history = EMPTY
                self._out.append(Adopt(EMPTY))
            self._out.append(SnapshotBegin(message.seq))
        elif isinstance(message, wire.Continue):
            self._on_continue(message, now)
        elif isinstance(message, wire.CatchUpRecords):
            self._on_catchup_records(message, now)
        elif self._snapshot is None:
            log.debug("ignored a %s outside a snapshot", type(message).__name__.upper())
        elif isinstance(message, wire.Chunk):
            self._snapshot_keys += len(message.flat) // 3
            self._out.append(SnapshotChunk(message.flat))
        elif isinstance(message, wire.Results):
            self._out.append(SnapshotResults(message.pairs))
        else:
            self._end_snapshot(self._snapshot, now)
        return self._done()

    def _on_continue(self, message: wire.Continue, now: float) -> None:
        if (
            self._snapshot is not None
            or self._target is not None
            or self._asked is None
            or message.after != self._asked
            or message.after != self._seq
        ):
            log.debug("ignored a CONTINUE from seq %d (not the one asked for)", message.after)
            return
        # this replica holds a prefix of the primary's history: it is its history from now on
        self.history = message.history
        self._out.append(Adopt(message.history))
        self._target = message.target
        if self._seq >= message.target:
            self._end_catchup(message.after, message.target, now)

    def _on_catchup_records(self, message: wire.CatchUpRecords, now: float) -> None:
        target, after = self._target, self._asked
        if target is None or after is None:
            log.debug("ignored RECORDS outside a catch-up")
            return
        for i, record in enumerate(message.records):
            seq = message.seq + i
            if seq != self._seq + 1 or seq > target:
                self._request_snapshot(
                    f"catch-up record {seq} out of place: at seq {self._seq}, "
                    f"catching up to {target}",
                    now,
                )
                return
            self._apply(seq, record)
            if seq == target:
                self._end_catchup(after, target, now)
                return

    def _end_catchup(self, after: int, target: int, now: float) -> None:
        queued, self._queue = self._queue, []
        self._enter(NodeState.FOLLOWING, now)
        if target == after:
            log.info("in step with the primary at seq %d; following", target)
        else:
            log.info(
                "caught up %d records to seq %d; %d queued records to apply",
                target - after,
                target,
                sum(1 for q in queued if q[0] > target),
            )
        self._drain(queued, now)

    def _end_snapshot(self, snapshot: int, now: float) -> None:
        self._snapshot = None
        self.force_snapshot = False
        self._out.append(SnapshotEnd(snapshot))
        self._seq = snapshot
        if self._snapshot_history != self.history:
            self.history = self._snapshot_history
            self._out.append(Adopt(self.history))
        queued, self._queue = self._queue, []
        self._enter(NodeState.FOLLOWING, now)
        log.info(
            "synced %d keys as of seq %d; %d queued records to apply",
            self._snapshot_keys,
            snapshot,
            sum(1 for q in queued if q[0] > snapshot),
        )
        self._drain(queued, now)

    def _drain(self, queued: list[tuple[int, Record, int]], now: float) -> None:
        """Apply the stream records queued during a sync, from the next sequence on."""
        for seq, record, history in queued:
            if seq <= self._seq:
                continue
            if seq != self._seq + 1:
                self._resync(f"gap in queued records at {seq}", now)
                return
            if history != self.history.current:
                self._resync(f"queued record {seq} is of another history", now)
                return
            self._apply(seq, record)

    # ------------------------------------------------------------------ timers

    def tick(self, seq: int, now: float) -> list[Action]:
        """Acknowledge new records (call after the log flush), and restart a stalled sync."""
        self._start(seq)
        primary = self.primary
        if primary is None:
            return []
        if self.state == NodeState.FOLLOWING and (
            seq != self._acked or now - self._last_ack >= self.heartbeat_s
        ):
            self._out.append(Send(wire.encode_ack(seq, self.name)))
            self._acked, self._last_ack = seq, now
        if (
            self.state in (NodeState.WAITING, NodeState.SYNCING)
            and now - self._progress > self.stall_s
        ):
            log.warning(
                "no progress syncing from %s for %g s; reconnecting", primary.name, self.stall_s
            )
            self._close(now)
            self._connect(primary, now)
        return self._done()

    def lag(self, seq: int) -> int:
        """Records the primary has that a replica at ``seq`` does not (as last heard)."""
        return max(0, self.primary_seq - seq)

    @property
    def snapshot(self) -> int | None:
        """The sequence of the snapshot being received, if one is."""
        return self._snapshot
