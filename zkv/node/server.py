"""Node: one shard node process, one event loop, one ``Store``.

Sockets:

- ROUTER connected to every broker's ``nodes`` endpoint (each broker addressed by its name,
  ``broker:<name>``), identity ``node:<name>``: requests in, each reply to the broker that
  sent the request, READY and heartbeats to every broker. Heartbeats carry the node's full
  ``NodeInfo``, so a restarted broker learns the node again from the next heartbeat.
- PUB bound at ``publish`` and ROUTER bound at ``sync``: a primary's replication stream and
  its snapshot/ack channel (``primary.py``); a replica connects a SUB and a DEALER to its
  primary's (``replica.py``), whose endpoints the broker's heartbeats carry.

Every node starts as a replica and takes the role the broker names. Requests
are applied in arrival order; each loop turn drains every ready message, logs the turn's
records in one go (group commit), publishes them, and only then replies: at once for reads
and ``eventual`` writes, once every in-sync replica has acknowledged for ``strong`` writes.
Nothing from the network can stop the loop: a malformed request is answered with an error,
and an unexpected exception while handling one is logged and answered with ``ServerError``.
WATCH requests (change feeds) are set aside in ``apply`` and answered in the ``feed`` phase,
after ``replicate`` has taken the replicas' acks: at once, or parked until records are
confirmed (``watching.py``); every node keeps the feed's history, whatever its role.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from zkv import protocol
from zkv.config import BROKER_KEY, ClusterConfig, NodeConfig, load_config
from zkv.errors import (
    StorageCorrupted,
    StorageError,
    Unavailable,
    ZkvError,
)
from zkv.node import wire
from zkv.node.catchup import Backlog
from zkv.node.core import NodeCore
from zkv.node.damaged import DamagedData
from zkv.node.history import EMPTY, HistoryFile
from zkv.node.primary import Primary
from zkv.node.replica import Replica
from zkv.node.roles import NodeRoles
from zkv.node.watching import FeedState, History, Watches
from zkv.protocol import NodeInfo, NodeState, Role
from zkv.runtime import (
    MAX_FRAMES,
    Throttle,
    Waiter,
    bind_endpoint,
    drain,
    send_frames,
    write_ready_file,
)
from zkv.security import Keyring, shard_domain
from zkv.storage.engine import Record, Store
from zkv.storage.lock import lock_folder
from zkv.storage.persistence import Persistence

__all__ = ["Node"]

log = logging.getLogger(__name__)

#: A stream message carries one loop turn's records, one frame each.
#: How often the active expiry sweep runs (seconds).
SWEEP_INTERVAL_S: Final = 0.1
#: The most messages handled per socket per loop turn before timers get a look-in.
DRAIN_MAX: Final = 1000
NODE_HEADER_BYTES: Final = protocol.NODE_HEADER.size


@dataclass(slots=True)
class _Turn:
    """What one loop turn read, and the replies it will send."""

    requests: list[tuple[int, bytes, bytes, list[bytes]]] = field(default_factory=list)
    beats: list[bytes] = field(default_factory=list)  # the broker's heartbeat bodies
    stream: list[list[bytes]] = field(default_factory=list)  # from the primary's PUB
    replica_sync: list[list[bytes]] = field(default_factory=list)  # from the primary's sync
    primary_sync: list[list[bytes]] = field(default_factory=list)  # from replicas
    replies: list[tuple[list[bytes], bool]] = field(default_factory=list)  # (frames, strong)
    watches: list[tuple[bytes, bytes, list[bytes]]] = field(default_factory=list)  # WATCH


class Node(NodeRoles, DamagedData):
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
        self.store = self._new_store()
        # every node starts as a replica at epoch 0 and waits for the broker to name its role
        self.role = Role.REPLICA
        self.epoch = 0
        self.store.primary = False
        self.primary: Primary | None = None
        self.replica: Replica | None = None
        self._beat_now = False
        self.persistence = self._new_persistence()
        #: The node's last records, for replicas' partial resyncs (``catchup.py``), and its
        #: history (``history.py``, read from the data folder once it is locked).
        self.backlog = Backlog(config.replication.backlog_bytes)
        self.histories: HistoryFile | None = None
        #: The last sequence of damaged data this node discarded at start (-1: none).
        self.discarded_seq = -1
        self.publish = self.sync = ""
        self.limits = config.limits
        self._stopping = False
        #: What the loop waits on (``_poller()`` makes it when the sockets change).
        self._poll: Waiter | None = None
        self._reload = False
        #: Warnings any peer can trigger at will are throttled.
        self._bad = Throttle(log)
        self.core = NodeCore(self.store, config.limits, config.slots, name, self.me.shard)
        #: The shard's change feed: recent history and parked WATCH requests (every node
        #: keeps the history, so that a promoted replica continues the feed).
        self.history = History(config.watch.history_records, config.watch.history_bytes)
        self.history.attach(self.store)
        self.watches = Watches(
            self.history, config.watch.max_watchers, linger_s=config.watch.linger_s
        )
        #: This node's CURVE keys and authenticator (None without a ``security`` section).
        self.keyring: Keyring | None = None
        #: Each broker's routing id on the node socket.
        self._brokers = [f"broker:{b.name}".encode() for b in config.broker_list()]
        self._single_broker = len(self._brokers) == 1
        #: With several brokers, a primary serves strong operations only until this time
        #: (monotonic), which each lease the controller grants in its heartbeat extends.
        self._lease_until = 0.0 if len(self._brokers) > 1 else math.inf

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its turn and exit (safe from a signal handler)."""
        self._stopping = True
        waiter = self._poll
        if waiter is not None:
            waiter.wake()

    def request_reload(self) -> None:
        """Ask the loop to read its shard's public keys again from the config file's key
        folder (a replaced node key, SIGHUP; safe from a signal handler)."""
        self._reload = True
        waiter = self._poll
        if waiter is not None:
            waiter.wake()

    def _reload_keys(self) -> None:
        if self.keyring is None or self.config.path is None:
            log.info("SIGHUP: no keys to reload")
            return
        try:
            self.keyring.reload(load_config(self.config.path))
        except ZkvError as exc:
            log.error("SIGHUP: kept the previous keys: %s", exc)
            return
        log.info("reloaded the keys of shard %s from %s", self.me.shard, self.config.path)

    def _new_store(self) -> Store:
        memory = self.config.memory.of(self.me.shard)
        return Store(self.config.slots, max_bytes=memory.max_bytes, policy=memory.policy)

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
            if self.config.security is not None:
                self.keyring = Keyring.for_node(self.config, self.me.name, self.context)
                self.keyring.start()
            try:
                self._run_locked()
            finally:
                if self.keyring is not None:
                    self.keyring.stop()

    def _run_locked(self) -> None:
        try:  # the log's tail refills the backlog and the watch history
            report = self.persistence.recover(self.store, self._replayed)
        except StorageCorrupted as exc:
            self.persistence.close()
            self._discard_damaged(exc)
            self.backlog = Backlog(self.config.replication.backlog_bytes)
            self.history.reset()
            report = self.persistence.recover(self.store, self._replayed)
        self.store.evictions = 0  # those of this run: replayed ones happened before it
        self.histories = HistoryFile(self.persistence.directory)
        # a discarded folder's history is gone; a restart may have lost unfsynced records
        history = EMPTY if self.discarded_seq >= 0 else self.histories.history
        self.histories.set(history.clamp(self.store.seq))
        self.persistence.tap = self._logged
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
        broker = self._broker_socket()
        broker.setsockopt(zmq.MAXMSGSIZE, protocol.max_request_frame_bytes(self.limits))
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self.config.replication.hwm)
        sync = ctx.socket(zmq.ROUTER)
        sync.setsockopt(zmq.LINGER, 0)
        sync.setsockopt(zmq.SNDHWM, 8)  # snapshot chunks go only as fast as a replica reads
        sync.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # replicas send only HELLO, SNAP and ACK here, each a few dozen bytes
        sync.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_SYNC_TO_PRIMARY_BYTES)
        if self.keyring is not None:  # only this shard's nodes follow its stream
            self.keyring.serve(pub, shard_domain(self.me.shard))
            self.keyring.serve(sync, shard_domain(self.me.shard))
        try:
            pub.bind(bind_endpoint(self.me.publish))
            sync.bind(bind_endpoint(self.me.sync))
            self.publish = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.sync = sync.getsockopt_string(zmq.LAST_ENDPOINT)
            self._pub, self._sync = pub, sync
            self.replica = self._new_replica()
            self._serve(broker, sync)
        finally:
            if self.replica is not None:
                self.replica.close()
            for sock in (broker, pub, sync):
                sock.close(linger=0)

    def _broker_socket(self) -> zmq.Socket[bytes]:
        """The socket to the brokers, known there as this node.

        One broker: a DEALER (the common case, one frame less each way). Several: a ROUTER
        connected to every broker's node endpoint, each broker's socket carrying its name
        (``broker:NAME``) as its routing id, so the node addresses each broker by name: a
        reply goes back to the broker that sent the request, READY and heartbeats go to
        every broker. Without CURVE the node's own identity says who it is (``node:NAME``);
        with CURVE it proves its key instead, and the broker names the connection after the
        key.
        """
        kind = zmq.DEALER if self._single_broker else zmq.ROUTER
        sock: zmq.Socket[bytes] = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if not self._single_broker:  # a broker not connected yet: EHOSTUNREACH
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.keyring is None:
            sock.setsockopt(zmq.IDENTITY, f"node:{self.me.name}".encode())
        else:
            self.keyring.dial(sock, BROKER_KEY)
        for broker in self.config.broker_list():
            sock.connect(broker.nodes)
        return sock

    def _to_brokers(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        """Send ``frames`` to every broker (those not connected yet are skipped)."""
        if self._single_broker:
            self._send(sock, frames)
            return
        for broker in self._brokers:
            self._send(sock, [broker, *frames])

    def _to_broker(self, frames: list[bytes]) -> None:
        """Send ``[broker, *frames]`` (a reply) to the broker it names."""
        self._send(self._broker, frames[1:] if self._single_broker else frames)

    def _new_replica(self) -> Replica:
        replica = Replica(
            self.me.name,
            self.store,
            self.persistence,
            self.context,
            hwm=self.config.replication.hwm,
            heartbeat_s=self.config.heartbeat.interval_s,
            max_frame_bytes=protocol.max_reply_frame_bytes(self.limits),
            dial=None if self.keyring is None else self.keyring.dial,
            histories=self.histories,
            backlog=self.backlog,
        )
        replica.force_snapshot = self.discarded_seq >= 0 and self.store.seq == 0
        return replica

    def _replayed(self, seq: int, payload: bytes, record: Record) -> None:
        """A record replayed from the log at start: kept as if just logged, so that
        replicas behind us catch up and watchers resume across our restart."""
        self.backlog.append(seq, payload)
        self.history.append(seq, record)

    def _logged(self, seq: int, payload: bytes) -> None:
        """A record was logged: keep it in the backlog, and a primary publishes it."""
        self.backlog.append(seq, payload)
        if self.primary is not None:
            self.primary.record(seq, payload)

    # ------------------------------------------------------------------ damaged data

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
            requests=self.core.requests,
            errors=self.core.errors,
            fsyncs=self.persistence.log.fsyncs,
            log_bytes=self.persistence.log_bytes,
            compactions=self.persistence.compactions,
            max_stall_ms=round(self.persistence.max_stall_s * 1000, 3),
            discarded_seq=self.discarded_seq,
            storage=self.persistence.state,
            storage_error=self.persistence.state_error,
            free_bytes=self.persistence.free_bytes,
            used_bytes=self.store.used_bytes,
            max_bytes=self.store.max_bytes,
            evictions=self.store.evictions,
            policy=str(self.store.policy),
            resync_full=self.primary.resync_full if self.primary else 0,
            resync_partial=self.primary.resync_partial if self.primary else 0,
            resync_bytes=self.primary.resync_bytes if self.primary else 0,
            sent_at=time.monotonic(),
            watch_records=len(self.history),
            watch_bytes=self.history.bytes,
            watchers=len(self.watches),
        )

    # ------------------------------------------------------------------ loop

    def _serve(self, broker: zmq.Socket[bytes], sync: zmq.Socket[bytes]) -> None:
        interval = self.config.heartbeat.interval_s
        self._to_brokers(broker, protocol.encode_node_info(protocol.NODE_READY, self.info()))
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
        self._broker, self._sync_sock = broker, sync
        self._poll = self._poller()
        now = time.monotonic()
        self._next_heartbeat, self._next_sweep = now + interval, now + SWEEP_INTERVAL_S
        while not self._stopping:
            ready = self._wait()
            if self._reload:
                self._reload = False
                self._reload_keys()
            if ready is None:
                continue
            turn = self._receive(ready)
            self._apply(turn, time.monotonic())
            self._commit(turn)
            self._replicate(turn, time.monotonic())
            self._respond(turn, time.monotonic())
            self._feed(turn, time.monotonic())
            self._timers(turn, time.monotonic())

    # The turn, in named phases. The roles (``self.primary``, ``self.replica``) are fixed for
    # the whole turn: the broker's heartbeats are read in ``receive`` and acted on in
    # ``timers``, at the turn's end.

    def _wait(self) -> list[zmq.Socket[bytes]] | None:
        """Wait until a socket may be ready or a timer is due: the sockets to read (see
        ``runtime.Waiter``)."""
        now = time.monotonic()
        wait_s = max(0.0, min(self._next_heartbeat, self._next_sweep) - now)
        watch_deadline = self.watches.next_deadline()
        if watch_deadline is not None:
            wait_s = min(wait_s, max(0.0, watch_deadline - now))
        waiter = self._poll
        assert waiter is not None  # made before the loop starts
        primary, replica = self.primary, self.replica
        if self.persistence.compacting or (primary is not None and primary.transferring):
            wait_s = 0.0  # a compaction step or snapshot chunk goes out each turn
            waiter.check(self._sync_sock)
        if replica is not None and replica.dealer is not None:
            waiter.check(replica.dealer)  # it sends HELLO, SNAP and acks on any turn
        return waiter.wait(math.ceil(wait_s * 1000))

    def _receive(self, ready: list[zmq.Socket[bytes]]) -> _Turn:
        """Read every ready message (bounded per socket) into the turn."""
        turn = _Turn()
        replica = self.replica
        if replica is not None:
            if replica.sub is not None and replica.sub in ready:
                turn.stream = self._read(replica.sub, wire.MAX_STREAM_FRAMES)
            if replica.dealer is not None and replica.dealer in ready:
                turn.replica_sync = self._read(replica.dealer, wire.MAX_CATCHUP_RECORDS + 2)
        if self._sync_sock in ready:
            turn.primary_sync = self._read(self._sync_sock)
        if self._broker in ready:
            single = self._single_broker
            for frames in self._read(self._broker):
                if single:
                    frames.insert(0, b"")  # [broker, ...] as from several
                kind = frames[1][:1] if len(frames) == 3 else b""
                if kind == protocol.NODE_REQUEST:  # [broker, node header + envelope + head, body]
                    try:
                        _kind, epoch, envelope, head = protocol.split_node_frame(frames[1])
                    except ZkvError as exc:
                        self._bad.warning("dropped a malformed request from a broker: %s", exc)
                        continue
                    turn.requests.append((epoch, frames[0], envelope, [head, frames[2]]))
                elif kind == protocol.BROKER_HEARTBEAT and len(frames[1]) == NODE_HEADER_BYTES:
                    turn.beats.append(frames[2])
                else:
                    self._bad.warning(
                        "dropped a broker message of kind %r with %d frames", kind, len(frames)
                    )
        return turn

    def _apply(self, turn: _Turn, now: float) -> None:
        """Apply the stream (a replica) and the requests, and sweep expired keys; the turn's
        changes are journaled until ``commit``."""
        self.store.begin()  # this turn's changes stand only once they are logged
        replica = self.replica
        if replica is not None:
            self._each(turn.stream, lambda f: replica.on_stream(f, now))
            self._each(turn.replica_sync, lambda f: replica.on_sync(f, now))
        core = self.core
        core.epoch = self.epoch
        core.replica_state = replica.state if replica is not None else None
        core.refusal = None if self.persistence.writable else self.persistence.refusal()
        core.lease_ok = now <= self._lease_until
        node_frame, reply_kind, my_epoch = protocol.node_frame, protocol.NODE_REPLY, self.epoch
        for epoch, broker, envelope, request in turn.requests:
            if protocol.peek_op(request[0]) == protocol.Op.WATCH:
                turn.watches.append((broker, envelope, request))  # answered in ``feed``
                continue
            (header, body), strong = core.handle(request, epoch)
            frames = [broker, node_frame(reply_kind, my_epoch, envelope, header), body]
            turn.replies.append((frames, strong))
        if now >= self._next_sweep:
            self.store.sweep()
            self._next_sweep = now + SWEEP_INTERVAL_S

    def _commit(self, turn: _Turn) -> None:
        """Group commit: the turn's records are logged before any reply goes out; if they
        cannot be, the turn is undone (see ``_unlogged_turn``)."""
        try:
            self.persistence.flush()
            self.store.commit()
        except StorageError as exc:
            turn.replies = self._unlogged_turn(turn.replies, exc)
        replica = self.replica
        if replica is not None and not self.persistence.writable and not replica.suspended:
            replica.suspend(self.persistence.state_error or self.persistence.state)
            self._poll = self._poller()

    def _replicate(self, turn: _Turn, now: float) -> None:
        """Publish the logged records; take replicas' acks and snapshot requests (a primary);
        acknowledge what was logged (a replica)."""
        primary, replica = self.primary, self.replica
        if primary is not None:
            primary.publish(now)
            if turn.primary_sync and self._poll is not None:  # answers go out on sync
                self._poll.check(self._sync_sock)
            released: list[list[bytes]] = []
            self._each(turn.primary_sync, lambda f: released.extend(primary.on_sync(f, now)))
            released += primary.tick(now)
            turn.replies += [(r, False) for r in released]
            primary.stream_snapshots(now)
        elif replica is not None and replica.tick(now):
            self._poll = self._poller()  # a stalled sync reconnected: poll its new sockets

    def _respond(self, turn: _Turn, now: float) -> None:
        """Send the replies; a strong write's waits for the in-sync replicas."""
        primary = self.primary
        for reply, strong in turn.replies:
            if strong and primary is not None and primary.hold(self.store.seq, reply, now) is None:
                continue  # released by the replicas' acks, or by the ack timeout
            self._to_broker(reply)

    def _feed(self, turn: _Turn, now: float) -> None:
        """Answer the turn's WATCH requests and the parked ones that can be answered: with
        the records confirmed by now (``zkv.node.watching``)."""
        if not turn.watches and not len(self.watches):
            return
        state = self._feed_state()
        node_frame, kind, epoch = protocol.node_frame, protocol.NODE_REPLY, self.epoch
        for broker, envelope, request in turn.watches:
            reply = self.watches.handle(request, (broker, envelope), now, state)
            if reply is not None:
                self._to_broker([broker, node_frame(kind, epoch, envelope, reply[0]), reply[1]])
        for (broker, envelope), reply in self.watches.due(now, state):
            self._to_broker([broker, node_frame(kind, epoch, envelope, reply[0]), reply[1]])

    def _feed_state(self) -> FeedState:
        primary = self.primary
        seq = self.store.seq
        return FeedState(
            serving=primary is not None and self.core.lease_ok,
            epoch=self.epoch,
            confirmed=seq if primary is None else primary.replicas.confirmed(seq),
            store=self.store,
            shard=self.me.shard,
            name=self.me.name,
            hidden=self.core.mover.hidden(),
        )

    def _timers(self, turn: _Turn, now: float) -> None:
        """Compaction, the broker's role decisions, the storage check and our heartbeat."""
        self.persistence.maybe_compact(self.store)
        changed = False
        for body in turn.beats:  # role changes take effect here, at the turn's end
            changed = self._on_broker_heartbeat(body, now) or changed
        if now >= self._next_heartbeat or self._beat_now:
            replica = self.replica
            if self.persistence.check(self.store.seq + 1) == "ok" and replica and replica.suspended:
                replica.resume()  # the broker's next heartbeat has it follow again
            self._beat_now = False
            self._to_brokers(
                self._broker, protocol.encode_node_info(protocol.NODE_HEARTBEAT, self.info())
            )
            self._next_heartbeat = now + self.config.heartbeat.interval_s
        if changed:
            self._poll = self._poller()

    def _unlogged_turn(
        self, replies: list[tuple[list[bytes], bool]], exc: StorageError
    ) -> list[tuple[list[bytes], bool]]:
        """The turn's records could not be logged: undo them in memory, publish none of them,
        and answer every request of the turn ``Unavailable``, so that clients retry it: a
        write is then refused with ``StorageFull``/``StorageError`` before it changes
        anything, and a read is served from the state that was logged."""
        self.store.rollback()
        self.backlog.truncate(self.store.seq)
        self._beat_now = True  # tell the broker at once that this node cannot log
        if self.primary is not None:
            self.primary.discard_outbox()
        retry = Unavailable(f"node {self.me.name} could not log this request ({exc}); retry")
        answered = []
        for frames, _strong in replies:
            kind, epoch, envelope, header = protocol.split_node_frame(frames[1])
            try:
                seq = protocol.decode_reply_header(header)[0]
            except ZkvError:
                seq = 0
            error_header, body = protocol.encode_error(seq, retry)
            first = protocol.node_frame(kind, epoch, envelope, error_header)
            answered.append(([frames[0], first, body], False))
        return answered

    def _poller(self) -> Waiter:
        """A waiter for the sockets the node reads now (the one it replaces is closed)."""
        sockets = [self._broker, self._sync_sock]
        if self.replica is not None:
            sockets += [s for s in (self.replica.sub, self.replica.dealer) if s is not None]
        old, waiter = self._poll, Waiter(sockets)
        self._poll = waiter
        if old is not None:
            old.close()
        return waiter

    def _read(self, sock: zmq.Socket[bytes], max_frames: int = MAX_FRAMES) -> list[list[bytes]]:
        """Up to ``DRAIN_MAX`` ready messages from ``sock`` (oversized ones dropped)."""
        messages: list[list[bytes]] = []
        read = 0
        for frames in drain(sock, DRAIN_MAX, max_frames):
            read += 1
            if frames is None:
                self._bad.warning("dropped a message with too many frames")
                continue
            messages.append(frames)
        if read == DRAIN_MAX and self._poll is not None:  # more may wait, unannounced
            self._poll.check(sock)
        return messages

    def _each(self, messages: list[list[bytes]], handle: Callable[[list[bytes]], Any]) -> None:
        """Hand each replication message to ``handle``; one that fails is logged and dropped."""
        for frames in messages:
            try:
                handle(frames)
            except Exception as exc:
                self._bad.warning("dropped a replication message: %s: %s", type(exc).__name__, exc)

    def _send(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        if self._poll is not None:
            self._poll.check(sock)  # a send may take the socket's wake-up signal
        try:
            send_frames(sock, frames)
        except zmq.Again:
            log.warning("broker connection is full or down; dropped an outgoing message")
        except zmq.ZMQError as exc:  # EHOSTUNREACH: that broker is not connected (yet)
            if exc.errno != zmq.EHOSTUNREACH:
                raise

    # ------------------------------------------------------------------ requests

    def handle(self, frames: list[bytes], epoch: int | None = None) -> tuple[list[bytes], bool]:
        """Answer one request's ``[head, body]`` (see ``NodeCore.handle``)."""
        return self.core.handle(frames, epoch)
