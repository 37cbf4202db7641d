"""Client: the blocking zkv client, also a ``MutableMapping``.

It drives ``ClientCore``'s call generators with one ``zmq.DEALER`` socket connected to the
broker. ZeroMQ reconnects the socket by itself when the broker restarts; ``IMMEDIATE`` keeps
requests from queueing on a connection that does not exist, so the core sees "not sent"
and retries with back-off instead of waiting out its timeout.

Threads: a ``Client`` may be shared between threads. Calls are serialised by a lock (one
request on the socket at a time), which is correct but gives no parallelism; for that, give
each thread its own ``Client``.
"""

from __future__ import annotations

import contextlib
import re
import select
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import zmq

from zkv.client._core import (
    DEFAULT_TIMEOUT_S,
    KEYS_PAGE,
    MISSING,
    NOT_SENT,
    Call,
    ClientCore,
    Emit,
    Key,
    Send,
    Walk,
    config_defaults,
)
from zkv.client._feeds import start_feed
from zkv.client._pipeline import Pipeline
from zkv.client.watch import (
    DEFAULT_MAX_EVENTS,
    DEFAULT_WAIT_S,
    Cursor,
    Resync,
    WatchCore,
    WatchEvent,
)
from zkv.errors import ClientClosed, InvalidRequest, KeyNotFound, Unavailable
from zkv.protocol import REPLY_HEADER, Consistency, reply_seq
from zkv.runtime import send_frames
from zkv.security import CurveKeys

_POLLIN: Final = int(zmq.POLLIN)
_EVENTS: Final = int(zmq.EVENTS)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_REPLY_HEADER_BYTES: Final = REPLY_HEADER.size

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "Client", "parse_endpoint", "parse_endpoints"]

#: How long a client that never reached its broker keeps trying before ``Unavailable``.
DEFAULT_CONNECT_TIMEOUT_S: Final = 1.0
_HOST_PORT: Final = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+|\*):(?P<port>\d+)")


def parse_endpoint(endpoint: str) -> str:
    """The ZeroMQ endpoint for ``endpoint``: ``HOST:PORT`` becomes ``tcp://HOST:PORT``;
    ``tcp://HOST:PORT``, ``ipc://PATH`` and ``inproc://NAME`` are kept. Anything else raises
    ``InvalidRequest`` naming it."""
    if not isinstance(endpoint, str):
        raise InvalidRequest(f"endpoint must be a string, not {type(endpoint).__name__}")
    if endpoint.startswith(("ipc://", "inproc://")) and endpoint.partition("://")[2]:
        return endpoint
    address = endpoint.removeprefix("tcp://")
    m = _HOST_PORT.fullmatch(address)
    if m is None or not 0 < int(m["port"]) <= 65535 or m["host"] == "*":
        raise InvalidRequest(
            f"bad endpoint {endpoint!r}: expected HOST:PORT or tcp://HOST:PORT "
            "(port 1-65535), e.g. tcp://127.0.0.1:7400"
        )
    return f"tcp://{address}"


def parse_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    """The brokers a client talks to: one endpoint, several separated by commas
    (``"a:7400,b:7400"``), or a list of them; each as ``parse_endpoint`` reads it."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed = tuple(
        dict.fromkeys(parse_endpoint(e.strip() if isinstance(e, str) else e) for e in items)
    )
    if not parsed:
        raise InvalidRequest("no broker endpoint given")
    return parsed


def connect_socket(sock: zmq.Socket[Any], endpoints: str) -> None:
    """Connect ``sock`` to each of ``endpoints`` (parsed, separated by commas);
    ``InvalidRequest`` if ZeroMQ refuses one (e.g. a host name it cannot resolve).

    With several brokers the DEALER spreads requests over the connected ones, and a request
    retried after a timeout goes to the next: a broker that stops answering is left behind.
    ZeroMQ heartbeats (1 s, dropped after 3 s of silence) also close a connection to a
    broker whose machine went away without closing it."""
    many = "," in endpoints
    if many:
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    for endpoint in endpoints.split(","):
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise InvalidRequest(f"bad endpoint {endpoint!r}: {exc}") from None


def unreachable(endpoint: str, connect_timeout_s: float) -> Unavailable:
    """The error of a client that never reached its broker within ``connect_timeout_s``."""
    return Unavailable(
        f"cannot reach the cluster at {endpoint} (no connection within {connect_timeout_s:g} s)"
    )


def check_connect_timeout(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise InvalidRequest(f"connect_timeout_s must be a positive number or None, got {value!r}")
    return value


def configure_socket(
    sock: zmq.Socket[Any], max_reply_bytes: int | None = None, curve: CurveKeys | None = None
) -> None:
    """Options every client socket gets (sync or async), before it connects: no linger, no
    queueing on a dead connection, quick reconnection to a restarted broker, no reply frame
    over ``max_reply_bytes`` (None: no limit), and CURVE with ``curve``'s keys if given."""
    if curve is not None:
        curve.apply(sock)
    sock.setsockopt(zmq.LINGER, 0)
    if max_reply_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_reply_bytes)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)


class Client(MutableMapping[Key, Any]):
    """A connection to a zkv cluster through its broker.

    ``Client("tcp://127.0.0.1:7400")`` or ``Client.from_config("config/local.yaml")``.
    Every operation takes keyword-only ``timeout`` (seconds; default ``timeout_s``) and
    ``consistency`` (``"strong"`` or ``"eventual"``; default ``consistency``). Keys are
    ``str`` (stored as UTF-8, so ``"a"`` and ``b"a"`` are one key) or ``bytes``; values are
    anything msgpack can encode and come back equal after a msgpack round trip (tuples come
    back as lists). Use it as a context manager, or call ``close()``.

    ``endpoint`` may name several brokers of one cluster (a list, or ``"a:7400,b:7400"``):
    requests are spread over them and a broker that stops answering is left behind.

    For a cluster with a ``security`` section, pass the client's CURVE keys:
    ``Client(endpoint, curve=CurveKeys.load("keys/app.key_secret"))``, or
    ``Client.from_config(path, client="app")``.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str] = "tcp://127.0.0.1:7400",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        consistency: Consistency | str = Consistency.STRONG,
        max_request_bytes: int = 64 * 1024 * 1024,
        max_keys_per_request: int = 10_000,
        max_reply_bytes: int | None = None,
        context: zmq.Context[Any] | None = None,
        connect_timeout_s: float | None = DEFAULT_CONNECT_TIMEOUT_S,
        curve: CurveKeys | None = None,
    ) -> None:
        #: The broker endpoints, separated by commas (several brokers share the load).
        self.endpoint = ",".join(parse_endpoints(endpoint))
        #: The CURVE keys every connection of this client uses (None: plain text).
        self.curve = curve
        self.connect_timeout_s = check_connect_timeout(connect_timeout_s)
        #: Whether a request ever went out on a connection (after that, a broker that goes
        #: away is waited for up to each call's timeout, not ``connect_timeout_s``).
        self.reached = False
        self._core = ClientCore(
            timeout_s=timeout_s,
            consistency=consistency,
            max_request_bytes=max_request_bytes,
            max_keys_per_request=max_keys_per_request,
        )
        #: ``MAXMSGSIZE`` of the connection: the largest reply frame the cluster can send
        #: (``protocol.max_reply_frame_bytes``; ``from_config`` sets it; None: no limit).
        self.max_reply_bytes = max_reply_bytes
        self._lock = threading.Lock()
        self._socket: zmq.Socket[bytes] | None = None
        self._context = context or zmq.Context.instance()
        self._socket = self._use(self._connect())
        #: The connections of this client's watch feeds (closed with it).
        self._feeds: set[zmq.Socket[bytes]] = set()

    @classmethod
    def from_config(cls, path: str | Path, *, client: str | None = None, **kwargs: Any) -> Client:
        """A client for the cluster described by the YAML file at ``path``.

        Its timeout, consistency and limits come from the file; ``kwargs`` are ``Client``'s
        own and win. A file with a ``security`` section needs the name of one of its
        ``security.clients`` (``client="app"`` reads ``<security.keys>/app.key_secret`` and
        the broker's public key) or explicit ``curve=`` keys; else ``ConfigError``.
        """
        return cls(config_defaults(path, kwargs, client, CurveKeys.for_client), **kwargs)

    def _connect(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        configure_socket(sock, self.max_reply_bytes, self.curve)
        connect_socket(sock, self.endpoint)
        return sock

    def _use(self, sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
        """Make ``sock`` the client's connection (a watch feed's has its own: ``_connect``)."""
        #: Sleeps until the connection's ZMQ_FD signals (see ``_exchange``).
        self._fd_poll = select.poll()
        self._fd_poll.register(int(sock.get(zmq.FD)), select.POLLIN)
        return sock

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connection; later calls raise ``ClientClosed``. Safe to call twice."""
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
            for sock in list(self._feeds):
                sock.close(linger=0)
            self._feeds.clear()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._socket is None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<zkv.Client {self.endpoint} {state}>"

    # ------------------------------------------------------------------ driver

    def _run(self, call: Call) -> Any:
        with self._lock:
            sock = self._socket
            if sock is None:
                call.close()
                raise ClientClosed("this client was closed")
            started = self._core.clock()
            try:
                action = next(call)
                while True:
                    if isinstance(action, Send):
                        reply = self._exchange(sock, action)
                        if reply is NOT_SENT:
                            self._check_reachable(call, started)
                        action = call.send(reply)
                    else:
                        time.sleep(action.seconds)
                        action = next(call)
            except StopIteration as stop:
                return stop.value

    def _check_reachable(self, call: Call, started: float) -> None:
        """Give up on a broker never reached once ``connect_timeout_s`` has passed."""
        limit = self.connect_timeout_s
        if not self.reached and limit is not None and self._core.clock() - started >= limit:
            call.close()
            if self.curve is not None and self._socket is not None:
                # ZeroMQ never retries a CURVE handshake the server refused (a key not
                # admitted yet): a client that never got through starts afresh
                old, self._socket = self._socket, self._use(self._connect())
                old.close(linger=0)
            raise unreachable(self.endpoint, limit)

    def _walk(self, walk: Walk) -> Iterator[Any]:
        """Drive a ``ClientCore`` walk: run each of its calls (one ``_run`` each, so other
        calls may go between pages) and yield the items it emits."""
        with contextlib.closing(walk):
            result: Any = None
            while True:
                try:
                    step = walk.send(result)
                except StopIteration:
                    return
                if isinstance(step, Emit):
                    yield from step.items
                    result = None
                else:
                    result = self._run(step)

    def _exchange(self, sock: zmq.Socket[bytes], send: Send) -> list[bytes] | None:
        """Send a request and wait for its reply: asks the socket's ``ZMQ_EVENTS`` once (the
        send may have taken its wake-up signal), then sleeps in ``poll(2)`` on its ``ZMQ_FD``
        (``zmq.poll`` would ask ``ZMQ_EVENTS`` before and after, a syscall each)."""
        try:
            send_frames(sock, send.frames)
        except zmq.Again:
            return NOT_SENT
        self.reached = True
        clock, seq, fd_poll = self._core.clock, send.seq, self._fd_poll
        while True:
            if not int(sock.get(_EVENTS)) & _POLLIN:
                left_ms = (send.deadline - clock()) * 1000
                woke = left_ms > 0 and fd_poll.poll(max(1, int(left_ms)))
                if not woke and not int(sock.get(_EVENTS)) & _POLLIN:
                    return None
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:  # the FD signalled a command, not a message
                continue
            if (
                len(frames) == 2
                and len(frames[0]) == _REPLY_HEADER_BYTES
                and reply_seq(frames[0]) == seq
            ):
                return frames
            # a late reply to an earlier call that timed out: drop it

    # ------------------------------------------------------------------ operations

    def get(
        self,
        key: Key,
        default: Any = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> Any:
        """The value of ``key``, or ``default`` when it is absent (as ``dict.get``)."""
        return self._run(self._core.get(key, default, timeout=timeout, consistency=consistency))

    def put(
        self,
        key: Key,
        value: Any,
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> None:
        """Set ``key`` to ``value``, expiring after ``ttl`` seconds if given.

        A put without ``ttl`` removes a TTL the key had (as Redis SET does).
        """
        self._run(self._core.put(key, value, ttl, timeout=timeout, consistency=consistency))

    def delete(
        self, key: Key, *, timeout: float | None = None, consistency: str | None = None
    ) -> bool:
        """Remove ``key``; True if it was present."""
        result: bool = self._run(self._core.delete(key, timeout=timeout, consistency=consistency))
        return result

    def create(
        self,
        key: Key,
        value: Any,
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> None:
        """Set ``key`` only if it is absent; raises ``KeyExists`` if it is present."""
        self._run(self._core.create(key, value, ttl, timeout=timeout, consistency=consistency))

    def exists(
        self, key: Key, *, timeout: float | None = None, consistency: str | None = None
    ) -> bool:
        """Whether ``key`` is present (and not expired)."""
        result: bool = self._run(self._core.exists(key, timeout=timeout, consistency=consistency))
        return result

    def cas(
        self,
        key: Key,
        expected: Any,
        new: Any,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> bool:
        """Atomically set ``key`` to ``new`` if its value equals ``expected``.

        Values are compared by their msgpack encodings, so ``1`` and ``1.0`` differ. A
        missing key matches nothing. The key keeps its TTL. True if the value was swapped.
        """
        result: bool = self._run(
            self._core.cas(key, expected, new, timeout=timeout, consistency=consistency)
        )
        return result

    def expire(
        self,
        key: Key,
        seconds: float,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> bool:
        """Expire ``key`` after ``seconds`` (0 or less deletes it); False if it is absent."""
        result: bool = self._run(
            self._core.expire(key, seconds, timeout=timeout, consistency=consistency)
        )
        return result

    def ttl(
        self, key: Key, *, timeout: float | None = None, consistency: str | None = None
    ) -> float | None:
        """Seconds before ``key`` expires, or None if it has no TTL.

        Raises ``KeyNotFound`` if the key is absent.
        """
        result: float | None = self._run(
            self._core.ttl(key, timeout=timeout, consistency=consistency)
        )
        return result

    def mget(
        self, keys: Iterable[Key], *, timeout: float | None = None, consistency: str | None = None
    ) -> dict[Key, Any]:
        """``{key: value}`` for each of ``keys`` that is present, keyed as passed."""
        result: dict[Key, Any] = self._run(
            self._core.mget(keys, timeout=timeout, consistency=consistency)
        )
        return result

    def mput(
        self,
        mapping: Mapping[Key, Any],
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> None:
        """Set every key of ``mapping`` (one message per shard).

        Each shard applies its share atomically; across shards a failure part-way may leave
        some shards written, and the error is raised.
        """
        self._run(self._core.mput(mapping, ttl, timeout=timeout, consistency=consistency))

    def keys(  # type: ignore[override]
        self,
        prefix: Key = "",
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> Iterator[Key]:
        """Every key starting with ``prefix``, paging through each shard in turn.

        Yields ``str`` keys (``bytes`` for keys that are not UTF-8). ``timeout`` applies to
        each page. Keys present for the whole walk are yielded exactly once.
        """
        return self._walk(self._core.walk_keys(prefix, timeout=timeout, consistency=consistency))

    def keys_page(
        self,
        prefix: Key = "",
        cursor: list[Any] | None = None,
        limit: int = KEYS_PAGE,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> tuple[list[Key], list[Any] | None]:
        """One page of ``keys(prefix)``: up to ``limit`` keys and the cursor of the next page.

        Start with ``cursor=None``; a returned cursor of None ends the walk. A page may be
        short (or empty) before the end. For callers that keep their place between calls
        (e.g. an HTTP listing); ``keys()`` pages by itself.
        """
        result: tuple[list[Key], list[Any] | None] = self._run(
            self._core.keys_page(prefix, cursor, limit, timeout=timeout, consistency=consistency)
        )
        return result

    def items(  # type: ignore[override]
        self,
        prefix: Key = "",
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> Iterator[tuple[Key, Any]]:
        """``(key, value)`` for every key starting with ``prefix`` (one ``mget`` per page)."""
        return self._walk(self._core.walk_items(prefix, timeout=timeout, consistency=consistency))

    def values(  # type: ignore[override]
        self,
        prefix: Key = "",
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> Iterator[Any]:
        """The value of every key starting with ``prefix``."""
        return self._walk(self._core.walk_values(prefix, timeout=timeout, consistency=consistency))

    def clear(self, *, timeout: float | None = None, consistency: str | None = None) -> None:
        """Remove every key in the cluster."""
        self._run(self._core.clear(timeout=timeout, consistency=consistency))

    def count(self, *, timeout: float | None = None, consistency: str | None = None) -> int:
        """The number of live keys in the cluster (``len(client)``)."""
        result: int = self._run(self._core.count(timeout=timeout, consistency=consistency))
        return result

    def failover(
        self, shard: str, to: str | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Move ``shard``'s primary role on purpose, e.g. for maintenance, with no write lost.

        The broker stops routing writes to the shard (clients retry meanwhile), waits until
        the target (``to``, or the most advanced in-sync replica) holds every record of the
        current primary, then promotes it; the former primary becomes its replica. Returns
        ``{"shard", "primary", "epoch"}``.
        """
        result: dict[str, Any] = self._run(self._core.failover(shard, to, timeout=timeout))
        return result

    def reshard(
        self,
        from_shard: str | None = None,
        to_shard: str | None = None,
        count: int | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Move slots between shards while they serve (an admin operation).

        With no arguments, rebalance: every shard of the config file (a new one owns no
        slots yet) ends with an even share. Or move ``count`` slots from ``from_shard`` to
        ``to_shard``. Returns ``{"moves", "slots"}`` at once; the moves run in the
        background, one at a time: ``cluster_status()["reshard"]`` shows their progress.
        Requests for a moving slot wait only during its final switch; no write is lost.
        """
        result: dict[str, Any] = self._run(
            self._core.reshard(from_shard, to_shard, count, timeout=timeout)
        )
        return result

    def pipeline(self) -> Pipeline:
        """Queue operations and send them as one request per shard::

        with kv.pipeline() as p:
            p.put("a", 1).get("a")
            results = p.execute()
        """
        return Pipeline(self._core, self._run)

    def cluster_status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The broker's view of the cluster: every node, its shard, role, liveness, counters."""
        result: dict[str, Any] = self._run(self._core.status(timeout=timeout))
        return result

    def watch(
        self,
        prefix: Key = "",
        cursor: Cursor | str | None = None,
        *,
        values: bool = True,
        snapshot: bool = False,
        wait: float = DEFAULT_WAIT_S,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> Iterator[WatchEvent | Resync]:
        """The changes to keys starting with ``prefix``, forever (``zkv.client.watch``)::

            for ev in kv.watch("user:"):
                print(ev.kind, ev.key, ev.value)
                save(ev.cursor)  # watch(cursor=...) resumes right after this event

        ``cursor`` (a ``Cursor`` or its text) resumes a feed; None starts from now.
        ``values=False`` leaves values out; ``snapshot=True`` follows a ``Resync`` with the
        current matching keys (``state`` events). ``wait`` is how long each long poll waits
        on a shard, ``max_events`` the most events one reply carries. The feed has its own
        connection to the broker, so other calls on this client go on meanwhile. Without a
        cursor, the feed starts when ``watch`` returns: changes after that are all seen.
        """
        core = WatchCore(
            prefix, cursor, values=values, snapshot=snapshot, wait_s=wait, max_events=max_events
        )
        return start_feed(self, core)

    # ------------------------------------------------------------------ mapping protocol

    def __getitem__(self, key: Key) -> Any:
        value = self.get(key, MISSING)
        if value is MISSING:
            raise KeyNotFound(f"key {key!r} not found", key=_key_or_none(key))
        return value

    def __setitem__(self, key: Key, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Key) -> None:
        if not self.delete(key):
            raise KeyNotFound(f"key {key!r} not found", key=_key_or_none(key))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        return self.exists(key)

    def __iter__(self) -> Iterator[Key]:
        return self.keys()

    def __len__(self) -> int:
        return self.count()

    def __eq__(self, other: object) -> bool:
        return self is other  # comparing by contents would read the whole store

    def __hash__(self) -> int:
        return id(self)


def _key_or_none(key: Key) -> bytes | None:
    return key.encode() if isinstance(key, str) else key if isinstance(key, bytes) else None
