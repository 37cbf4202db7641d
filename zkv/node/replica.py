"""Replica: a shard replica follows its primary's stream, and resyncs by snapshot on a gap.

States: ``idle`` (no primary known yet), ``waiting`` (subscribed; waiting for the first
stream message, which proves the subscription is live), ``syncing`` (a snapshot is
arriving; stream records are queued meanwhile), ``following`` (records applied strictly in
sequence order). A record past the next sequence, or a heartbeat ahead of what the replica
holds, is a gap: the replica asks for a snapshot again. A replica that already holds the
primary's sequence when it (re)connects follows at once, without a snapshot.

Applied records go through the node's ``Store`` and ``Persistence`` like any write, so a
replica is as durable as its primary; it acknowledges its sequence after each loop turn's
log flush, and at least once per heartbeat interval.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import msgpack
import zmq

from zkv.node import replication as rep
from zkv.protocol import NodeState
from zkv.runtime import Throttle
from zkv.storage.engine import RecordOp, Store
from zkv.storage.persistence import Persistence
from zkv.storage.snapshot import SnapshotWriter

__all__ = ["Replica"]

log = logging.getLogger(__name__)

#: A sync that makes no progress for this long starts over (seconds).
STALL_S: Final = 10.0


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
    ) -> None:
        self.name = name
        self.store = store
        self.persistence = persistence
        self.context = context
        self.hwm = hwm
        self.heartbeat_s = heartbeat_s
        self.state = NodeState.IDLE
        self.primary: tuple[str, str, str] | None = None  # name, publish, sync
        self.primary_seq = 0
        self.sub: zmq.Socket[bytes] | None = None
        self.dealer: zmq.Socket[bytes] | None = None
        self.resyncs = 0
        #: Resync by snapshot even if the sequence numbers match (a fenced former primary
        #: may hold writes the new primary never saw).
        self.force_snapshot = False
        #: This node cannot log (see ``suspend``): it follows nobody until ``resume``.
        self.suspended = False
        self.epoch = 0
        self._queue: list[tuple[int, bytes]] = []
        self._writer: SnapshotWriter | None = None
        self._acked = -1
        self._last_ack = 0.0
        self._progress = time.monotonic()
        self._bad = Throttle(log)

    # ------------------------------------------------------------------ connection

    def follow(self, name: str, publish: str, sync: str, epoch: int = 0) -> bool:
        """Follow this primary at ``epoch``; True if the sockets changed (re-poll them)."""
        self.epoch = epoch
        if self.suspended or self.primary == (name, publish, sync):
            return False
        self.close()
        self.primary = (name, publish, sync)
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, self.hwm)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(publish)
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(sync)
        self._send([rep.HELLO, msgpack.packb({"name": self.name, "seq": self.store.seq})])
        self._enter(NodeState.WAITING)
        log.info(
            "following primary %s (stream %s, sync %s) from seq %d",
            name,
            publish,
            sync,
            self.store.seq,
        )
        return True

    def suspend(self, why: str) -> None:
        """Stop following while this node cannot log: no records applied, no acks sent, so
        the primary drops it from the in-sync set; ``resume`` once it can log again (it then
        catches up, by snapshot if it missed records)."""
        if self.suspended:
            return
        log.warning("cannot log (%s): stopped following the primary until it can", why)
        self.close()
        self.suspended = True
        self.state = NodeState.SUSPENDED

    def resume(self) -> None:
        """This node can log again: follow the primary the broker names next."""
        if self.suspended:
            log.info("can log again: following the primary once the broker names it")
            self.suspended = False
            self._enter(NodeState.IDLE)

    def close(self) -> None:
        """Close the sockets to the primary."""
        for sock in (self.sub, self.dealer):
            if sock is not None:
                sock.close(linger=0)
        self.sub = self.dealer = None
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self.primary = None
        self._enter(NodeState.IDLE)

    def _enter(self, state: NodeState) -> None:
        self.state = state
        self._progress = time.monotonic()
        if state != NodeState.SYNCING:
            self._queue.clear()

    def _send(self, frames: list[bytes]) -> None:
        if self.dealer is None:
            return
        try:
            self.dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._bad.warning("sync connection to the primary is full; dropped a message")

    # ------------------------------------------------------------------ stream

    def on_stream(self, frames: list[bytes]) -> None:
        """Handle one stream message from the primary."""
        if len(frames) < 2 or len(frames[1]) != rep.STREAM_HEADER.size:
            self._bad.warning("dropped a malformed stream message")
            return
        kind = frames[0]
        epoch, seq = rep.STREAM_HEADER.unpack(frames[1])
        if epoch != self.epoch:
            return  # from a primary of another epoch (a fenced one, or before a failover)
        if kind == rep.STREAM_RECORD and len(frames) >= 3:
            for i, payload in enumerate(frames[2:]):  # one turn's records, in order
                self._on_record(seq + i, payload)
        elif kind == rep.STREAM_HEARTBEAT and len(frames) == 2:
            self._on_heartbeat(seq)
        else:
            self._bad.warning("dropped a stream message of kind %r", kind[:16])

    def _on_heartbeat(self, seq: int) -> None:
        self.primary_seq = max(self.primary_seq, seq)
        if self.state == NodeState.WAITING:
            if seq == self.store.seq and not self.force_snapshot:
                self._enter(NodeState.FOLLOWING)
                log.info("in step with the primary at seq %d; following", self.store.seq)
            else:
                self._request_snapshot(f"primary at seq {seq}, this replica at {self.store.seq}")
        elif self.state == NodeState.FOLLOWING and seq > self.store.seq:
            self._request_snapshot(f"gap: primary at seq {seq}, this replica at {self.store.seq}")
        elif self.state == NodeState.FOLLOWING and seq < self.store.seq:
            # the primary restarted with fewer records than this replica applied (it lost
            # some it had not fsynced): this replica holds writes the primary does not
            self.force_snapshot = True
            self._request_snapshot(
                f"ahead of the primary: primary at seq {seq}, this replica at {self.store.seq}"
            )

    def _on_record(self, seq: int, payload: bytes) -> None:
        self.primary_seq = max(self.primary_seq, seq)
        if self.state == NodeState.WAITING:
            if seq == self.store.seq + 1 and not self.force_snapshot:
                self._enter(NodeState.FOLLOWING)
                log.info("in step with the primary at seq %d; following", self.store.seq)
            else:
                self._request_snapshot(f"primary at seq {seq}, this replica at {self.store.seq}")
        if self.state == NodeState.SYNCING:
            self._queue.append((seq, payload))
        elif self.state == NodeState.FOLLOWING:
            if seq == self.store.seq + 1:
                self._apply(seq, payload)
            elif seq > self.store.seq + 1:
                self._request_snapshot(f"gap: got record {seq}, expected {self.store.seq + 1}")
                self._queue.append((seq, payload))
            else:  # a record it already has: the primary's history differs from its own
                self.force_snapshot = True
                self._request_snapshot(f"record {seq} again, this replica at {self.store.seq}")

    def _apply(self, seq: int, payload: bytes) -> None:
        record_seq, *record = msgpack.unpackb(payload, raw=False, use_list=True)
        if record_seq != seq:
            raise ValueError(f"stream header says seq {seq}, record says {record_seq}")
        self.store.replicate(seq, tuple(record))

    def _request_snapshot(self, why: str) -> None:
        log.info("requesting a snapshot (%s)", why)
        self.resyncs += 1
        self._enter(NodeState.SYNCING)
        self._send([rep.SNAP])

    # ------------------------------------------------------------------ sync channel

    def on_sync(self, frames: list[bytes]) -> None:
        """Handle a snapshot message from the primary."""
        if self.state != NodeState.SYNCING or not frames:
            return
        kind = frames[0]
        self._progress = time.monotonic()
        if kind == rep.BEGIN and len(frames) == 2 and len(frames[1]) == rep.SEQ.size:
            (seq,) = rep.SEQ.unpack(frames[1])
            if self._writer is not None:
                self._writer.abort()
            self.store.apply_record((RecordOp.CLEAR,))
            self.store.begin()  # a rollback of this turn must not undo across the snapshot
            self._writer = SnapshotWriter(self.persistence.directory, seq)
        elif kind == rep.CHUNK and len(frames) == 2 and self._writer is not None:
            flat = msgpack.unpackb(frames[1], raw=False, use_list=True)
            self.store.load(flat)
            self._writer.write(flat)
        elif kind == rep.RESULTS and len(frames) == 2 and self._writer is not None:
            pairs = msgpack.unpackb(frames[1], raw=False, use_list=True)
            self.store.load_results(pairs)
            self._writer.write_results(pairs)
        elif kind == rep.END and self._writer is not None:
            writer, self._writer = self._writer, None
            self.force_snapshot = False
            self.persistence.adopt(writer)
            self.store.seq = writer.seq
            self.store.begin()  # the snapshot is on disk: a rollback stops here
            queued, self._queue = self._queue, []
            self._enter(NodeState.FOLLOWING)
            log.info(
                "synced %d keys as of seq %d; %d queued records to apply",
                writer.keys,
                writer.seq,
                sum(1 for s, _ in queued if s > writer.seq),
            )
            for seq, payload in queued:
                if seq <= self.store.seq:
                    continue
                if seq != self.store.seq + 1:
                    self._request_snapshot(f"gap in queued records at {seq}")
                    return
                self._apply(seq, payload)
        else:
            self._bad.warning("dropped a sync message of kind %r", kind[:16])

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> None:
        """Acknowledge new records (call after the log flush), and restart a stalled sync."""
        if self.dealer is None:
            return
        if self.state == NodeState.FOLLOWING and (
            self.store.seq != self._acked or now - self._last_ack >= self.heartbeat_s
        ):
            self._send([rep.ACK, rep.SEQ.pack(self.store.seq), self.name.encode()])
            self._acked, self._last_ack = self.store.seq, now
        if (
            self.state in (NodeState.WAITING, NodeState.SYNCING)
            and time.monotonic() - self._progress > STALL_S
        ):
            primary = self.primary
            log.warning(
                "no progress syncing from %s for %g s; reconnecting",
                primary[0] if primary else "?",
                STALL_S,
            )
            self.close()
            if primary is not None:
                self.follow(*primary)

    @property
    def lag(self) -> int:
        """Records the primary has that this replica does not (as last heard)."""
        return max(0, self.primary_seq - self.store.seq)
