"""The socket drivers of watch feeds: ``Client.watch`` and ``AsyncClient.watch`` run a
``WatchCore`` (``zkv.client.watch``) on a DEALER of their own with these loops.

Each loop sends the core's requests, waits for replies until the core's next deadline,
hands them to the core and yields the events it returns; when a shard stays unavailable it
reads the shard list again (``cluster_status``). The two differ only by ``await``. The
feed's socket is registered with its client, which closes it when it is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import zmq

from zkv.client.watch import Resync, WatchCore, WatchEvent
from zkv.errors import ClientClosed, TransportError, Unavailable

if TYPE_CHECKING:
    from zkv.client._async import AsyncClient
    from zkv.client._sync import Client

__all__ = ["run_async_feed", "start_feed"]


def start_feed(client: Client, core: WatchCore) -> Iterator[WatchEvent | Resync]:
    """Start ``core`` now (every shard's position known: a feed "from now" sees every change
    after this returns) and return the iterator of its events."""
    if client._socket is None:
        raise ClientClosed("this client was closed")
    core.set_shards(client.cluster_status()["shards"], client._core.clock())
    sock = client._connect()
    client._feeds.add(sock)
    try:
        early = list(_turns(client, core, sock, until_started=True))
    except BaseException:
        client._feeds.discard(sock)
        sock.close(linger=0)
        raise
    return _feed(client, core, sock, early)


def _feed(
    client: Client, core: WatchCore, sock: zmq.Socket[bytes], early: list[WatchEvent | Resync]
) -> Iterator[WatchEvent | Resync]:
    try:
        yield from early
        yield from _turns(client, core, sock)
    finally:
        client._feeds.discard(sock)
        sock.close(linger=0)


def _turns(
    client: Client, core: WatchCore, sock: zmq.Socket[bytes], *, until_started: bool = False
) -> Iterator[WatchEvent | Resync]:
    """Drive ``core`` on ``sock``: forever, or until every shard has a position."""
    clock = client._core.clock
    deadline = clock() + client._core.timeout_s
    while not (until_started and core.started()):
        if until_started and clock() > deadline:
            raise Unavailable("could not start watching: a shard did not answer")
        if client._socket is None or sock.closed:
            raise ClientClosed("this client was closed")
        now = clock()
        for send in core.requests(now):
            try:
                sock.send_multipart(send.frames, zmq.NOBLOCK)
            except zmq.Again:
                core.not_sent(send, now)
        wait_ms = max(1, int((core.next_wake(clock()) - clock()) * 1000))
        try:
            ready = sock.poll(min(wait_ms, 1000), zmq.POLLIN)
        except zmq.ZMQError as exc:  # the client was closed from another thread
            if client._socket is None or sock.closed:
                raise ClientClosed("this client was closed") from exc
            raise
        while ready:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            yield from core.on_reply(frames, clock())
        core.expire(clock())
        if core.refresh_due(clock()):
            try:
                shards = client.cluster_status(timeout=1.0)["shards"]
            except TransportError:
                shards = None
            if shards is not None:
                core.set_shards(shards, clock())


async def run_async_feed(
    client: AsyncClient, core: WatchCore, started: asyncio.Event | None = None
) -> AsyncIterator[WatchEvent | Resync]:
    """Drive ``core`` on a socket of its own, from its first step; ``started`` is set once
    every shard has a position (a feed "from now" sees every change after that)."""
    if client._socket is None:
        raise ClientClosed("this client was closed")
    clock = client._core.clock
    core.set_shards((await client.cluster_status())["shards"], clock())
    sock = client._connect_feed()
    client._feeds.add(sock)
    try:
        while True:
            if client._socket is None or sock.closed:
                raise ClientClosed("this client was closed")
            now = clock()
            for send in core.requests(now):
                try:
                    await sock.send_multipart(send.frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    core.not_sent(send, now)
            wait_ms = max(1, int((core.next_wake(clock()) - clock()) * 1000))
            if await sock.poll(min(wait_ms, 1000)):
                while True:
                    try:
                        frames = await sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    for event in core.on_reply(frames, clock()):
                        yield event
            core.expire(clock())
            if started is not None and core.started():
                started.set()
            if core.refresh_due(clock()):
                try:
                    shards = (await client.cluster_status(timeout=1.0))["shards"]
                except TransportError:
                    shards = None
                if shards is not None:
                    core.set_shards(shards, clock())
    finally:
        client._feeds.discard(sock)
        sock.close(linger=0)
