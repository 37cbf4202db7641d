"""The broker's decisions about roles: elections, promotions, switch-overs, and the
heartbeats that carry them (with several brokers, the primary's lease) to the nodes.

A part of ``Broker`` of its own (a mixin): what is decided is in ``membership`` (who is
alive, in sync, the best successor), ``switchover`` (each step of a planned switch-over)
and ``routing`` (the saved table); this is the glue that acts on those decisions and tells
the nodes. ``Broker`` provides the attributes and the two send methods declared below.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import TYPE_CHECKING, Any, Final

from zkv import protocol
from zkv.broker.membership import Member, Membership
from zkv.broker.routing import RoutingTable
from zkv.broker.shared import SharedRouting
from zkv.broker.switchover import Switchboard
from zkv.config import ClusterConfig
from zkv.errors import ServerError
from zkv.protocol import Request, Role
from zkv.runtime import Throttle
from zkv.storage.persistence import RESUME_HEADROOM_BYTES

__all__ = ["LEASE_MARGIN", "RoleDecisions"]

log = logging.getLogger(__name__)

#: A controller promotes only this many primary leases after it last granted one to the
#: down primary: the margin covers a heartbeat still in flight when the lease was counted.
LEASE_MARGIN: Final = 1.5
_REQUEST_SEQ: Final = struct.Struct(">Q")


class RoleDecisions:
    """Elections, promotions and switch-overs of ``Broker`` (see the module docstring)."""

    config: ClusterConfig
    membership: Membership
    routing: RoutingTable
    switchboard: Switchboard
    shared: SharedRouting | None
    lease_s: float
    errors: int
    failovers: int
    _controller_since: float
    _bad: Throttle

    if TYPE_CHECKING:

        @property
        def controller(self) -> bool: ...

        def _to_node(self, member: Member, frames: list[bytes]) -> bool: ...

        def _reply(self, client: bytes, frames: list[bytes]) -> None: ...

    def _beat(self, member: Member) -> None:
        """Send ``member`` its heartbeat: its role and epoch, and where its primary is.

        A primary is also told the shard's in-sync set, so that after a restart it waits for
        those replicas before acknowledging strong writes (the set survives the restart). A
        replica is told whether its primary serves (a node with damaged data discards it
        only then). Nothing is sent for a shard with no primary elected yet.
        """
        shard = member.shard
        name = self.routing.primaries[shard]
        if name is None:
            return
        epoch = self.routing.epochs[shard]
        primary = self.membership.members[name]
        body: dict[str, Any] = {
            "epoch": epoch,
            "role": Role.PRIMARY
            if primary is member and shard not in self.membership.switching
            else Role.REPLICA,
        }
        if primary is member:
            body["in_sync"] = self.membership.in_sync[shard]
        elif primary.alive and primary.info is not None:
            body["primary"] = {
                "name": primary.name,
                "publish": primary.info.publish,
                "sync": primary.info.sync,
                "serving": self.membership.primary(shard) is primary,
            }
        if self.shared is not None and primary is member and self.controller:
            # several brokers: the primary serves under a lease only the controller grants
            body["lease_s"] = self.lease_s
            if member.info is not None and member.info.sent_at > 0:
                body["lease_from"] = member.info.sent_at  # the node's clock: see Node
            member.lease_granted = time.monotonic()
        self._to_node(
            member, [protocol.node_header(protocol.BROKER_HEARTBEAT, epoch), protocol.packb(body)]
        )

    def _lease_waited(self, shard: str, now: float) -> bool:
        """Whether a promotion in ``shard`` may happen now: with several brokers, once the
        lease the down primary may still hold has run out, whichever controller granted it
        (a new controller waits out one from its predecessor). Always, with one broker."""
        if self.shared is None:
            return True
        name = self.routing.primaries[shard]
        granted = self.membership.members[name].lease_granted if name else -1e18
        last = max(granted, self._controller_since)
        return now >= last + LEASE_MARGIN * self.lease_s

    def _start_switch(self, client: bytes, request: Request) -> None:
        """A FAILOVER request (``zkv failover``): answered once its switch-over ends.

        Idempotent: a resend of the same request (same client id and sequence number) joins
        the switch in progress, or gets the answer of the one that ended. The request's own
        timeout bounds the switch, so the broker's answer reaches the client before it gives
        up (see ``switchover``).
        """
        rid = request.client_id + _REQUEST_SEQ.pack(request.seq)
        outcome = self.switchboard.outcome(rid)
        if outcome is not None:
            self._reply(client, outcome)
            return
        if self.switchboard.join(rid, client):
            return
        shard, target_name = request.args
        budget_s = request.timeout_ms / 1000 or protocol.FAILOVER_TIMEOUT_S
        self.switchboard.request(
            shard, target_name, budget_s, time.monotonic(), client=client, rid=rid, seq=request.seq
        )

    def _advance_switches(self, now: float) -> None:
        """Promote the targets of the switches that caught up; answer the clients."""
        for switch, error in self.switchboard.advance(now):
            if error is None and self._promote(
                switch.shard, switch.target, f"switch-over ({switch.why})"
            ):
                result = {
                    "shard": switch.shard,
                    "primary": switch.target.name,
                    "epoch": self.routing.epochs[switch.shard],
                }
                reply = protocol.encode_reply(switch.seq, result)
            else:
                self.errors += 1
                error = error or ServerError(
                    f"the broker could not save its routing table; {switch.old.name} stays "
                    f"the primary of {switch.shard}"
                )
                reply = protocol.encode_error(switch.seq, error)
            if switch.client is not None:
                self.switchboard.answered(switch, reply)
                self._reply(switch.client, reply)

    def _hand_over_if_it_cannot_log(self, shard: str) -> None:
        self.switchboard.hand_over(
            shard,
            time.monotonic(),
            protocol.FAILOVER_TIMEOUT_S,
            self.config.storage.min_free_bytes + RESUME_HEADROOM_BYTES,
        )

    def _elect(self, shard: str, member: Member) -> None:
        """Name the first primary of a shard the routing table has none for."""
        epoch = max(self.routing.epochs[shard], self.membership.reported_epoch(shard)) + 1
        try:
            self.routing.elect(shard, member.name, epoch)
        except OSError as exc:
            self._bad.warning("cannot save the routing table, no election yet: %s", exc)
            return
        log.warning(
            "elected %s primary of shard %s at epoch %d: the highest sequence (%d) of the "
            "nodes that reported (no routing table)",
            member.name,
            shard,
            epoch,
            member.seq,
        )
        self._beat_shard(shard)

    def _beat_shard(self, shard: str) -> None:
        for name in self.membership.shards[shard]:
            member = self.membership.members[name]
            if member.alive:
                self._beat(member)

    def _promote(self, shard: str, member: Member, why: str) -> bool:
        """Make ``member`` the primary of ``shard``; False if the decision could not be saved."""
        old = self.routing.primaries[shard]
        try:
            epoch = self.routing.promote(shard, member.name)
        except OSError as exc:
            self._bad.warning(
                "cannot save the routing table, %s not promoted (%s): %s", member.name, why, exc
            )
            return False
        self.membership.promoted(shard)
        self.failovers += 1
        log.warning(
            "promoted %s to primary of shard %s at epoch %d (seq %s): %s (was %s)",
            member.name,
            shard,
            epoch,
            member.info.seq if member.info else "?",
            why,
            old,
        )
        self._beat_shard(shard)
        return True
