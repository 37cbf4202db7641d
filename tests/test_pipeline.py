"""Pipelines: one message per shard, results in order, errors in place, mixed with clients."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import zkv


def test_results_in_order_with_errors_in_place(kv: zkv.Client, ns: str) -> None:
    kv.put(ns + "exists", 1)
    with kv.pipeline() as p:
        p.put(ns + "a", 1).get(ns + "a").get(ns + "missing", "dflt")
        p.create(ns + "exists", 2).create(ns + "new", 3)
        p.cas(ns + "a", 1, 2).cas(ns + "a", 1, 3).exists(ns + "a")
        p.expire(ns + "a", 60).ttl(ns + "missing").delete(ns + "a").delete(ns + "a")
        p.put(ns + "big", "x" * 70_000)
        results = p.execute()
    assert results[:3] == [None, 1, "dflt"]
    assert isinstance(results[3], zkv.KeyExists)
    assert results[4:9] == [None, True, False, True, True]
    assert isinstance(results[9], zkv.KeyNotFound)
    assert results[10:12] == [True, False]
    assert isinstance(results[12], zkv.ValueTooLarge)
    assert kv.get(ns + "exists") == 1
    assert kv.get(ns + "new") == 3
    assert kv.get(ns + "big") is None


def test_many_operations_across_all_shards(cluster: Any, kv: zkv.Client, ns: str) -> None:
    n = 3000
    with kv.pipeline() as p:
        for i in range(n):
            p.put(f"{ns}{i}", i)
        assert len(p) == n
        assert p.execute() == [None] * n
        assert len(p) == 0
        for i in range(n):
            p.get(f"{ns}{i}")
        assert p.execute() == list(range(n))


def test_one_message_per_shard(cluster_factory: Any) -> None:
    c = cluster_factory()
    kv = c.client()
    c.wait_for(lambda: all(n["requests"] == 0 for n in c.status().values()), "quiet nodes")
    with kv.pipeline() as p:
        for i in range(300):
            p.put(f"k{i}", i)
        p.execute()
    c.wait_for(
        lambda: all(n["requests"] == 1 for n in c.status().values()),
        "each shard to have received exactly one message",
    )


def test_leaving_without_execute_discards(kv: zkv.Client, ns: str) -> None:
    with kv.pipeline() as p:
        p.put(ns + "never", 1)
    assert kv.get(ns + "never") is None
    p.put(ns + "reused", 1)
    assert p.execute() == [None]

    def leave_by_exception() -> None:
        with kv.pipeline() as q:
            q.put(ns + "never2", 1)
            raise RuntimeError("leave the block")

    with pytest.raises(RuntimeError):
        leave_by_exception()
    assert kv.get(ns + "never2") is None
    assert kv.pipeline().execute() == []


def test_bad_operations_fail_before_sending(kv: zkv.Client, ns: str) -> None:
    p = kv.pipeline()
    with pytest.raises(TypeError):
        p.put(123, 1)  # type: ignore[arg-type]
    with pytest.raises(zkv.InvalidRequest):
        p.put(ns + "k", 1, ttl=-1)
    assert len(p) == 0


def test_pipelines_mixed_with_concurrent_clients(cluster: Any, ns: str) -> None:
    errors: list[BaseException] = []

    def pipeline_worker(t: int) -> None:
        try:
            with zkv.Client(cluster.endpoint) as kv:
                for round_ in range(20):
                    with kv.pipeline() as p:
                        for i in range(50):
                            p.put(f"{ns}p{t}:{i}", round_)
                        for i in range(50):
                            p.get(f"{ns}p{t}:{i}")
                        results = p.execute()
                    assert results == [None] * 50 + [round_] * 50
        except BaseException as exc:
            errors.append(exc)

    def plain_worker(t: int) -> None:
        try:
            with zkv.Client(cluster.endpoint) as kv:
                for i in range(300):
                    kv.put(f"{ns}c{t}:{i}", i)
                    assert kv.get(f"{ns}c{t}:{i}") == i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pipeline_worker, args=(t,)) for t in range(3)]
    threads += [threading.Thread(target=plain_worker, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
