"""Catch-up from the backlog: a replica that missed records gets only those (a partial
resync, as Redis's PSYNC), and a full snapshot only when they are gone.

Pure: no sockets; the clock is passed in. ``primary.py`` drives ``CatchUps`` with its sync
socket as it drives the snapshot ``Transfers`` (``replication.py``); the replica's side is
``follower.py``; the messages are ``wire.py``'s CATCHUP, CONTINUE and RECORDS.

**Where the records come from: a bounded in-memory backlog, not the log files.** Every node
(primary and replica alike) keeps the payloads of its last records, as logged, in a
``Backlog`` of at most ``replication.backlog_bytes``. Reasons:

- they are the exact bytes the log holds and the stream carried, already in memory (the
  persistence tap hands them over): serving a catch-up reads no file on the event loop, and
  the backlog is contiguous by construction (a gap or a rollback resets or cuts it), so the
  records sent are exactly the replica's missing ones, in order;
- the log's segments are deleted by compaction, cut back after a failed write and rewritten
  by repair, all while a catch-up would be reading them; the backlog's lifetime is simple;
- a replica keeps its backlog too, so a promoted replica serves partial resyncs at once
  (Redis 4's PSYNC2 does the same).
The price: a node's backlog starts empty when its process starts, so replicas that missed
records from a primary that restarted get a snapshot (one that misses none continues).

A catch-up request ``(history h, seq S)`` is served (``plan``) if the node's ``History``
allows it (``zkv.node.history``: S is a prefix of this node's history) and the backlog
holds every record from S+1 to the node's sequence T; the payloads S+1..T are then taken
from the backlog at once (references, no copy), so later writes that push them out of the
backlog do not cut the transfer short. The transfer (``CatchUp``) sends CONTINUE(S, T,
history) and then RECORDS messages of at most ``chunk_records`` records or about
``chunk_bytes`` bytes, at most ``chunks_per_turn`` per replica per loop turn, and stops at
the first message the replica's queue refuses (the sync socket's high-water mark), so it
goes only as fast as the replica takes it. Records after T reach the replica on the
stream, which it queued since before it asked (its subscription was live), so the handover
has no gap and no duplicate: it applies RECORDS up to T, then its queued records above T.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from itertools import islice
from typing import Final

from zkv.node.history import History
from zkv.node.replication import PerReplica, Sent
from zkv.node.wire import MAX_CATCHUP_RECORDS, encode_catchup_records, encode_continue

__all__ = [
    "CHUNKS_PER_TURN",
    "CHUNK_BYTES",
    "CHUNK_RECORDS",
    "RECORD_OVERHEAD_BYTES",
    "Backlog",
    "CatchUp",
    "CatchUps",
    "plan",
]

log = logging.getLogger(__name__)

#: Records per RECORDS message at most.
CHUNK_RECORDS: Final = min(1000, MAX_CATCHUP_RECORDS)
#: A RECORDS message stops growing once it holds this many payload bytes.
CHUNK_BYTES: Final = 1 << 20
#: RECORDS messages sent per replica per loop turn (the socket's high-water mark may stop
#: it sooner).
CHUNKS_PER_TURN: Final = 4
#: What a record costs the backlog beyond its payload (the bytes object and its slot).
RECORD_OVERHEAD_BYTES: Final = 48


class Backlog:
    """The payloads of a node's last records, contiguous, taking at most ``max_bytes``
    (each record counted as its payload plus ``overhead_bytes``)."""

    def __init__(self, max_bytes: int, overhead_bytes: int = RECORD_OVERHEAD_BYTES) -> None:
        self.max_bytes = max_bytes
        self.overhead_bytes = overhead_bytes
        self._payloads: deque[bytes] = deque()
        self._first = 0  # the sequence number of the first payload held
        #: What the records held take, by that count.
        self.bytes = 0

    @property
    def first_seq(self) -> int | None:
        """The sequence number of the oldest record held (None: empty)."""
        return self._first if self._payloads else None

    @property
    def last_seq(self) -> int | None:
        """The sequence number of the newest record held (None: empty)."""
        return self._first + len(self._payloads) - 1 if self._payloads else None

    def __len__(self) -> int:
        """Records held."""
        return len(self._payloads)

    def append(self, seq: int, payload: bytes) -> None:
        """Keep record ``seq``; a record that does not follow the last one starts afresh."""
        if self.max_bytes <= 0:
            return
        if self._payloads and seq != self._first + len(self._payloads):
            self.clear()
        if not self._payloads:
            self._first = seq
        self._payloads.append(payload)
        self.bytes += len(payload) + self.overhead_bytes
        while self.bytes > self.max_bytes and self._payloads:
            self.bytes -= len(self._payloads.popleft()) + self.overhead_bytes
            self._first += 1

    def truncate(self, seq: int) -> None:
        """Forget the records after ``seq`` (they were rolled back)."""
        while self._payloads and self._first + len(self._payloads) - 1 > seq:
            self.bytes -= len(self._payloads.pop()) + self.overhead_bytes

    def clear(self) -> None:
        """Forget every record (the node's history was replaced by a snapshot)."""
        self._payloads.clear()
        self.bytes = 0

    def since(self, after: int, upto: int) -> list[bytes] | None:
        """The payloads of records ``after + 1`` to ``upto``, or None if some are not held."""
        if after == upto:
            return []
        last = self.last_seq
        if after > upto or last is None or after + 1 < self._first or last < upto:
            return None
        start = after + 1 - self._first
        return list(islice(self._payloads, start, start + upto - after))


def plan(
    history: History, backlog: Backlog, their_history: int, after: int, seq: int
) -> list[bytes] | str:
    """How to serve a replica holding ``their_history`` up to ``after``, on a node at
    ``seq``: the payloads of records ``after + 1`` to ``seq``, or why a full snapshot is
    needed instead."""
    if not history.allows(their_history, after, seq):
        return history.why_not(their_history, after, seq)
    payloads = backlog.since(after, seq)
    if payloads is None:
        held = (
            "the backlog is empty"
            if backlog.first_seq is None
            else f"the backlog holds seq {backlog.first_seq} to {backlog.last_seq}"
        )
        return f"records {after + 1} to {seq} are no longer held ({held})"
    return payloads


@dataclass(slots=True)
class CatchUp:
    """One catch-up on its way to one replica connection: CONTINUE, then RECORDS."""

    identity: bytes
    name: str
    after: int
    history: History
    payloads: list[bytes]
    started: float
    pos: int = 0
    continued: bool = False
    sent_bytes: int = 0
    _next: int = field(default=0, init=False, repr=False)

    @property
    def target(self) -> int:
        """The last record this catch-up sends."""
        return self.after + len(self.payloads)

    @property
    def done(self) -> bool:
        """Whether every message went out."""
        return self.continued and self.pos >= len(self.payloads)

    def next_message(self, chunk_records: int, chunk_bytes: int) -> list[bytes]:
        """The frames to send next (call only while not ``done``)."""
        if not self.continued:
            return encode_continue(self.after, self.target, self.history)
        end, size = self.pos, 0
        while end < len(self.payloads) and end - self.pos < chunk_records and size < chunk_bytes:
            size += len(self.payloads[end])
            end += 1
        self._next = end
        return encode_catchup_records(self.after + 1 + self.pos, self.payloads[self.pos : end])

    def sent(self) -> None:
        """The message ``next_message`` gave last went out: move on."""
        if not self.continued:
            self.continued = True
        else:
            self.pos = self._next


class CatchUps(PerReplica[CatchUp]):
    """The catch-ups a primary is sending, one per replica connection (as ``Transfers``)."""

    def __init__(
        self,
        chunk_records: int = CHUNK_RECORDS,
        chunk_bytes: int = CHUNK_BYTES,
        chunks_per_turn: int = CHUNKS_PER_TURN,
    ) -> None:
        super().__init__()
        self.chunk_records = chunk_records
        self.chunk_bytes = chunk_bytes
        self.chunks_per_turn = chunks_per_turn

    def start(
        self,
        identity: bytes,
        name: str,
        after: int,
        history: History,
        payloads: list[bytes],
        now: float,
    ) -> CatchUp:
        """Send ``identity`` the records after ``after`` (replacing any catch-up it had)."""
        catchup = CatchUp(identity, name, after, history, payloads, now)
        self._active[identity] = catchup
        log.info(
            "catching replica %s up from seq %d to %d (%d records from the backlog)",
            name,
            after,
            catchup.target,
            len(payloads),
        )
        return catchup

    def turn(self, now: float) -> Generator[tuple[bytes, list[bytes]], Sent, None]:
        """This loop turn's messages: yields ``(identity, frames)``, is sent a ``Sent``."""
        for identity, catchup in list(self._active.items()):
            chunks = 0
            while chunks < self.chunks_per_turn:
                chunks += catchup.continued  # CONTINUE does not count
                frames = catchup.next_message(self.chunk_records, self.chunk_bytes)
                result = yield identity, frames
                if result is Sent.GONE:
                    self.drop(identity)
                    break
                if result is not Sent.OK:
                    break  # the replica is behind; try again next turn
                catchup.sent()
                catchup.sent_bytes += sum(len(f) for f in frames)
                if catchup.done:
                    self.drop(identity)
                    log.info(
                        "caught replica %s up to seq %d: %d records, %d bytes in %.2f s",
                        catchup.name,
                        catchup.target,
                        len(catchup.payloads),
                        catchup.sent_bytes,
                        now - catchup.started,
                    )
                    break
