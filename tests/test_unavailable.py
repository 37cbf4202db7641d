"""A shard whose node is down fails fast with Unavailable; the others keep serving."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

import zkv
from zkv.slots import SlotMap

SHARDS = ["s0", "s1", "s2"]


def keys_on(shard: str, n: int, prefix: str = "k") -> list[str]:
    slot_map = SlotMap.even(SHARDS, 16384)
    found: list[str] = []
    i = 0
    while len(found) < n:
        key = f"{prefix}{i}"
        if slot_map.shard_of(key.encode()) == shard:
            found.append(key)
        i += 1
    return found


@pytest.mark.fault
def test_request_to_dead_shard_fails_fast(cluster_factory: Any) -> None:
    c = cluster_factory()
    kv = c.client(timeout_s=120.0)
    on_s1 = keys_on("s1", 5)
    on_s0 = keys_on("s0", 5)
    for k in on_s0 + on_s1:
        kv.put(k, k)

    c.procs["s1a"].signal(signal.SIGKILL)
    c.wait_alive(["s1a"], alive=False)

    # the broker answers Unavailable at once; the client retries that until the call's
    # timeout, then raises it (not Timeout, and not a hang: the client's own timeout is
    # longer than the test's time limit, so a call that ignored its timeout would fail it)
    calls = [
        lambda: kv.get(on_s1[0], timeout=0.3),
        lambda: kv.put(on_s1[1], "new", timeout=0.3),
        lambda: kv.mget(on_s0 + on_s1, timeout=0.3),
        lambda: kv.mput({on_s0[0]: "x", on_s1[0]: "y"}, timeout=0.3),
        lambda: kv.count(timeout=0.3),
        lambda: list(kv.keys(timeout=0.3)),
    ]
    for i, call in enumerate(calls):
        started = time.monotonic()
        with pytest.raises(zkv.Unavailable, match="shard s1 has no live node"):
            call()
        print(f"call {i}: Unavailable after {time.monotonic() - started:.2f} s (timeout 0.3 s)")

    # the other shards serve on, and the refused mput stored nothing on them
    assert kv.mget(on_s0) == {k: k for k in on_s0}

    # the node comes back (empty: durability is a later issue) and serves again
    c.restart("s1a")
    kv.put(on_s1[1], "back")
    assert kv.get(on_s1[1]) == "back"
    assert kv.cluster_status()["nodes"][1]["alive"] is True


@pytest.mark.fault
def test_calls_ride_through_a_node_restart(cluster_factory: Any) -> None:
    c = cluster_factory()
    kv = c.client()
    key = keys_on("s2", 1)[0]
    kv.put(key, 1)
    c.procs["s2a"].signal(signal.SIGKILL)
    c.wait_alive(["s2a"], alive=False)
    with pytest.raises(zkv.Unavailable):
        kv.get(key, timeout=0.2)
    c.procs["s2a"].start()  # comes back while the next calls are retrying
    kv.put(key, 2, timeout=10)  # Unavailable means nothing was applied: retried until served
    assert kv.get(key, timeout=10) == 2
