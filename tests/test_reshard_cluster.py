"""Moving slots between shards while they serve, through real processes, under load.

Writers keep putting increasing values (some with TTLs) and a reader keeps reading while
slots move from one shard to another and back: every acknowledged write reads back with
its latest value afterwards, no read ever goes back in time, the TTLs survive the move, and
each key lives on exactly one shard at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import yaml
from conftest import Cluster

import zkv
from zkv.broker.reshard import SLOTS_PER_MOVE
from zkv.slots import SlotMap

pytestmark = pytest.mark.timeout(180)

SHARDS = {"s0": ["s0a", "s0b"], "s1": ["s1a"]}
KEYS = 20_000


def wait_reshard(kv: zkv.Client, c: Cluster, timeout: float = 90.0) -> dict[str, Any]:
    start = time.monotonic()
    while True:
        status = kv.cluster_status()
        reshard = status["reshard"]
        if reshard is not None and reshard["moves_left"] == 0:
            print(f"reshard ended after {time.monotonic() - start:.2f} s: {reshard}")
            assert reshard["failed"] is None, reshard
            return status
        if time.monotonic() - start > timeout:
            raise AssertionError(f"reshard not done after {timeout} s: {reshard}\n{c.logs()}")
        time.sleep(0.1)


class Load:
    """Writers and a reader on their own clients, recording what was acknowledged."""

    def __init__(self, c: Cluster, writers: int = 2) -> None:
        self.acked: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self.backwards: list[str] = []
        self.stop = threading.Event()
        self.ops = 0
        self.threads = [
            threading.Thread(target=self._write, args=(c.client(), w, writers))
            for w in range(writers)
        ]
        self.threads.append(threading.Thread(target=self._read, args=(c.client(),)))
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _write(self, kv: zkv.Client, me: int, writers: int) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                key = f"k{(n * writers + me) % KEYS}"
                ttl = 600 if n % 5 == 0 else None
                kv.put(key, n, ttl=ttl)
                with self._lock:  # each writer has its own keys (KEYS is even)
                    self.acked[key] = n
                    self.ops += 1
        except BaseException as exc:
            self.errors.append(exc)

    def _read(self, kv: zkv.Client) -> None:
        seen: dict[str, int] = {}
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                key = f"k{(i * 7) % KEYS}"
                value = kv.get(key)
                if value is not None:
                    if value < seen.get(key, 0):
                        self.backwards.append(f"{key}: {value} after {seen[key]}")
                    seen[key] = value
        except BaseException as exc:
            self.errors.append(exc)


def test_slots_move_both_ways_under_load_and_nothing_is_lost(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(SHARDS)
    admin = c.client(timeout_s=10.0)
    for first in range(0, KEYS, 5000):
        admin.mput({f"k{i}": 0 for i in range(first, first + 5000)})
    admin.mput({f"ttl{i}": i for i in range(200)}, ttl=900)
    with Load(c) as load:
        time.sleep(0.2)  # let the load start before the move (not a race: any order works)
        planned = admin.reshard("s0", "s1", 2000)
        assert planned == {"moves": -(-2000 // SLOTS_PER_MOVE), "slots": 2000}
        with pytest.raises(zkv.InvalidRequest, match="already running"):
            admin.reshard("s0", "s1", 1)
        status = wait_reshard(admin, c)
        assert status["slot_map_version"] == planned["moves"]
        admin.reshard()  # and back: rebalance to an even split
        status = wait_reshard(admin, c)
    assert not load.errors, load.errors[:3]
    assert not load.backwards, load.backwards[:3]
    print(f"{load.ops} writes acknowledged during the moves")
    assert load.ops > 0
    shards = status["shards"]
    slots = {n["shard"]: n["slots"] for n in status["nodes"] if n["role"] == "primary"}
    assert slots == {"s0": 8192, "s1": 8192}, shards
    final: dict[str, Any] = {}
    names = list(load.acked)
    for first in range(0, len(names), 5000):
        final.update(admin.mget(names[first : first + 5000]))
    lost = {k: (v, final.get(k)) for k, v in load.acked.items() if final.get(k) != v}
    assert not lost, list(lost.items())[:5]
    ttls = [admin.ttl(f"ttl{i}") for i in range(200)]
    assert all(t is not None and 0 < t <= 900 for t in ttls)
    assert admin.count() == KEYS + 200

    # every key on exactly one shard: the sources dropped what they gave away
    def one_copy_each() -> bool:  # the nodes' key counts come with their heartbeats
        nodes = {n["name"]: n for n in admin.cluster_status()["nodes"]}
        return bool(nodes["s0a"]["keys"] + nodes["s1a"]["keys"] == KEYS + 200)

    wait_until(one_copy_each, "every key held by exactly one shard")
    moved = SlotMap.even(["s0", "s1"], 16384)
    assert moved.count_of("s0") == 8192


def test_a_reshard_needs_the_admin_role_and_sane_arguments(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory({"s0": ["s0a"], "s1": ["s1a"]})
    kv = c.client()
    with pytest.raises(zkv.InvalidRequest, match="owns 8192 slots"):
        kv.reshard("s0", "s1", 9000)
    with pytest.raises(zkv.InvalidRequest, match="no shard 's9'"):
        kv.reshard("s0", "s9", 1)
    assert kv.reshard() == {"moves": 0, "slots": 0}  # already even


def test_the_cli_follows_a_reshard_to_its_end(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory({"s0": ["s0a"], "s1": ["s1a"]})
    c.client().mput({f"cli{i}": i for i in range(500)})
    run = [sys.executable, "-m", "zkv"]
    where = ["--connect", c.endpoint]
    done = subprocess.run(
        [*run, "reshard", "--from", "s0", "--to", "s1", "--count", "100", *where],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "moving 100 slots in 1 moves" in done.stdout
    assert "100/100 slots" in done.stdout and "done in" in done.stdout
    done = subprocess.run([*run, "rebalance", *where], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "done in" in done.stdout, done
    done = subprocess.run([*run, "rebalance", *where], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "nothing to move" in done.stdout, done
    done = subprocess.run(
        [*run, "shard", "remove", "s1", *where], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "shard s1 owns no slots now" in done.stdout, done
    slots = {n["shard"]: n["slots"] for n in c.client().cluster_status()["nodes"]}
    assert slots == {"s0": 16384, "s1": 0}
    assert c.client().mget([f"cli{i}" for i in range(500)]) == {f"cli{i}": i for i in range(500)}


class Writers:
    """Writers that go on through errors (a broker or node restarting), recording only what
    was acknowledged."""

    def __init__(self, c: Cluster, writers: int = 2) -> None:
        self.acked: dict[str, int] = {}
        #: The last failed write of each key: it may or may not have been applied.
        self.maybe: dict[str, int] = {}
        self.failures = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._write, args=(c.client(timeout_s=3.0), w, writers))
            for w in range(writers)
        ]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _write(self, kv: zkv.Client, me: int, writers: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            key = f"k{(n * writers + me) % KEYS}"
            try:
                kv.put(key, n)
            except zkv.TransportError:
                self.failures += 1  # may or may not have been applied: not counted
                self.maybe[key] = n
                continue
            self.acked[key] = n


def check_nothing_lost(
    admin: zkv.Client, acked: dict[str, int], maybe: dict[str, int] | None = None
) -> None:
    """Every key holds its last acknowledged value, or a later one whose write failed (a
    write that got no answer may or may not have been applied)."""
    maybe = maybe or {}
    final: dict[str, Any] = {}
    names = list(acked)
    for first in range(0, len(names), 5000):
        final.update(admin.mget(names[first : first + 5000]))
    lost = {
        k: (v, final.get(k))
        for k, v in acked.items()
        if final.get(k) != v and not (maybe.get(k, -1) > v and final.get(k) == maybe[k])
    }
    assert not lost, list(lost.items())[:5]
    assert admin.count() == KEYS

    def one_copy_each() -> bool:  # the nodes' key counts come with their heartbeats
        nodes = admin.cluster_status()["nodes"]
        counts = {n["name"]: n["keys"] for n in nodes if n["role"] == "primary" and n["alive"]}
        return sum(counts.values()) == KEYS

    wait_until(one_copy_each, "every key held by exactly one shard")


def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    print(f"{what} after {time.monotonic() - start:.2f} s")


def load_keys(admin: zkv.Client) -> None:
    for first in range(0, KEYS, 5000):
        admin.mput({f"k{i}": 0 for i in range(first, first + 5000)})


def wait_slots_done(admin: zkv.Client, at_least: int, timeout: float = 60.0) -> None:
    start = time.monotonic()
    while (admin.cluster_status()["reshard"] or {}).get("slots_done", 0) < at_least:
        assert time.monotonic() - start < timeout, "the reshard made no progress"
        time.sleep(0.05)
    print(f"{at_least} slots moved after {time.monotonic() - start:.2f} s")


@pytest.mark.slow
@pytest.mark.fault
def test_a_broker_killed_mid_reshard_goes_on_with_it_after_a_restart(
    cluster_factory: Any,
) -> None:
    c: Cluster = cluster_factory(SHARDS)
    admin = c.client(timeout_s=10.0)
    load_keys(admin)
    with Writers(c) as load:
        admin.reshard("s0", "s1", 4000)
        wait_slots_done(admin, 600)
        c.procs["broker"].signal(signal.SIGKILL)
        c.restart("broker")
        status = wait_reshard(admin, c)  # its move in flight finished or redone, then the rest
        slots = {n["shard"]: n["slots"] for n in status["nodes"] if n["role"] == "primary"}
        assert slots == {"s0": 8192 - 4000, "s1": 8192 + 4000}
        admin.reshard()  # and back to even
        wait_reshard(admin, c)
    print(f"{len(load.acked)} keys written, {load.failures} writes failed during the restart")
    nodes = admin.cluster_status()["nodes"]
    slots = {n["shard"]: n["slots"] for n in nodes if n["role"] == "primary" and n["alive"]}
    assert slots == {"s0": 8192, "s1": 8192}
    check_nothing_lost(admin, load.acked, load.maybe)


@pytest.mark.slow
@pytest.mark.fault
def test_a_source_primary_killed_mid_move_loses_nothing(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(SHARDS)
    admin = c.client(timeout_s=10.0)
    load_keys(admin)
    with Writers(c) as load:
        admin.reshard("s0", "s1", 3000)
        wait_slots_done(admin, 400)
        c.procs["s0a"].signal(signal.SIGKILL)  # s0b takes over; the move in flight restarts
        status = wait_reshard(admin, c)
    print(f"{len(load.acked)} keys written, {load.failures} writes failed during the failover")
    assert status["shards"]["s0"]["primary"] == "s0b"
    slots = {n["shard"]: n["slots"] for n in status["nodes"] if n["alive"]}
    assert slots == {"s0": 8192 - 3000, "s1": 8192 + 3000}
    check_nothing_lost(admin, load.acked, load.maybe)


def set_shards(c: Cluster, shards: dict[str, list[str]]) -> None:
    """Rewrite the cluster's config file with ``shards`` (new nodes on free ports)."""
    doc = yaml.safe_load(c.config.read_text())
    doc["shards"] = {
        shard: [
            next(
                (n for ns in doc["shards"].values() for n in ns if n["name"] == name),
                {"name": name, "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"},
            )
            for name in names
        ]
        for shard, names in shards.items()
    }
    c.config.write_text(yaml.safe_dump(doc))


def reload_broker(c: Cluster, admin: zkv.Client, names: set[str]) -> None:
    """SIGHUP the broker (it reads the file again) and wait until its nodes are ``names``."""
    c.procs["broker"].signal(signal.SIGHUP)
    wait_until(
        lambda: {n["name"] for n in admin.cluster_status()["nodes"]} == names,
        f"the broker knows nodes {sorted(names)}",
    )


@pytest.mark.slow
def test_grow_to_three_shards_and_shrink_back_under_load(cluster_factory: Any) -> None:
    """2 -> 3 -> 2 shards while serving: the config file gains a shard, the broker reads it
    again (SIGHUP), the new node starts, a rebalance gives it a third of the slots; then it
    is drained, leaves the file, the broker reads it again and the node stops. Nothing lost,
    and no request fails: the broker never restarts."""
    c: Cluster = cluster_factory({"s0": ["s0a"], "s1": ["s1a"]})
    admin = c.client(timeout_s=10.0)
    load_keys(admin)
    with Writers(c) as load:
        set_shards(c, {"s0": ["s0a"], "s1": ["s1a"], "s2": ["s2a"]})
        c.broker_config.write_text(c.config.read_text())  # the file the broker runs from
        reload_broker(c, admin, {"s0a", "s1a", "s2a"})
        c._proc("s2a", ["node", "--config", str(c.config), "--name", "s2a"])
        c.start("s2a")
        admin.reshard()
        status = wait_reshard(admin, c)
        slots = {n["shard"]: n["slots"] for n in status["nodes"]}
        assert sorted(slots.values()) == [5461, 5461, 5462], slots
        with pytest.raises(zkv.InvalidRequest, match="no shard 's9'"):
            admin.reshard("s9")
        admin.reshard("s2")  # drain it: its slots spread over s0 and s1
        wait_reshard(admin, c)
        set_shards(c, {"s0": ["s0a"], "s1": ["s1a"]})
        c.broker_config.write_text(c.config.read_text())
        reload_broker(c, admin, {"s0a", "s1a"})
        c.procs["s2a"].stop()
    nodes = {n["name"]: n for n in admin.cluster_status()["nodes"]}
    assert set(nodes) == {"s0a", "s1a"}
    assert sorted([nodes["s0a"]["slots"], nodes["s1a"]["slots"]]) == [8192, 8192]
    print(f"{len(load.acked)} keys written, {load.failures} writes failed")
    assert load.failures == 0
    check_nothing_lost(admin, load.acked, load.maybe)


def test_a_reload_that_drops_a_shard_owning_slots_is_refused(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory({"s0": ["s0a"], "s1": ["s1a"]})
    admin = c.client()
    set_shards(c, {"s0": ["s0a"]})
    c.broker_config.write_text(c.config.read_text())
    c.procs["broker"].signal(signal.SIGHUP)
    wait_until(
        lambda: "shard s1 owns 8192 slots" in (c.tmp / "broker.log").read_text(),
        "the refusal in the broker's log",
    )
    assert {n["name"] for n in admin.cluster_status()["nodes"]} == {"s0a", "s1a"}
    admin.put("still", "serving")


@pytest.mark.slow
@pytest.mark.fault
def test_a_target_primary_killed_mid_move_loses_nothing(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory({"s0": ["s0a"], "s1": ["s1a", "s1b"]})
    admin = c.client(timeout_s=10.0)
    load_keys(admin)
    with Writers(c) as load:
        admin.reshard("s0", "s1", 3000)
        wait_slots_done(admin, 400)
        c.procs["s1a"].signal(signal.SIGKILL)  # s1b takes over; the move in flight restarts
        status = wait_reshard(admin, c)
    print(f"{len(load.acked)} keys written, {load.failures} writes failed during the failover")
    assert status["shards"]["s1"]["primary"] == "s1b"
    slots = {n["shard"]: n["slots"] for n in status["nodes"] if n["alive"] and n["slots"]}
    assert slots == {"s0": 8192 - 3000, "s1": 8192 + 3000}
    check_nothing_lost(admin, load.acked, load.maybe)
