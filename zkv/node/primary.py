"""Primary: a shard primary's side of replication, on its PUB and ``sync`` ROUTER sockets.

It publishes each logged record on the stream (after the turn's log flush, so a replica
never holds a write the primary could lose), a heartbeat when the stream is idle, serves
snapshots to replicas that ask (walked a few thousand keys per loop turn, and only as fast
as the replica drains them: the sync socket's small high-water mark pushes back), and holds
``strong`` replies until every in-sync replica has acknowledged them.

A replica that asks to catch up from its sequence (CATCHUP) is sent only the records it
missed, from the node's backlog, when its history is a prefix of this node's, and a
snapshot otherwise (``catchup.py``: ``plan``, ``CatchUps``). ``resync_full``,
``resync_partial`` and ``resync_bytes`` count the snapshots, the catch-ups and the bytes
sent for both.

This is the socket driver: the frames are ``wire.py``'s, the decisions are the pure cores'
in ``replication.py`` (``ReplicaSet``: the in-sync set and the held replies; ``Transfers``:
which snapshot message each syncing replica needs next) and ``catchup.py``. The clock is the
caller's ``now``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator

import zmq

from zkv.errors import RemoteProtocolError
from zkv.node import wire
from zkv.node.catchup import Backlog, CatchUps, plan
from zkv.node.history import EMPTY, History
from zkv.node.replication import CHUNK_KEYS, CHUNKS_PER_TURN, ReplicaSet, Sent, Transfers
from zkv.runtime import Throttle
from zkv.storage.engine import Store

__all__ = ["CHUNKS_PER_TURN", "CHUNK_KEYS", "Primary"]

log = logging.getLogger(__name__)


class Primary:
    """Replication duties of a node in the primary role."""

    def __init__(
        self,
        store: Store,
        pub: zmq.Socket[bytes],
        sync: zmq.Socket[bytes],
        *,
        epoch: int,
        ack_timeout_s: float,
        heartbeat_s: float,
        in_sync: list[str] | None = None,
        now: float | None = None,
        history: History = EMPTY,
        backlog: Backlog | None = None,
    ) -> None:
        self.store = store
        self.pub = pub
        self.sync = sync
        self.epoch = epoch
        self.heartbeat_s = heartbeat_s
        self.replicas = ReplicaSet(ack_timeout_s)
        self.replicas.seed(in_sync or [], time.monotonic() if now is None else now)
        self.snapshots = Transfers()
        self.catchups = CatchUps()
        #: This node's history (``zkv.node.history``): its id goes on the stream.
        self.history = history
        #: The records a catch-up is served from (None: every resync is a snapshot).
        self.backlog = backlog if backlog is not None else Backlog(0)
        #: Snapshots and catch-ups started, and the bytes sent for them.
        self.resync_full = 0
        self.resync_partial = 0
        self.resync_bytes = 0
        self._outbox: list[bytes] = []
        self._outbox_seq = 0  # the sequence number of the first record in the outbox
        self._last_publish = 0.0
        self._bad = Throttle(log)

    # ------------------------------------------------------------------ stream

    def record(self, seq: int, payload: bytes) -> None:
        """Queue a logged record for the stream (sent by ``publish``)."""
        if not self._outbox:
            self._outbox_seq = seq
        self._outbox.append(payload)

    def discard_outbox(self) -> None:
        """Forget the turn's records: they could not be logged and were rolled back."""
        self._outbox.clear()

    def publish(self, now: float) -> None:
        """Send the turn's records (after its log flush) as one message, or a heartbeat.

        One message per turn: a replica gets all of a turn's records or none, so a write and
        the RESULT record that makes its retry exactly-once always travel together.
        """
        if self._outbox:
            self.pub.send_multipart(
                wire.encode_records(
                    self.epoch, self._outbox_seq, self._outbox, self.history.current
                )
            )
            self._outbox.clear()
            self._last_publish = now
        elif now - self._last_publish >= self.heartbeat_s:
            self.pub.send_multipart(
                wire.encode_heartbeat(self.epoch, self.store.seq, self.history.current)
            )
            self._last_publish = now

    # ------------------------------------------------------------------ sync channel

    def on_sync(self, frames: list[bytes], now: float) -> list[list[bytes]]:
        """Handle a replica's message (``[identity, *message]``); the strong replies it
        releases."""
        try:
            if len(frames) < 2:
                raise RemoteProtocolError("a sync message has no frames after the identity")
            identity, message = frames[0], wire.decode_to_primary(frames[1:])
        except RemoteProtocolError as exc:
            self._bad.warning("dropped a sync message: %s", exc)
            return []
        if isinstance(message, wire.Ack):
            if identity not in self.replicas.replicas:  # e.g. this primary restarted
                self.replicas.hello(identity, message.name, now)
            return self.replicas.ack(identity, message.seq, self.store.seq, now)
        if isinstance(message, wire.Hello):
            self.replicas.hello(identity, message.name, now)
            return []
        replica = self.replicas.replicas.get(identity)
        name = replica.name if replica else identity.hex()
        if isinstance(message, wire.CatchUp):
            answer = plan(self.history, self.backlog, message.history, message.seq, self.store.seq)
            if not isinstance(answer, str):
                self.snapshots.drop(identity)
                self.catchups.start(identity, name, message.seq, self.history, answer, now)
                self.resync_partial += 1
                return []
            log.info(
                "replica %s asks to catch up from seq %d; sending a snapshot: %s",
                name,
                message.seq,
                answer,
            )
        self.catchups.drop(identity)
        self.snapshots.start(identity, name, self.store, now, self.history)
        self.resync_full += 1
        return []

    def stream_snapshots(self, now: float | None = None) -> None:
        """Send each syncing replica its next snapshot or catch-up messages, as fast as it
        drains them."""
        now = time.monotonic() if now is None else now
        if self.snapshots:
            self._drive(self.snapshots.turn(self.store, now))
        if self.catchups:
            self._drive(self.catchups.turn(now))

    def _drive(self, turn: Generator[tuple[bytes, list[bytes]], Sent, None]) -> None:
        try:
            identity, frames = next(turn)
            while True:
                identity, frames = turn.send(self._send(identity, frames))
        except StopIteration:
            pass

    @property
    def transferring(self) -> bool:
        """Whether a snapshot or a catch-up is being sent."""
        return bool(self.snapshots) or bool(self.catchups)

    def _send(self, identity: bytes, frames: list[bytes]) -> Sent:
        try:
            self.sync.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return Sent.FULL
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the replica went away
            log.info("replica connection %s is gone: %s", identity.hex(), exc)
            return Sent.GONE
        self.resync_bytes += sum(len(f) for f in frames)
        return Sent.OK

    # ------------------------------------------------------------------ strong writes

    def hold(self, seq: int, reply: list[bytes], now: float) -> list[bytes] | None:
        """``reply`` if it may go now, else None (released later by acks or the timeout)."""
        return self.replicas.wait(seq, reply, now)

    def tick(self, now: float) -> list[list[bytes]]:
        """Drop late replicas from the in-sync set; the replies that releases."""
        return self.replicas.expire(now)
