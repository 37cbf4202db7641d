"""Node: one shard node process, one event loop, one ``Store``.

Sockets:

- DEALER to the broker's ``nodes`` endpoint, identity ``node:<name>``: requests in, replies,
  READY and heartbeats out. Heartbeats carry the node's full ``NodeInfo``, so a restarted
  broker learns the node again from the next heartbeat.
- PUB bound at ``publish`` and ROUTER bound at ``sync``: the replication stream and the
  snapshot/ack channel. They are bound now so that READY reports the endpoints actually bound;
  the replication issue gives them traffic.

Requests are applied in arrival order; each loop turn drains every ready message before
running timers (heartbeat, active expiry sweep). Nothing from the network can stop the
loop: a malformed request is answered with an error, and an unexpected exception while
handling one is logged and answered with ``ServerError``.
"""

from __future__ import annotations

import errno
import logging
import os
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
    ZkvError,
)
from zkv.protocol import NodeInfo, Op, Request
from zkv.runtime import Throttle, bind_endpoint, recv_frames, write_ready_file
from zkv.storage.engine import Store
from zkv.storage.persistence import Persistence

__all__ = ["Node"]

log = logging.getLogger(__name__)

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
        storage = config.storage
        self.persistence = Persistence(
            config.data_dir(name),
            storage.fsync,
            compact_ratio=storage.compact_ratio,
            compact_min_bytes=storage.compact_min_bytes,
        )
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
        }

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its turn and exit (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        """Recover the data folder, bind, register with the broker and serve until ``stop()``.

        Raises ``StorageCorrupted`` (before binding anything) if the data folder is damaged
        beyond a torn tail.
        """
        report = self.persistence.recover(self.store)
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
        sync = ctx.socket(zmq.ROUTER)
        sync.setsockopt(zmq.LINGER, 0)
        try:
            pub.bind(bind_endpoint(self.me.publish))
            sync.bind(bind_endpoint(self.me.sync))
            self.publish = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.sync = sync.getsockopt_string(zmq.LAST_ENDPOINT)
            broker.connect(self.config.broker.nodes)
            self._serve(broker, sync)
        finally:
            for sock in (broker, pub, sync):
                sock.close(linger=0)

    def info(self) -> NodeInfo:
        """What this node tells the broker about itself."""
        return NodeInfo(
            name=self.me.name,
            shard=self.me.shard,
            role="primary",
            pid=os.getpid(),
            epoch=0,
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
        poller = zmq.Poller()
        poller.register(broker, zmq.POLLIN)
        poller.register(sync, zmq.POLLIN)
        next_heartbeat = time.monotonic() + interval
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        persistence = self.persistence
        while not self._stopping:
            now = time.monotonic()
            wait_s = max(0.0, min(next_heartbeat, next_sweep) - now)
            if persistence.compacting:
                wait_s = 0.0  # a compaction step runs each turn, idle or not
            try:
                ready = dict(poller.poll(int(wait_s * 1000)))
            except zmq.ZMQError as exc:  # EINTR from a signal: loop to check _stopping
                if exc.errno != errno.EINTR:
                    raise
                continue
            if broker in ready:
                self._drain(broker)
            if sync in ready:
                self._drain_sync(sync)
            now = time.monotonic()
            if now >= next_sweep:
                self.store.sweep()
                persistence.flush()
                next_sweep = now + SWEEP_INTERVAL_S
            persistence.maybe_compact(self.store)
            if now >= next_heartbeat:
                self._send(broker, protocol.encode_node_info(protocol.NODE_HEARTBEAT, self.info()))
                next_heartbeat = now + interval

    def _drain(self, broker: zmq.Socket[bytes]) -> None:
        """Handle every ready request, log their records in one go, then reply to them all."""
        replies: list[list[bytes]] = []
        try:
            self._handle_ready(broker, replies)
        finally:
            self.persistence.flush()  # group commit: logged before any is acknowledged
            for reply in replies:
                self._send(broker, reply)

    def _handle_ready(self, broker: zmq.Socket[bytes], replies: list[list[bytes]]) -> None:
        for _ in range(DRAIN_MAX):
            try:
                frames = recv_frames(broker)
            except zmq.Again:
                return
            if frames is None:
                self._bad.warning("dropped a message from the broker with too many frames")
                continue
            try:
                kind, epoch = protocol.decode_node_header(frames[0])
            except ZkvError as exc:
                self._bad.warning("dropped a malformed message from the broker: %s", exc)
                continue
            if kind == protocol.NODE_REQUEST and len(frames) == 5:
                reply = self.handle(frames[2:])
                replies.append(
                    [protocol.node_header(protocol.NODE_REPLY, epoch), frames[1], *reply]
                )
            elif kind == protocol.BROKER_HEARTBEAT:
                pass  # the broker is alive; failure handling comes with replication
            else:
                self._bad.warning(
                    "dropped a broker message of kind %r with %d frames", kind, len(frames)
                )

    def _drain_sync(self, sync: zmq.Socket[bytes]) -> None:
        """Nothing talks to the sync socket before replication; drop what arrives."""
        for _ in range(DRAIN_MAX):
            try:
                recv_frames(sync)
            except zmq.Again:
                return
            self._bad.warning("dropped a message on the sync socket (replication is not enabled)")

    @staticmethod
    def _send(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("broker connection is full or down; dropped an outgoing message")

    # ------------------------------------------------------------------ requests

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """The reply frames for one request's ``[header, key, body]``."""
        self.requests += 1
        request: Request | None = None
        try:
            request = protocol.decode_request(frames, protocol.NODE_OPS)
            protocol.check_key(request.key, self.limits.max_key_bytes)
            result = self._handlers[request.op](request)
            return protocol.encode_reply(request.seq, result)
        except ZkvError as exc:
            self.errors += 1
            seq = request.seq if request is not None else exc.seq
            return protocol.encode_error(seq or 0, exc)
        except Exception as exc:
            self.errors += 1
            log.exception("failed to handle %s", request.op.name if request else "a request")
            seq = request.seq if request is not None else 0
            return protocol.encode_error(seq, ServerError(f"{type(exc).__name__}: {exc}"))

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

    def _scan(self, request: Request) -> list[Any]:
        prefix, slot, after, limit = request.args
        if slot >= self.config.slots:
            raise InvalidRequest(f"slot {slot} is out of range")
        keys, cursor = self.store.scan(prefix, slot, after, limit)
        return [keys, list(cursor) if cursor is not None else None]
