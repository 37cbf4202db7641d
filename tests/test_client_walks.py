"""keys(), items() and values() of Client and AsyncClient drive ClientCore's walks.

No cluster: each client's ``_exchange`` (its one socket round trip) is replaced by scripted
replies, so these test the drivers (``_walk`` over ``_run``) and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import zkv
from zkv import protocol
from zkv.client._core import KEYS_PAGE, Send

PAGES: list[Any] = [
    [[b"p:a", b"p:b"], ["s0", 1, b"p:b"]],
    [protocol.pack_value(1), None],
    [[], ["s1", 0, None]],
    [[b"p:\xff"], None],
    [protocol.pack_value([3])],
]


class Script:
    """Answers each request with the next scripted result (an error for an exception);
    keeps the requests."""

    def __init__(self, results: list[Any]) -> None:
        self.results = list(results)
        self.requests: list[protocol.Request] = []

    def answer(self, send: Send) -> list[bytes]:
        self.requests.append(protocol.decode_request(send.frames))
        result = self.results.pop(0)
        if isinstance(result, zkv.ZkvError):
            return protocol.encode_error(send.seq, result)
        return protocol.encode_reply(send.seq, result)


@pytest.fixture
def client() -> Iterator[zkv.Client]:
    with zkv.Client("inproc://zkv-test-no-broker", timeout_s=1.0) as kv:
        yield kv


@pytest.fixture
async def aclient() -> AsyncIterator[zkv.AsyncClient]:
    async with zkv.AsyncClient("inproc://zkv-test-no-broker", timeout_s=1.0) as kv:
        yield kv


def _script(kv: zkv.Client, results: list[Any]) -> Script:
    script = Script(results)
    kv._exchange = lambda _sock, send: script.answer(send)  # type: ignore[method-assign]
    return script


def _ascript(kv: zkv.AsyncClient, results: list[Any]) -> Script:
    script = Script(results)

    async def exchange(send: Send) -> list[bytes]:
        return script.answer(send)

    kv._exchange = exchange  # type: ignore[method-assign]
    return script


def test_client_keys(client: zkv.Client) -> None:
    script = _script(client, [PAGES[0], PAGES[2], PAGES[3]])
    keys = client.keys("p:", timeout=0.5, consistency="eventual")
    assert script.requests == []  # lazy: nothing is sent before the first key is asked for
    assert list(keys) == ["p:a", "p:b", b"p:\xff"]
    assert [r.op for r in script.requests] == [protocol.Op.KEYS] * 3
    assert script.requests[1].args == [b"p:", ["s0", 1, b"p:b"], KEYS_PAGE]
    assert {r.timeout_ms for r in script.requests} == {500}
    assert not script.results


def test_client_items_and_values(client: zkv.Client) -> None:
    _script(client, PAGES)
    assert list(client.items("p:")) == [("p:a", 1), (b"p:\xff", [3])]
    _script(client, PAGES)
    assert list(client.values("p:")) == [1, [3]]


def test_client_is_free_between_pages(client: zkv.Client) -> None:
    """The lock is held for each call, not for the walk: the loop's body may use the client."""
    script = _script(client, [PAGES[0], PAGES[2], PAGES[3]])
    seen = []
    for key in client.keys("p:"):
        assert not client._lock.locked()
        seen.append(key)
        if key == "p:a":
            script.results.insert(0, protocol.pack_value("A"))  # the reply to this get
            assert client.get(key) == "A"
    assert seen == ["p:a", "p:b", b"p:\xff"]


def test_client_walk_stops_on_an_error_and_when_left(client: zkv.Client) -> None:
    script = _script(client, [PAGES[0], zkv.ServerError("node failed")])
    keys = client.keys("p:")
    assert next(keys) == "p:a"
    assert next(keys) == "p:b"
    with pytest.raises(zkv.ServerError, match="node failed"):
        next(keys)
    with pytest.raises(StopIteration):
        next(keys)
    script.results = [PAGES[0]]
    keys = client.keys("p:")
    assert next(keys) == "p:a"
    keys.close()  # left early: nothing more is sent
    assert len(script.requests) == 3


def test_client_keys_after_close(client: zkv.Client) -> None:
    keys = client.keys()
    client.close()
    with pytest.raises(zkv.ClientClosed):
        next(keys)


async def test_async_client_keys_items_values(aclient: zkv.AsyncClient) -> None:
    script = _ascript(aclient, [PAGES[0], PAGES[2], PAGES[3]])
    keys = aclient.keys("p:", consistency="eventual")
    assert script.requests == []
    assert [k async for k in keys] == ["p:a", "p:b", b"p:\xff"]
    assert {r.consistency for r in script.requests} == {protocol.Consistency.EVENTUAL}
    _ascript(aclient, PAGES)
    assert [kv async for kv in aclient.items("p:")] == [("p:a", 1), (b"p:\xff", [3])]
    _ascript(aclient, PAGES)
    assert [v async for v in aclient.values("p:")] == [1, [3]]


async def test_async_client_walk_after_close(aclient: zkv.AsyncClient) -> None:
    keys = aclient.keys()
    await aclient.aclose()
    with pytest.raises(zkv.ClientClosed):
        await anext(keys)
