"""Node: one shard node process, one event loop, one ``Store``.

Sockets:

- DEALER to the broker's ``nodes`` endpoint, identity ``node:<name>``: requests in, replies,
  READY and heartbeats out. Heartbeats carry the node's full ``NodeInfo``, so a restarted
  broker learns the node again from the next heartbeat.
- PUB bound at ``publish`` and ROUTER bound at ``sync``: a primary's replication stream and
  its snapshot/ack channel (``primary.py``); a replica connects a SUB and a DEALER to its
  primary's (``replica.py``), whose endpoints the broker's heartbeats carry.

The first node listed for a shard starts as its primary, the others as replicas. Requests
are applied in arrival order; each loop turn drains every ready message, logs the turn's
records in one go (group commit), publishes them, and only then replies: at once for reads
and ``eventual`` writes, once every in-sync replica has acknowledged for ``strong`` writes.
Nothing from the network can stop the loop: a malformed request is answered with an error,
and an unexpected exception while handling one is logged and answered with ``ServerError``.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq

from zkv import protocol
from zkv.config import ClusterConfig, NodeConfig
from zkv.errors import (
    InvalidRequest,
    KeyExists,
    ServerError,
    StorageCorrupted,
    StorageError,
    Unavailable,
    ZkvError,
    code_of,
)
from zkv.node.primary import Primary
from zkv.node.replica import Replica
from zkv.protocol import Consistency, NodeInfo, NodeState, Op, Request, Role
from zkv.runtime import MAX_FRAMES, Throttle, bind_endpoint, recv_frames, write_ready_file
from zkv.storage.engine import RecordOp, Store
from zkv.storage.lock import lock_folder
from zkv.storage.persistence import Persistence

__all__ = ["Node"]

log = logging.getLogger(__name__)

REQUEST_ID_SEQ: Final = struct.Struct(">Q")
#: A stream message carries one loop turn's records, one frame each.
STREAM_MAX_FRAMES: Final = 1_000_000
#: How often the active expiry sweep runs (seconds).
SWEEP_INTERVAL_S: Final = 0.1
#: The most messages handled per socket per loop turn before timers get a look-in.
DRAIN_MAX: Final = 1000


class Node:
    """A shard node serving requests from the broker until ``stop()``."""

    def __init__(
        self,
        config: ClusterConfig,
        name: str,
        *,
        ready_file: Path | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.config = config
        self.me: NodeConfig = config.node(name)
        self.ready_file = ready_file
        self.context = context or zmq.Context.instance()
        self.store = Store(config.slots)
        # every node starts as a replica at epoch 0 and waits for the broker to name its role
        self.role = Role.REPLICA
        self.epoch = 0
        self.store.primary = False
        self.primary: Primary | None = None
        self.replica: Replica | None = None
        self._beat_now = False
        self.persistence = self._new_persistence()
        #: The last sequence of damaged data this node discarded at start (-1: none).
        self.discarded_seq = -1
        self.publish = self.sync = ""
        self.limits = config.limits
        self._stopping = False
        #: Warnings any peer can trigger at will are throttled.
        self._bad = Throttle(log)
        self.requests = 0
        self.errors = 0
        self._handlers: dict[Op, Callable[[Request], Any]] = {
            Op.GET: lambda r: self.store.get(r.key),
            Op.PUT: lambda r: self.store.put(r.key, self._value(r, r.args[0]), r.args[1]),
            Op.DELETE: lambda r: self.store.delete(r.key),
            Op.CREATE: self._create,
            Op.EXISTS: lambda r: self.store.exists(r.key),
            Op.CAS: lambda r: self.store.cas(r.key, r.args[0], self._value(r, r.args[1])),
            Op.EXPIRE: lambda r: self.store.expire(r.key, r.args[0]),
            Op.TTL: lambda r: self.store.ttl(r.key),
            Op.MGET: lambda r: self.store.mget(r.args[0]),
            Op.MPUT: self._mput,
            Op.SCAN: self._scan,
            Op.CLEAR: lambda r: self.store.clear(),
            Op.COUNT: lambda r: len(self.store),
            Op.BATCH: self._batch,
        }

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its turn and exit (safe from a signal handler)."""
        self._stopping = True

    def _new_persistence(self) -> Persistence:
        storage = self.config.storage
        return Persistence(
            self.config.data_dir(self.me.name),
            storage.fsync,
            compact_ratio=storage.compact_ratio,
            compact_min_bytes=storage.compact_min_bytes,
            min_free_bytes=storage.min_free_bytes,
        )

    def run(self) -> None:
        """Lock and recover the data folder, bind, register with the broker and serve until
        ``stop()``.

        Raises ``FolderLocked`` if another process holds the data folder. If the folder is
        damaged beyond a torn tail (``StorageCorrupted``), the node discards it only when its
        shard's primary serves, so that the data lives on there (see ``_discard_damaged``);
        otherwise it raises before binding anything.
        """
        with lock_folder(self.persistence.directory):
            self._run_locked()

    def _run_locked(self) -> None:
        try:
            report = self.persistence.recover(self.store)
        except StorageCorrupted as exc:
            self.persistence.close()
            self._discard_damaged(exc)
            report = self.persistence.recover(self.store)
        self.persistence.check(self.store.seq + 1)  # says so at once if the disk is short
        log.info(
            "node %s recovered %d keys at seq %d in %.3f s (snapshot %s, %d log records)",
            self.me.name,
            self.store.held,
            report.seq,
            report.seconds,
            "none" if report.snapshot_seq is None else f"as of seq {report.snapshot_seq}",
            report.records,
        )
        try:
            self._run_sockets()
        finally:
            self.persistence.close()
        log.info("node %s stopped", self.me.name)

    def _run_sockets(self) -> None:
        ctx = self.context
        broker = ctx.socket(zmq.DEALER)
        broker.setsockopt(zmq.IDENTITY, f"node:{self.me.name}".encode())
        broker.setsockopt(zmq.LINGER, 0)
        broker.setsockopt(zmq.MAXMSGSIZE, self.limits.max_request_bytes + 4096)
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self.config.replication.hwm)
        sync = ctx.socket(zmq.ROUTER)
        sync.setsockopt(zmq.LINGER, 0)
        sync.setsockopt(zmq.SNDHWM, 8)  # snapshot chunks go only as fast as a replica reads
        sync.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            pub.bind(bind_endpoint(self.me.publish))
            sync.bind(bind_endpoint(self.me.sync))
            self.publish = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.sync = sync.getsockopt_string(zmq.LAST_ENDPOINT)
            broker.connect(self.config.broker.nodes)
            self._pub, self._sync = pub, sync
            self.replica = self._new_replica()
            self._serve(broker, sync)
        finally:
            if self.replica is not None:
                self.replica.close()
            for sock in (broker, pub, sync):
                sock.close(linger=0)

    def _new_replica(self) -> Replica:
        replica = Replica(
            self.me.name,
            self.store,
            self.persistence,
            self.context,
            hwm=self.config.replication.hwm,
            heartbeat_s=self.config.heartbeat.interval_s,
        )
        replica.force_snapshot = self.discarded_seq >= 0 and self.store.seq == 0
        return replica

    # ------------------------------------------------------------------ damaged data

    def _discard_damaged(self, damage: StorageCorrupted) -> None:
        """Set damaged data aside and start empty, if a serving primary of the shard holds it.

        The node tells the broker it is ``damaged`` (with the last sequence it had) and waits
        for a heartbeat naming a primary of its shard that serves: the broker promotes an
        in-sync replica if this node was the primary. Only then are the damaged files moved
        to ``damaged-<timestamp>/`` in the data folder (never deleted); the node starts empty
        as a replica and resyncs by snapshot, and reports ``discarded_seq`` so the broker
        knows; it cannot be promoted before it is back in sync. The shard's only node, or a
        node whose shard has no serving primary within the wait, refuses to start instead.
        """
        shard = self.me.shard
        if len(self.config.shards[shard]) == 1:
            raise StorageCorrupted(
                f"{damage}; {self.me.name} is the only node of shard {shard}, so no other "
                "copy exists: nothing was discarded"
            )
        log.error("damaged data folder: %s", damage)
        wait_s = max(3.0, 10 * self.config.heartbeat.expiry_s)
        primary = self._serving_primary(damage.last_seq, wait_s)
        if primary is None:
            raise StorageCorrupted(
                f"{damage}; no primary of shard {shard} served within {wait_s:g} s to resync "
                "from, so nothing was discarded"
            )
        aside = self.persistence.set_aside(
            f"{damage} (discarded by {self.me.name}: {primary} serves shard {shard})"
        )
        log.warning(
            "discarded damaged data (last seq %d), kept in %s; starting empty as a replica "
            "of %s to resync",
            damage.last_seq,
            aside,
            primary,
        )
        self.discarded_seq = damage.last_seq
        self.store = Store(self.config.slots)
        self.store.primary = False
        self.persistence = self._new_persistence()

    def _serving_primary(self, last_seq: int, wait_s: float) -> str | None:
        """Report ``damaged`` to the broker; the name of a serving primary it names in time."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"node:{self.me.name}".encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.config.broker.nodes)
        info = NodeInfo(
            self.me.name, self.me.shard, role=Role.REPLICA, state=NodeState.DAMAGED, pid=os.getpid()
        )
        info.seq = max(last_seq, 0)
        interval = self.config.heartbeat.interval_s
        deadline = time.monotonic() + wait_s
        kind = protocol.NODE_READY
        try:
            while not self._stopping and time.monotonic() < deadline:
                self._send(sock, protocol.encode_node_info(kind, info))
                kind = protocol.NODE_HEARTBEAT
                if not sock.poll(int(interval * 1000)):
                    continue
                while True:
                    try:
                        frames = recv_frames(sock)
                    except zmq.Again:
                        break
                    name = _serving_primary_in(frames, self.me.name)
                    if name is not None:
                        return name
        finally:
            sock.close(linger=0)
        return None

    def _become_primary(self, epoch: int, in_sync: list[str]) -> None:
        if self.replica is not None:
            self.replica.close()
            self.replica = None
        if self.primary is None:
            self.primary = Primary(
                self.store,
                self._pub,
                self._sync,
                epoch=epoch,
                heartbeat_s=self.config.heartbeat.interval_s,
                ack_timeout_s=self.config.replication.ack_timeout_s,
                in_sync=in_sync,
            )
            self.persistence.tap = self.primary.record
        self.primary.epoch = epoch
        log.info("primary of shard %s at epoch %d (seq %d)", self.me.shard, epoch, self.store.seq)
        self.role, self.epoch, self.store.primary = Role.PRIMARY, epoch, True

    def _become_replica(self, epoch: int) -> None:
        if self.primary is not None:
            log.warning(
                "fenced: epoch %d is stale (shard %s is at epoch %d); no longer primary, "
                "rejoining as a replica and resyncing",
                self.epoch,
                self.me.shard,
                epoch,
            )
            self.primary = None  # strong replies it held are dropped: the clients retry
            self.persistence.tap = None
            self.replica = self._new_replica()
            self.replica.force_snapshot = True  # its last writes may not be the new primary's
        self.role, self.epoch, self.store.primary = Role.REPLICA, epoch, False

    def info(self) -> NodeInfo:
        """What this node tells the broker about itself."""
        return NodeInfo(
            name=self.me.name,
            shard=self.me.shard,
            role=self.role,
            state=self.replica.state if self.replica else NodeState.SERVING,
            lag=self.replica.lag if self.replica else 0,
            in_sync=self.primary.replicas.in_sync() if self.primary else [],
            pid=os.getpid(),
            epoch=self.epoch,
            seq=self.store.seq,
            keys=self.store.held,
            publish=self.publish,
            sync=self.sync,
            requests=self.requests,
            errors=self.errors,
            fsyncs=self.persistence.log.fsyncs,
            log_bytes=self.persistence.log_bytes,
            compactions=self.persistence.compactions,
            max_stall_ms=round(self.persistence.max_stall_s * 1000, 3),
            discarded_seq=self.discarded_seq,
            storage=self.persistence.state,
            storage_error=self.persistence.state_error,
            free_bytes=self.persistence.free_bytes,
        )

    # ------------------------------------------------------------------ loop

    def _serve(self, broker: zmq.Socket[bytes], sync: zmq.Socket[bytes]) -> None:
        interval = self.config.heartbeat.interval_s
        self._send(broker, protocol.encode_node_info(protocol.NODE_READY, self.info()))
        log.info(
            "node %s (shard %s) serving; publish %s, sync %s, broker %s",
            self.me.name,
            self.me.shard,
            self.publish,
            self.sync,
            self.config.broker.nodes,
        )
        if self.ready_file is not None:
            write_ready_file(
                self.ready_file, {"name": self.me.name, "publish": self.publish, "sync": self.sync}
            )
        poller = self._poller(broker, sync)
        next_heartbeat = time.monotonic() + interval
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        persistence = self.persistence
        while not self._stopping:
            primary, replica = self.primary, self.replica
            now = time.monotonic()
            wait_s = max(0.0, min(next_heartbeat, next_sweep) - now)
            if persistence.compacting or (primary is not None and primary.transferring):
                wait_s = 0.0  # a compaction step or snapshot chunk goes out each turn
            try:
                ready = dict(poller.poll(int(wait_s * 1000)))
            except zmq.ZMQError as exc:  # EINTR from a signal: loop to check _stopping
                if exc.errno != errno.EINTR:
                    raise
                continue
            replies: list[tuple[list[bytes], bool]] = []
            self.store.begin()  # this turn's changes stand only once they are logged
            if replica is not None:
                if replica.sub is not None and replica.sub in ready:
                    self._drain_each(replica.sub, replica.on_stream, STREAM_MAX_FRAMES)
                if replica.dealer is not None and replica.dealer in ready:
                    self._drain_each(replica.dealer, replica.on_sync)
            if broker in ready:
                poller = self._drain(broker, replies, poller, sync) or poller
            now = time.monotonic()
            if now >= next_sweep:
                self.store.sweep()
                next_sweep = now + SWEEP_INTERVAL_S
            # group commit: the turn's records are logged before any reply goes out
            try:
                persistence.flush()
                self.store.commit()
            except StorageError as exc:
                replies = self._unlogged_turn(replies, exc)
            if replica is not None and not persistence.writable and not replica.suspended:
                replica.suspend(persistence.state_error or persistence.state)
                poller = self._poller(broker, sync)
            if primary is not None:
                primary.publish(now)
                if sync in ready:
                    replies += [(r, False) for r in self._drain_sync(sync, primary, now)]
                replies += [(r, False) for r in primary.tick(now)]
                primary.stream_snapshots()
            elif replica is not None:
                replica.tick(now)
            for reply, strong in replies:
                if strong and primary is not None:
                    held = primary.hold(self.store.seq, reply, now)
                    if held is None:
                        continue
                self._send(broker, reply)
            persistence.maybe_compact(self.store)
            if now >= next_heartbeat or self._beat_now:
                if persistence.check(self.store.seq + 1) == "ok" and replica and replica.suspended:
                    replica.resume()  # the broker's next heartbeat has it follow again
                self._beat_now = False
                self._send(broker, protocol.encode_node_info(protocol.NODE_HEARTBEAT, self.info()))
                next_heartbeat = now + interval

    def _unlogged_turn(
        self, replies: list[tuple[list[bytes], bool]], exc: StorageError
    ) -> list[tuple[list[bytes], bool]]:
        """The turn's records could not be logged: undo them in memory, publish none of them,
        and answer every request of the turn ``Unavailable``, so that clients retry it: a
        write is then refused with ``StorageFull``/``StorageError`` before it changes
        anything, and a read is served from the state that was logged."""
        self.store.rollback()
        self._beat_now = True  # tell the broker at once that this node cannot log
        if self.primary is not None:
            self.primary.discard_outbox()
        retry = Unavailable(f"node {self.me.name} could not log this request ({exc}); retry")
        answered = []
        for frames, _strong in replies:
            try:
                seq = protocol.decode_reply_header(frames[2])[0]
            except ZkvError:
                seq = 0
            answered.append(([frames[0], frames[1], *protocol.encode_error(seq, retry)], False))
        return answered

    def _poller(self, broker: zmq.Socket[bytes], sync: zmq.Socket[bytes]) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(broker, zmq.POLLIN)
        poller.register(sync, zmq.POLLIN)
        if self.replica is not None:
            for sock in (self.replica.sub, self.replica.dealer):
                if sock is not None:
                    poller.register(sock, zmq.POLLIN)
        return poller

    def _drain(
        self,
        broker: zmq.Socket[bytes],
        replies: list[tuple[list[bytes], bool]],
        poller: zmq.Poller,
        sync: zmq.Socket[bytes],
    ) -> zmq.Poller | None:
        """Handle every ready broker message; a new poller if the replica's sockets changed."""
        new_poller = None
        for _ in range(DRAIN_MAX):
            try:
                frames = recv_frames(broker)
            except zmq.Again:
                break
            if frames is None:
                self._bad.warning("dropped a message from the broker with too many frames")
                continue
            try:
                kind, epoch = protocol.decode_node_header(frames[0])
            except ZkvError as exc:
                self._bad.warning("dropped a malformed message from the broker: %s", exc)
                continue
            if kind == protocol.NODE_REQUEST and len(frames) == 5:
                reply, strong = self.handle(frames[2:], epoch)
                header = protocol.node_header(protocol.NODE_REPLY, self.epoch)
                replies.append(([header, frames[1], *reply], strong))
            elif kind == protocol.BROKER_HEARTBEAT and len(frames) == 2:
                if self._on_broker_heartbeat(frames[1]):
                    new_poller = self._poller(broker, sync)
            else:
                self._bad.warning(
                    "dropped a broker message of kind %r with %d frames", kind, len(frames)
                )
        return new_poller

    def _on_broker_heartbeat(self, body: bytes) -> bool:
        """Take the role and epoch the broker names, and follow the primary it names.

        True if sockets changed (the loop then polls anew).
        """
        try:
            beat = protocol.unpackb(body)
            role, epoch = beat["role"], beat["epoch"]
            primary = beat.get("primary")
            in_sync = beat.get("in_sync", [])
            if role not in (Role.PRIMARY, Role.REPLICA) or type(epoch) is not int:
                raise KeyError("role or epoch")
            if not isinstance(in_sync, list) or not all(isinstance(n, str) for n in in_sync):
                raise TypeError("in_sync is not a list of names")
        except (ZkvError, KeyError, TypeError) as exc:
            self._bad.warning("dropped a malformed broker heartbeat: %s", exc)
            return False
        if epoch < self.epoch:  # only the broker decides: its table wins, even if behind
            log.warning(
                "the broker names epoch %d for shard %s, behind this node's %d; obeying it",
                epoch,
                self.me.shard,
                self.epoch,
            )
        changed = False
        if role == Role.PRIMARY and (self.role != Role.PRIMARY or epoch != self.epoch):
            self._become_primary(epoch, in_sync)
            self._beat_now = changed = True
        elif role == Role.REPLICA and (self.role != Role.REPLICA or epoch != self.epoch):
            self._become_replica(epoch)
            self._beat_now = changed = True
        if self.replica is not None and isinstance(primary, dict):
            try:
                target = (str(primary["name"]), str(primary["publish"]), str(primary["sync"]))
            except KeyError as exc:
                self._bad.warning("dropped a malformed broker heartbeat: %s", exc)
                return changed
            changed = self.replica.follow(*target, epoch=epoch) or changed
        return changed

    def _drain_sync(
        self, sync: zmq.Socket[bytes], primary: Primary, now: float
    ) -> list[list[bytes]]:
        released: list[list[bytes]] = []
        self._drain_each(sync, lambda frames: released.extend(primary.on_sync(frames, now)))
        return released

    def _drain_each(
        self,
        sock: zmq.Socket[bytes],
        handle: Callable[[list[bytes]], Any],
        max_frames: int = MAX_FRAMES,
    ) -> None:
        for _ in range(DRAIN_MAX):
            try:
                frames = recv_frames(sock, max_frames)
            except zmq.Again:
                return
            if frames is None:
                self._bad.warning("dropped a message with too many frames")
                continue
            try:
                handle(frames)
            except Exception as exc:
                self._bad.warning("dropped a replication message: %s: %s", type(exc).__name__, exc)

    @staticmethod
    def _send(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("broker connection is full or down; dropped an outgoing message")

    # ------------------------------------------------------------------ requests

    def handle(self, frames: list[bytes], epoch: int | None = None) -> tuple[list[bytes], bool]:
        """The reply frames for one request's ``[header, key, body]``, and whether it is a
        ``strong`` write (whose reply waits for the in-sync replicas).

        ``epoch`` is the shard epoch the broker stamped on the request: a write stamped with
        another epoch than this primary's is refused (it was meant for another primary).
        A write whose request id (client id, sequence number) this node has applied before
        is answered with its first outcome, not applied again.
        """
        self.requests += 1
        request: Request | None = None
        try:
            request = protocol.decode_request(frames, protocol.NODE_OPS)
            protocol.check_key(request.key, self.limits.max_key_bytes)
            write = request.op in protocol.WRITE_OPS
            if self.replica is not None:
                self._check_replica_may_serve(write)
            if write and not self.persistence.writable:
                raise self.persistence.refusal()
            strong = write and request.consistency is Consistency.STRONG
            if not write:
                return protocol.encode_reply(
                    request.seq, self._handlers[request.op](request)
                ), False
            if epoch is not None and epoch != self.epoch:
                raise Unavailable(f"request for epoch {epoch}; {self.me.name} is at {self.epoch}")
            rid = request.client_id + REQUEST_ID_SEQ.pack(request.seq)
            first = self.store.results.get(rid)
            if first is not None:  # a retry of a write applied before: its first outcome
                return [protocol.REPLY_HEADER.pack(protocol.VERSION, 0, request.seq), first], strong
            before = self.store.seq
            reply = protocol.encode_reply(request.seq, self._handlers[request.op](request))
            if self.store.seq != before:  # it changed something: remember the outcome
                self.store.emit((RecordOp.RESULT, rid, reply[1]))
            return reply, strong
        except ZkvError as exc:
            self.errors += 1
            seq = request.seq if request is not None else exc.seq
            return protocol.encode_error(seq or 0, exc), False
        except Exception as exc:
            self.errors += 1
            log.exception("failed to handle %s", request.op.name if request else "a request")
            seq = request.seq if request is not None else 0
            return protocol.encode_error(seq, ServerError(f"{type(exc).__name__}: {exc}")), False

    def _check_replica_may_serve(self, write: bool) -> None:
        assert self.replica is not None
        if write:
            raise Unavailable(
                f"node {self.me.name} is a replica of shard {self.me.shard}; "
                "writes go to its primary"
            )
        if self.replica.state != NodeState.FOLLOWING:
            raise Unavailable(
                f"replica {self.me.name} is {self.replica.state}; ask its primary or try again"
            )

    def _value(self, request: Request, value: bytes) -> bytes:
        protocol.check_value(request.key, value, self.limits.max_value_bytes)
        return value

    def _create(self, request: Request) -> None:
        if not self.store.create(
            request.key, self._value(request, request.args[0]), request.args[1]
        ):
            raise KeyExists(f"key {protocol.show_key(request.key)} already exists", key=request.key)

    def _mput(self, request: Request) -> None:
        items, ttl = request.args
        protocol.check_items(items, self.limits.max_key_bytes, self.limits.max_value_bytes)
        self.store.mput(items, ttl)

    def _batch(self, request: Request) -> list[list[Any]]:
        """Run a pipeline's operations for this shard in order; each one's result or error."""
        results: list[list[Any]] = []
        for op_code, key, args in request.args[0]:
            sub = Request(
                Op.GET,
                key,
                args,
                request.client_id,
                request.seq,
                request.consistency,
                request.timeout_ms,
            )
            try:
                if op_code not in protocol.SINGLE_KEY_OPS:
                    raise InvalidRequest(f"a batch holds single-key operations, not {op_code}")
                sub.op = Op(op_code)
                protocol.check_args(sub)
                protocol.check_key(key, self.limits.max_key_bytes)
                results.append([0, self._handlers[sub.op](sub)])
            except ZkvError as exc:
                results.append([code_of(exc), exc.message, exc.key])
        return results

    def _scan(self, request: Request) -> list[Any]:
        prefix, slot, after, limit = request.args
        if slot >= self.config.slots:
            raise InvalidRequest(f"slot {slot} is out of range")
        keys, cursor = self.store.scan(prefix, slot, after, limit)
        return [keys, list(cursor) if cursor is not None else None]


def _serving_primary_in(frames: list[bytes] | None, me: str) -> str | None:
    """The primary a broker heartbeat names as serving this node's shard, if any."""
    if frames is None or len(frames) != 2:
        return None
    try:
        kind, _epoch = protocol.decode_node_header(frames[0])
        beat = protocol.unpackb(frames[1]) if kind == protocol.BROKER_HEARTBEAT else None
    except ZkvError:
        return None
    if not isinstance(beat, dict) or beat.get("role") != Role.REPLICA:
        return None
    primary = beat.get("primary")
    if not isinstance(primary, dict) or primary.get("serving") is not True:
        return None
    name = primary.get("name")
    return name if isinstance(name, str) and name != me else None
