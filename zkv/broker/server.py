"""Broker: the one address clients know; routes each request to the node that owns its key.

Two ROUTER sockets: ``clients`` (client DEALERs) and ``nodes`` (node DEALERs, identity
``node:<name>``). With a ``security`` section both run CURVE (``zkv.security.Keyring``): only
listed client keys reach ``clients``, only node keys reach ``nodes``, and a node is known by
the name of the key it proved, not by an identity it chose.

A single-key request is routed by the key in its head alone (``slot_of(key) -> shard -> primary``)
and forwarded untouched, wrapped in an envelope naming the client; the node's reply is
unwrapped and sent back. The broker never decodes
a single-key request's body, and never decodes a value. Multi-key and cluster-wide
requests are decoded (values stay opaque bytes), split per shard by ``fanout``, and their
answers gathered into one reply. A request for a shard with no live node is answered
``Unavailable`` at once.

The loop drains every ready message on each wake-up; nothing a peer sends can stop it: a
malformed message is answered with an error (or dropped when it cannot be answered) and
logged.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import zmq

from zkv import protocol
from zkv.access import Grant
from zkv.broker import fanout, report
from zkv.broker.gate import Gate
from zkv.broker.inflight import Inflight
from zkv.broker.membership import Member, Membership
from zkv.broker.moving import SlotMoves, is_move_envelope
from zkv.broker.reshard import Reshard, plan
from zkv.broker.roles import RoleDecisions
from zkv.broker.routing import RoutingTable
from zkv.broker.shared import SharedRouting
from zkv.broker.switchover import Switchboard
from zkv.broker.topology import check_topology
from zkv.broker.watching import watch_request
from zkv.config import ClusterConfig, load_config
from zkv.errors import (
    ConfigError,
    ErrorCode,
    PermissionDenied,
    RemoteProtocolError,
    ServerError,
    TooManyRequests,
    Unavailable,
    ZkvError,
)
from zkv.protocol import Consistency, Op, Request, Role
from zkv.runtime import (
    MAX_FRAMES,
    Throttle,
    Waiter,
    bind_endpoint,
    recv_frames,
    recv_frames_with_user,
    send_frames,
    write_ready_file,
)
from zkv.slots import SlotMap
from zkv.storage.lock import lock_folder

__all__ = ["Broker"]

log = logging.getLogger(__name__)

DRAIN_MAX: Final = 1000
#: The longest a fan-out waits for its parts, whatever timeout the client set (seconds).
MAX_GATHER_S: Final = 60.0
_DIRECT: Final = b"C"
_GATHER: Final = b"F"
_GATHER_ENVELOPE: Final = struct.Struct(">cQI")
_REQUEST_SEQ: Final = struct.Struct(">Q")
_NODE_REQUEST: Final = protocol.NODE_REQUEST
_NODE_REPLY: Final = protocol.NODE_REPLY
#: Plain ints, for the per-request checks of the routing fast path.
_SINGLE_KEY_CODES: Final = frozenset(int(op) for op in protocol.SINGLE_KEY_OPS)
_WRITE_CODES: Final = frozenset(int(op) for op in protocol.WRITE_OPS)
_CONSISTENCY_CODES: Final = frozenset(protocol.CONSISTENCY_BY_CODE)
_EVENTUAL: Final = protocol.CONSISTENCY_CODES[Consistency.EVENTUAL]
_KEY_AT: Final = protocol.REQUEST_HEADER.size


class Broker(RoleDecisions):
    """Routes requests between clients and shard nodes until ``stop()``."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        name: str | None = None,
        ready_file: Path | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.config = config
        brokers = {b.name: b for b in config.broker_list()}
        #: This broker's name (``broker`` when it is the only one) and endpoints.
        self.name = name or next(iter(brokers))
        if self.name not in brokers:
            raise ConfigError(
                f"{config.path or 'config'}: no broker named {self.name!r} "
                f"(brokers: {', '.join(brokers)})"
            )
        self.endpoints = brokers[self.name]
        self.ready_file = ready_file
        self.context = context or zmq.Context.instance()
        #: With ``coordination``: the routing state shared with the other brokers in etcd,
        #: and this broker's controller lease (None: one broker, its routing file).
        self.shared = SharedRouting(config, self.name) if config.coordination else None
        routing_file = None if self.shared else config.data_dir(self.name) / "routing.json"
        self.routing = RoutingTable(config, routing_file, backing=self.shared)
        self._was_controller = False
        #: With several brokers: how long a primary's lease runs from the controller's
        #: heartbeat (the nodes' liveness expiry), and when this broker became controller.
        self.lease_s = config.heartbeat.expiry_s
        self._controller_since = 0.0
        self.membership = Membership(config, self.routing, time.monotonic())
        self.requests = 0
        self.errors = 0
        self.failovers = 0
        self.switchboard = Switchboard(self.membership, config.heartbeat.interval_s)
        self._gathers = fanout.Gathers()
        #: Each client's requests forwarded and not answered yet (limits.max_inflight_per_client).
        self._inflight = Inflight(config.limits.max_inflight_per_client)
        self._stopping = False
        #: Who each message comes from and what they may do (CURVE keys, client grants).
        self.gate = Gate(config, self.context)
        self._reload = False
        self._waiter: Waiter | None = None
        #: A running reshard, and the requests held while slots switch shards.
        self.moves = SlotMoves(
            config.slots,
            self._send_move,
            self._reassign,
            self._on_client,
            self._record_move,
            self._serving_primary,
        )
        #: Warnings any peer can trigger at will are throttled.
        self._bad = Throttle(log)

    def stop(self) -> None:
        """Ask the loop to finish its turn and exit (safe from a signal handler)."""
        self._stopping = True
        waiter = self._waiter
        if waiter is not None:
            waiter.wake()

    @property
    def slot_map(self) -> SlotMap:
        """Which shard owns each slot, now (the routing table's, replaced as slots move)."""
        return self.routing.slot_map

    def request_reload(self) -> None:
        """Ask the loop to read the config file again at its next turn (safe from a signal
        handler: SIGHUP): see ``_reload_config``."""
        self._reload = True
        waiter = self._waiter
        if waiter is not None:
            waiter.wake()

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Lock the broker's data folder, bind both sockets and serve until ``stop()``.

        Raises ``FolderLocked`` if another process holds ``<storage.dir>/<name>/``.
        """
        with lock_folder(self.config.data_dir(self.name)):
            self.routing.load()
            if self.shared is None:
                self._resume_move()
                self._run_locked()
                return
            self.shared.start()
            try:
                self._run_locked()
            finally:
                self.shared.stop()

    def _run_locked(self) -> None:
        self.gate.start()
        try:
            self._bind_and_serve()
        finally:
            self.gate.stop()

    def _bind_and_serve(self) -> None:
        limits = self.config.limits
        self.clients = self.context.socket(zmq.ROUTER)
        self.nodes = self.context.socket(zmq.ROUTER)
        for sock in (self.clients, self.nodes):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, protocol.max_request_frame_bytes(limits))
            # a peer that sends without reading cannot make the broker queue without bound
            sock.setsockopt(zmq.SNDHWM, limits.hwm)
            sock.setsockopt(zmq.RCVHWM, limits.hwm)
        self.nodes.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # nodes connect a ROUTER to every broker and address each by this name
        self.nodes.setsockopt(zmq.ROUTING_ID, f"broker:{self.name}".encode())
        self.gate.secure_sockets(self.clients, self.nodes)
        try:
            self.clients.bind(bind_endpoint(self.endpoints.clients))
            self.nodes.bind(bind_endpoint(self.endpoints.nodes))
            clients_at = self.clients.getsockopt_string(zmq.LAST_ENDPOINT)
            nodes_at = self.nodes.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info(
                "broker serving clients at %s, nodes at %s (%s)",
                clients_at,
                nodes_at,
                "CURVE, keys from " + str(self.config.security.keys)
                if self.config.security is not None
                else "not encrypted",
            )
            if self.ready_file is not None:
                write_ready_file(self.ready_file, {"clients": clients_at, "nodes": nodes_at})
            self._loop()
        finally:
            self.clients.close(linger=0)
            self.nodes.close(linger=0)
        log.info("broker stopped")

    def _loop(self) -> None:
        interval = self.config.heartbeat.interval_s
        waiter = self._waiter = Waiter([self.clients, self.nodes])
        next_tick = time.monotonic() + interval
        try:
            while not self._stopping:
                wake = min(next_tick, self.moves.wake_at())  # a paced slot move's next step
                ready = waiter.wait(math.ceil(max(0.0, wake - time.monotonic()) * 1000))
                if self._reload:
                    self._reload = False
                    self._reload_config()
                if self.nodes in ready:
                    self._drain(self.nodes, self._on_node)
                if self.clients in ready:
                    self._drain(self.clients, self._on_client)
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + interval
                elif now >= self.moves.wake_at():
                    self.moves.drive(now)
        finally:
            self._waiter = None
            waiter.close()

    def _drain(self, sock: zmq.Socket[bytes], handle: Any) -> None:
        """Handle every message ready on ``sock`` (up to ``DRAIN_MAX``, then the waiter is
        told to look again): ``handle(frames, user)``, ``user`` being the key the message
        came with (CURVE; else empty)."""
        secure = self.gate.secure
        for _ in range(DRAIN_MAX):
            try:
                if secure:
                    frames, user = recv_frames_with_user(sock)
                else:
                    frames, user = recv_frames(sock), ""
            except zmq.Again:
                return
            if frames is None:
                self._bad.warning("dropped a message of more than %d frames", MAX_FRAMES)
                continue
            try:
                handle(frames, user)
            except ZkvError as exc:
                self._bad.warning("dropped a malformed message: %s", exc)
            except Exception:
                log.exception("failed to handle a message of %d frames", len(frames))
        if self._waiter is not None:
            self._waiter.check(sock)

    def _reload_config(self) -> None:
        """Read the config file again (SIGHUP): its ``security`` section (keys, clients,
        roles) and its topology (shards and nodes added or dropped). All or nothing: a file
        that cannot be used is logged and the previous settings stay. A dropped shard must
        own no slots (move them away first: ``zkv reshard --from SHARD``) and a dropped node
        must not be a shard's primary (``zkv failover`` first); other sections need a
        restart."""
        path = self.config.path
        if path is None:
            log.warning("SIGHUP: no config file to reload")
            return
        try:
            new = load_config(path)
            check_topology(self.config, new, self.slot_map, self.routing.primaries)
            self.gate.reload(new)
        except ZkvError as exc:
            log.error("SIGHUP: kept the previous settings: %s", exc)
            return
        before = {n.name for n in self.config.nodes()}
        after = {n.name for n in new.nodes()}
        shards = {shard: [n.name for n in nodes] for shard, nodes in new.shards.items()}
        try:
            # several brokers: the controller saves the topology, the others read the file too
            self.routing.set_shards(shards, save=self.controller)
        except (OSError, ValueError) as exc:
            log.error("SIGHUP: kept the previous topology: %s", exc)
            return
        self.membership.set_shards(shards)
        unchanged = replace(new, security=self.config.security, shards=self.config.shards)
        if unchanged != replace(self.config, path=new.path):
            log.warning(
                "SIGHUP: only security and shards are reloaded; other changes need a restart"
            )
        self.config = replace(self.config, security=new.security, shards=new.shards)
        security = self.config.security
        log.info(
            "reloaded %s: %d shards, %d nodes (%d joined, %d left), %d clients admitted",
            path,
            len(shards),
            len(after),
            len(after - before),
            len(before - after),
            0 if security is None else len(security.clients),
        )

    @property
    def controller(self) -> bool:
        """Whether this broker makes the decisions: the only broker, or the one holding the
        controller lease of several."""
        return self.shared is None or self.shared.is_controller()

    def _take_shared(self) -> None:
        """Apply a newer shared routing document (decided by the controller, maybe this
        broker), and take up the controller's duties when the lease became ours."""
        shared = self.shared
        if shared is None:
            return
        doc = shared.take_update()
        if doc is not None:
            before = dict(self.routing.primaries)
            try:
                self.routing.apply(doc, str(shared))
            except ZkvError as exc:
                log.error("could not take the shared routing state: %s", exc)
            for shard, primary in self.routing.primaries.items():
                if before.get(shard) != primary:
                    log.info(
                        "shard %s: %s is the primary at epoch %d (from %s)",
                        shard,
                        primary,
                        self.routing.epochs[shard],
                        shared,
                    )
                    self.membership.promoted(shard)
                    self._beat_shard(shard)
        controller = shared.is_controller()
        if controller and not self._was_controller:
            # a lease the previous controller granted may still run: promotions wait it out
            self._controller_since = time.monotonic()
            self._resume_move()  # a move the previous controller left in progress
        self._was_controller = controller

    def _tick(self, now: float) -> None:
        self.membership.expire(now)
        self._take_shared()
        if not self.controller:  # another broker decides: route, beat and gather only
            for member in self.membership.alive():
                self._beat(member)
            for gather, error in self._gathers.expire(now):
                self._fail(gather.client, gather.request.seq, error)
            self._inflight.expire(now)
            return
        self._advance_switches(now)
        for shard in self.config.shards:
            elected = self.membership.candidate(shard, now)
            if elected is not None:
                self._elect(shard, elected)
            successor = self.membership.successor(shard)
            if successor is not None and self._lease_waited(shard, now):
                self._promote(shard, successor, "its primary is down")
            self._hand_over_if_it_cannot_log(shard)
        for member in self.membership.alive():
            self._beat(member)
        for gather, error in self._gathers.expire(now):
            self._fail(gather.client, gather.request.seq, error)
        forgotten = self._inflight.expire(now)
        if forgotten:
            log.debug("forgot %d requests never answered", forgotten)
        self.moves.drive(now)

    # ------------------------------------------------------------------ moving slots

    def _start_reshard(self, client: bytes, request: Request) -> None:
        """Plan the moves of a reshard and start them; the reply says what was planned
        (progress: ``status()["reshard"]``)."""
        source, target, count = request.args
        moves = plan(self.slot_map, list(self.config.shards), source, target, count)
        slots = sum(len(m.slots) for m in moves)
        if moves:
            self.moves.start(Reshard(moves), time.monotonic())
            log.info("reshard: %d slots to move in %d moves", slots, len(moves))
        self._reply(
            client, protocol.encode_reply(request.seq, {"moves": len(moves), "slots": slots})
        )

    def _resume_move(self) -> None:
        """The reshard the previous broker left in progress: its move in flight finished if
        the saved map gives its slots to the target already, else rolled back and started
        again; then the moves it had queued, less the slots already at their target."""
        move = self.routing.move
        if move is None:
            return
        committed = all(self.slot_map.owner(s) == move["to"] for s in move["slots"])
        queue = [
            ([s for s in slots if self.slot_map.owner(s) == src], src, dst)
            for slots, src, dst in move.get("queue") or []
            if src in self.config.shards and dst in self.config.shards
        ]
        log.warning(
            "a reshard was in progress: %s its move from %s to %s, then %d more moves",
            "finishing" if committed else "rolling back and redoing",
            move["from"],
            move["to"],
            sum(1 for slots, _, _ in queue if slots),
        )
        reshard = Reshard.resume(move["slots"], move["from"], move["to"], committed, queue)
        self.moves.start(reshard, time.monotonic())

    def _record_move(self, move: dict[str, Any] | None) -> None:
        try:
            self.routing.record_move(move)
        except OSError as exc:  # a broker crash now would leave the move to an operator
            log.error("could not save the slot move in progress: %s", exc)

    def _send_move(self, shard: str, frames: list[bytes]) -> str | None:
        member = self.membership.primary(shard)
        if member is None:
            return None
        envelope, head, body = frames
        first = protocol.node_frame(
            protocol.NODE_REQUEST, self.routing.epochs[shard], envelope, head
        )
        return member.name if self._to_node(member, [first, body]) else None

    def _serving_primary(self, shard: str) -> str | None:
        member = self.membership.primary(shard)
        return None if member is None else member.name

    def _reassign(self, slots: tuple[int, ...], target: str) -> bool:
        try:
            version = self.routing.reassign(list(slots), target)
        except OSError as exc:
            log.error("could not save the slot map (%s); the move is rolled back", exc)
            return False
        log.info("slot map version %d: %d slots to %s", version, len(slots), target)
        return True

    # ------------------------------------------------------------------ clients

    def _on_client(self, frames: list[bytes], user: str = "") -> None:
        """One client message ``[identity, head, body]``. A single-key request is routed
        from its head, read in place (``protocol.peek_request``): its body goes to the node
        untouched. The rest are decoded whole."""
        self.requests += 1
        client = frames[0]
        if len(frames) != 3:
            self._fail(
                client,
                0,
                RemoteProtocolError(
                    f"a request has 2 frames after the identity, got {len(frames) - 1}"
                ),
            )
            return
        seq = 0
        try:
            head = frames[1]
            op_code, consistency, seq, timeout_ms = protocol.peek_request(head)
            if op_code in _SINGLE_KEY_CODES and consistency in _CONSISTENCY_CODES:
                key = head[_KEY_AT:]
                if self.gate.secure:
                    key_grant = self.gate.grant_of(user)
                    if key_grant is not None:
                        key_grant.check_op(protocol.Op(op_code), key)
                if self.moves.holding and self.moves.holds_key(key):
                    self.moves.hold(frames, user)  # its slot is switching shards
                    return
                self._admit(client, seq, timeout_ms, op_code)
                self._route(client, op_code, consistency, key, frames)
                return
            request = protocol.decode_request_header(head)
            op = request.op
            if op is Op.WATCH:
                watch_grant = self.gate.grant_of(user) if self.gate.secure else None
                self._watch(client, protocol.decode_request(frames[1:]), watch_grant)
                return
            if op not in fanout.FANOUT_OPS and op not in (Op.STATUS, Op.FAILOVER, Op.RESHARD):
                raise RemoteProtocolError(f"unknown operation {op.name}")
            full = protocol.decode_request(frames[1:])
            grant = self.gate.grant_of(user) if self.gate.secure else None
            if grant is not None:  # every key and operation inside it, before any is applied
                grant.check(full)
            if op in fanout.FANOUT_OPS:
                if self.moves.holding and self.moves.holds(full, b""):
                    self.moves.hold(frames, user)
                    return
                self._admit(client, seq, request.timeout_ms, op)
                self._fan_out(client, full)
            elif op is Op.STATUS:
                self._reply(client, protocol.encode_reply(request.seq, self.status()))
            elif not self.controller:  # a decision: only the controller makes it
                raise Unavailable(
                    f"{op.name}: broker {self.name} is not the controller (it is "
                    f"{self.shared.controller if self.shared else None}); try again"
                )
            elif op is Op.RESHARD:
                self._start_reshard(client, full)
            else:
                self._start_switch(client, full)
        except PermissionDenied as exc:
            self._bad.warning("refused a request: %s", exc)
            self._fail(client, seq, exc)
        except _Refused:
            pass
        except ZkvError as exc:
            self._fail(client, seq if exc.seq is None else exc.seq, exc)
        except Exception as exc:
            log.exception("failed to handle a client request")
            self._fail(client, seq, ServerError(f"broker error: {type(exc).__name__}: {exc}"))

    def _admit(self, client: bytes, seq: int, timeout_ms: int, op_code: int) -> None:
        """Count request ``seq`` against its client's ``limits.max_inflight_per_client``.

        Past the limit it is answered ``TooManyRequests`` at once and changes nothing. The
        count is released when the broker answers the request, or after its timeout (the
        node that had it may have died).
        """
        timeout_s = min(timeout_ms / 1000 or MAX_GATHER_S, MAX_GATHER_S)
        if self._inflight.acquire(client, seq, time.monotonic() + timeout_s + 1.0):
            return
        self.errors += 1
        self._bad.warning(
            "client %s has %d requests in flight; refusing more",
            client.hex()[:16],
            self._inflight.limit,
        )
        error = TooManyRequests(
            f"{Op(op_code).name}: {self._inflight.limit} requests of this client are in flight "
            "(limits.max_inflight_per_client); read their replies before sending more"
        )
        self._send_client(client, protocol.encode_error(seq, error))
        raise _Refused

    def _route(
        self, client: bytes, op_code: int, consistency: int, key: bytes, frames: list[bytes]
    ) -> None:
        """Send a single-key request ``[identity, head, body]`` to the node that serves its
        key: the shard's primary, or one of its replicas for an eventual read."""
        if len(key) > protocol.MAX_KEY_FRAME_BYTES:
            raise RemoteProtocolError(f"key of {len(key)} bytes")
        shard = self.slot_map.shard_of(key)
        if consistency == _EVENTUAL and op_code not in _WRITE_CODES:
            member = self.membership.reader(shard)
        else:
            member = self.membership.primary(shard)
        if member is None or not self._to_node(
            member,
            [
                protocol.node_frame(
                    _NODE_REQUEST, self.routing.epochs[shard], _DIRECT + client, frames[1]
                ),
                frames[2],
            ],
        ):
            raise Unavailable(
                f"{Op(op_code).name}: shard {shard} has no live node; try again once it is back"
            )

    def _watch(self, client: bytes, request: Request, grant: Grant | None) -> None:
        """Forward a WATCH to its shard's primary, narrowed to what ``grant`` may read."""
        request = watch_request(request, grant, self.config.shards)
        shard = request.args[0]
        member = self.membership.primary(shard)
        if member is None:
            raise self._unavailable(shard, request)
        self._admit(client, request.seq, request.timeout_ms, request.op)
        head, body = protocol.encode_request(request)
        epoch = self.routing.epochs[shard]
        first = protocol.node_frame(_NODE_REQUEST, epoch, _DIRECT + client, head)
        if not self._to_node(member, [first, body]):
            raise self._unavailable(shard, request)

    def _fan_out(self, client: bytes, request: Request) -> None:
        limits = self.config.limits
        if request.op in (Op.MGET, Op.MPUT, Op.BATCH):
            what = "operations" if request.op is Op.BATCH else "keys"
            protocol.check_key_count(
                request.op.name, len(request.args[0]), limits.max_keys_per_request, what
            )
        if request.op is Op.MPUT:  # refuse the whole batch before any shard stores a part
            protocol.check_items(request.args[0], limits.max_key_bytes, limits.max_value_bytes)
        slot_map = self.slot_map
        parts = fanout.plan(request, slot_map)
        members = []
        for part in parts:
            member = self._target(part.shard, request)
            if member is None:
                raise self._unavailable(part.shard, request)
            members.append(member)
        if not parts:
            self._reply(
                client,
                protocol.encode_reply(request.seq, fanout.merge(request, [], [], slot_map)),
            )
            return
        timeout_s = min(request.timeout_ms / 1000 or MAX_GATHER_S, MAX_GATHER_S)
        gid = self._gathers.start(
            client, request, parts, time.monotonic() + timeout_s + 1.0, slot_map
        )
        for index, (part, member) in enumerate(zip(parts, members, strict=True)):
            envelope = _GATHER_ENVELOPE.pack(_GATHER, gid, index)
            head, body = protocol.encode_request(part.request)
            epoch = self.routing.epochs[member.shard]
            frames = [protocol.node_frame(_NODE_REQUEST, epoch, envelope, head), body]
            if not self._to_node(member, frames):
                self._gathers.drop(gid)
                raise self._unavailable(part.shard, request)

    def _target(self, shard: str, request: Request) -> Member | None:
        """Where ``request`` goes in ``shard``: eventual reads to a replica, the rest to the
        primary."""
        if request.consistency is Consistency.EVENTUAL and request.op not in protocol.WRITE_OPS:
            return self.membership.reader(shard)
        return self.membership.primary(shard)

    @staticmethod
    def _unavailable(shard: str, request: Request) -> Unavailable:
        return Unavailable(
            f"{request.op.name}: shard {shard} has no live node; try again once it is back"
        )

    def status(self) -> dict[str, Any]:
        """The cluster as the broker sees it (the STATUS reply): ``report.cluster_status``."""
        return report.cluster_status(self)

    # ------------------------------------------------------------------ nodes

    def _on_node(self, frames: list[bytes], user: str = "") -> None:
        if self.gate.secure:
            named = self.gate.node_identity(frames[0], user)
            if named is None:
                self._bad.warning("dropped a message from a node key no longer listed")
                return
            frames[0] = named
        identity = frames[0]
        if len(frames) < 3:
            self._bad.warning("dropped a %d-frame message from %r", len(frames), identity[:32])
            return
        kind, epoch, envelope, header = protocol.split_node_frame(frames[1])
        if kind == _NODE_REPLY and len(frames) == 3:
            member = self.membership.by_identity(identity)
            if member is None or epoch != self.routing.epochs[member.shard]:
                # fencing: a node that lost its role at an older epoch (or claims one the
                # broker never gave) acknowledges nothing
                self._bad.warning("dropped a reply from %r at epoch %d", identity[:32], epoch)
                return
            reply = [header, frames[2]]
            if envelope[:1] == _DIRECT:
                self._reply(envelope[1:], reply)
            elif is_move_envelope(envelope):
                self.moves.answered(envelope, reply, time.monotonic())
            elif envelope[:1] == _GATHER and len(envelope) == _GATHER_ENVELOPE.size:
                _, gid, index = _GATHER_ENVELOPE.unpack(envelope)
                self._gathered(gid, index, reply)
            else:
                self._bad.warning("dropped a reply with a bad envelope from %r", identity[:32])
        elif kind in (protocol.NODE_READY, protocol.NODE_HEARTBEAT) and len(frames) == 3:
            info = protocol.decode_node_info(frames[2])
            if identity != f"node:{info.name}".encode():
                self._bad.warning(
                    "dropped node info for %r from identity %r", info.name, identity[:32]
                )
                return
            refused = self.membership.seen(identity, info, time.monotonic())
            if refused:
                self._bad.warning("refused node: %s", refused)
                return
            member = self.membership.members[info.name]
            disagreement = self.membership.disagreement(member)
            elected = self.membership.candidate(member.shard, time.monotonic())
            if elected is not None:  # the last of the shard's nodes reported: elect now
                self._elect(member.shard, elected)
            elif disagreement is not None:  # only the broker decides routing: fence the node
                self._bad.warning("%s; fencing it", disagreement)
                self._beat(member)
            elif kind == protocol.NODE_READY:
                self._beat(member)  # its role, without delay
            if info.storage != "ok" and info.role == Role.PRIMARY:
                self._hand_over_if_it_cannot_log(member.shard)  # at once: writes wait less
            if self.switchboard.switches:
                self._advance_switches(time.monotonic())
        else:
            self._bad.warning(
                "dropped a node message of kind %r with %d frames from %r",
                kind,
                len(frames),
                identity[:32],
            )

    def _gathered(self, gid: int, index: int, reply: list[bytes]) -> None:
        result: Any | ZkvError
        try:
            _seq, result = protocol.decode_reply(reply)
        except ZkvError as exc:
            result = exc
        done = self._gathers.answer(gid, index, result)
        if done is None:
            return  # parts pending, or a late answer for a gather that ended
        gather, outcome = done
        if isinstance(outcome, ZkvError):
            self._fail(gather.client, gather.request.seq, outcome)
        else:
            self._reply(gather.client, protocol.encode_reply(gather.request.seq, outcome))

    def _to_node(self, member: Member, frames: list[bytes]) -> bool:
        address = self.gate.node_address(member.identity)
        if address is None:
            self.membership.lost(member.name)
            return False
        if self._waiter is not None:  # a send may take the socket's wake-up signal
            self._waiter.check(self.nodes)
        try:
            send_frames(self.nodes, [address, *frames])
        except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (full)
            if exc.errno == zmq.EHOSTUNREACH:
                self.gate.forget_node(member.identity)
                self.membership.lost(member.name)
            else:
                log.warning("node %s is not keeping up; dropped a message", member.name)
            return False
        return True

    # ------------------------------------------------------------------ replies

    def _reply(self, client: bytes, frames: list[bytes]) -> None:
        """Send ``frames`` (a reply) to ``client``; the request it answers is no longer in
        flight."""
        if len(self._inflight) and len(frames[0]) == protocol.REPLY_HEADER.size:
            self._inflight.release(client, protocol.reply_seq(frames[0]))
        self._send_client(client, frames)

    def _send_client(self, client: bytes, frames: list[bytes]) -> None:
        """Send ``frames`` to ``client`` without waiting (dropped if its queue is full)."""
        try:
            send_frames(self.clients, [client, *frames])
        except zmq.ZMQError as exc:
            log.warning("could not reply to a client: %s", exc)
        if self._waiter is not None:  # a send may have taken the socket's wake-up signal
            self._waiter.check(self.clients)

    def _fail(self, client: bytes, seq: int, exc: ZkvError) -> None:
        self.errors += 1
        if exc.code in (ErrorCode.PROTOCOL, None):
            self._bad.warning("bad request from client %s: %s", client.hex()[:16], exc)
        self._reply(client, protocol.encode_error(seq, exc))


class _Refused(Exception):
    """A request already answered with an error that must not release its client's count."""
