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
    kv = c.client(timeout_s=5.0)
    on_s1 = keys_on("s1", 5)
    on_s0 = keys_on("s0", 5)
    for k in on_s0 + on_s1:
        kv.put(k, k)

    c.procs["s1a"].signal(signal.SIGKILL)
    c.wait_alive(["s1a"], alive=False, timeout=5)

    started = time.monotonic()
    with pytest.raises(zkv.Unavailable, match="s1"):
        kv.get(on_s1[0])
    with pytest.raises(zkv.Unavailable):
        kv.put(on_s1[1], "new")
    with pytest.raises(zkv.Unavailable):
        kv.mget(on_s0 + on_s1)
    with pytest.raises(zkv.Unavailable):
        kv.mput({on_s0[0]: "x", on_s1[0]: "y"})
    with pytest.raises(zkv.Unavailable):
        len(kv)
    with pytest.raises(zkv.Unavailable):
        list(kv.keys())
    assert time.monotonic() - started < 2.0  # at once, not after the 5 s timeout

    # the other shards serve on, and the refused mput stored nothing on them
    assert kv.mget(on_s0) == {k: k for k in on_s0}

    # the node comes back (empty: durability is a later issue) and serves again
    c.restart("s1a")
    kv.put(on_s1[1], "back")
    assert kv.get(on_s1[1]) == "back"
    assert kv.cluster_status()["nodes"][1]["alive"] is True
