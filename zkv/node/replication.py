"""Replication, the primary's side: its view of its replicas and the snapshots it sends.

Pure: no sockets; the clock is passed in. The messages are defined frame by frame in
``wire.py`` (their constants are re-exported here); ``primary.py`` drives these cores with
its sockets, ``follower.py`` is the replica's side.

A replica subscribes first, waits for the first stream message (so its subscription is
live), then asks for the snapshot and queues the records that keep arriving; at ``END`` it
drops the queued records at or below S and applies the rest (the ZeroMQ guide's Clone
pattern). The snapshot is walked over several loop turns while writes go on (``Transfers``:
which message each syncing replica needs next, only as fast as it takes them); it is exact
after replaying the records above S, as for compaction (see ``storage/snapshot.py``).

A ``strong`` write is acknowledged once every *in-sync* replica has acknowledged its sequence
number (``ReplicaSet``). A replica joins the in-sync set when it has acknowledged everything
the primary has, and leaves it when a write waits longer than ``ack_timeout_s`` for it, or
when it has been silent that long (replicas acknowledge at least once per heartbeat interval).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Generic, Literal, TypeAlias, TypeVar

from zkv.node.history import EMPTY, History
from zkv.node.wire import (
    ACK,
    BEGIN,
    CHUNK,
    END,
    HELLO,
    RESULTS,
    SEQ,
    SNAP,
    STREAM_HEADER,
    STREAM_HEARTBEAT,
    STREAM_RECORD,
    encode_begin,
    encode_chunk,
    encode_end,
    encode_results,
)
from zkv.storage.engine import Store

__all__ = [
    "ACK",
    "BEGIN",
    "CHUNK",
    "CHUNKS_PER_TURN",
    "CHUNK_KEYS",
    "END",
    "HELLO",
    "RESULTS",
    "SEQ",
    "SNAP",
    "STREAM_HEADER",
    "STREAM_HEARTBEAT",
    "STREAM_RECORD",
    "ReplicaSet",
    "ReplicaState",
    "Sent",
    "Transfer",
    "Transfers",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Keys per snapshot chunk sent to a syncing replica.
CHUNK_KEYS: Final = 2000
#: Chunks sent per replica per loop turn (the socket's high-water mark may stop it sooner).
CHUNKS_PER_TURN: Final = 4

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
    """The primary's replicas, its in-sync set, and the strong replies waiting on them.

    A replica that leaves the in-sync set still holds back the strong replies it has not
    acknowledged until the broker confirms the smaller set (``confirm``: the broker's
    heartbeat echoes the set it has on record). Until then the broker could still promote
    that replica if this primary died, so a reply released earlier could name a write the
    new primary never had. The price: when a replica drops out, strong writes wait about one
    heartbeat round trip more.
    """

    ack_timeout_s: float
    replicas: dict[bytes, ReplicaState] = field(default_factory=dict)
    _waiting: list[_Waiting] = field(default_factory=list)
    #: Replicas dropped from the in-sync set that the broker may still count in it, with
    #: the highest sequence each had acknowledged: replies above it wait for ``confirm``.
    _dropped: dict[str, int] = field(default_factory=dict)

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
        if replica.name in self._dropped:
            self._dropped[replica.name] = max(self._dropped[replica.name], replica.acked)
        if not replica.in_sync and replica.acked >= primary_seq:
            replica.in_sync = True
            self._dropped.pop(replica.name, None)
            log.info("replica %s is in sync at seq %d", replica.name, replica.acked)
        return self._release()

    def wait(self, seq: int, reply: list[bytes], now: float) -> list[bytes] | None:
        """Hold ``reply`` until every in-sync replica has ``seq``; returned now if none lack it."""
        floor = self._floor()
        if floor is None or seq <= floor:
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
                self._dropped[replica.name] = replica.acked
                why = (
                    f"no ack for seq {oldest.seq} within {timeout:g} s"
                    if late and oldest
                    else f"silent for {now - replica.last_heard:.1f} s"
                )
                log.warning("replica %s left the in-sync set: %s", replica.name, why)
        for identity in [i for i, r in self.replicas.items() if now - r.last_heard > 60 * timeout]:
            del self.replicas[identity]
        return self._release()

    def confirm(self, broker_in_sync: list[str]) -> list[list[bytes]]:
        """The broker's record of the in-sync set; the replies dropped replicas held back."""
        for name in [n for n in self._dropped if n not in broker_in_sync]:
            del self._dropped[name]
        return self._release()

    def confirmed(self, seq: int) -> int:
        """The highest sequence up to ``seq`` (the primary's) that every replica a strong
        reply would wait for has acknowledged: what a failover cannot take back, and so
        what a change feed may deliver (``zkv.node.watching``)."""
        floor = self._floor()
        return seq if floor is None else min(seq, floor)

    def _floor(self) -> int | None:
        """The highest sequence every replica a strong reply must wait for has acknowledged
        (None: there is none)."""
        acked = [r.acked for r in self.replicas.values() if r.in_sync]
        return min([*acked, *self._dropped.values()], default=None)

    def _release(self) -> list[list[bytes]]:
        if not self._waiting:
            return []
        floor = self._floor()
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


# --------------------------------------------------------------------------- snapshots


TransferStep: TypeAlias = Literal["begin", "chunks", "results", "end", "done"]


class Sent(Enum):
    """What became of a message the driver was asked to send to a replica."""

    #: Handed to the replica's connection.
    OK = "ok"
    #: The connection's queue is full (the replica is behind): try again next turn.
    FULL = "full"
    #: The replica's connection is gone: its transfer is dropped.
    GONE = "gone"


@dataclass(slots=True)
class Transfer:
    """One snapshot on its way to one replica connection, and the message it needs next.

    ``step`` goes ``begin`` -> ``chunks`` (one ``Store.walk`` step of ``CHUNK_KEYS`` keys
    each, while writes go on) -> ``results`` -> ``end`` -> ``done``; it moves on only once
    a message is sent, so a message refused by a full queue is built again next turn.
    """

    identity: bytes
    name: str
    seq: int
    slots: list[int]
    started: float
    history: History = EMPTY
    step: TransferStep = "begin"
    pos: int = 0
    keys: int = 0
    _resume: int = field(default=0, init=False, repr=False)
    _pending_keys: int = field(default=0, init=False, repr=False)

    def next_message(self, store: Store, chunk_keys: int) -> list[bytes]:
        """The frames to send next (after ``done``: none to send; do not call)."""
        if self.step == "begin":
            return encode_begin(self.seq, self.history)
        if self.step == "chunks":
            flat, self._resume = store.walk(self.slots, self.pos, chunk_keys)
            self._pending_keys = len(flat) // 3
            return encode_chunk(flat)
        if self.step == "results":
            return encode_results(store.result_items())
        return encode_end(self.keys)

    def sent(self) -> None:
        """The message ``next_message`` gave last went out: move on."""
        if self.step == "begin":
            self.step = "chunks" if self.slots else "results"
        elif self.step == "chunks":
            self.pos, self.keys = self._resume, self.keys + self._pending_keys
            if self.pos >= len(self.slots):
                self.step = "results"
        elif self.step == "results":
            self.step = "end"
        else:
            self.step = "done"

    @property
    def done(self) -> bool:
        """Whether END went out."""
        return self.step == "done"


class PerReplica(Generic[T]):
    """What a primary is sending, one item per replica connection (its identity): the
    snapshots (``Transfers``) and the catch-ups (``catchup.CatchUps``)."""

    def __init__(self) -> None:
        self._active: dict[bytes, T] = {}

    def get(self, identity: bytes) -> T | None:
        """The item in progress to ``identity``, if any."""
        return self._active.get(identity)

    def drop(self, identity: bytes) -> None:
        """Forget the item to ``identity`` (its connection is gone, or it is done)."""
        self._active.pop(identity, None)

    def __bool__(self) -> bool:
        """Whether anything is being sent."""
        return bool(self._active)

    def __len__(self) -> int:
        """How many replicas are being sent something."""
        return len(self._active)


class Transfers(PerReplica[Transfer]):
    """The snapshots a primary is sending, one per syncing replica connection.

    ``turn`` is a generator, like the client core's calls: it yields ``(identity, frames)``
    to send and is told by the driver how that went (``Sent``). Each turn sends each
    replica at most ``chunks_per_turn`` chunks, and stops at the first one its queue
    refuses, so a snapshot goes only as fast as the replica takes it.
    """

    def __init__(self, chunk_keys: int = CHUNK_KEYS, chunks_per_turn: int = CHUNKS_PER_TURN):
        super().__init__()
        self.chunk_keys = chunk_keys
        self.chunks_per_turn = chunks_per_turn

    def start(
        self, identity: bytes, name: str, store: Store, now: float, history: History = EMPTY
    ) -> Transfer:
        """Begin a snapshot of ``store`` (of ``history``) as of now for ``identity``
        (replacing any it had)."""
        transfer = Transfer(identity, name, store.seq, store.slot_numbers(), now, history)
        self._active[identity] = transfer
        log.info(
            "sending a snapshot as of seq %d (%d keys) to replica %s",
            transfer.seq,
            store.held,
            name,
        )
        return transfer

    def turn(self, store: Store, now: float) -> Generator[tuple[bytes, list[bytes]], Sent, None]:
        """This loop turn's messages: yields ``(identity, frames)``, is sent a ``Sent``."""
        for identity, transfer in list(self._active.items()):
            chunks = 0
            while True:
                if transfer.step == "chunks":
                    if chunks >= self.chunks_per_turn:
                        break
                    chunks += 1
                result = yield identity, transfer.next_message(store, self.chunk_keys)
                if result is Sent.GONE:
                    self.drop(identity)
                    break
                if result is not Sent.OK:
                    break  # the replica is behind; try again next turn
                transfer.sent()
                if transfer.done:
                    self.drop(identity)
                    log.info(
                        "snapshot of %d keys sent to replica %s in %.2f s",
                        transfer.keys,
                        transfer.name,
                        now - transfer.started,
                    )
                    break
