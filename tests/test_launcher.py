"""`zkv up`: starts the cluster of a config file, supervises it, and stops it cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cluster_doc, free_port

import zkv
from zkv.slots import SlotMap


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Up:
    """A `zkv up` process and the config it runs."""

    def __init__(self, tmp: Path) -> None:
        self.clients = f"tcp://127.0.0.1:{free_port()}"
        doc = cluster_doc(
            {"s0": ["s0a"], "s1": ["s1a"]},
            Path("data"),
            broker_clients=self.clients,
            broker_nodes=f"tcp://127.0.0.1:{free_port()}",
        )
        self.ports = {}
        for nodes in doc["shards"].values():
            for node in nodes:
                for field in ("publish", "sync"):
                    port = free_port()
                    node[field] = f"tcp://127.0.0.1:{port}"
                    self.ports[(node["name"], field)] = port
        (tmp / "config").mkdir()
        (tmp / "config" / "local.yaml").write_text(yaml.safe_dump(doc))
        self.log = tmp / "up.log"
        with open(self.log, "wb") as log:
            # no --config: `zkv up` reads config/local.yaml from its working directory
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zkv", "up"], cwd=tmp, stdout=log, stderr=subprocess.STDOUT
            )
        self.tmp = tmp

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, dict[str, Any]]:
        with zkv.Client(self.clients, timeout_s=2.0) as kv:
            return {n["name"]: n for n in kv.cluster_status()["nodes"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    launcher = Up(tmp_path)
    pids: list[int] = []
    try:
        yield launcher
    finally:
        with contextlib.suppress(zkv.ZkvError):
            pids = [n["pid"] for n in launcher.status().values() if n["pid"]]
        launcher.stop()
        for pid in pids:  # never leave a child behind, even when the test failed
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_up_serves_and_stops_every_child(up: Up) -> None:
    up.wait_for("Clients connect to " + up.clients)
    with zkv.Client(up.clients) as kv:
        kv.mput({f"k{i}": i for i in range(100)})
        assert len(kv) == 100
        status = kv.cluster_status()
    pids = [status["broker"]["pid"], *(n["pid"] for n in status["nodes"])]
    assert all(pid_alive(p) for p in pids)
    assert (up.tmp / "data" / "s0a").is_dir()
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(15) == 0
    assert not [p for p in pids if pid_alive(p)], "children left behind"
    assert "every process stopped" in up.output()


def test_up_restarts_a_killed_node(up: Up) -> None:
    up.wait_for("Clients connect to")
    old = up.status()["s0a"]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(
        lambda: (n := up.status()["s0a"])["alive"] and n["pid"] != old, 15, "s0a to come back"
    )
    assert f"s0a (pid {old}) exited" in up.output()
    with zkv.Client(up.clients) as kv:
        kv.mput({f"k{i}": i for i in range(50)})  # keys on both shards
        assert kv.mget([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}


@pytest.mark.fault
def test_up_gives_up_on_a_child_that_keeps_crashing(up: Up) -> None:
    up.wait_for("Clients connect to")
    pid = up.status()["s1a"]["pid"]
    os.kill(pid, signal.SIGKILL)
    # hold s1a's publish port so every restart fails to bind
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        wait_until(lambda: not pid_alive(pid), 5, "s1a to die")
        blocker.bind(("127.0.0.1", up.ports[("s1a", "publish")]))
        blocker.listen()
        up.wait_for("giving up on it", timeout=40)
        assert up.proc.poll() is None  # the launcher and the rest keep running
        status = up.status()
        assert status["s0a"]["alive"]
        slot_map = SlotMap.even(["s0", "s1"], 16384)
        on_s0 = next(
            k for k in (f"k{i}" for i in range(100)) if slot_map.shard_of(k.encode()) == "s0"
        )
        with zkv.Client(up.clients) as kv:
            kv.put(on_s0, 1)
            assert kv.get(on_s0) == 1
    assert "cannot start" in up.output()
