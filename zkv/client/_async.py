"""AsyncClient: the asyncio zkv client, many requests in flight on one socket.

It drives the same ``ClientCore`` call generators as ``Client``, with one DEALER socket
watched by the event loop (``loop.add_reader`` on its ``ZMQ_FD``): each call registers a
future under its sequence number, sends without blocking, and awaits; when the socket
signals, every waiting reply is read in one go and resolves the future of its sequence
number (a reply nobody waits for any more, late after a timeout, is dropped). No task, no
``zmq.asyncio`` future per message: 64 calls in flight cost one wake-up per batch of
replies. Its operations are ``Client``'s, awaitable (``keys()``, ``items()`` and
``values()`` are async iterators), and a test keeps their names and signatures in step. It
is not a mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import zmq
import zmq.asyncio

from zkv.client._core import (
    DEFAULT_TIMEOUT_S,
    KEYS_PAGE,
    NOT_SENT,
    Call,
    ClientCore,
    Emit,
    Key,
    Send,
    Walk,
    config_defaults,
)
from zkv.client._feeds import run_async_feed
from zkv.client._pipeline import AsyncPipeline
from zkv.client._sync import (
    DEFAULT_CONNECT_TIMEOUT_S,
    check_connect_timeout,
    configure_socket,
    connect_socket,
    parse_endpoints,
    unreachable,
)
from zkv.client.watch import (
    DEFAULT_MAX_EVENTS,
    DEFAULT_WAIT_S,
    Cursor,
    Resync,
    WatchCore,
    WatchEvent,
)
from zkv.errors import ClientClosed
from zkv.protocol import REPLY_HEADER, Consistency, reply_seq
from zkv.runtime import send_frames
from zkv.security import CurveKeys

__all__ = ["AsyncClient"]

_NOBLOCK: Final = int(zmq.NOBLOCK)
_REPLY_HEADER_BYTES: Final = REPLY_HEADER.size


def _expire(future: asyncio.Future[list[bytes] | None]) -> None:
    """A call's wait ran out: it gets None (no reply)."""
    if not future.done():
        future.set_result(None)


class AsyncClient:
    """An asyncio connection to a zkv cluster through its broker.

    ``AsyncClient("tcp://127.0.0.1:7400")`` or ``AsyncClient.from_config(path)``; use it as
    ``async with``, or call ``await aclose()``. Operations and their arguments are those of
    ``zkv.Client``; any number may be awaited at once, from any tasks of one event loop.
    ``curve=`` and ``from_config(path, client=NAME)`` connect to a secured cluster, as with
    ``zkv.Client``.
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
        #: As ``Client.endpoint``.
        self.endpoint = ",".join(parse_endpoints(endpoint))
        #: As ``Client.curve``.
        self.curve = curve
        self.connect_timeout_s = check_connect_timeout(connect_timeout_s)
        #: As ``Client.reached``.
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
        self._context: zmq.Context[Any] = context or zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = self._connect()
        #: As ``Client._feeds``: each watch feed's own connection (``zmq.asyncio``).
        self._feeds: set[zmq.asyncio.Socket] = set()
        self._pending: dict[int, asyncio.Future[list[bytes] | None]] = {}
        #: The loop whose reader watches the socket, and that socket's ZMQ_FD there.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._read_soon = False

    @classmethod
    def from_config(
        cls, path: str | Path, *, client: str | None = None, **kwargs: Any
    ) -> AsyncClient:
        """A client for the cluster described by the YAML file at ``path``; as
        ``Client.from_config``, ``client=NAME`` names its key in a secured cluster."""
        return cls(config_defaults(path, kwargs, client, CurveKeys.for_client), **kwargs)

    def _connect(self) -> zmq.Socket[bytes]:
        # a plain socket even on a zmq.asyncio context: the loop watches its ZMQ_FD itself
        sock: zmq.Socket[bytes] = zmq.Socket(self._context, zmq.DEALER)
        configure_socket(sock, self.max_reply_bytes, self.curve)
        connect_socket(sock, self.endpoint)
        return sock

    def _connect_feed(self) -> zmq.asyncio.Socket:
        """A connection of a watch feed's own, awaited by the feed (``zmq.asyncio``)."""
        sock = zmq.asyncio.Socket(self._context, zmq.DEALER)
        configure_socket(sock, self.max_reply_bytes, self.curve)
        connect_socket(sock, self.endpoint)
        return sock

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read replies whenever the socket signals on ``loop`` (the running one)."""
        self._unlisten()
        assert self._socket is not None
        self._loop, self._fd = loop, int(self._socket.get(zmq.FD))
        loop.add_reader(self._fd, self._read_replies)

    def _unlisten(self) -> None:
        if self._loop is not None and self._fd is not None:
            with contextlib.suppress(Exception):  # a loop closed since
                self._loop.remove_reader(self._fd)
        self._loop = self._fd = None

    def _read_replies(self) -> None:
        """Hand every waiting reply to the call waiting for it (until ``zmq.Again``, so that
        the socket signals again at the next one)."""
        self._read_soon = False
        sock, pending = self._socket, self._pending
        if sock is None:
            return
        while True:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed meanwhile
                return
            if len(frames) == 2 and len(frames[0]) == _REPLY_HEADER_BYTES:
                future = pending.get(reply_seq(frames[0]))
                if future is not None and not future.done():
                    future.set_result(frames)

    def _renew_socket(self) -> None:
        """A new connection: ZeroMQ never retries a CURVE handshake the server refused (a
        key not admitted yet), so a client that never got through starts afresh."""
        loop = self._loop
        self._unlisten()
        old, self._socket = self._socket, self._connect()
        if old is not None:
            old.close(linger=0)
        if loop is not None:
            self._listen(loop)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the connection; later calls raise ``ClientClosed``. Safe to call twice."""
        self._unlisten()
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        for sock in list(self._feeds):
            sock.close(linger=0)
        self._feeds.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClientClosed("this client was closed"))
        self._pending.clear()

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` was called."""
        return self._socket is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<zkv.AsyncClient {self.endpoint} {'closed' if self.closed else 'open'}>"

    # ------------------------------------------------------------------ driver

    async def _run(self, call: Call) -> Any:
        if self._socket is None:
            call.close()
            raise ClientClosed("this client was closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._listen(loop)
        started = self._core.clock()
        try:
            action = next(call)
            while True:
                if isinstance(action, Send):
                    reply = await self._exchange(action)
                    limit = self.connect_timeout_s
                    if (
                        reply is NOT_SENT
                        and not self.reached
                        and limit is not None
                        and self._core.clock() - started >= limit
                    ):
                        call.close()
                        if self.curve is not None:
                            self._renew_socket()
                        raise unreachable(self.endpoint, limit)
                    action = call.send(reply)
                else:
                    await asyncio.sleep(action.seconds)
                    action = next(call)
        except StopIteration as stop:
            return stop.value

    async def _walk(self, walk: Walk) -> AsyncIterator[Any]:
        """Drive a ``ClientCore`` walk: run each of its calls (one ``_run`` each) and yield
        the items it emits."""
        with contextlib.closing(walk):
            result: Any = None
            while True:
                try:
                    step = walk.send(result)
                except StopIteration:
                    return
                if isinstance(step, Emit):
                    for item in step.items:
                        yield item
                    result = None
                else:
                    result = await self._run(step)

    async def _exchange(self, send: Send) -> list[bytes] | None:
        sock, loop = self._socket, self._loop
        if sock is None or loop is None:
            raise ClientClosed("this client was closed")
        future: asyncio.Future[list[bytes] | None] = loop.create_future()
        self._pending[send.seq] = future
        try:
            try:
                send_frames(sock, send.frames)
            except zmq.Again:
                return NOT_SENT
            self.reached = True
            if not self._read_soon:  # the send may have taken the socket's wake-up signal
                self._read_soon = True
                loop.call_soon(self._read_replies)
            timer = loop.call_later(max(send.deadline - self._core.clock(), 0.0), _expire, future)
            try:
                return await future
            finally:
                timer.cancel()
        finally:
            if self._pending.get(send.seq) is future:
                del self._pending[send.seq]

    # ------------------------------------------------------------------ operations

    async def get(
        self,
        key: Key,
        default: Any = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> Any:
        """As ``Client.get``."""
        return await self._run(
            self._core.get(key, default, timeout=timeout, consistency=consistency)
        )

    async def put(
        self,
        key: Key,
        value: Any,
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> None:
        """As ``Client.put``."""
        await self._run(self._core.put(key, value, ttl, timeout=timeout, consistency=consistency))

    async def delete(
        self, key: Key, *, timeout: float | None = None, consistency: str | None = None
    ) -> bool:
        """As ``Client.delete``."""
        result: bool = await self._run(
            self._core.delete(key, timeout=timeout, consistency=consistency)
        )
        return result

    async def create(
        self,
        key: Key,
        value: Any,
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> None:
        """As ``Client.create``."""
        await self._run(
            self._core.create(key, value, ttl, timeout=timeout, consistency=consistency)
        )

    async def exists(
        self, key: Key, *, timeout: float | None = None, consistency: str | None = None
    ) -> bool:
        """As ``Client.exists``."""
        result: bool = await self._run(
            self._core.exists(key, timeout=timeout, consistency=consistency)
        )
        return result

    async def cas(
        self,
        key: Key,
        expected: Any,
        new: Any,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> bool:
        """As ``Client.cas``."""
        result: bool = await self._run(
            self._core.cas(key, expected, new, timeout=timeout, consistency=consistency)
        )
        return result

    async def expire(
        self,
        key: Key,
        seconds: float,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> bool:
        """As ``Client.expire``."""
        result: bool = await self._run(
            self._core.expire(key, seconds, timeout=timeout, consistency=consistency)
        )
        return result

    async def ttl(
        self, key: Key, *, timeout: float | None = None, consistency: str | None = None
    ) -> float | None:
        """As ``Client.ttl``."""
        result: float | None = await self._run(
            self._core.ttl(key, timeout=timeout, consistency=consistency)
        )
        return result

    async def mget(
        self,
        keys: Iterable[Key],
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> dict[Key, Any]:
        """As ``Client.mget``."""
        result: dict[Key, Any] = await self._run(
            self._core.mget(keys, timeout=timeout, consistency=consistency)
        )
        return result

    async def mput(
        self,
        mapping: Mapping[Key, Any],
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> None:
        """As ``Client.mput``."""
        await self._run(self._core.mput(mapping, ttl, timeout=timeout, consistency=consistency))

    def keys(
        self,
        prefix: Key = "",
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> AsyncIterator[Key]:
        """As ``Client.keys``, an async iterator."""
        return self._walk(self._core.walk_keys(prefix, timeout=timeout, consistency=consistency))

    async def keys_page(
        self,
        prefix: Key = "",
        cursor: list[Any] | None = None,
        limit: int = KEYS_PAGE,
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> tuple[list[Key], list[Any] | None]:
        """As ``Client.keys_page``."""
        result: tuple[list[Key], list[Any] | None] = await self._run(
            self._core.keys_page(prefix, cursor, limit, timeout=timeout, consistency=consistency)
        )
        return result

    def items(
        self,
        prefix: Key = "",
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> AsyncIterator[tuple[Key, Any]]:
        """As ``Client.items``, an async iterator."""
        return self._walk(self._core.walk_items(prefix, timeout=timeout, consistency=consistency))

    def values(
        self,
        prefix: Key = "",
        *,
        timeout: float | None = None,
        consistency: str | None = None,
    ) -> AsyncIterator[Any]:
        """As ``Client.values``, an async iterator."""
        return self._walk(self._core.walk_values(prefix, timeout=timeout, consistency=consistency))

    async def clear(self, *, timeout: float | None = None, consistency: str | None = None) -> None:
        """As ``Client.clear``."""
        await self._run(self._core.clear(timeout=timeout, consistency=consistency))

    async def count(self, *, timeout: float | None = None, consistency: str | None = None) -> int:
        """As ``Client.count``."""
        result: int = await self._run(self._core.count(timeout=timeout, consistency=consistency))
        return result

    async def reshard(
        self,
        from_shard: str | None = None,
        to_shard: str | None = None,
        count: int | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """As ``Client.reshard``."""
        result: dict[str, Any] = await self._run(
            self._core.reshard(from_shard, to_shard, count, timeout=timeout)
        )
        return result

    async def failover(
        self, shard: str, to: str | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """As ``Client.failover``."""
        result: dict[str, Any] = await self._run(self._core.failover(shard, to, timeout=timeout))
        return result

    async def cluster_status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """As ``Client.cluster_status``."""
        result: dict[str, Any] = await self._run(self._core.status(timeout=timeout))
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
    ) -> AsyncIterator[WatchEvent | Resync]:
        """As ``Client.watch``: ``async for ev in akv.watch("user:"): ...``."""
        core = WatchCore(
            prefix, cursor, values=values, snapshot=snapshot, wait_s=wait, max_events=max_events
        )
        return self._watch(core)

    def _watch(
        self, core: WatchCore, started: asyncio.Event | None = None
    ) -> AsyncIterator[WatchEvent | Resync]:
        """Drive ``core`` (``zkv.client._feeds.run_async_feed``)."""
        return run_async_feed(self, core, started)

    def pipeline(self) -> AsyncPipeline:
        """As ``Client.pipeline``: ``async with kv.pipeline() as p: ...; await p.execute()``."""
        return AsyncPipeline(self._core, self._run)
