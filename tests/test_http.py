"""The HTTP gateway over real HTTP against real clusters: every route, every error."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import zmq
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import free_port, ttl_left
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

import zkv
import zkv.cli
from zkv.cli import main as zkv_main
from zkv.http import create_app, openapi_document, serve
from zkv.http.app import ROUTES, status_of
from zkv.http.codec import decode_cursor, encode_cursor
from zkv.http.metrics import GatewayMetrics
from zkv.storage.eviction import KEY_OVERHEAD_BYTES

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def b64(data: bytes) -> dict[str, str]:
    return {"$b64": base64.b64encode(data).decode()}


def quote(key: str) -> str:
    return urllib.parse.quote(key, safe="/")


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any


@dataclass
class Gateway:
    """A gateway app served on 127.0.0.1 and an HTTP session to call it."""

    http: aiohttp.ClientSession
    port: int
    app: web.Application

    def url(self, path: str, params: dict[str, str] | None = None) -> URL:
        """``path`` is already percent-encoded; ``params`` are encoded here."""
        url = URL(f"http://127.0.0.1:{self.port}{path}", encoded=True)
        return url.update_query(params) if params else url

    async def call(
        self,
        method: str,
        path: str,
        body: Any = ...,
        *,
        data: bytes | str | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        if body is not ...:
            data = json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.http.request(
            method, self.url(path, params), data=data, headers=headers
        ) as response:
            text = await response.text()
            if response.content_type == "application/json":
                return Reply(response.status, json.loads(text), response.headers)
            return Reply(response.status, text, response.headers)


def assert_error(reply: Reply, status: int, code: str) -> str:
    """``reply`` is the JSON error ``code`` with HTTP ``status``; returns its message."""
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert set(reply.body) == {"error"}
    assert set(reply.body["error"]) == {"code", "message"}
    assert reply.body["error"]["code"] == code, reply.body
    message = reply.body["error"]["message"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message
    return message


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[..., Any]]:
    """Serve ``create_app(client)`` on 127.0.0.1, a free port; every one is stopped."""
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(client: zkv.AsyncClient, **kwargs: Any) -> Gateway:
        app = create_app(client, **kwargs)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        session = aiohttp.ClientSession()
        sessions.append(session)
        assert server.port is not None
        return Gateway(session, server.port, app)

    try:
        yield start
    finally:
        for session in sessions:
            await session.close()
        for server in servers:
            await server.close()


@pytest.fixture
async def client(cluster: Any) -> AsyncIterator[zkv.AsyncClient]:
    """The gateway's own client of the module's cluster."""
    async with zkv.AsyncClient(cluster.endpoint, timeout_s=5.0) as c:
        yield c


@pytest.fixture
async def kv(cluster: Any) -> AsyncIterator[zkv.AsyncClient]:
    """Another client, to check through zkv what the gateway did."""
    async with zkv.AsyncClient(cluster.endpoint, timeout_s=5.0) as c:
        yield c


@pytest.fixture
async def gw(start_gateway: Callable[..., Any], client: zkv.AsyncClient) -> Gateway:
    gateway: Gateway = await start_gateway(client)
    return gateway


# --------------------------------------------------------------------------- writes and reads


async def test_post_creates_then_overwrites_and_create_only_conflicts(
    gw: Gateway, kv: zkv.AsyncClient, ns: str
) -> None:
    key = ns + "k"
    reply = await gw.call("POST", "/api/kv", {"key": key, "value": {"n": 1, "l": [1, "a"]}})
    assert reply.status == 201
    assert set(reply.body) == {"message"} and "created" in reply.body["message"]
    assert await kv.get(key) == {"n": 1, "l": [1, "a"]}
    assert await kv.ttl(key) is None

    reply = await gw.call("POST", "/api/kv", {"key": key, "value": 2, "create": False})
    assert reply.status == 200
    assert set(reply.body) == {"message"} and "overwritten" in reply.body["message"]
    assert await kv.get(key) == 2

    reply = await gw.call("POST", "/api/kv", {"key": key, "value": 3, "create": True})
    assert "exists" in assert_error(reply, 409, "KeyExists")
    assert await kv.get(key) == 2

    reply = await gw.call("POST", "/api/kv", {"key": ns + "new", "value": None, "create": True})
    assert reply.status == 201
    assert await kv.exists(ns + "new")
    assert await kv.get(ns + "new", "absent") is None


async def test_post_with_ttl_and_consistency(gw: Gateway, kv: zkv.AsyncClient, ns: str) -> None:
    body = {"key": ns + "t", "value": "v", "ttl": 100, "consistency": "eventual"}
    since = time.monotonic()
    assert (await gw.call("POST", "/api/kv", body)).status == 201
    ttl = await kv.ttl(ns + "t")
    assert ttl_left(ttl, 100, since), ttl
    body = {"key": ns + "t", "value": "w", "ttl": None, "consistency": None, "create": None}
    assert (await gw.call("POST", "/api/kv", body)).status == 200
    assert await kv.get(ns + "t") == "w"
    assert await kv.ttl(ns + "t") is None  # a write without ttl removes it, as put does


async def test_put_get_delete_by_path_with_slashes_and_odd_characters(
    gw: Gateway, kv: zkv.AsyncClient, ns: str
) -> None:
    for key in [ns + "users/1/name", ns + "dir/sub/ü x?#%&=+", ns + "a%2Fb", ns + "x/../y//z"]:
        path = "/api/kv/" + quote(key)
        reply = await gw.call("PUT", path, ["the", "value", 1.5])
        assert reply.status == 200 and set(reply.body) == {"message"}
        assert await kv.get(key) == ["the", "value", 1.5]

        reply = await gw.call("GET", path)
        assert reply.status == 200
        assert reply.body == {"key": key, "value": ["the", "value", 1.5]}
        reply = await gw.call("GET", path, params={"consistency": "eventual"})
        assert reply.status == 200 and reply.body["value"] == ["the", "value", 1.5]

        reply = await gw.call("DELETE", path)
        assert reply.status == 200 and set(reply.body) == {"message"}
        assert not await kv.exists(key)
        assert "not found" in assert_error(await gw.call("GET", path), 404, "KeyNotFound")
        assert_error(await gw.call("DELETE", path), 404, "KeyNotFound")


async def test_put_query_ttl_and_consistency(gw: Gateway, kv: zkv.AsyncClient, ns: str) -> None:
    path = "/api/kv/" + quote(ns + "p")
    since = time.monotonic()
    reply = await gw.call("PUT", path, "x", params={"ttl": "50", "consistency": "strong"})
    assert reply.status == 200
    ttl = await kv.ttl(ns + "p")
    assert ttl_left(ttl, 50, since), ttl
    assert (await gw.call("PUT", path, "y")).status == 200
    assert await kv.get(ns + "p") == "y"
    assert await kv.ttl(ns + "p") is None
    for params in [
        {"ttl": "abc"},
        {"ttl": "-1"},
        {"ttl": "0"},
        {"ttl": "nan"},
        {"ttl": "inf"},
        {"consistency": "bogus"},
    ]:
        reply = await gw.call("PUT", path, "z", params=params)
        assert next(iter(params)) in assert_error(reply, 400, "InvalidRequest")
    reply = await gw.call("PUT", path + "?ttl=1&ttl=2", "z")
    assert "2 times" in assert_error(reply, 400, "InvalidRequest")
    assert await kv.get(ns + "p") == "y"
    assert_error(await gw.call("PUT", path, data=""), 400, "InvalidRequest")
    assert_error(await gw.call("PUT", path, data="{nope"), 400, "InvalidRequest")
    assert_error(await gw.call("GET", path, params={"consistency": "x"}), 400, "InvalidRequest")


async def test_keys_named_like_routes_are_reachable(
    gw: Gateway, kv: zkv.AsyncClient, ns: str
) -> None:
    # POST /api/kv/batch and /api/kv/mget are routes; other methods reach the keys.
    for key in ["batch", "mget"]:
        path = "/api/kv/" + key
        assert (await gw.call("PUT", path, key + "!")).status == 200
        assert (await gw.call("GET", path)).body == {"key": key, "value": key + "!"}
        assert await kv.get(key) == key + "!"
        assert (await gw.call("DELETE", path)).status == 200
        assert not await kv.exists(key)


async def test_simple_store_routes(gw: Gateway, kv: zkv.AsyncClient, ns: str) -> None:
    assert (await gw.call("POST", "/put", {"key": ns + "a", "value": 1})).status == 201
    assert (await gw.call("POST", "/set", {"key": ns + "a", "value": 2})).status == 200
    reply = await gw.call("POST", "/set", {"key": ns + "a", "value": 3, "create": True})
    assert_error(reply, 409, "KeyExists")
    since = time.monotonic()
    assert (await gw.call("POST", "/set", {"key": ns + "b", "value": 9, "ttl": 30})).status == 201
    assert await kv.get(ns + "a") == 2
    ttl = await kv.ttl(ns + "b")
    assert ttl_left(ttl, 30, since), ttl

    reply = await gw.call("GET", "/get", params={"key": ns + "a"})
    assert reply.status == 200 and reply.body == {"key": ns + "a", "value": 2}
    reply = await gw.call("DELETE", "/delete", params={"key": ns + "a"})
    assert reply.status == 200 and set(reply.body) == {"message"}
    assert not await kv.exists(ns + "a")
    assert_error(await gw.call("GET", "/get", params={"key": ns + "a"}), 404, "KeyNotFound")
    assert_error(await gw.call("DELETE", "/delete", params={"key": ns + "a"}), 404, "KeyNotFound")
    # a key with `.` segments travels safely in the query
    key = ns + "../x/./y"
    await kv.put(key, "dots")
    assert (await gw.call("GET", "/get", params={"key": key})).body["value"] == "dots"
    for method, path in [("GET", "/get"), ("DELETE", "/delete")]:
        message = assert_error(await gw.call(method, path), 400, "InvalidRequest")
        assert "'key'" in message
        assert_error(await gw.call(method, path, params={"key": ""}), 400, "InvalidRequest")


async def test_bytes_and_special_values_travel_both_ways(
    gw: Gateway, kv: zkv.AsyncClient, ns: str
) -> None:
    raw = bytes(range(256))
    value = {"blob": b64(raw), "list": [b64(b""), {"$b64": "aGk=", "other": 1}], "n": None}
    assert (await gw.call("POST", "/api/kv", {"key": ns + "b", "value": value})).status == 201
    assert await kv.get(ns + "b") == {
        "blob": raw,
        "list": [b"", {"$b64": "aGk=", "other": 1}],  # two members: a plain map
        "n": None,
    }
    reply = await gw.call("GET", "/api/kv/" + quote(ns + "b"))
    assert reply.body["value"] == value
    assert (await gw.call("PUT", "/api/kv/" + quote(ns + "top"), b64(b"\x00\xff"))).status == 200
    assert await kv.get(ns + "top") == b"\x00\xff"

    # values stored by Python clients that JSON cannot say directly
    await kv.put(ns + "py", {1: b"x", b"k": [float("nan"), float("inf"), -math.inf], None: 2})
    reply = await gw.call("GET", "/api/kv/" + quote(ns + "py"))
    assert reply.body["value"] == {
        "1": b64(b"x"),
        "k": ["NaN", "Infinity", "-Infinity"],
        "null": 2,
    }
    big = 2**64 - 1
    assert (await gw.call("PUT", "/api/kv/" + quote(ns + "big"), big)).status == 200
    assert await kv.get(ns + "big") == big
    for bad in [{"$b64": "not base64!"}, {"$b64": 5}, 2**64, -(2**63) - 1]:
        reply = await gw.call("POST", "/api/kv", {"key": ns + "bad", "value": bad})
        assert_error(reply, 400, "InvalidRequest")
    assert not await kv.exists(ns + "bad")


# --------------------------------------------------------------------------- many keys


async def test_batch_then_mget(gw: Gateway, kv: zkv.AsyncClient, ns: str) -> None:
    items = {f"{ns}{i}": {"i": i} for i in range(40)}
    items[ns + "bytes"] = b64(b"\x01\x02")
    since = time.monotonic()
    reply = await gw.call("POST", "/api/kv/batch", {"items": items, "ttl": 60})
    assert reply.status == 200
    assert reply.body["count"] == 41 and "41" in reply.body["message"]
    stored = await kv.mget(list(items))
    assert stored == {**{f"{ns}{i}": {"i": i} for i in range(40)}, ns + "bytes": b"\x01\x02"}
    ttl = await kv.ttl(ns + "7")
    assert ttl_left(ttl, 60, since), ttl

    wanted = [ns + "3", ns + "missing", ns + "bytes", ns + "3"]
    reply = await gw.call("POST", "/api/kv/mget", {"keys": wanted, "consistency": "eventual"})
    assert reply.status == 200
    assert reply.body == {"values": {ns + "3": {"i": 3}, ns + "bytes": b64(b"\x01\x02")}}
    reply = await gw.call("POST", "/api/kv/mget", {"keys": []})
    assert reply.status == 200 and reply.body == {"values": {}}
    reply = await gw.call("POST", "/api/kv/batch", {"items": {}})
    assert reply.status == 200 and reply.body["count"] == 0

    assert_error(await gw.call("POST", "/api/kv/batch", {"items": [1]}), 400, "InvalidRequest")
    assert_error(await gw.call("POST", "/api/kv/batch", {}), 400, "InvalidRequest")
    reply = await gw.call("POST", "/api/kv/batch", {"items": {ns + "z": 1}, "ttl": "1"})
    assert_error(reply, 400, "InvalidRequest")
    reply = await gw.call("POST", "/api/kv/batch", {"items": {"": 1}})
    assert_error(reply, 400, "InvalidRequest")
    assert not await kv.exists(ns + "z")
    assert_error(await gw.call("POST", "/api/kv/mget", {"keys": "a"}), 400, "InvalidRequest")
    message = assert_error(
        await gw.call("POST", "/api/kv/mget", {"keys": ["a", 1]}), 400, "InvalidRequest"
    )
    assert '"keys"[1]' in message
    assert_error(await gw.call("POST", "/api/kv/mget", {"key": ["a"]}), 400, "InvalidRequest")


async def test_listing_pages_with_a_cursor(gw: Gateway, kv: zkv.AsyncClient, ns: str) -> None:
    prefix = ns + "list/"
    expected = {f"{prefix}{i:03}" for i in range(250)}
    await kv.mput(dict.fromkeys(expected, 0))
    await kv.put(ns + "listx", 0)  # shares most of the prefix, not all of it
    await kv.put(prefix.encode() + b"\xff\xfe", 0)  # not UTF-8

    seen: list[Any] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"prefix": prefix, "limit": "100"}
        if cursor is not None:
            params["cursor"] = cursor
        reply = await gw.call("GET", "/api/kv", params=params)
        assert reply.status == 200 and set(reply.body) == {"keys", "cursor"}
        assert len(reply.body["keys"]) <= 100
        if pages == 0:
            assert len(reply.body["keys"]) == 100
        seen.extend(reply.body["keys"])
        pages += 1
        cursor = reply.body["cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert 3 <= pages <= 4
    texts = [k for k in seen if isinstance(k, str)]
    assert len(texts) == len(set(texts)) == 250
    assert set(texts) == expected
    assert [k for k in seen if not isinstance(k, str)] == [b64(prefix.encode() + b"\xff\xfe")]

    # the cursor carries the prefix; without a limit a page holds up to 100 keys
    first = await gw.call("GET", "/api/kv", params={"prefix": prefix, "limit": "7"})
    assert len(first.body["keys"]) == 7
    second = await gw.call("GET", "/api/kv", params={"cursor": first.body["cursor"]})
    assert second.status == 200 and len(second.body["keys"]) == 100
    assert not set(first.body["keys"]) & set(second.body["keys"])
    assert all(k.startswith(prefix) for k in second.body["keys"])
    everything = await gw.call("GET", "/api/kv", params={"limit": "10000"})
    assert everything.status == 200
    assert len(everything.body["keys"]) >= 252

    reply = await gw.call("GET", "/api/kv", params={"prefix": ns, "cursor": first.body["cursor"]})
    assert "prefix" in assert_error(reply, 400, "InvalidRequest")
    for bad in ["garbage!", "e30", encode_cursor(prefix, ["nope", 0, None])]:
        assert_error(await gw.call("GET", "/api/kv", params={"cursor": bad}), 400, "InvalidRequest")
    for limit in ["0", "-3", "abc", "10001", "1.5"]:
        reply = await gw.call("GET", "/api/kv", params={"limit": limit})
        assert "limit" in assert_error(reply, 400, "InvalidRequest")


async def test_listing_with_no_match_ends_at_once(gw: Gateway, ns: str) -> None:
    reply = await gw.call("GET", "/api/kv", params={"prefix": ns + "nothing-here"})
    assert reply.status == 200 and reply.body == {"keys": [], "cursor": None}


def test_cursor_round_trip() -> None:
    for position in [["s0", 0, None], ["s2", 16383, b"\xff\x00key"]]:
        assert decode_cursor(encode_cursor("p/ü", position)) == ("p/ü", position)


# --------------------------------------------------------------------------- bad requests


BAD_BODIES = {
    "not json": b"{not json",
    "empty": b"",
    "whitespace": b"  \n",
    "array": b"[1, 2]",
    "string": b'"key"',
    "missing key": b'{"value": 1}',
    "missing value": b'{"key": "k"}',
    "key not string": b'{"key": 5, "value": 1}',
    "key null": b'{"key": null, "value": 1}',
    "empty key": b'{"key": "", "value": 1}',
    "ttl string": b'{"key": "k", "value": 1, "ttl": "10"}',
    "ttl bool": b'{"key": "k", "value": 1, "ttl": true}',
    "ttl zero": b'{"key": "k", "value": 1, "ttl": 0}',
    "ttl negative": b'{"key": "k", "value": 1, "ttl": -5}',
    "create not bool": b'{"key": "k", "value": 1, "create": "yes"}',
    "bad consistency": b'{"key": "k", "value": 1, "consistency": "linearizable"}',
    "unknown field": b'{"key": "k", "value": 1, "tll": 5}',
    "NaN": b'{"key": "k", "value": NaN}',
    "Infinity": b'{"key": "k", "value": Infinity}',
    "huge float": b'{"key": "k", "value": 1e400}',
    "huge int": b'{"key": "k", "value": 123456789012345678901234567890}',
    "lone surrogate": b'{"key": "k\\ud800", "value": 1}',
    "not utf-8": b'{"key": "k\xff", "value": 1}',
    "too deep": b'{"key": "k", "value": ' + b"[" * 300 + b"]" * 300 + b"}",
    "deeper than json": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
@pytest.mark.parametrize("path", ["/api/kv", "/put"])
async def test_bad_bodies_are_400(
    gw: Gateway, kv: zkv.AsyncClient, body: bytes, path: str, ns: str
) -> None:
    await kv.delete("k")
    reply = await gw.call("POST", path, data=body)
    assert_error(reply, 400, "InvalidRequest")
    assert not await kv.exists("k")


async def test_oversized_keys_and_values_are_413(gw: Gateway, kv: zkv.AsyncClient, ns: str) -> None:
    long_key = ns + "k" * 300  # the test cluster's max_key_bytes is 256
    reply = await gw.call("POST", "/api/kv", {"key": long_key, "value": 1})
    assert "max_key_bytes" in assert_error(reply, 413, "KeyTooLarge")
    assert_error(await gw.call("PUT", "/api/kv/" + long_key, 1), 413, "KeyTooLarge")
    assert_error(await gw.call("GET", "/api/kv/" + long_key), 413, "KeyTooLarge")
    huge_key = "h" * 70_000  # over any key frame: refused by the gateway itself
    reply = await gw.call("POST", "/api/kv", {"key": huge_key, "value": 1})
    assert_error(reply, 413, "KeyTooLarge")
    assert_error(await gw.call("GET", "/get", params={"key": huge_key}), 413, "KeyTooLarge")

    big = "x" * 70_000  # max_value_bytes is 64 KiB
    reply = await gw.call("POST", "/api/kv", {"key": ns + "v", "value": big})
    assert "max_value_bytes" in assert_error(reply, 413, "ValueTooLarge")
    assert_error(await gw.call("PUT", "/api/kv/" + quote(ns + "v"), big), 413, "ValueTooLarge")
    items = {ns + "ok": 1, ns + "big": big}
    assert_error(await gw.call("POST", "/api/kv/batch", {"items": items}), 413, "ValueTooLarge")
    assert await kv.mget([ns + "v", ns + "ok", ns + "big"]) == {}  # nothing stored
    # as zkv.Client.mget: an over-limit key is simply not there
    reply = await gw.call("POST", "/api/kv/mget", {"keys": [ns + "a", long_key]})
    assert reply.status == 200 and reply.body == {"values": {}}
    reply = await gw.call("POST", "/api/kv/mget", {"keys": [ns + "a", huge_key]})
    assert_error(reply, 413, "KeyTooLarge")


async def test_body_over_the_gateway_limit_is_413(
    start_gateway: Callable[..., Any], client: zkv.AsyncClient, kv: zkv.AsyncClient, ns: str
) -> None:
    gw = await start_gateway(client, max_body_bytes=1000)
    reply = await gw.call("POST", "/api/kv", {"key": ns + "k", "value": "x" * 2000})
    assert "1000" in assert_error(reply, 413, "RequestTooLarge")
    assert not await kv.exists(ns + "k")
    assert (await gw.call("POST", "/api/kv", {"key": ns + "k", "value": "x" * 100})).status == 201


async def test_unknown_route_and_wrong_method(gw: Gateway) -> None:
    assert "/nowhere" in assert_error(await gw.call("GET", "/nowhere"), 404, "NotFound")
    assert_error(await gw.call("GET", "/api/kv/"), 404, "NotFound")
    reply = await gw.call("PATCH", "/api/kv", {"key": "k", "value": 1})
    assert "PATCH" in assert_error(reply, 405, "MethodNotAllowed")
    assert set(reply.headers["Allow"].split(",")) == {"GET", "POST"}
    assert_error(await gw.call("POST", "/get"), 405, "MethodNotAllowed")
    assert_error(await gw.call("POST", "/api/kv/some/key", 1), 405, "MethodNotAllowed")


async def test_a_gateway_bug_is_a_json_500_with_the_traceback_logged(
    start_gateway: Callable[..., Any], cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(zkv.AsyncClient):
        async def get(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals")

    async with Broken(cluster.endpoint) as broken:
        gw = await start_gateway(broken)
        with caplog.at_level(logging.ERROR, logger="zkv.http.app"):
            reply = await gw.call("GET", "/api/kv/anything")
        message = assert_error(reply, 500, "InternalError")
        assert "secret" not in message
        records = [r for r in caplog.records if r.name == "zkv.http.app"]
        assert records and records[0].exc_info is not None
        assert "secret internals" in str(records[0].exc_info[1])
        assert (await gw.call("GET", "/api/status")).status == 200  # the rest still works


# --------------------------------------------------------------------------- unavailable, timeout


async def test_no_broker_is_503(start_gateway: Callable[..., Any]) -> None:
    async with zkv.AsyncClient(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.5) as nowhere:
        gw = await start_gateway(nowhere)
        assert_error(await gw.call("GET", "/api/kv/k"), 503, "Unavailable")
        assert_error(await gw.call("POST", "/api/kv", {"key": "k", "value": 1}), 503, "Unavailable")
        assert_error(await gw.call("GET", "/api/kv"), 503, "Unavailable")
        assert_error(await gw.call("GET", "/api/status"), 503, "Unavailable")
        reply = await gw.call("GET", "/metrics")  # still answers, without the cluster part
        assert reply.status == 200
        samples = metric_samples(reply.body)
        assert samples[("zkv_cluster_status_up", ())] == 0
        assert not [name for name, _ in samples if name.startswith("zkv_node_")]
        key = ("zkv_http_requests_total", (("operation", "get"), ("outcome", "Unavailable")))
        assert samples[key] == 1


async def test_silent_broker_is_504(start_gateway: Callable[..., Any]) -> None:
    context = zmq.Context()
    silent = context.socket(zmq.ROUTER)  # takes requests, never answers
    silent.setsockopt(zmq.LINGER, 0)
    try:
        port = silent.bind_to_random_port("tcp://127.0.0.1")
        async with zkv.AsyncClient(f"tcp://127.0.0.1:{port}", timeout_s=0.5) as client:
            gw = await start_gateway(client)
            # until the client's connection is up, a read's error is Unavailable: wait for it
            assert (await gw.call("GET", "/api/kv/warm-up")).status in (503, 504)
            assert silent.poll(5000)
            assert "no reply" in assert_error(await gw.call("GET", "/api/kv/k"), 504, "Timeout")
            message = assert_error(await gw.call("PUT", "/api/kv/k", 1), 504, "Timeout")
            assert "may or may not" in message
            reply = await gw.call("POST", "/api/kv/mget", {"keys": ["a"]})
            assert_error(reply, 504, "Timeout")
    finally:
        silent.close()
        context.term()


@pytest.mark.fault
async def test_a_shard_without_live_node_is_503(
    cluster_factory: Any, start_gateway: Callable[..., Any]
) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    async with zkv.AsyncClient(c.endpoint, timeout_s=1.0) as client:
        gw = await start_gateway(client)
        assert (await gw.call("POST", "/api/kv", {"key": "k", "value": 1})).status == 201
        c.procs["s0a"].stop()
        c.wait_alive(["s0a"], alive=False)
        assert_error(await gw.call("GET", "/api/kv/k"), 503, "Unavailable")
        assert_error(await gw.call("POST", "/api/kv", {"key": "k", "value": 2}), 503, "Unavailable")
        reply = await gw.call("GET", "/metrics")
        samples = metric_samples(reply.body)
        assert samples[("zkv_node_alive", (("node", "s0a"), ("shard", "s0")))] == 0
        assert samples[("zkv_shard_serving", (("shard", "s0"),))] == 0


@pytest.mark.fault
async def test_a_paused_node_is_504(
    cluster_factory: Any, start_gateway: Callable[..., Any]
) -> None:
    c = cluster_factory({"s0": ["s0a"]}, heartbeat={"interval_s": 0.1, "liveness": 300})
    async with zkv.AsyncClient(c.endpoint, timeout_s=1.0) as client:
        gw = await start_gateway(client)
        assert (await gw.call("PUT", "/api/kv/k", 1)).status == 200
        c.procs["s0a"].signal(signal.SIGSTOP)
        try:
            assert_error(await gw.call("GET", "/api/kv/k"), 504, "Timeout")
            assert_error(await gw.call("DELETE", "/delete", params={"key": "k"}), 504, "Timeout")
        finally:
            c.procs["s0a"].signal(signal.SIGCONT)


# --------------------------------------------------------------------------- status, openapi


async def test_status_route(gw: Gateway) -> None:
    reply = await gw.call("GET", "/api/status")
    assert reply.status == 200
    assert {n["name"] for n in reply.body["nodes"]} == {"s0a", "s1a", "s2a"}
    assert set(reply.body["shards"]) == {"s0", "s1", "s2"}
    assert reply.body["broker"]["failovers"] == 0
    assert all(n["alive"] is True for n in reply.body["nodes"])


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/")
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


async def test_openapi_document_matches_the_routes_exactly(gw: Gateway) -> None:
    reply = await gw.call("GET", "/openapi.json")
    assert reply.status == 200
    doc = reply.body
    assert doc == openapi_document()
    assert doc["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    served = {
        (route.method, resource.canonical)
        for resource in gw.app.router.resources()
        for route in resource
    }
    assert documented == served
    assert len(served) == len(ROUTES)

    operation_ids = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["responses"] and "summary" in operation
            params = [
                resolve(doc, p["$ref"]) if "$ref" in p else p
                for p in operation.get("parameters", [])
            ]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, (
                method,
                path,
            )
    assert len(operation_ids) == len(set(operation_ids))
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref


# --------------------------------------------------------------------------- metrics


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics(
    gw: Gateway, start_gateway: Callable[..., Any], client: zkv.AsyncClient, ns: str
) -> None:
    assert (await gw.call("POST", "/api/kv", {"key": ns + "m", "value": 1})).status == 201
    assert (await gw.call("GET", "/api/kv/" + quote(ns + "m"))).status == 200
    assert (await gw.call("GET", "/api/kv/" + quote(ns + "m"))).status == 200
    assert (await gw.call("GET", "/get", params={"key": ns + "none"})).status == 404
    assert (await gw.call("POST", "/api/kv", data=b"{")).status == 400
    assert (await gw.call("GET", "/nowhere")).status == 404

    reply = await gw.call("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = metric_samples(reply.body)

    def requests(operation: str, outcome: str) -> float:
        labels = (("operation", operation), ("outcome", outcome))
        return samples.get(("zkv_http_requests_total", labels), 0.0)

    assert requests("set", "ok") == 1
    assert requests("get", "ok") == 2
    assert requests("get", "KeyNotFound") == 1
    assert requests("set", "InvalidRequest") == 1
    assert requests("unmatched", "NotFound") == 1

    def latency_count(route: str, method: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return samples.get(("zkv_http_request_duration_seconds_count", labels), 0.0)

    assert latency_count("/api/kv/{key}", "GET", "200") == 2
    assert latency_count("/api/kv", "POST", "201") == 1
    assert latency_count("/get", "GET", "404") == 1
    assert latency_count("unmatched", "GET", "404") == 1
    inf_bucket = (
        "zkv_http_request_duration_seconds_bucket",
        (("le", "+Inf"), ("method", "GET"), ("route", "/api/kv/{key}"), ("status", "200")),
    )
    assert samples[inf_bucket] == 2

    status = await client.cluster_status()
    assert samples[("zkv_cluster_status_up", ())] == 1
    assert samples[("zkv_broker_failovers_total", ())] == status["broker"]["failovers"] == 0
    assert samples[("zkv_broker_requests_total", ())] > 0
    for node in status["nodes"]:
        labels = (("node", node["name"]), ("shard", node["shard"]))
        assert samples[("zkv_node_alive", labels)] == 1
        assert samples[("zkv_node_primary", labels)] == 1
        assert samples[("zkv_node_epoch", labels)] == node["epoch"]
        for gauge in ["keys", "seq"]:
            assert samples[(f"zkv_node_{gauge}", labels)] >= 0
        for counter in ["requests", "errors", "fsyncs"]:
            assert samples[(f"zkv_node_{counter}_total", labels)] >= 0
        assert samples[("zkv_node_used_bytes", labels)] >= 0
        assert samples[("zkv_node_max_bytes", labels)] == 0  # no memory limit
        assert samples[("zkv_node_evictions_total", labels)] == 0
        assert samples[("zkv_shard_epoch", (("shard", node["shard"]),))] >= 0
    assert sum(v for (name, _), v in samples.items() if name == "zkv_node_requests_total") > 0

    # a second app in the same process counts on its own registry
    other = await start_gateway(client)
    samples = metric_samples((await other.call("GET", "/metrics")).body)
    assert ("zkv_http_requests_total", (("operation", "set"), ("outcome", "ok"))) not in samples
    # ...and OpenMetrics is there for those who ask
    async with other.http.get(
        other.url("/metrics"), headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/openmetrics-text"
        assert (await response.text()).rstrip().endswith("# EOF")


# --------------------------------------------------------------------------- a full or failing disk


def test_storage_errors_map_to_507_and_503() -> None:
    full = zkv.StorageFull("node s0a: disk full (12.3 MB free, under 64 MiB)")
    assert isinstance(full, zkv.StorageError)  # the subclass must be matched first
    assert status_of(full) == 507
    assert status_of(zkv.StorageError("node s0a: [Errno 5] Input/output error")) == 503
    assert status_of(zkv.OutOfMemory("node s0a: past memory.max_bytes")) == 507
    assert status_of(zkv.ServerError("boom")) == 502  # unchanged
    assert status_of(zkv.Unavailable("no node")) == 503


async def test_a_full_disk_is_a_json_507_and_a_failing_one_503(
    start_gateway: Callable[..., Any],
) -> None:
    """No cluster: a client whose writes fail as a node with a full or failing disk answers."""

    class FullDisk(zkv.AsyncClient):
        async def create(self, *args: Any, **kwargs: Any) -> Any:
            raise zkv.StorageFull("node s0a cannot log the write: no space left on device")

        async def mput(self, *args: Any, **kwargs: Any) -> Any:
            raise zkv.StorageFull("node s1a cannot log the write: no space left on device")

        async def put(self, *args: Any, **kwargs: Any) -> Any:
            raise zkv.StorageError("node s0a cannot log the write: [Errno 5] Input/output error")

        async def delete(self, *args: Any, **kwargs: Any) -> Any:
            raise zkv.StorageError("node s0a cannot log the write: [Errno 5] Input/output error")

    async with FullDisk(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.5) as client:
        gw = await start_gateway(client)
        reply = await gw.call("POST", "/api/kv", {"key": "k", "value": 1})
        assert "no space left" in assert_error(reply, 507, "StorageFull")
        reply = await gw.call("POST", "/api/kv/batch", {"items": {"a": 1}})
        assert_error(reply, 507, "StorageFull")
        reply = await gw.call("PUT", "/api/kv/k", 1)
        assert "Input/output" in assert_error(reply, 503, "StorageError")
        assert_error(await gw.call("DELETE", "/delete", params={"key": "k"}), 503, "StorageError")
        samples = metric_samples((await gw.call("GET", "/metrics")).body)
        for operation, outcome in [("set", "StorageFull"), ("put", "StorageError")]:
            labels = (("operation", operation), ("outcome", outcome))
            assert samples[("zkv_http_requests_total", labels)] == 1

    # the OpenAPI document lists them on the writes (and only there)
    doc = openapi_document()
    for path, method in [
        ("/api/kv", "post"),
        ("/put", "post"),
        ("/api/kv/{key}", "put"),
        ("/api/kv/{key}", "delete"),
        ("/delete", "delete"),
        ("/api/kv/batch", "post"),
    ]:
        responses = doc["paths"][path][method]["responses"]
        assert responses["507"] == {"$ref": "#/components/responses/InsufficientStorage"}, path
        for code in ("StorageFull", "OutOfMemory"):
            assert code in resolve(doc, responses["507"]["$ref"])["description"], path
        assert "StorageError" in resolve(doc, responses["503"]["$ref"])["description"], path
    for path, method in [("/api/kv/{key}", "get"), ("/api/kv/mget", "post"), ("/api/kv", "get")]:
        assert "507" not in doc["paths"][path][method]["responses"], path


def storage_nodes() -> list[dict[str, Any]]:
    """A made-up STATUS's nodes: every storage state, and the values a node may not know."""
    node = {"shard": "s0", "role": "primary", "alive": True, "state": "serving", "pid": 7}
    return [
        {**node, "name": "s0a", "storage": "ok", "storage_error": "", "free_bytes": 12_345_678},
        {
            **node,
            "name": "s0b",
            "role": "replica",
            "storage": "low",
            "storage_error": "",
            "free_bytes": 50_000_000,
        },
        {
            **node,
            "name": "s1a",
            "shard": "s1",
            "storage": "full",
            "storage_error": "[Errno 28] No space left on device: 'data/s1a/00000001.log'",
            "free_bytes": 0,
        },
        {
            **node,
            "name": "s2a",
            "shard": "s2",
            "storage": "error",
            "storage_error": "[Errno 5] Input/output error",
            "free_bytes": -1,  # could not be read
        },
        # never reported: the broker knows nothing of it
        {
            **node,
            "name": "s3a",
            "shard": "s3",
            "storage": None,
            "storage_error": None,
            "free_bytes": None,
        },
        {**node, "name": "s4a", "shard": "s4"},  # an older broker: no storage keys at all
    ]


def test_metrics_show_free_bytes_and_the_storage_state() -> None:
    body, _ = GatewayMetrics().render({"nodes": storage_nodes(), "shards": {}, "broker": {}})
    samples = metric_samples(body.decode())

    def node(name: str, shard: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((("node", name), ("shard", shard), *extra)))

    assert samples[("zkv_node_free_bytes", node("s0a", "s0"))] == 12_345_678
    assert samples[("zkv_node_free_bytes", node("s0b", "s0"))] == 50_000_000
    assert samples[("zkv_node_free_bytes", node("s1a", "s1"))] == 0
    free = {labels for name, labels in samples if name == "zkv_node_free_bytes"}
    assert free == {node("s0a", "s0"), node("s0b", "s0"), node("s1a", "s1")}  # unknown: left out

    states = {
        (dict(labels)["node"], dict(labels)["state"]): value
        for (name, labels), value in samples.items()
        if name == "zkv_node_storage_state"
    }
    for name, current in [("s0a", "ok"), ("s0b", "low"), ("s1a", "full"), ("s2a", "error")]:
        assert {s: v for (n, s), v in states.items() if n == name} == {
            s: (1.0 if s == current else 0.0) for s in ("ok", "low", "full", "error")
        }, name
    assert not {n for n, _ in states} & {"s3a", "s4a"}  # unknown: left out, no crash


def test_zkv_status_shows_each_disk_and_the_error_of_one_not_ok(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {
        "cluster": "test",
        "slots": 16384,
        "broker": {"pid": 1, "clients": "tcp://127.0.0.1:7400"},
        "nodes": storage_nodes(),
    }

    class FakeClient:
        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def cluster_status(self) -> dict[str, Any]:
            return status

    monkeypatch.setattr(zkv.cli, "_client", lambda args: FakeClient())
    assert zkv_main(["status", "--connect", "tcp://127.0.0.1:1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[header.index("STORAGE") + 1] == "FREE"
    # the STORAGE and FREE columns, cut where they start and end (more columns follow them)
    after = header[header.index("FREE") + 1 :]
    start, end = lines[1].index("STORAGE"), lines[1].index(after[0]) if after else None
    rows = {line.split()[0]: line[start:end].split() for line in lines[2:8]}
    assert rows["s0a"] == ["ok", "12.3", "MB"]
    assert rows["s0b"] == ["low", "50.0", "MB"]
    assert rows["s1a"] == ["full", "0", "B"]
    assert rows["s2a"] == ["error", "-"]
    assert rows["s3a"] == rows["s4a"] == ["-", "-"]
    assert lines[8:] == [
        "s0b: storage low: 50.0 MB free",
        "s1a: storage full: [Errno 28] No space left on device: 'data/s1a/00000001.log'",
        "s2a: storage error: [Errno 5] Input/output error",
    ]


# --------------------------------------------------------------------------- a node's memory limit

VALUE = "x" * 100  # 102 bytes of msgpack
PER_KEY = 16 + 102 + KEY_OVERHEAD_BYTES  # by the node's accounting (zkv.storage.eviction)


def mkey(i: int) -> str:
    return f"key:{i:012d}"  # 16 bytes


async def test_out_of_memory_is_a_json_507_and_reads_and_deletes_go_on(
    cluster_factory: Any, start_gateway: Callable[..., Any]
) -> None:
    """A node at its ``memory.max_bytes`` under ``noeviction``: writes that would grow its
    data are 507 ``OutOfMemory`` and change nothing; reads and deletes work; the metrics show
    the figures the node reports."""
    limit = 20 * PER_KEY
    c = cluster_factory({"s0": ["s0a"]}, memory={"max_bytes": limit, "policy": "noeviction"})
    async with zkv.AsyncClient(c.endpoint, timeout_s=5.0) as client:
        gw = await start_gateway(client)
        items = {mkey(i): VALUE for i in range(20)}
        reply = await gw.call("POST", "/api/kv/batch", {"items": items})
        assert reply.status == 200, reply.body  # exactly at the limit

        message = assert_error(
            await gw.call("POST", "/api/kv", {"key": mkey(20), "value": VALUE}),
            507,
            "OutOfMemory",
        )
        assert "memory.max_bytes" in message and "noeviction" in message, message
        assert_error(await gw.call("PUT", "/api/kv/" + quote(mkey(20)), VALUE), 507, "OutOfMemory")
        assert_error(
            await gw.call("POST", "/api/kv/batch", {"items": {mkey(21): VALUE}}), 507, "OutOfMemory"
        )
        assert_error(await gw.call("GET", "/api/kv/" + quote(mkey(20))), 404, "KeyNotFound")
        assert (await gw.call("GET", "/api/kv/" + quote(mkey(3)))).body["value"] == VALUE
        assert (await gw.call("DELETE", "/api/kv/" + quote(mkey(3)))).status == 200
        reply = await gw.call("POST", "/api/kv", {"key": mkey(20), "value": VALUE})
        assert reply.status == 201, reply.body  # the delete made room

        deadline = time.monotonic() + 10.0
        while (node := (await client.cluster_status())["nodes"][0])["keys"] != 20:
            assert time.monotonic() < deadline, node  # the next heartbeat
            await asyncio.sleep(0.05)
        samples = metric_samples((await gw.call("GET", "/metrics")).body)
        labels = (("node", "s0a"), ("shard", "s0"))
        assert samples[("zkv_node_max_bytes", labels)] == limit == node["max_bytes"]
        assert samples[("zkv_node_used_bytes", labels)] == node["used_bytes"]
        assert 0 < node["used_bytes"] <= limit
        assert samples[("zkv_node_evictions_total", labels)] == 0 == node["evictions"]
        outcomes = {
            dict(labels)["operation"]: value
            for (name, labels), value in samples.items()
            if name == "zkv_http_requests_total" and dict(labels)["outcome"] == "OutOfMemory"
        }
        assert outcomes == {"set": 1, "put": 1, "batch": 1}


def test_metrics_show_memory_use_and_evictions() -> None:
    node = {"shard": "s0", "role": "primary", "alive": True, "state": "serving"}
    nodes = [
        {**node, "name": "s0a", "used_bytes": 2_700_000, "max_bytes": 3_000_000, "evictions": 42},
        # a replica counts the evictions of its primary it applied
        {
            **node,
            "name": "s0b",
            "role": "replica",
            "used_bytes": 2_650_000,
            "max_bytes": 3_000_000,
            "evictions": 41,
        },
        {**node, "name": "s1a", "shard": "s1", "used_bytes": 123, "max_bytes": 0, "evictions": 0},
        # never reported, and an older broker without the fields: left out, no crash
        {
            **node,
            "name": "s2a",
            "shard": "s2",
            "used_bytes": None,
            "max_bytes": None,
            "evictions": None,
        },
        {**node, "name": "s3a", "shard": "s3"},
    ]
    body, _ = GatewayMetrics().render({"nodes": nodes, "shards": {}, "broker": {}})
    samples = metric_samples(body.decode())

    def values(metric: str) -> dict[str, float]:
        return {dict(labels)["node"]: v for (name, labels), v in samples.items() if name == metric}

    assert values("zkv_node_used_bytes") == {"s0a": 2_700_000, "s0b": 2_650_000, "s1a": 123}
    assert values("zkv_node_max_bytes") == {"s0a": 3_000_000, "s0b": 3_000_000, "s1a": 0}
    assert values("zkv_node_evictions_total") == {"s0a": 42, "s0b": 41, "s1a": 0}
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["zkv_node_used_bytes"].type == families["zkv_node_max_bytes"].type == "gauge"
    assert families["zkv_node_evictions"].type == "counter"
    assert ("zkv_node_used_bytes", (("node", "s0a"), ("shard", "s0"))) in samples  # the labels


# --------------------------------------------------------------------------- serve, concurrency


async def test_serve_listens_on_a_free_port_until_cancelled(cluster: Any, ns: str) -> None:
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            cluster.endpoint,
            "127.0.0.1",
            0,
            timeout_s=3.0,
            ready=bound.set_result,
            consistency="eventual",
        )
    )
    try:
        port = await asyncio.wait_for(asyncio.shield(bound), 10)
        assert port > 0
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/api/kv/{quote(ns + 'served')}"
            async with http.put(url, json={"via": "serve"}) as response:
                assert response.status == 200
            async with http.get(url) as response:
                assert response.status == 200
                assert await response.json() == {"key": ns + "served", "value": {"via": "serve"}}
        async with zkv.AsyncClient(cluster.endpoint) as kv:
            assert await kv.get(ns + "served") == {"via": "serve"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/api/status")


async def test_many_requests_at_once(gw: Gateway, kv: zkv.AsyncClient, ns: str) -> None:
    n = 100
    replies = await asyncio.gather(
        *(gw.call("POST", "/api/kv", {"key": f"{ns}{i}", "value": i}) for i in range(n))
    )
    assert [r.status for r in replies] == [201] * n
    replies = await asyncio.gather(
        *(gw.call("GET", "/api/kv/" + quote(f"{ns}{i}")) for i in range(n))
    )
    assert [r.body["value"] for r in replies] == list(range(n))
    assert await kv.mget([f"{ns}{i}" for i in range(n)]) == {f"{ns}{i}": i for i in range(n)}
