"""``zkv up`` of a cluster with no single point of failure: it runs the etcd members, the
brokers and the nodes of the file itself, and a broker killed under load is replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port
from test_coordination import ETCD
from test_launcher import zkv_process

import zkv

pytestmark = [pytest.mark.timeout(120), pytest.mark.fault]


def ha_doc(data: Path) -> dict[str, Any]:
    def tcp() -> str:
        return f"tcp://127.0.0.1:{free_port()}"

    return {
        "cluster": "hatest",
        "storage": {"dir": str(data), "fsync": "no"},
        "heartbeat": {"interval_s": 0.1, "liveness": 3},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "coordination": {
            "etcd": {
                "members": [
                    {
                        "name": f"e{i}",
                        "client": f"http://127.0.0.1:{free_port()}",
                        "peer": f"http://127.0.0.1:{free_port()}",
                    }
                    for i in (1, 2, 3)
                ],
                "lease_ttl_s": 2,
            }
        },
        "brokers": [{"name": b, "clients": tcp(), "nodes": tcp()} for b in ("b1", "b2")],
        "shards": {"s0": [{"name": n, "publish": tcp(), "sync": tcp()} for n in ("s0a", "s0b")]},
    }


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, dict[str, Any]]]:
    if ETCD is None:
        pytest.skip("etcd binary not found: apt-get install etcd-server")
    doc = ha_doc(tmp_path / "data")
    config = tmp_path / "ha.yaml"
    config.write_text(yaml.safe_dump(doc))
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zkv", "up", "--config", str(config)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "zkv up: ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield proc, tmp_path, doc
    finally:
        children = json.loads((tmp_path / "data" / "launcher.json").read_text())["processes"]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for entry in children.values():  # never leave one behind, even when the test failed
            pid = entry.get("pid")
            if isinstance(pid, int) and zkv_process(pid):
                os.kill(pid, signal.SIGKILL)


def test_zkv_up_runs_etcd_and_every_broker_and_replaces_a_dead_one(up: Any) -> None:
    _proc, tmp, doc = up
    endpoints = [b["clients"] for b in doc["brokers"]]
    kv = zkv.Client(endpoints, timeout_s=10.0)
    kv.put("before", 1)
    state = json.loads((tmp / "data" / "launcher.json").read_text())["processes"]
    assert {"etcd-e1", "etcd-e2", "etcd-e3", "b1", "b2", "s0a", "s0b", "http"} <= set(state)
    b1 = state["b1"]["pid"]
    os.kill(b1, signal.SIGKILL)
    for i in range(50):  # served throughout: the other broker takes the requests
        kv.put(f"k{i}", i)
    start = time.monotonic()
    while True:  # zkv up starts b1 again
        state = json.loads((tmp / "data" / "launcher.json").read_text())["processes"]
        if state["b1"]["state"] == "running" and state["b1"]["pid"] != b1:
            break
        assert time.monotonic() - start < 30, state["b1"]
        time.sleep(0.05)
    print(f"b1 restarted after {time.monotonic() - start:.2f} s")
    assert kv.mget([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}
    kv.close()
