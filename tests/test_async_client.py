"""AsyncClient: the same operations as Client, awaitable, many in flight on one socket."""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from typing import Any

import pytest
from conftest import ttl_left

import zkv
from zkv.slots import SlotMap

MAPPING_ONLY = {
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "__contains__",
    "__iter__",
    "__len__",
    "__eq__",
    "__hash__",
}


def public(cls: type) -> dict[str, inspect.Signature]:
    """The signatures of the public methods a class defines itself (not inherited)."""
    return {
        name: inspect.signature(getattr(cls, name))
        for name, member in vars(cls).items()
        if not name.startswith("_")
        and callable(getattr(cls, name))
        and not isinstance(member, property)
    }


def test_async_and_sync_clients_have_the_same_operations() -> None:
    sync, asynchronous = public(zkv.Client), public(zkv.AsyncClient)
    sync.pop("close")
    asynchronous.pop("aclose")
    assert set(sync) == set(asynchronous)
    for name, signature in sync.items():
        other = asynchronous[name]
        assert list(signature.parameters) == list(other.parameters), name
        for p, q in zip(signature.parameters.values(), other.parameters.values(), strict=True):
            assert (p.kind, p.default) == (q.kind, q.default), (name, p.name)
    assert not MAPPING_ONLY & set(vars(zkv.AsyncClient))


async def test_every_operation(cluster: Any) -> None:
    async with zkv.AsyncClient(cluster.endpoint) as kv:
        await kv.put("a:1", {"v": [1, 2]})
        assert await kv.get("a:1") == {"v": [1, 2]}
        assert await kv.get("a:missing", "dflt") == "dflt"
        since = time.monotonic()
        await kv.create("a:2", 2, ttl=100)
        with pytest.raises(zkv.KeyExists):
            await kv.create("a:2", 3)
        assert await kv.exists("a:2")
        assert await kv.cas("a:2", 2, 3)
        assert not await kv.cas("a:2", 2, 4)
        ttl = await kv.ttl("a:2")
        assert ttl_left(ttl, 100, since), ttl
        assert await kv.expire("a:1", 50)
        await kv.mput({f"a:m{i}": i for i in range(30)})
        assert await kv.mget(["a:m1", "a:m2", "a:none"]) == {"a:m1": 1, "a:m2": 2}
        assert sorted([k async for k in kv.keys("a:m")]) == sorted(f"a:m{i}" for i in range(30))
        ones = [1, *range(10, 20)]
        assert dict([kv_ async for kv_ in kv.items("a:m1")]) == {f"a:m{i}": i for i in ones}
        assert sorted([v async for v in kv.values("a:m2")]) == [2, *range(20, 30)]
        assert await kv.delete("a:2")
        assert not await kv.delete("a:2")
        assert await kv.count() >= 31
        status = await kv.cluster_status()
        assert {n["name"] for n in status["nodes"]} == {"s0a", "s1a", "s2a"}
    assert kv.closed
    with pytest.raises(zkv.ClientClosed):
        await kv.get("a:1")


async def test_many_requests_in_flight_complete_in_any_order(cluster: Any) -> None:
    async with zkv.AsyncClient(cluster.endpoint) as kv:
        await asyncio.gather(*(kv.put(f"f:{i}", i) for i in range(1000)))
        values = await asyncio.gather(*(kv.get(f"f:{i}") for i in range(1000)))
        assert values == list(range(1000))
        mixed = await asyncio.gather(
            *(kv.get(f"f:{i}") if i % 2 else kv.exists(f"f:{i}") for i in range(500))
        )
        assert mixed == [i if i % 2 else True for i in range(500)]


async def test_a_request_without_reply_times_out_alone(cluster_factory: Any) -> None:
    c = cluster_factory()
    slot_map = SlotMap.even(["s0", "s1", "s2"], 16384)
    stuck = next(k for k in (f"k{i}" for i in range(100)) if slot_map.shard_of(k.encode()) == "s1")
    fine = [k for k in (f"k{i}" for i in range(100)) if slot_map.shard_of(k.encode()) != "s1"]
    # the client's own timeout is far longer than the call's: a call that ignored its
    # timeout would outlive the bounded wait below (asyncio's TimeoutError, not zkv.Timeout)
    async with zkv.AsyncClient(c.endpoint, timeout_s=60.0) as kv:
        await kv.mput({k: k for k in fine})
        c.procs["s1a"].signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            hung = asyncio.ensure_future(kv.get(stuck, timeout=0.25))
            others = await asyncio.gather(*(kv.get(k) for k in fine))
            assert others == fine  # answered while the other request waits
            with pytest.raises(zkv.Timeout):
                await asyncio.wait_for(hung, 30)
            print(f"the call timed out after {time.monotonic() - started:.2f} s (timeout 0.25 s)")
        finally:
            c.procs["s1a"].signal(signal.SIGCONT)
        assert await kv.get(fine[0]) == fine[0]


async def test_from_config_and_async_pipeline(cluster: Any) -> None:
    kv = zkv.AsyncClient.from_config(cluster.config)
    try:
        async with kv.pipeline() as p:
            p.put("ap:1", 1).get("ap:1").create("ap:1", 2).delete("ap:none").ttl("ap:none")
            results = await p.execute()
        assert results[:4] == [None, 1, results[2], False]
        assert isinstance(results[2], zkv.KeyExists)
        assert isinstance(results[4], zkv.KeyNotFound)
    finally:
        await kv.aclose()
