"""The broker's side of moving slots: runs a ``Reshard`` and holds requests for the slots
of a final switch.

``SlotMoves`` turns the reshard's steps into node requests (sent through the broker's
``send`` callback, stamped with an envelope that brings the answer back here), gives the
answers back to the reshard, saves each commit through ``reassign`` and, while a move's
final switch runs, holds the client requests that touch its slots; once the switch ends
(either way) they go through ``redispatch`` again, and are routed by the map as it is then.
No sockets: the broker passes its callbacks in.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable
from typing import Any, Final

from zkv import protocol
from zkv.broker.reshard import Begin, Commit, End, Event, Hold, Release, Reshard, Step
from zkv.errors import InvalidRequest, Timeout, Unavailable, ZkvError
from zkv.protocol import Consistency, Op, Request
from zkv.slots import slot_of

__all__ = ["MOVE_ENVELOPE", "SlotMoves"]

log = logging.getLogger(__name__)

#: The envelope of a move step sent to a node: ``b"M"`` and the step's number.
MOVE_ENVELOPE: Final = struct.Struct(">cQ")
_MOVE: Final = b"M"
#: The longest a step may go unanswered before it counts as failed (seconds).
STEP_TIMEOUT_S: Final = 10.0
#: Requests held at most during a final switch; past it they are refused (retryable).
MAX_HELD: Final = 10_000
#: The broker's own client id on the requests it sends for moves.
MOVER_ID: Final = b"\x00" * (protocol.CLIENT_ID_BYTES - 1) + b"\x01"

#: Sends frames to a shard's primary: the primary's name, or None if it could not.
Send = Callable[[str, list[bytes]], str | None]


class SlotMoves:
    """A running reshard (at most one) and the requests it holds."""

    def __init__(
        self,
        slots: int,
        send: Send,
        reassign: Callable[[tuple[int, ...], str], bool],
        redispatch: Callable[[list[bytes], str], None],
        record: Callable[[dict[str, Any] | None], None],
        primary_of: Callable[[str], str | None],
    ) -> None:
        self.slots = slots
        self._send = send
        self._reassign = reassign
        self._record = record
        self._primary_of = primary_of
        #: The shard and primary the step in flight went to: if that primary goes (dies,
        #: or loses its role), the step fails at once instead of at its timeout.
        self._out: tuple[str, str] | None = None
        self._redispatch = redispatch
        self.reshard: Reshard | None = None
        #: Slots whose requests wait for a final switch to end.
        self.holding: set[int] = set()
        self._held: list[tuple[list[bytes], str]] = []
        self._deadline: float | None = None
        #: The move to save before the next step goes out (``_UNCHANGED``: nothing to save):
        #: the end of one move and the start of the next make one write, not two.
        self._to_record: dict[str, Any] | object | None = _UNCHANGED

    @property
    def busy(self) -> bool:
        """Whether a reshard is running."""
        return self.reshard is not None and not self.reshard.done

    def start(self, reshard: Reshard, now: float) -> None:
        """Run ``reshard``; ``InvalidRequest`` if one is running already."""
        if self.busy:
            raise InvalidRequest("a reshard is already running; wait for it (zkv status)")
        self.reshard = reshard
        self.drive(now)

    def wake_at(self) -> float:
        """When the reshard's next step is due if nothing else wakes the broker before
        (``inf``: no step waits on the clock)."""
        if not self.busy or self.reshard is None:
            return math.inf
        return self.reshard.wake_at()

    def describe(self) -> dict[str, Any] | None:
        """For status: the reshard's progress and how many requests wait."""
        if self.reshard is None:
            return None
        return {**self.reshard.describe(), "held": len(self._held)}

    # ------------------------------------------------------------------ holding

    def holds(self, request: Request, key: bytes) -> bool:
        """Whether ``request`` (decoded, but for a single-key one whose ``key`` is given)
        touches a slot being switched: then it must wait (``hold``)."""
        if not self.holding:
            return False
        op = request.op
        if op in protocol.SINGLE_KEY_OPS:
            return slot_of(key, self.slots) in self.holding
        if op in (Op.COUNT, Op.CLEAR, Op.KEYS):
            return True  # they cover every slot
        if op in (Op.MGET, Op.MPUT, Op.BATCH):
            body = request.args[0]
            keys = body if op is Op.MGET else [entry[0 if op is Op.MPUT else 1] for entry in body]
            return any(slot_of(k, self.slots) in self.holding for k in keys)
        return False

    def holds_key(self, key: bytes) -> bool:
        """Whether a single-key request on ``key`` must wait for a switch to end."""
        return slot_of(key, self.slots) in self.holding

    def hold(self, frames: list[bytes], user: str) -> None:
        """Keep a client message (with its identity frame) until the switch ends; refuse it
        with a retryable error if too many wait."""
        if len(self._held) >= MAX_HELD:
            raise Unavailable("slots are moving and too many requests wait; try again")
        self._held.append((frames, user))

    def _release(self, slots: tuple[int, ...]) -> None:
        """The switch of ``slots`` ended: every held message is handled again (one that
        still touches a held slot is held again)."""
        self.holding.difference_update(slots)
        waiting, self._held = self._held, []
        for frames, user in waiting:
            self._redispatch(frames, user)

    # ------------------------------------------------------------------ driving

    def drive(self, now: float) -> None:
        """Send the reshard's next step if it has one; act on its events."""
        reshard = self.reshard
        if reshard is None:
            return
        gone = self._out is not None and self._primary_of(self._out[0]) != self._out[1]
        if self._deadline is not None and (now >= self._deadline or gone):
            self._deadline, self._out = None, None
            why = Unavailable("the primary it went to is gone") if gone else Timeout("no answer")
            self._events(reshard.answered(reshard.step_id, why, now), now)
        self._events(reshard.expire(now), now)
        for _ in range(100):  # events may unblock the next step at once
            step, events = reshard.step(now)
            self._events(events, now)
            self._flush_record()
            if step is None:
                if events:  # a commit saved, a move begun: the next step may be ready now
                    continue
                return
            self._deadline = now + STEP_TIMEOUT_S
            sent_to = self._send(step.shard, _frames(step, reshard.step_id))
            self._out = None if sent_to is None else (step.shard, sent_to)
            if sent_to is None:
                self._deadline = None
                unavailable = Unavailable(f"shard {step.shard} has no live primary")
                self._events(reshard.answered(reshard.step_id, unavailable, now), now)
                return  # the reshard waits before trying again
            return

    def answered(self, envelope: bytes, reply: list[bytes], now: float) -> None:
        """A node answered a step (``envelope`` as sent)."""
        reshard = self.reshard
        if reshard is None or len(envelope) != MOVE_ENVELOPE.size:
            return
        _, step_id = MOVE_ENVELOPE.unpack(envelope)
        result: Any
        try:
            _seq, result = protocol.decode_reply(reply)
        except ZkvError as exc:
            result = exc
        if step_id == reshard.step_id:
            self._deadline, self._out = None, None
        self._events(reshard.answered(step_id, result, now), now)
        self.drive(now)

    def _events(self, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, Hold):
                self.holding.update(event.slots)
            elif isinstance(event, Release):
                self._release(event.slots)
            elif isinstance(event, Begin):
                self._to_record = {
                    "slots": list(event.slots),
                    "from": event.source,
                    "to": event.target,
                    "queue": [[list(s), src, dst] for s, src, dst in event.queue],
                }
            elif isinstance(event, End):
                self._to_record = None
            elif isinstance(event, Commit):
                assert self.reshard is not None
                ok = self._reassign(event.slots, event.target)
                self._events(self.reshard.committed(ok, now), now)

    def _flush_record(self) -> None:
        if self._to_record is not _UNCHANGED:
            move, self._to_record = self._to_record, _UNCHANGED
            self._record(move)  # type: ignore[arg-type]


_UNCHANGED: Final = object()


def is_move_envelope(envelope: bytes) -> bool:
    """Whether a node's reply answers a move step."""
    return envelope[:1] == _MOVE


def _frames(step: Step, step_id: int) -> list[bytes]:
    request = Request(
        step.op,
        b"",
        step.args,
        MOVER_ID,
        step_id,
        Consistency.STRONG,  # an IMPORT is acknowledged once the target's replicas have it
        int(STEP_TIMEOUT_S * 1000),
    )
    return [MOVE_ENVELOPE.pack(_MOVE, step_id), *protocol.encode_request(request)]
