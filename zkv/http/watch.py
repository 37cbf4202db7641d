"""``GET /api/watch``: a change feed as Server-Sent Events (``zkv.client.watch``).

Query: ``prefix`` (default: every key), ``cursor`` (a ``Cursor`` in its text form; the
``Last-Event-ID`` header, which a browser's ``EventSource`` sends when it reconnects, wins
over it), ``values`` (``false`` leaves values out), ``snapshot`` (``true``: after a resync
the current matching keys follow as ``state`` events). Each event is::

    id: <cursor after this event>
    event: put | delete | expire | evict | ttl | clear | state | resync
    data: {"kind", "key", "value", "expires_at", "shard", "seq", "epoch", "cursor"}

(a ``resync`` carries ``shard``, ``reason``, ``snapshot`` and ``cursor``). Keys and values
are JSON as in the rest of the API (``zkv.http.codec``). A comment line (``: keep-alive``)
goes out every ``HEARTBEAT_S`` without events, so proxies keep the connection open.

The feed runs through the gateway's ``AsyncClient``: the events of one connection pass
through a queue of ``QUEUE_EVENTS`` at most, so a reader that does not keep up holds the
feed back (its long polls wait on the queue) and, once the shard's history has moved past
it, gets a ``resync``: a slow reader never grows the gateway's memory. With bearer tokens
the token's grant must allow WATCH, and the feed is narrowed to the token's prefixes
(``Grant.narrow``): no key outside them is ever sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

from aiohttp import web

from zkv.access import Grant
from zkv.client import AsyncClient
from zkv.client.watch import Resync, WatchCore, WatchEvent
from zkv.errors import InvalidRequest, PermissionDenied, show_key
from zkv.http.codec import event_json, key_from_json
from zkv.protocol import Op

__all__ = ["HEARTBEAT_S", "QUEUE_EVENTS", "STREAMS", "close_streams", "watch_stream"]

log = logging.getLogger(__name__)

#: Seconds without events before a keep-alive comment goes out.
HEARTBEAT_S: Final = 15.0
#: Events waiting to be written to one connection at most.
QUEUE_EVENTS: Final = 1000
#: The app's open streams (their handler tasks), ended when the app shuts down.
STREAMS: Final = web.AppKey("zkv_watch_streams", set[asyncio.Task[Any]])


async def close_streams(app: web.Application) -> None:
    """End every open stream (``on_shutdown``): a feed never ends by itself, and the
    server would otherwise wait for it before it stops."""
    for task in list(app.get(STREAMS, ())):
        task.cancel()


def _flag(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise InvalidRequest(f"query parameter {name!r} must be true or false, got {text!r}")


async def watch_stream(
    request: web.Request, client: AsyncClient, grant: Grant | None
) -> web.StreamResponse:
    """Serve ``GET /api/watch`` (see the module docstring) until the reader goes away."""
    prefix = request.query.get("prefix", "")
    if prefix:  # empty: every key
        prefix = key_from_json(prefix, "query parameter 'prefix'")
    cursor = request.headers.get("Last-Event-ID") or request.query.get("cursor") or None
    core = WatchCore(
        prefix,
        cursor,
        values=_flag(request, "values", True),
        snapshot=_flag(request, "snapshot", False),
    )
    if grant is not None:
        grant.check_op(Op.WATCH)
        core.prefixes = grant.narrow(core.prefixes)
        if not core.prefixes:
            raise PermissionDenied(
                f"WATCH {show_key(core.prefix)}: token {grant.name!r} may read none of these "
                "keys; watch a prefix inside its own"
            )
    started = asyncio.Event()
    feed = client._watch(core, started)
    queue: asyncio.Queue[WatchEvent | Resync | BaseException] = asyncio.Queue(QUEUE_EVENTS)
    failed: list[Exception] = []

    async def pump() -> None:
        try:
            async for event in feed:
                await queue.put(event)
        except Exception as exc:  # handed to the writer, which ends the stream
            failed.append(exc)
            started.set()
            await queue.put(exc)

    task = asyncio.get_running_loop().create_task(pump())
    streams = request.app.get(STREAMS)
    handler = asyncio.current_task()
    if streams is not None and handler is not None:
        streams.add(handler)
    try:
        await started.wait()  # a refused watch is answered with its error, not a stream
        if failed and not core.started():
            raise failed[0]
        return await _stream(request, queue)
    finally:
        if streams is not None:
            streams.discard(handler)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(Exception):
            await feed.aclose()  # type: ignore[attr-defined]


async def _stream(
    request: web.Request, queue: asyncio.Queue[WatchEvent | Resync | BaseException]
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if isinstance(item, BaseException):
                log.warning("watch feed ended: %s: %s", type(item).__name__, item)
                data = json.dumps({"kind": "error", "message": str(item)})
                await response.write(f"event: error\ndata: {data}\n\n".encode())
                break
            doc = event_json(item)
            text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
            await response.write(
                f"id: {doc['cursor']}\nevent: {doc['kind']}\ndata: {text}\n\n".encode()
            )
    except ConnectionResetError:
        pass  # the reader went away
    return response
