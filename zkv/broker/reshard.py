"""Reshard: moving slots from one shard to another while both serve, as a pure state machine.

A reshard is a queue of *moves*; a move takes a few slots from a source shard to a target
shard, one at a time, in phases (each step a message to a shard's primary, answered before
the next is sent):

``copy``
    ``EXPORT`` chunks of the slots' keys from the source (which starts tracking the keys
    that change from then on), each stored on the target with ``IMPORT``. Both shards keep
    serving; only the source owns the slots.
``catchup``
    ``CHANGES``: the keys changed since, copied again, until a round finds few.
``final``
    The broker holds new requests for these slots only (``Hold``); ``CHANGES`` with
    ``final``: the source stops serving the slots (any request still reaching it is
    answered with a retryable error) and hands over the last changes and the outcomes of
    exactly-once writes; once the target has them, the broker gives the slots to the target
    under a new map version (``Commit``) and lets the held requests go, now to the target
    (``Release``). This is the only time requests for these slots wait; others never do.
``own``, ``drop``
    The target is told the slots are its own; the source deletes its copy in chunks.

A failure before the commit (a timeout, a node down, a failover: the source's tracking is
gone with its process) rolls the move back: the held requests go back to the source, the
source serves the slots again and stops tracking (``abort``), the target deletes what it
imported (``drop``; retried until the target's shard has a primary again), and the move
starts again, up to ``MAX_ATTEMPTS`` times. After the commit a failed step is retried
until it succeeds: the map already names the target.

No sockets, no clock of its own: the broker feeds answers and the time, and sends the
``Step`` that ``step(now)`` returns.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from zkv.errors import InvalidRequest, ZkvError
from zkv.protocol import Op
from zkv.slots import SlotMap

__all__ = [
    "CHUNK_KEYS",
    "MAX_HOLD_S",
    "Begin",
    "Commit",
    "End",
    "Hold",
    "Move",
    "Release",
    "Reshard",
    "Step",
    "plan",
]

log = logging.getLogger(__name__)

#: Keys per EXPORT, CHANGES, IMPORT or SETTLE drop message.
CHUNK_KEYS: Final = 1000
#: A catch-up round that finds fewer changed keys than this leads to the final switch.
SMALL_ROUND: Final = 100
#: Catch-up rounds before the final switch is taken anyway (a slot written faster than it
#: is copied still moves: the final round copies what is left while requests wait).
MAX_ROUNDS: Final = 20
#: Slots in one move (held together during its final switch).
SLOTS_PER_MOVE: Final = 128
#: A move is rolled back if its final switch holds requests longer than this (seconds).
MAX_HOLD_S: Final = 5.0
#: A move that fails this many times is given up (the reshard stops there).
MAX_ATTEMPTS: Final = 3
#: Pause before retrying a failed step or move (seconds).
RETRY_S: Final = 0.5
#: Copies are paced to about this many keys per second, so that a reshard leaves most of
#: the cluster's capacity to its clients (copying flat out, a 2-core machine served about a
#: quarter of its usual load meanwhile; see README, Benchmarks).
COPY_KEYS_PER_S: Final = 20_000


@dataclass(frozen=True, slots=True)
class Step:
    """A message for ``shard``'s primary: ``op`` with ``args``."""

    shard: str
    op: Op
    args: list[Any]


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold new requests for ``slots`` until released."""

    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Release:
    """Let the held requests for ``slots`` go, routed by the map as it now is."""

    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    """A move starts: save it and the moves queued after it, so that a restarted broker
    finishes or rolls it back, and goes on with the rest."""

    slots: tuple[int, ...]
    source: str
    target: str
    queue: tuple[tuple[tuple[int, ...], str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class End:
    """The move in progress ended (done, rolled back for good, or given up)."""


@dataclass(frozen=True, slots=True)
class Commit:
    """Give ``slots`` to ``target`` in the slot map; answer with ``Reshard.committed``."""

    slots: tuple[int, ...]
    target: str


Event = Hold | Release | Commit | Begin | End


@dataclass(slots=True)
class Move:
    """Some slots on their way from ``source`` to ``target``."""

    slots: tuple[int, ...]
    source: str
    target: str
    phase: str = "copy"
    #: Where the EXPORT walk resumes (None before the first chunk).
    pos: int | None = None
    exported: bool = False
    #: Copies (and write outcomes) read from the source, not stored on the target yet.
    pending: list[Any] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)
    more: bool = False
    #: Whether the last catch-up round found few changed keys.
    last_small: bool = False
    rounds: int = 0
    keys: int = 0
    attempts: int = 0
    hold_since: float | None = None

    def describe(self) -> dict[str, Any]:
        """For status: which slots, where from and to, how far."""
        return {
            "slots": _runs(self.slots),
            "from": self.source,
            "to": self.target,
            "phase": self.phase,
            "keys": self.keys,
            "attempts": self.attempts,
        }


def plan(
    slot_map: SlotMap,
    shards: list[str],
    source: str | None = None,
    target: str | None = None,
    count: int | None = None,
) -> list[Move]:
    """The moves of a reshard.

    Without arguments: rebalance, so that each of ``shards`` (the config's, in order; a new
    one may own nothing yet) owns an even share (sizes within one). With ``source`` alone:
    drain it, its slots spread evenly over the other shards (before it leaves the config).
    With ``source``, ``target`` and ``count``: move ``count`` slots from ``source`` to
    ``target`` (the source's last ones). ``InvalidRequest`` for an impossible request.
    """
    for name in (source, target):
        if name is not None and name not in shards:
            raise InvalidRequest(f"no shard {name!r} (shards: {', '.join(shards)})")
    owned = {s: slot_map.slots_of(s) for s in shards}
    outside = [s for s in slot_map.shards() if s not in owned]
    if outside:
        raise InvalidRequest(f"shard {outside[0]} owns slots but is not in the config file")
    transfers: list[tuple[str, str, list[int]]] = []
    if source is None and target is None and count is None:
        transfers = _rebalance(owned, shards, slot_map.slots)
    elif source is not None and target is None and count is None:
        others = [s for s in shards if s != source]
        if not others:
            raise InvalidRequest(f"shard {source} is the only shard: its slots have nowhere to go")
        transfers = _rebalance(owned, others, slot_map.slots)
    elif source is not None and target is not None and count is not None:
        if source == target:
            raise InvalidRequest("source and target are the same shard")
        if count > len(owned[source]) or count < 1:
            raise InvalidRequest(
                f"shard {source} owns {len(owned[source])} slots; cannot move {count}"
            )
        transfers = [(source, target, owned[source][-count:])]
    else:
        raise InvalidRequest(
            "give from, to and count; or from alone (drain a shard); or nothing (rebalance)"
        )
    moves = []
    for src, dst, slots in transfers:
        for i in range(0, len(slots), SLOTS_PER_MOVE):
            moves.append(Move(tuple(slots[i : i + SLOTS_PER_MOVE]), src, dst))
    return moves


def _rebalance(
    owned: dict[str, list[int]], targets: list[str], slots: int
) -> list[tuple[str, str, list[int]]]:
    """Transfers that leave each of ``targets`` an even share and every other shard none."""
    base, extra = divmod(slots, len(targets))
    # the shards that own most keep the extra slots: fewer moves
    by_size = sorted(targets, key=lambda s: -len(owned[s]))
    want = {s: 0 for s in owned}
    want.update({s: base + (1 if i < extra else 0) for i, s in enumerate(by_size)})
    surplus = {s: owned[s][want[s] :] for s in owned if len(owned[s]) > want[s]}
    transfers = []
    for dst in targets:
        need = want[dst] - len(owned[dst])
        for src in list(surplus):
            if need <= 0:
                break
            taken, surplus[src] = surplus[src][:need], surplus[src][need:]
            if taken:
                transfers.append((src, dst, taken))
                need -= len(taken)
    return transfers


class Reshard:
    """The moves of one reshard, driven one step at a time (see the module doc)."""

    def __init__(self, moves: list[Move]) -> None:
        self.queue: deque[Move] = deque(moves)
        self.current: Move | None = None
        self.slots_total = sum(len(m.slots) for m in moves)
        self.slots_done = 0
        self.keys_copied = 0
        self.failed: str | None = None
        #: The longest any final switch held its slots' requests (seconds).
        self.longest_hold_s = 0.0
        self._waiting = False  # a step is out, or a commit is being saved
        self._not_before = 0.0
        #: Numbers the steps sent: an answer to an older one (late, after a roll back) is
        #: ignored.
        self.step_id = 0

    @classmethod
    def resume(
        cls,
        slots: list[int],
        source: str,
        target: str,
        committed: bool,
        queue: list[tuple[list[int], str, str]] | None = None,
    ) -> Reshard:
        """After a broker restart, the reshard it had in progress: the move in flight
        finished (``own``, ``drop``) if the saved map gives its slots to the target
        already, else rolled back and started again; then the moves queued after it."""
        move = Move(tuple(slots), source, target)
        move.phase = "own" if committed else "abort-source"
        rest = [Move(tuple(s), src, dst) for s, src, dst in queue or [] if s]
        reshard = cls(rest)
        reshard.current = move
        reshard.slots_total += len(slots)
        return reshard

    def wake_at(self) -> float:
        """When ``step`` may return a step again (``inf`` while one is out or all is done)."""
        if self._waiting or self.done:
            return math.inf
        return self._not_before

    @property
    def done(self) -> bool:
        """Whether every move ended (or the reshard was given up)."""
        return self.current is None and not self.queue

    def describe(self) -> dict[str, Any]:
        """For status: progress and the move in flight."""
        return {
            "slots_total": self.slots_total,
            "slots_done": self.slots_done,
            "keys_copied": self.keys_copied,
            "moves_left": len(self.queue) + (self.current is not None),
            "current": None if self.current is None else self.current.describe(),
            "failed": self.failed,
            "longest_hold_ms": round(self.longest_hold_s * 1000, 1),
        }

    # ------------------------------------------------------------------ driving

    def step(self, now: float) -> tuple[Step | None, list[Event]]:
        """The next message to send (None: wait), and events for the broker to act on."""
        events: list[Event] = []
        if self._waiting or now < self._not_before:
            return None, events
        move = self.current
        if move is None:
            if not self.queue:
                return None, events
            move = self.current = self.queue.popleft()
            log.info("moving slots %s from %s to %s", _runs(move.slots), move.source, move.target)
            queue = tuple((m.slots, m.source, m.target) for m in self.queue)
            events.append(Begin(move.slots, move.source, move.target, queue))
        slots = list(move.slots)
        if move.phase in ("copy", "catchup", "final") and (move.pending or move.outcomes):
            copies, outcomes = move.pending, move.outcomes
            return self._send(Step(move.target, Op.IMPORT, [slots, copies, outcomes])), events
        if move.phase == "copy":
            if not move.exported:
                return self._send(
                    Step(move.source, Op.EXPORT, [slots, move.pos, CHUNK_KEYS])
                ), events
            move.phase = "catchup"
        if move.phase == "catchup":
            settled = not move.more and move.last_small
            if move.rounds and (settled or move.rounds >= MAX_ROUNDS):
                move.phase, move.hold_since, move.more = "final", now, True
                events.append(Hold(move.slots))
            else:
                return self._send(Step(move.source, Op.CHANGES, [slots, CHUNK_KEYS, False])), events
        if move.phase == "final":
            if move.more:
                return self._send(Step(move.source, Op.CHANGES, [slots, CHUNK_KEYS, True])), events
            self._waiting = True
            events.append(Commit(move.slots, move.target))
            return None, events
        if move.phase == "own":
            return self._send(Step(move.target, Op.SETTLE, [slots, "own", 1])), events
        if move.phase == "drop":
            return self._send(Step(move.source, Op.SETTLE, [slots, "drop", CHUNK_KEYS])), events
        if move.phase == "abort-target":
            return self._send(Step(move.target, Op.SETTLE, [slots, "drop", CHUNK_KEYS])), events
        if move.phase == "abort-source":
            return self._send(Step(move.source, Op.SETTLE, [slots, "abort", 1])), events
        raise AssertionError(f"unknown phase {move.phase}")

    def _send(self, step: Step) -> Step:
        self._waiting = True
        self.step_id += 1
        return step

    def answered(self, step_id: int, result: Any, now: float) -> list[Event]:
        """The answer to step ``step_id`` (``self.step_id`` when it was sent): its result,
        or the ``ZkvError`` it failed with (a timeout included). Returns events for the
        broker; an answer to an older step is ignored."""
        if step_id != self.step_id or not self._waiting:
            return []
        self._waiting = False
        move = self.current
        if move is None:
            return []
        if isinstance(result, ZkvError):
            return self._failed(move, str(result), now)
        try:
            return self._advance(move, result, now)
        except (TypeError, ValueError, IndexError) as exc:
            return self._failed(move, f"unexpected answer: {exc}", now)

    def _advance(self, move: Move, result: Any, now: float) -> list[Event]:
        if move.phase in ("copy", "catchup", "final") and (move.pending or move.outcomes):
            move.keys += len(move.pending)
            self.keys_copied += len(move.pending)
            if move.phase != "final":  # the final round holds requests: it never waits
                self._not_before = now + len(move.pending) / COPY_KEYS_PER_S
            move.pending, move.outcomes = [], []
            return []
        if move.phase == "copy":
            copies, next_pos = result
            move.pending, move.pos = list(copies), next_pos
            move.exported = next_pos is None
        elif move.phase in ("catchup", "final"):
            copies, outcomes, more = result
            move.pending, move.outcomes, move.more = list(copies), list(outcomes), bool(more)
            move.last_small = len(copies) < SMALL_ROUND
            if move.phase == "catchup":
                move.rounds += 1
        elif move.phase == "own":
            move.phase = "drop"
        elif move.phase == "drop":
            if result == 0:
                self._finish(move)
                return [End()]
        elif move.phase == "abort-source":
            move.phase = "abort-target"
        elif move.phase == "abort-target" and result == 0:
            return self._restart(move)
        return []

    def committed(self, ok: bool, now: float) -> list[Event]:
        """The broker saved the map giving the move's slots to its target (``ok``), or
        could not (then the move is rolled back). Returns events."""
        self._waiting = False
        move = self.current
        if move is None:
            return []
        if not ok:
            return self._failed(move, "the slot map could not be saved", now)
        if move.hold_since is not None:
            self.longest_hold_s = max(self.longest_hold_s, now - move.hold_since)
        move.phase, move.hold_since = "own", None
        log.info(
            "slots %s now belong to %s (%d keys copied)", _runs(move.slots), move.target, move.keys
        )
        return [Release(move.slots)]

    def expire(self, now: float) -> list[Event]:
        """Roll back a move whose final switch has held requests for too long."""
        move = self.current
        if move is None or move.hold_since is None or now - move.hold_since < MAX_HOLD_S:
            return []
        if self._waiting and move.phase == "final" and not move.more and not move.pending:
            return []  # the commit is being saved
        return self._failed(move, f"the final switch took over {MAX_HOLD_S:g} s", now)

    # ------------------------------------------------------------------ failures

    def _failed(self, move: Move, why: str, now: float) -> list[Event]:
        self._not_before = now + RETRY_S
        events: list[Event] = []
        if move.phase in ("copy", "catchup", "final"):
            log.warning(
                "moving slots %s from %s to %s failed (%s); rolling it back",
                _runs(move.slots),
                move.source,
                move.target,
                why,
            )
            if move.hold_since is not None:
                self.longest_hold_s = max(self.longest_hold_s, now - move.hold_since)
                events.append(Release(move.slots))
            # the source serves the slots again first, then the target drops its partial copy
            move.phase, move.hold_since, move.pending, move.outcomes = "abort-source", None, [], []
            self._waiting = False
            self.step_id += 1  # whatever is still out belongs to the abandoned attempt
        else:  # committed, or rolling back: the same step again, later
            log.warning("slot move step failed in phase %s (%s); retrying", move.phase, why)
        return events

    def _restart(self, move: Move) -> list[Event]:
        move.attempts += 1
        if move.attempts >= MAX_ATTEMPTS:
            self.failed = (
                f"moving slots {_runs(move.slots)} from {move.source} to {move.target} failed "
                f"{move.attempts} times; the reshard stopped (slots already moved stay moved)"
            )
            log.error("%s", self.failed)
            self.current = None
            self.queue.clear()
            return [End()]
        attempts = move.attempts
        self.current = Move(move.slots, move.source, move.target, attempts=attempts)
        return []

    def _finish(self, move: Move) -> None:
        self.slots_done += len(move.slots)
        self.current = None
        if not self.queue:
            log.info(
                "reshard done: %d slots moved, %d keys copied", self.slots_done, self.keys_copied
            )


def _runs(slots: tuple[int, ...] | list[int]) -> str:
    """``0-3,7`` for people to read."""
    out: list[str] = []
    ordered = sorted(slots)
    start = prev = ordered[0] if ordered else 0
    for s in ordered[1:]:
        if s != prev + 1:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = s
        prev = s
    if ordered:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)
