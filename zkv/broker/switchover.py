"""Switch-over: moving a shard's primary on purpose, without losing a write.

Two causes: an operator's ``zkv failover SHARD [--to NODE]``, and a primary that cannot log
handing over to an in-sync replica that can. Either way the broker stops routing the
shard's writes (``Membership.switching``: clients retry meanwhile), waits until the target
has reported every record the old primary reported after the switch began, and then
promotes it; or gives up at the deadline (or when the target goes), and the old primary
stays.

Pure: the clock is passed in, membership is read, and ``advance`` returns the switches that
ended for the broker to carry out (promote, answer). A FAILOVER request is identified by
its request id (client id + sequence number): a resend joins the switch in progress, and
after it ended gets the same answer (``outcome``), so a client's retry never reads as a
second, conflicting request.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from zkv.broker.membership import Member, Membership
from zkv.errors import InvalidRequest, Timeout, Unavailable, ZkvError
from zkv.protocol import NodeState

__all__ = ["OUTCOMES_KEPT", "Switch", "Switchboard"]

log = logging.getLogger(__name__)

#: Answers of finished requested switch-overs kept for resent FAILOVER requests.
OUTCOMES_KEPT: Final = 1024


@dataclass(slots=True)
class Switch:
    """One switch-over in progress."""

    shard: str
    old: Member
    target: Member
    started: float
    deadline: float
    why: str
    client: bytes | None = None  # None: the broker's own (a primary that cannot log)
    rid: bytes = b""  # the request id of a requested one
    seq: int = 0

    @property
    def caught_up(self) -> bool:
        """Whether the target reported every record the old primary reported since."""
        old, target = self.old, self.target
        return (
            old.last_seen > self.started
            and target.last_seen > old.last_seen
            and old.info is not None
            and target.info is not None
            and target.info.seq >= old.info.seq
        )


class Switchboard:
    """The shards being switched, and the answers of the switches that ended."""

    def __init__(self, membership: Membership, heartbeat_interval_s: float) -> None:
        self.membership = membership
        self.interval_s = heartbeat_interval_s
        self.switches: dict[str, Switch] = {}
        self._outcomes: OrderedDict[bytes, list[bytes]] = OrderedDict()

    # ------------------------------------------------------------------ requests

    def outcome(self, rid: bytes) -> list[bytes] | None:
        """The answer already given to the request ``rid``, if it ended."""
        return self._outcomes.get(rid)

    def join(self, rid: bytes, client: bytes) -> bool:
        """A resend of a request whose switch is in progress: answer it at ``client``."""
        for switch in self.switches.values():
            if switch.rid == rid:
                switch.client = client
                return True
        return False

    def request(
        self,
        shard: str,
        target_name: str | None,
        budget_s: float,
        now: float,
        *,
        client: bytes,
        rid: bytes,
        seq: int,
    ) -> Switch:
        """Begin the switch a client asked for; raises the error that answers it instead."""
        membership = self.membership
        if shard not in membership.shards:
            raise InvalidRequest(f"no shard named {shard!r}")
        if shard in membership.switching:
            raise InvalidRequest(f"shard {shard} is already switching")
        old = membership.primary(shard)
        if old is None or old.info is None:
            raise Unavailable(f"shard {shard} has no live primary to switch from")
        target: Member | None
        if target_name is None:
            target = membership.best_in_sync(shard, exclude=old)
            if target is None:
                raise Unavailable(f"shard {shard} has no in-sync replica to switch to")
        else:
            target = membership.members.get(target_name)
            if target is None or target.shard != shard:
                raise InvalidRequest(f"{target_name!r} is not a node of shard {shard}")
            if target is old:
                raise InvalidRequest(f"{target_name} is already the primary of {shard}")
            if not target.alive or target.info is None or target.info.state != NodeState.FOLLOWING:
                raise Unavailable(f"{target_name} is not a live, following replica")
        return self._begin(
            Switch(shard, old, target, now, now, "requested", client=client, rid=rid, seq=seq),
            budget_s,
        )

    def hand_over(self, shard: str, now: float, budget_s: float, room_bytes: int) -> Switch | None:
        """If ``shard``'s primary cannot log, begin a switch to an in-sync replica that can:
        one that reports its log writable with at least ``room_bytes`` free (a replica on the
        same full disk would only fail in turn)."""
        old = self.membership.primary(shard)
        if old is None or old.info is None or old.info.storage == "ok" or shard in self.switches:
            return None
        able = [
            m
            for name in self.membership.in_sync[shard]
            if (m := self.membership.members[name]) is not old
            and m.usable
            and m.info is not None
            and m.info.state == NodeState.FOLLOWING
            and m.info.storage == "ok"
            and m.info.free_bytes >= room_bytes
        ]
        target = max(able, key=lambda m: m.seq, default=None)
        if target is None:
            return None
        why = f"{old.name} cannot log ({old.info.storage}: {old.info.storage_error})"
        return self._begin(Switch(shard, old, target, now, now, why), budget_s)

    def _begin(self, switch: Switch, budget_s: float) -> Switch:
        # answer a margin before the client's own timeout runs out, whatever happens
        margin_s = min(budget_s / 2, 1.0 + self.interval_s)
        switch.deadline = switch.started + budget_s - margin_s
        self.membership.switching.add(switch.shard)  # writes now get Unavailable: retried
        self.switches[switch.shard] = switch
        log.info(
            "switching the primary of shard %s from %s to %s within %.1f s: %s",
            switch.shard,
            switch.old.name,
            switch.target.name,
            budget_s - margin_s,
            switch.why,
        )
        return switch

    # ------------------------------------------------------------------ progress

    def advance(self, now: float) -> list[tuple[Switch, ZkvError | None]]:
        """The switches that ended: ``(switch, None)`` to promote its target now, or
        ``(switch, error)`` if it was abandoned (the old primary stays)."""
        ended: list[tuple[Switch, ZkvError | None]] = []
        for shard, switch in list(self.switches.items()):
            caught_up = switch.caught_up
            if not caught_up and now <= switch.deadline and switch.target.alive:
                continue
            del self.switches[shard]
            self.membership.switching.discard(shard)
            if caught_up:
                ended.append((switch, None))
                continue
            error = Timeout(
                f"{switch.target.name} did not catch up with {switch.old.name} in time; "
                f"{switch.old.name} stays the primary of {shard}"
            )
            log.warning("switch-over of shard %s abandoned: %s", shard, error)
            ended.append((switch, error))
        return ended

    def answered(self, switch: Switch, reply: list[bytes]) -> None:
        """Keep the answer to a requested switch for resends of its request."""
        if switch.client is None:
            return
        self._outcomes[switch.rid] = reply
        while len(self._outcomes) > OUTCOMES_KEPT:
            self._outcomes.popitem(last=False)
