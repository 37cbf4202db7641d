"""Replication: the stream and sync messages, and the primary's view of its replicas.

Pure: no sockets; the clock is passed in. The node's sockets carry these messages.

The stream (primary PUB -> replica SUB), in sequence order::

    [b"R", STREAM_HEADER(epoch, seq), payload...]  one loop turn's records, the first numbered
                                                   seq: each a log payload [seq, op, *args]
    [b"H", STREAM_HEADER(epoch, seq)]            heartbeat when idle: "I am at seq"

The sync channel (replica DEALER -> primary ROUTER ``sync``)::

    replica -> primary: [b"HELLO", msgpack {"name", "seq"}]   I follow you
                        [b"SNAP"]                              send me your state
                        [b"ACK", SEQ(seq), name]               I applied and logged up to seq
    primary -> replica: [b"BEGIN", SEQ(S)]                     a snapshot as of S follows
                        [b"CHUNK", msgpack [key, value, expires_at, ...]]
                        [b"RESULTS", msgpack [[request id, reply body], ...]]
                        [b"END", SEQ(keys)]                    then follow the stream from S+1

A replica subscribes first, waits for the first stream message (so its subscription is
live), then asks for the snapshot and queues the records that keep arriving; at ``END`` it
drops the queued records at or below S and applies the rest (the ZeroMQ guide's Clone
pattern). The snapshot is walked over several loop turns while writes go on; it is exact
after replaying the records above S, as for compaction (see ``storage/snapshot.py``).

A ``strong`` write is acknowledged once every *in-sync* replica has acknowledged its sequence
number. A replica joins the in-sync set when it has acknowledged everything the primary has,
and leaves it when a write waits longer than ``ack_timeout_s`` for it, or when it has been
silent that long (replicas acknowledge at least once per heartbeat interval).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ACK",
    "BEGIN",
    "CHUNK",
    "END",
    "HELLO",
    "SEQ",
    "SNAP",
    "STREAM_HEADER",
    "STREAM_HEARTBEAT",
    "STREAM_RECORD",
    "ReplicaSet",
    "ReplicaState",
]

log = logging.getLogger(__name__)

STREAM_RECORD: Final = b"R"
STREAM_HEARTBEAT: Final = b"H"
STREAM_HEADER: Final = struct.Struct(">QQ")
SEQ: Final = struct.Struct(">Q")
HELLO: Final = b"HELLO"
SNAP: Final = b"SNAP"
ACK: Final = b"ACK"
BEGIN: Final = b"BEGIN"
CHUNK: Final = b"CHUNK"
END: Final = b"END"
RESULTS: Final = b"RESULTS"


#: Identity prefix of the placeholder for a seeded replica that has not connected yet.
_SEED: Final = b"\x00seed:"


@dataclass(slots=True)
class ReplicaState:
    """What the primary knows of one replica."""

    name: str
    identity: bytes
    acked: int = 0
    last_heard: float = 0.0
    in_sync: bool = False


@dataclass(slots=True)
class _Waiting:
    seq: int
    since: float
    reply: list[bytes]


@dataclass
class ReplicaSet:
    """The primary's replicas, its in-sync set, and the strong replies waiting on them."""

    ack_timeout_s: float
    replicas: dict[bytes, ReplicaState] = field(default_factory=dict)
    _waiting: list[_Waiting] = field(default_factory=list)

    def seed(self, names: list[str], now: float) -> None:
        """Count ``names`` in sync before they connect: the set a restarted primary inherits.

        The broker hands a primary that restarts at the same epoch the in-sync set its
        former run reported, so the set stays truthful across the restart: strong writes
        wait for those replicas' acks, and a replica that does not reconnect and ack within
        ``ack_timeout_s`` leaves the set as usual.
        """
        for name in names:
            identity = _SEED + name.encode()
            self.replicas[identity] = ReplicaState(name, identity, last_heard=now, in_sync=True)
        if names:
            log.info("waiting for replicas %s, in sync before this primary started", names)

    def hello(self, identity: bytes, name: str, now: float) -> None:
        """A replica (re)introduced itself; it is not in sync until it has caught up, unless
        it is a seeded one connecting for the first time (see ``seed``)."""
        old = self.replicas.pop(identity, None)
        seeded = False
        for other in [r for r in self.replicas.values() if r.name == name]:
            del self.replicas[other.identity]  # the same node on a new connection
            seeded = seeded or (other.in_sync and other.identity.startswith(_SEED))
        if old is None or old.in_sync:
            log.info("replica %s connected", name)
        self.replicas[identity] = ReplicaState(name, identity, last_heard=now, in_sync=seeded)

    def ack(self, identity: bytes, seq: int, primary_seq: int, now: float) -> list[list[bytes]]:
        """Record an ack; the strong replies it releases."""
        replica = self.replicas.get(identity)
        if replica is None:
            return []
        replica.acked = max(replica.acked, seq)
        replica.last_heard = now
        if not replica.in_sync and replica.acked >= primary_seq:
            replica.in_sync = True
            log.info("replica %s is in sync at seq %d", replica.name, replica.acked)
        return self._release()

    def wait(self, seq: int, reply: list[bytes], now: float) -> list[bytes] | None:
        """Hold ``reply`` until every in-sync replica has ``seq``; returned now if none lack it."""
        if all(r.acked >= seq for r in self.replicas.values() if r.in_sync):
            return reply
        self._waiting.append(_Waiting(seq, now, reply))
        return None

    def expire(self, now: float) -> list[list[bytes]]:
        """Drop replicas that held a write or were silent past the timeout; replies released."""
        timeout = self.ack_timeout_s
        oldest = self._waiting[0] if self._waiting else None
        for replica in self.replicas.values():
            if not replica.in_sync:
                continue
            late = (
                oldest is not None and replica.acked < oldest.seq and now - oldest.since > timeout
            )
            silent = now - replica.last_heard > timeout
            if late or silent:
                replica.in_sync = False
                why = (
                    f"no ack for seq {oldest.seq} within {timeout:g} s"
                    if late and oldest
                    else f"silent for {now - replica.last_heard:.1f} s"
                )
                log.warning("replica %s left the in-sync set: %s", replica.name, why)
        for identity in [i for i, r in self.replicas.items() if now - r.last_heard > 60 * timeout]:
            del self.replicas[identity]
        return self._release()

    def _release(self) -> list[list[bytes]]:
        if not self._waiting:
            return []
        floor = min((r.acked for r in self.replicas.values() if r.in_sync), default=None)
        released = []
        while self._waiting and (floor is None or self._waiting[0].seq <= floor):
            released.append(self._waiting.pop(0).reply)
        return released

    def in_sync(self) -> list[str]:
        """Names of the in-sync replicas."""
        return sorted(r.name for r in self.replicas.values() if r.in_sync)

    def acked(self) -> dict[str, int]:
        """The highest sequence each replica has acknowledged."""
        return {r.name: r.acked for r in self.replicas.values()}
