"""Eviction through real processes: a broker and nodes on 127.0.0.1 (port 0).

The policies' choices are tested on the ``Store`` (``test_memory.py``); here, what only a
cluster shows: ``OutOfMemory`` reaching a client, evictions streamed to the replica and
replayed by a restarted node, and the memory figures in ``zkv status``.
"""

from __future__ import annotations

from typing import Any

import pytest

import zkv
from zkv.storage.eviction import KEY_OVERHEAD_BYTES, ORDER_OVERHEAD_BYTES

VALUE = "x" * 100  # 102 bytes of msgpack
PER_KEY = 16 + 102 + KEY_OVERHEAD_BYTES


def key(i: int) -> str:
    return f"key:{i:012d}"


def test_lru_evictions_reach_the_replica_and_survive_a_restart(cluster_factory: Any) -> None:
    limit = 100 * (PER_KEY + ORDER_OVERHEAD_BYTES)
    c = cluster_factory(
        {"s0": ["s0a", "s0b"]},
        memory={"max_bytes": limit, "policy": "allkeys-lru"},
    )
    kv = c.client()  # strong writes: each one is on the replica when acknowledged
    for i in range(100):
        kv.put(key(i), VALUE)
    hot = [key(i) for i in range(0, 100, 10)]
    assert kv.mget(hot) == dict.fromkeys(hot, VALUE)  # read after every write: the most recent
    for i in range(100, 150):
        kv.put(key(i), VALUE)
    assert kv.count() == 100
    assert kv.mget(hot) == dict.fromkeys(hot, VALUE)
    kept = set(kv.keys())
    assert len(kept) == 100

    c.wait_for(lambda: c.node("s0a")["evictions"] == 50, "the next heartbeat")
    primary = c.node("s0a")
    assert primary["used_bytes"] <= primary["max_bytes"] == limit
    assert primary["policy"] == "allkeys-lru"
    c.wait_for(
        lambda: c.node("s0b")["keys"] == 100 and c.node("s0b")["evictions"] == 50,
        "the replica to apply the evictions",
    )

    c.restart("s0b")  # replays its log: the evicted keys stay evicted
    c.wait_for(lambda: c.node("s0b")["state"] == "following", "the replica to follow again")
    assert c.node("s0b")["keys"] == 100
    c.restart("s0a")  # the primary's log too (the broker may promote s0b meanwhile)
    c.wait_for(lambda: kv.count() == 100, "the shard to serve again")
    assert set(kv.keys()) == kept
    assert kv.mget(hot) == dict.fromkeys(hot, VALUE)


def test_noeviction_refuses_writes_with_out_of_memory(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]}, memory={"max_bytes": 20 * PER_KEY})
    kv = c.client()
    for i in range(20):
        kv.put(key(i), VALUE)
    with pytest.raises(zkv.OutOfMemory, match=r"memory\.max_bytes, policy noeviction"):
        kv.put(key(20), VALUE)
    assert kv.get(key(3)) == VALUE  # reads go on
    kv.delete(key(3))  # and deletes, which make room
    kv.put(key(20), VALUE)
    assert kv.count() == 20
    c.wait_for(lambda: c.node("s0a")["keys"] == 20, "the next heartbeat")
    node = c.node("s0a")
    assert (node["evictions"], node["policy"], node["max_bytes"]) == (0, "noeviction", 20 * PER_KEY)
