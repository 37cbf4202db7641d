"""Primary: a shard primary's side of replication, on its PUB and ``sync`` ROUTER sockets.

It publishes each logged record on the stream (after the turn's log flush, so a replica
never holds a write the primary could lose), a heartbeat when the stream is idle, serves
snapshots to replicas that ask (walked a few thousand keys per loop turn, and only as fast
as the replica drains them: the sync socket's small high-water mark pushes back), and holds
``strong`` replies until every in-sync replica has acknowledged them.

This is the socket driver: the frames are ``wire.py``'s, the decisions are the pure cores'
in ``replication.py`` (``ReplicaSet``: the in-sync set and the held replies; ``Transfers``:
which snapshot message each syncing replica needs next). The clock is the caller's ``now``.
"""

from __future__ import annotations

import logging
import time

import zmq

from zkv.errors import RemoteProtocolError
from zkv.node import wire
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
    ) -> None:
        self.store = store
        self.pub = pub
        self.sync = sync
        self.epoch = epoch
        self.heartbeat_s = heartbeat_s
        self.replicas = ReplicaSet(ack_timeout_s)
        self.replicas.seed(in_sync or [], time.monotonic() if now is None else now)
        self.snapshots = Transfers()
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
            self.pub.send_multipart(wire.encode_records(self.epoch, self._outbox_seq, self._outbox))
            self._outbox.clear()
            self._last_publish = now
        elif now - self._last_publish >= self.heartbeat_s:
            self.pub.send_multipart(wire.encode_heartbeat(self.epoch, self.store.seq))
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
        self.snapshots.start(identity, replica.name if replica else identity.hex(), self.store, now)
        return []

    def stream_snapshots(self, now: float | None = None) -> None:
        """Send each syncing replica its next messages, as fast as it drains them."""
        if not self.snapshots:
            return
        turn = self.snapshots.turn(self.store, time.monotonic() if now is None else now)
        try:
            identity, frames = next(turn)
            while True:
                identity, frames = turn.send(self._send(identity, frames))
        except StopIteration:
            pass

    @property
    def transferring(self) -> bool:
        """Whether a snapshot is being sent."""
        return bool(self.snapshots)

    def _send(self, identity: bytes, frames: list[bytes]) -> Sent:
        try:
            self.sync.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return Sent.FULL
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the replica went away
            log.info("replica connection %s is gone: %s", identity.hex(), exc)
            return Sent.GONE
        return Sent.OK

    # ------------------------------------------------------------------ strong writes

    def hold(self, seq: int, reply: list[bytes], now: float) -> list[bytes] | None:
        """``reply`` if it may go now, else None (released later by acks or the timeout)."""
        return self.replicas.wait(seq, reply, now)

    def tick(self, now: float) -> list[list[bytes]]:
        """Drop late replicas from the in-sync set; the replies that releases."""
        return self.replicas.expire(now)
