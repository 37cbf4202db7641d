"""Primary: a shard primary's side of replication, on its PUB and ``sync`` ROUTER sockets.

It publishes each logged record on the stream (after the turn's log flush, so a replica
never holds a write the primary could lose), a heartbeat when the stream is idle, serves
snapshots to replicas that ask (walked a few thousand keys per loop turn, and only as fast
as the replica drains them: the sync socket's small high-water mark pushes back), and holds
``strong`` replies until every in-sync replica has acknowledged them (``ReplicaSet``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import zmq

from zkv.node import replication as rep
from zkv.node.replication import ReplicaSet
from zkv.runtime import Throttle
from zkv.storage.engine import Store

__all__ = ["Primary"]

log = logging.getLogger(__name__)

#: Keys per snapshot chunk sent to a syncing replica.
CHUNK_KEYS: Final = 2000
#: Chunks sent per replica per loop turn (the socket's high-water mark may stop it sooner).
CHUNKS_PER_TURN: Final = 4


@dataclass(slots=True)
class _Transfer:
    identity: bytes
    seq: int
    slots: list[int]
    pos: int = 0
    keys: int = 0
    results_sent: bool = False
    started: float = field(default_factory=time.monotonic)


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
    ) -> None:
        self.store = store
        self.pub = pub
        self.sync = sync
        self.epoch = epoch
        self.heartbeat_s = heartbeat_s
        self.replicas = ReplicaSet(ack_timeout_s)
        self.replicas.seed(in_sync or [], time.monotonic())
        self._outbox: list[bytes] = []
        self._outbox_seq = 0  # the sequence number of the first record in the outbox
        self._transfers: dict[bytes, _Transfer] = {}
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
            header = rep.STREAM_HEADER.pack(self.epoch, self._outbox_seq)
            self.pub.send_multipart([rep.STREAM_RECORD, header, *self._outbox])
            self._outbox.clear()
            self._last_publish = now
        elif now - self._last_publish >= self.heartbeat_s:
            self.pub.send_multipart(
                [rep.STREAM_HEARTBEAT, rep.STREAM_HEADER.pack(self.epoch, self.store.seq)]
            )
            self._last_publish = now

    # ------------------------------------------------------------------ sync channel

    def on_sync(self, frames: list[bytes], now: float) -> list[list[bytes]]:
        """Handle a replica's message; the strong replies it releases."""
        if len(frames) < 2:
            return []
        identity, kind = frames[0], frames[1]
        if kind == rep.ACK and len(frames) == 4 and len(frames[2]) == rep.SEQ.size:
            (seq,) = rep.SEQ.unpack(frames[2])
            if identity not in self.replicas.replicas:  # e.g. this primary restarted
                self.replicas.hello(identity, frames[3].decode("utf-8", "replace"), now)
            return self.replicas.ack(identity, seq, self.store.seq, now)
        if kind == rep.HELLO and len(frames) == 3:
            try:
                hello = msgpack.unpackb(frames[2], raw=False)
                name = hello["name"]
                if not isinstance(name, str):
                    raise TypeError("name is not a string")
            except Exception as exc:
                self._bad.warning("dropped a bad HELLO on the sync socket: %s", exc)
                return []
            self.replicas.hello(identity, name, now)
            return []
        if kind == rep.SNAP and len(frames) == 2:
            replica = self.replicas.replicas.get(identity)
            name = replica.name if replica else identity.hex()
            transfer = _Transfer(identity, self.store.seq, self.store.slot_numbers())
            self._transfers[identity] = transfer
            log.info(
                "sending a snapshot as of seq %d (%d keys) to replica %s",
                transfer.seq,
                self.store.held,
                name,
            )
            self._send(identity, [rep.BEGIN, rep.SEQ.pack(transfer.seq)])
            return []
        self._bad.warning(
            "dropped a sync message of kind %r with %d frames", kind[:16], len(frames)
        )
        return []

    def stream_snapshots(self) -> None:
        """Send each syncing replica its next chunks, as fast as it drains them."""
        for identity, transfer in list(self._transfers.items()):
            for _ in range(CHUNKS_PER_TURN):
                if transfer.pos >= len(transfer.slots):
                    if not transfer.results_sent:
                        results = msgpack.packb(self.store.result_items(), use_bin_type=True)
                        if not self._send(identity, [rep.RESULTS, results]):
                            break
                        transfer.results_sent = True
                    if self._send(identity, [rep.END, rep.SEQ.pack(transfer.keys)]):
                        del self._transfers[identity]
                        log.info(
                            "snapshot of %d keys sent in %.2f s",
                            transfer.keys,
                            time.monotonic() - transfer.started,
                        )
                    break
                flat: list[Any] = []
                pos = transfer.pos
                while pos < len(transfer.slots) and len(flat) < CHUNK_KEYS * 3:
                    flat += self.store.slot_items(transfer.slots[pos])
                    pos += 1
                chunk = msgpack.packb(flat, use_bin_type=True)
                if not self._send(identity, [rep.CHUNK, chunk]):
                    break  # the replica is behind; try again next turn
                transfer.pos = pos
                transfer.keys += len(flat) // 3

    @property
    def transferring(self) -> bool:
        """Whether a snapshot is being sent."""
        return bool(self._transfers)

    def _send(self, identity: bytes, frames: list[bytes]) -> bool:
        try:
            self.sync.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the replica went away
            self._transfers.pop(identity, None)
            log.info("replica connection %s is gone: %s", identity.hex(), exc)
            return False
        return True

    # ------------------------------------------------------------------ strong writes

    def hold(self, seq: int, reply: list[bytes], now: float) -> list[bytes] | None:
        """``reply`` if it may go now, else None (released later by acks or the timeout)."""
        return self.replicas.wait(seq, reply, now)

    def tick(self, now: float) -> list[list[bytes]]:
        """Drop late replicas from the in-sync set; the replies that releases."""
        return self.replicas.expire(now)
