"""Storage and failover safety on real processes: locked folders, damaged data that is only
discarded when a peer holds it, promotion whatever took a primary down, routing that only
the broker decides, and idempotent switch-overs.

Every test asserts on data: what was acknowledged reads back afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import zkv
from zkv import protocol
from zkv.protocol import Consistency, NodeInfo, Op, Request
from zkv.storage.log import FRAME_HEADER, LOG_MAGIC, read_frames

ONE_SHARD = {"s0": ["s0a", "s0b"]}


def shard_status(kv: zkv.Client, shard: str = "s0") -> dict[str, Any]:
    status: dict[str, Any] = kv.cluster_status()["shards"][shard]
    return status


def in_sync(c: Any, name: str = "s0b") -> bool:
    node = c.node(name)
    return bool(node["alive"] and node["state"] == "following" and node["in_sync"])


def serving_primary(c: Any, kv: zkv.Client, shard: str = "s0") -> str | None:
    status = shard_status(kv, shard)
    return status["primary"] if status["serving"] else None


def wait_for(c: Any, predicate: Any, what: str, timeout: float = 20.0) -> float:
    """Wait for ``predicate``; print and return how long it took."""
    started = time.monotonic()
    c.wait_for(predicate, what, timeout)
    took = time.monotonic() - started
    print(f"\n{what}: {took:.2f} s")
    return took


def corrupt_mid_log(directory: Path) -> Path:
    """Flip a byte inside an early record of the newest log segment (valid records follow)."""
    segment = sorted(directory.glob("log-*.zkv"))[-1]
    data = bytearray(segment.read_bytes())
    found = list(read_frames(data, len(LOG_MAGIC)))
    assert len(found) > 10, f"{segment} has only {len(found)} records"
    offset, payload = found[len(found) // 3]
    data[offset + FRAME_HEADER.size + len(payload) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    return segment


def folder_files(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and p.suffix == ".zkv"
    }


def write_keys(kv: zkv.Client, prefix: str, n: int) -> dict[str, int]:
    items = {f"{prefix}{i}": i for i in range(n)}
    for key, value in items.items():
        kv.put(key, value)
    return items


# ------------------------------------------------------------------ 1. data folder locks


@pytest.mark.fault
def test_second_process_on_a_data_folder_exits_at_once(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    kv = c.client()
    kv.put("locked", 1)
    for argv, folder, holder in (
        (["node", "--name", "s0a"], "s0a", c.procs["s0a"].pid),
        (["broker"], "broker", c.procs["broker"].pid),
    ):
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "zkv", *argv, "--config", str(c.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        print(f"\nsecond {folder} exited in {time.monotonic() - started:.2f} s")
        assert second.returncode == 2, second
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, second.stderr
        assert str(Path(c.doc["storage"]["dir"]) / folder) in lines[0]
        assert f"pid {holder}" in lines[0]
    assert kv.get("locked") == 1  # the first ones were not disturbed


# ------------------------------------------------------------------ 2. damaged data


@pytest.mark.fault
def test_damaged_data_is_set_aside_and_resynced_from_the_primary(cluster_factory: Any) -> None:
    c = cluster_factory(ONE_SHARD)
    kv = c.client(timeout_s=20.0)
    wait_for(c, lambda: in_sync(c), "s0b in sync")
    items = write_keys(kv, "dmg:", 300)
    c.procs["s0a"].stop()  # the primary goes; s0b, in sync, takes over
    wait_for(c, lambda: serving_primary(c, kv) == "s0b", "s0b promoted")
    directory = Path(c.doc["storage"]["dir"]) / "s0a"
    corrupt_mid_log(directory)
    before = folder_files(directory)
    kv.put("dmg:after", "written while s0a was away")

    c.start("s0a")
    wait_for(
        c,
        lambda: (n := c.node("s0a"))["state"] == "following" and n["keys"] == len(items) + 1,
        "s0a resynced after discarding its damaged data",
    )
    node = c.node("s0a")
    assert node["discarded_seq"] > 0
    [aside] = directory.glob("damaged-*")
    assert {name: (aside / name).read_bytes() for name in before} == before  # kept, unchanged
    log = c.procs["s0a"].log_file.read_text()
    assert "discarded damaged data" in log

    wait_for(c, lambda: in_sync(c, "s0a"), "s0a in sync")
    kv.failover("s0", to="s0a")  # s0a serves the data it resynced
    assert kv.mget(list(items)) == items
    assert kv.get("dmg:after") == "written while s0a was away"


@pytest.mark.fault
def test_damaged_node_with_no_serving_peer_refuses_and_keeps_its_files(
    cluster_factory: Any,
) -> None:
    c = cluster_factory(ONE_SHARD)
    kv = c.client(timeout_s=20.0)
    wait_for(c, lambda: in_sync(c), "s0b in sync")
    items = write_keys(kv, "ref:", 100)
    c.procs["s0b"].stop()
    c.procs["s0a"].stop()
    directory = Path(c.doc["storage"]["dir"]) / "s0a"
    segment = corrupt_mid_log(directory)
    before = folder_files(directory)

    proc = c.procs["s0a"]
    proc.start()
    assert proc.popen is not None
    assert proc.popen.wait(30) == 1
    out = proc.log_file.read_text()
    assert "cannot start" in out and str(segment) in out and "offset" in out
    assert "nothing was discarded" in out
    assert folder_files(directory) == before
    assert not list(directory.glob("damaged-*"))

    assert len(items) == 100


# ------------------------------------------------------------------ 3. promotion


@pytest.mark.fault
def test_crash_looping_primary_still_fails_over_to_its_in_sync_replica(
    cluster_factory: Any,
) -> None:
    # a long ack timeout: the restarted primary keeps counting s0b in sync while it is away
    c = cluster_factory(ONE_SHARD, replication={"ack_timeout_s": 10.0})
    kv = c.client(timeout_s=30.0)
    wait_for(c, lambda: in_sync(c), "s0b in sync")
    items = write_keys(kv, "loop:", 200)
    c.procs["s0b"].signal(signal.SIGKILL)  # both nodes crash ...
    c.procs["s0a"].signal(signal.SIGKILL)
    for _ in range(3):  # ... and the primary crash-loops: up, READY, killed again
        c.procs["s0a"].start()
        c.procs["s0a"].wait_ready()
        c.procs["s0a"].signal(signal.SIGKILL)
    c.procs["s0b"].start()  # the launcher gave up on s0a; s0b comes back
    c.procs["s0b"].wait_ready()
    wait_for(c, lambda: serving_primary(c, kv) == "s0b", "s0b promoted after the crash loop")
    assert kv.mget(list(items)) == items
    kv.put("loop:new", 1)
    c.start("s0a")  # and s0a rejoins as its replica
    wait_for(c, lambda: in_sync(c, "s0a"), "s0a back in sync")
    assert kv.get("loop:new") == 1


@pytest.mark.fault
def test_no_promotion_when_no_replica_was_in_sync(cluster_factory: Any) -> None:
    c = cluster_factory(ONE_SHARD, replication={"ack_timeout_s": 0.3})
    kv = c.client(timeout_s=20.0)
    wait_for(c, lambda: in_sync(c), "s0b in sync")
    c.procs["s0b"].signal(signal.SIGSTOP)
    wait_for(c, lambda: shard_status(kv)["in_sync"] == [], "s0b out of the in-sync set")
    kv.put("alone", "acknowledged by the primary alone")
    c.procs["s0a"].signal(signal.SIGKILL)
    c.procs["s0b"].signal(signal.SIGCONT)
    wait_for(c, lambda: c.node("s0b")["alive"] and not c.node("s0a")["alive"], "s0a down")
    interval = c.doc["heartbeat"]["interval_s"]
    for _ in range(20):  # twenty of the broker's decisions: none promotes s0b
        status = shard_status(kv)
        assert (status["primary"], status["serving"]) == ("s0a", False)
        time.sleep(interval)
    c.start("s0a")
    wait_for(c, lambda: serving_primary(c, kv) == "s0a", "s0a serving again")
    assert kv.get("alone") == "acknowledged by the primary alone"


# ------------------------------------------------------------------ 4. only the broker decides


class LyingNode:
    """A process speaking the node protocol as ``node:s0b``, claiming primary at epoch 99."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, b"node:s0b")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.requests = 0
        self.beats: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.info = NodeInfo(
            "s0b",
            "s0",
            role="primary",
            epoch=99,
            seq=10**6,
            pid=1,
            publish="tcp://127.0.0.1:9",
            sync="tcp://127.0.0.1:9",
        )

    def run(self, rounds: int = 30) -> None:
        kind = protocol.NODE_READY
        try:
            for _ in range(rounds):
                if self.stop.is_set():
                    break
                self.sock.send_multipart(protocol.encode_node_info(kind, self.info))
                kind = protocol.NODE_HEARTBEAT
                while self.sock.poll(100):
                    frames = self.sock.recv_multipart()
                    what, _epoch = protocol.decode_node_header(frames[0])
                    if what == protocol.NODE_REQUEST:
                        self.requests += 1
                    elif what == protocol.BROKER_HEARTBEAT:
                        self.beats.append(protocol.unpackb(frames[1]))
        finally:
            self.sock.close(linger=0)


@pytest.mark.fault
def test_a_node_claiming_a_role_changes_no_routing(cluster_factory: Any) -> None:
    c = cluster_factory(ONE_SHARD, lazy=("s0b",))
    kv = c.client(timeout_s=10.0)
    wait_for(c, lambda: serving_primary(c, kv) == "s0a", "s0a elected")
    routing = Path(c.doc["storage"]["dir"]) / "broker" / "routing.json"
    table = routing.read_bytes()
    items = write_keys(kv, "liar:", 50)
    liar = LyingNode(c.nodes_endpoint)
    thread = threading.Thread(target=liar.run)
    thread.start()
    try:
        for round_ in range(20):  # reads and writes while it lies
            kv.put(f"liar:{round_}", f"new {round_}")
            assert kv.get(f"liar:{round_}") == f"new {round_}"
            assert kv.get("liar:49") == 49
    finally:
        liar.stop.set()
        thread.join(10)
    assert liar.requests == 0
    assert any(b["role"] == "replica" and b["epoch"] == 1 for b in liar.beats), liar.beats
    assert routing.read_bytes() == table
    status = shard_status(kv)
    assert (status["primary"], status["epoch"], status["serving"]) == ("s0a", 1, True)
    assert "fencing it" in c.procs["broker"].log_file.read_text()
    items.update({f"liar:{i}": f"new {i}" for i in range(20)})
    assert kv.mget(list(items)) == items


@pytest.mark.fault
def test_broker_without_its_routing_file_elects_the_most_advanced_node(
    cluster_factory: Any,
) -> None:
    c = cluster_factory(ONE_SHARD)
    kv = c.client(timeout_s=20.0)
    wait_for(c, lambda: in_sync(c), "s0b in sync")
    kv.failover("s0", to="s0b")  # s0b primary at epoch 2
    c.procs["s0a"].stop()
    items = write_keys(kv, "ahead:", 50)  # only s0b has these
    broker = c.procs["broker"]
    broker.stop()
    (Path(c.doc["storage"]["dir"]) / "broker" / "routing.json").unlink()
    c.procs["s0a"].start()  # the stale node is back first, and first in the config
    c.procs["s0a"].wait_ready()
    broker.start()
    broker.wait_ready()
    wait_for(c, lambda: serving_primary(c, kv) is not None, "an elected primary")
    status = shard_status(kv)
    assert (status["primary"], status["epoch"]) == ("s0b", 3)
    assert kv.mget(list(items)) == items
    wait_for(c, lambda: in_sync(c, "s0a"), "s0a following the elected primary")
    assert "elected s0b primary of shard s0 at epoch 3" in broker.log_file.read_text()


# ------------------------------------------------------------------ 5. idempotent switch-over


@pytest.mark.fault
def test_resent_failover_gets_the_first_outcome(cluster_factory: Any) -> None:
    c = cluster_factory(ONE_SHARD)
    kv = c.client(timeout_s=20.0)
    wait_for(c, lambda: in_sync(c), "s0b in sync")
    request = Request(
        Op.FAILOVER,
        b"",
        ["s0", "s0b"],
        client_id=protocol.new_client_id(),
        seq=1,
        consistency=Consistency.STRONG,
        timeout_ms=10_000,
    )
    frames = protocol.encode_request(request)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(c.endpoint)
    try:
        sock.send_multipart(frames)
        sock.send_multipart(frames)  # a resend while the switch is in progress joins it
        assert sock.poll(15_000), "no answer to FAILOVER"
        first = protocol.decode_reply(sock.recv_multipart())
        assert first[1] == {"shard": "s0", "primary": "s0b", "epoch": 2}
        sock.send_multipart(frames)  # a resend after it finished gets the same answer
        assert sock.poll(15_000), "no answer to the resent FAILOVER"
        assert protocol.decode_reply(sock.recv_multipart()) == first
        assert not sock.poll(300)  # one answer per send that reached it, no more
    finally:
        sock.close(linger=0)
    assert shard_status(kv)["epoch"] == 2  # switched once

    wait_for(c, lambda: in_sync(c, "s0a"), "s0a in sync")
    cli = subprocess.run(
        [sys.executable, "-m", "zkv", "failover", "s0", "--to", "s0a", "--connect", c.endpoint],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli
    assert serving_primary(c, kv) == "s0a"


@pytest.mark.fault
def test_broker_explains_a_failed_switch_before_the_client_gives_up(
    cluster_factory: Any,
) -> None:
    # a long liveness: the paused target stays "alive" and the switch runs to its deadline
    c = cluster_factory(ONE_SHARD, heartbeat={"interval_s": 0.1, "liveness": 100})
    kv = c.client(timeout_s=20.0)
    wait_for(c, lambda: in_sync(c), "s0b in sync")
    c.procs["s0b"].signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(zkv.Timeout, match="did not catch up"):
            kv.failover("s0", to="s0b", timeout=3.0)
        print(f"\nthe broker's answer came after {time.monotonic() - started:.2f} s of 3")
    finally:
        c.procs["s0b"].signal(signal.SIGCONT)
    kv.put("still-served", 1)  # the switch was abandoned: s0a serves on
    assert serving_primary(c, kv) == "s0a"
