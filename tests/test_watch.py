"""Watch feeds on a real cluster: order, resume, failover, broker restart, resync, slot
moves, roles, slow watchers (``zkv.client.watch``, ``zkv.node.watching``).

Each test writes keys whose value names the write, so the events a watcher saw can be
compared with the writes acknowledged: none lost, none repeated, each shard in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Cluster
from test_status_page import GatewayThread, browser, text_of, wait_until  # noqa: F401

import zkv
from zkv.client.watch import Cursor, Resync, WatchEvent
from zkv.config import load_config
from zkv.security import CurveKeys

pytestmark = pytest.mark.timeout(90)

TWO_SHARDS = {"s0": ["s0a"], "s1": ["s1a"]}


@dataclass
class Watcher:
    """A thread reading a feed into ``events`` until told to stop."""

    feed: Iterator[WatchEvent | Resync]
    prefix: str
    events: list[WatchEvent | Resync] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.feed:
                self.events.append(event)
                if self.stop.is_set():
                    return
        except BaseException as exc:
            self.errors.append(exc)

    def puts(self) -> list[tuple[str, Any]]:
        return [(e.key, e.value) for e in self.events if e.kind == "put"]  # type: ignore[union-attr]

    def finish(self, c: Cluster, kv: zkv.Client) -> None:
        """Stop once the feed is past a last write on every shard (so it saw all before)."""
        fences = {f"{self.prefix}zz-fence-{i}" for i in range(64)}
        kv.mput(dict.fromkeys(fences, 1))
        c.wait_for(
            lambda: fences <= {k for k, _ in self.puts()} or bool(self.errors),
            "the watcher to see the fence writes",
            timeout=30,
        )
        self.stop.set()
        kv.put(f"{self.prefix}zz-fence-0", 2)  # wakes it up to see ``stop``
        self.thread.join(10)
        assert not self.errors, self.errors


def check_order(events: list[Any]) -> None:
    """Per shard, events come in strictly increasing (seq, index) order, none repeated."""
    last: dict[str, tuple[int, int]] = {}
    for event in events:
        if isinstance(event, Resync) or event.kind == "state":
            continue
        position = (event.seq, event.cursor[event.shard][2])
        assert position > last.get(event.shard, (0, 0)), (event, last.get(event.shard))
        last[event.shard] = position


def test_events_kinds_order_and_resume(cluster_factory: Any) -> None:
    c = cluster_factory(TWO_SHARDS)
    kv = c.client()
    feed = c.client().watch("k:", wait=1.0)
    kv.put("k:a", 1)
    kv.put("other", 1)  # not watched
    kv.mput({f"k:m{i}": i for i in range(20)})
    kv.expire("k:a", 0.3)
    kv.put("k:b", 2, ttl=0.2)
    kv.delete("k:m0")
    kv.clear()
    kv.put("k:last", 1)
    events: list[Any] = []
    started = time.monotonic()
    kinds: Counter[str] = Counter()
    wanted = Counter(put=23, ttl=1, delete=1, clear=2)  # a clear per shard
    for event in feed:
        events.append(event)
        kinds[event.kind] += 1
        if all(kinds[k] >= n for k, n in wanted.items()):
            break
    print(f"\n{len(events)} events in {time.monotonic() - started:.2f} s")
    assert all(kinds[k] == n for k, n in wanted.items()), kinds
    assert "other" not in {e.key for e in events}
    # the expiries happen before the clear only if their time came: either way, at most one
    assert kinds["expire"] <= 2
    check_order(events)
    # resume from the cursor after the tenth event: exactly the rest, in the same order
    cut = events[9].cursor
    again = c.client().watch("k:", cursor=str(cut), wait=1.0)
    rest = [next(again) for _ in range(len(events) - 10)]
    # shards are independent feeds: compare each shard's events, in order
    for shard in ("s0", "s1"):
        assert [(e.seq, e.kind, e.key) for e in rest if e.shard == shard] == [
            (e.seq, e.kind, e.key) for e in events[10:] if e.shard == shard
        ]


def test_a_cursor_resumes_across_a_restart_of_a_single_node_shard(cluster_factory: Any) -> None:
    # no replica to fail over to: the restarted node refills its watch history from its log
    c = cluster_factory({"s0": ["s0a"]})
    kv = c.client()
    feed = c.client().watch("r:", wait=1.0)
    for i in range(10):
        kv.put(f"r:{i}", i)
    seen = [next(feed) for _ in range(10)]
    cursor = seen[4].cursor
    c.restart("s0a")  # stopped cleanly: its log holds every acknowledged write
    kv.put("r:after", 1)
    again = c.client().watch("r:", cursor=str(cursor), wait=1.0)
    rest: list[Any] = []
    for event in again:  # a Resync (the history lost) would be followed by nothing here
        rest.append(event)
        if isinstance(event, Resync) or len(rest) == 6:
            break
    assert not any(isinstance(e, Resync) for e in rest), rest
    assert [e.key for e in rest] == [f"r:{i}" for i in range(5, 10)] + ["r:after"]


@pytest.mark.fault
def test_no_event_lost_or_repeated_across_failover_and_broker_restart(
    cluster_factory: Any,
) -> None:
    c = cluster_factory({"s0": ["s0a", "s0b"], "s1": ["s1a"]})
    kv = c.client(timeout_s=20.0)
    c.wait_for(
        lambda: c.node("s0b")["state"] == "following" and c.node("s0b")["in_sync"],
        "the replica to be in sync",
    )
    watcher = Watcher(c.client(timeout_s=20.0).watch("w:", wait=1.0), "w:")
    acked: dict[str, int] = {}
    unknown: set[str] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        writer = c.client(timeout_s=20.0)
        i = 0
        try:
            while not stop.is_set():
                key = f"w:{i % 200}:{i}"
                try:
                    writer.put(key, i)
                    acked[key] = i
                except zkv.Timeout:
                    unknown.add(key)
                i += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        c.wait_for(lambda: len(acked) > 300, "writes before the kill")
        c.procs["s0a"].signal(signal.SIGKILL)
        killed = time.monotonic()
        c.wait_for(lambda: c.node("s0b")["role"] == "primary", "s0b to be promoted")
        goal = len(acked) + 300
        c.wait_for(lambda: len(acked) > goal, "writes after the failover", timeout=30)
        print(f"\nfailover: {time.monotonic() - killed:.2f} s to 300 more writes")
        c.restart("broker")
        goal = len(acked) + 300
        c.wait_for(lambda: len(acked) > goal, "writes after the broker restart", timeout=30)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    started = time.monotonic()
    watcher.finish(c, kv)
    print(f"watcher caught up {time.monotonic() - started:.2f} s after the writes stopped")
    puts = [(k, v) for k, v in watcher.puts() if "zz-fence" not in k]
    repeated = [p for p, n in Counter(puts).items() if n > 1]
    assert not repeated, f"{len(repeated)} events repeated, e.g. {repeated[:5]}"
    seen = dict(puts)
    lost = {k: v for k, v in acked.items() if seen.get(k) != v}
    assert not lost, f"{len(lost)} acknowledged writes not seen, e.g. {list(lost.items())[:5]}"
    assert set(seen) <= set(acked) | unknown  # nothing that was not written
    assert not any(isinstance(e, Resync) for e in watcher.events)
    check_order(watcher.events)
    print(f"{len(puts)} events, {len(acked)} writes acknowledged, {len(unknown)} unknown")


def test_resync_when_history_is_gone_with_and_without_snapshot(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]}, watch={"history_records": 50})
    kv = c.client()
    feed = c.client().watch("r:", wait=0.5)
    kv.put("r:first", 0)
    first = next(feed)
    assert first.key == "r:first"
    for i in range(100):  # far more records than the history keeps
        kv.put(f"r:{i % 10}", i)
    resync = next(c.client().watch("r:", cursor=first.cursor, wait=0.5))
    assert isinstance(resync, Resync) and resync.shard == "s0" and not resync.snapshot
    print(f"\nresync: {resync.reason}")
    # with a snapshot: the current keys, then the feed goes on from where they stand
    feed = c.client().watch("r:", cursor=first.cursor, snapshot=True, wait=0.5)
    resync = next(feed)
    assert isinstance(resync, Resync) and resync.snapshot
    state = {}
    for _ in range(11):
        event = next(feed)
        assert event.kind == "state"
        state[event.key] = event.value
    assert state == {"r:first": 0, **{f"r:{i}": 90 + i for i in range(10)}}
    kv.put("r:after", 1)
    after = next(feed)
    assert (after.kind, after.key) == ("put", "r:after")
    # a cursor past what the shard holds (a history it never had) resyncs too
    ahead = Cursor({"s0": (1, 10**9, 0)})
    assert isinstance(next(c.client().watch("r:", cursor=ahead, wait=0.5)), Resync)


def test_slow_watcher_keeps_memory_bounded(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]}, watch={"history_records": 200, "history_bytes": 65536})
    kv = c.client()
    slow = c.client().watch("s:", wait=0.5)  # started, then not read while writes go on
    value = "x" * 1000
    for i in range(0, 3000, 100):
        kv.mput({f"s:{j}": value for j in range(i, i + 100)})
        for j in range(i, i + 100, 10):
            kv.put(f"s:{j}", value)
    node = c.node("s0a")
    print(f"\nhistory kept: {node['watch_records']} records, {node['watch_bytes']} bytes")
    assert node["watch_records"] <= 200
    assert node["watch_bytes"] <= 65536 + 200 * 1100
    assert node["watchers"] <= 1
    read = 0
    for event in slow:  # what the one reply it had waiting holds, then the resync
        if isinstance(event, Resync):
            break
        read += 1
        assert read < 5000
    print(f"resync after {read} events: {event.reason}")


def test_slot_move_keeps_the_feed_complete(cluster_factory: Any) -> None:
    c = cluster_factory(TWO_SHARDS)
    kv = c.client(timeout_s=20.0)
    for start in range(0, 20_000, 5000):
        kv.mput({f"m:{i}": -1 for i in range(start, start + 5000)})
    watcher = Watcher(c.client(timeout_s=20.0).watch("m:", wait=1.0), "m:")
    acked: dict[str, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        writer = c.client(timeout_s=20.0)
        i = 0
        try:
            while not stop.is_set():
                key = f"m:{i % 20_000}"
                writer.put(key, i)
                acked[key] = i
                i += 1
        except BaseException as exc:
            errors.append(exc)
        written.append(i)

    written: list[int] = []

    thread = threading.Thread(target=write)
    thread.start()
    try:
        kv.reshard("s0", "s1", 4000)
        c.wait_for(
            lambda: (r := kv.cluster_status()["reshard"]) is not None and r["moves_left"] == 0,
            "the reshard to end",
            timeout=60,
        )
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    watcher.finish(c, kv)
    puts = [(k, v) for k, v in watcher.puts() if "zz-fence" not in k]
    assert len(puts) == written[0]  # every write once
    assert all(v != -1 for _, v in puts)  # a moved copy is not an event
    repeated = [p for p, n in Counter(puts).items() if n > 1]
    assert not repeated, repeated[:5]
    assert not any(e.kind in ("delete", "state") for e in watcher.events)  # nor a dropped key
    seen: dict[str, list[int]] = {}
    for key, value in puts:
        seen.setdefault(key, []).append(value)
    # every write seen once; for each key the last value seen from its last shard is the
    # last write (per shard the order holds; see the README on order across a move)
    assert sum(len(v) for v in seen.values()) == len(puts)
    assert all(acked[k] in vs for k, vs in seen.items() if k in acked)
    check_order(watcher.events)
    print(f"\n{len(puts)} events across the move of {len(acked)} keys")


def test_roles_see_only_their_prefixes(cluster_factory: Any, tmp_path: Any) -> None:
    clients = {
        "admin": {"role": "admin"},
        "reader": {"role": "read", "prefixes": ["a:"]},
        "gateway": {"role": "admin"},
    }
    c = cluster_factory(TWO_SHARDS, security={"keys": str(tmp_path / "keys"), "clients": clients})
    admin = c.client()
    reader = c.client(curve=CurveKeys.for_client(load_config(c.config), "reader"))
    feed = reader.watch("", wait=0.5)
    for i in range(20):
        admin.put(f"a:{i}", i)
        admin.put(f"b:{i}", i)
    seen = [next(feed) for _ in range(20)]
    assert {e.key for e in seen} == {f"a:{i}" for i in range(20)}
    with pytest.raises(zkv.PermissionDenied):
        next(reader.watch("b:", wait=0.5))


async def test_async_watch(cluster_factory: Any) -> None:
    c = cluster_factory(TWO_SHARDS)
    kv = c.client()
    async with zkv.AsyncClient(c.endpoint, timeout_s=5.0) as akv:
        feed = akv.watch("as:", wait=0.5)
        first = asyncio.ensure_future(feed.__anext__())
        await asyncio.sleep(0)  # the feed starts at its first step: give it one
        while True:  # a write after the feed's start is seen (it starts "from now")
            await asyncio.to_thread(kv.put, "as:0", 0)
            try:
                event = await asyncio.wait_for(asyncio.shield(first), 0.5)
                break
            except TimeoutError:
                continue
        assert event.key == "as:0"
        await asyncio.to_thread(kv.mput, {f"as:{i}": i for i in range(1, 10)})
        got = {event.key}
        async for event in feed:
            got.add(event.key)
            if len(got) == 10:
                break
        await feed.aclose()  # type: ignore[attr-defined]
        assert got == {f"as:{i}" for i in range(10)}


async def _sse_events(response: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` events of an SSE stream, each ``{"id", "event", "data"}``."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode().rstrip("\n")
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else value
    return events


async def test_http_sse_resumes_with_last_event_id(cluster_factory: Any) -> None:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from zkv.http import create_app

    c = cluster_factory({"s0": ["s0a"]})
    kv = c.client()
    async with zkv.AsyncClient(c.endpoint, timeout_s=5.0) as akv:
        server = TestServer(create_app(akv), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            async with ClientSession() as http:
                url = f"http://127.0.0.1:{server.port}/api/watch"
                async with http.get(url, params={"prefix": "h:"}) as response:
                    assert response.headers["Content-Type"].startswith("text/event-stream")
                    await asyncio.to_thread(kv.mput, {f"h:{i}": i for i in range(3)})
                    await asyncio.to_thread(kv.put, "h:3", [1, "x"])
                    await asyncio.to_thread(kv.put, "other", 1)
                    await asyncio.to_thread(kv.delete, "h:0")
                    events = await _sse_events(response, 5)
                assert [(e["event"], e["data"]["key"]) for e in events] == [
                    ("put", "h:0"),
                    ("put", "h:1"),
                    ("put", "h:2"),
                    ("put", "h:3"),
                    ("delete", "h:0"),
                ]
                assert events[3]["data"]["value"] == [1, "x"]
                assert all(e["id"] == e["data"]["cursor"] for e in events)
                # a browser's EventSource reconnects with the last id it saw
                headers = {"Last-Event-ID": events[1]["id"]}
                async with http.get(url, params={"prefix": "h:"}, headers=headers) as response:
                    again = await _sse_events(response, 3)
                assert [e["data"]["key"] for e in again] == ["h:2", "h:3", "h:0"]
        finally:
            await server.close()


def test_cli_watch_prints_json_lines(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    kv = c.client()
    feed = kv.watch("c:", wait=0.5)
    kv.put("c:before", 0)
    cursor = next(feed).cursor
    kv.mput({"c:1": 1, "c:2": {"a": [1, 2]}})
    kv.delete("c:1")
    argv = [sys.executable, "-m", "zkv", "watch", "c:", "--cursor", str(cursor)]
    argv += ["--config", str(c.config), "--count", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["kind"], e["key"], e["value"]) for e in lines] == [
        ("put", "c:1", 1),
        ("put", "c:2", {"a": [1, 2]}),
        ("delete", "c:1", None),
    ]
    assert lines[-1]["cursor"].startswith("s0@")


def test_status_page_shows_a_live_tail(browser: Any, cluster_factory: Any) -> None:  # noqa: F811
    c = cluster_factory({"s0": ["s0a"]})
    gateway = GatewayThread(c.endpoint)
    try:
        browser.get(gateway.start())
        wait_until("the tail to be live", lambda: text_of(browser, "tail-state") == "(live)")
        kv = c.client()
        kv.put("tail:one", 1)
        kv.delete("tail:one")
        text = wait_until(
            "the changes in the tail",
            lambda: (t := text_of(browser, "tail")) and "delete  tail:one" in t and t,
        )
        assert "put  tail:one" in text and text.index("delete") < text.index("put")
    finally:
        gateway.stop()


async def test_http_watch_token_sees_only_its_prefixes(cluster_factory: Any) -> None:
    import hashlib

    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from zkv.access import ClientRole
    from zkv.config import TokenConfig
    from zkv.http import create_app
    from zkv.http.auth import Tokens

    c = cluster_factory(TWO_SHARDS)
    kv = c.client()
    digest = hashlib.sha256(b"secret-a").hexdigest()
    tokens = Tokens({"a": TokenConfig("a", digest, ClientRole.READ, ("a:",))})
    async with zkv.AsyncClient(c.endpoint, timeout_s=5.0) as akv:
        server = TestServer(create_app(akv, tokens=tokens), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            async with ClientSession() as http:
                url = f"http://127.0.0.1:{server.port}/api/watch"
                headers = {"Authorization": "Bearer secret-a"}
                async with http.get(url, params={"prefix": "b:"}, headers=headers) as response:
                    assert response.status == 403
                async with http.get(url, headers=headers) as response:
                    assert response.status == 200
                    for i in range(10):
                        await asyncio.to_thread(kv.mput, {f"a:{i}": i, f"b:{i}": i})
                    events = await _sse_events(response, 10)
                assert {e["data"]["key"] for e in events} == {f"a:{i}" for i in range(10)}
        finally:
            await server.close()


def test_evictions_are_events(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]}, memory={"max_bytes": 64 * 1024, "policy": "allkeys-lru"})
    kv = c.client()
    feed = kv.watch("e:", wait=0.5)
    value = "x" * 1000
    for i in range(100):  # about 100 KB into 64 KB: the oldest keys are evicted
        kv.put(f"e:{i:03d}", value)
    kinds: Counter[str] = Counter()
    for event in feed:
        kinds[event.kind] += 1
        if kinds["put"] == 100:
            break
    print(f"\n{kinds}")
    assert kinds["evict"] > 0 and kinds["evict"] == 100 - kv.count()
    c.wait_for(lambda: c.node("s0a")["evictions"] == kinds["evict"], "the node's count")


def test_closing_the_client_ends_its_feed(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    kv = c.client()
    feed = kv.watch("z:", wait=5.0)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            next(feed)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)  # most likely in its long poll by now; either way it must end
    kv.close()
    reader.join(5)
    assert not reader.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], zkv.ClientClosed), errors
