"""``zkv apply``: the running cluster follows its edited config file, under ``zkv up``.

A shard and a replica are added, then a shard and the replica removed, each time by editing
the file and running ``zkv apply --config FILE --yes`` while a client keeps writing: the new
processes start, the dropped ones stop, slots move, and every acknowledged write reads back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port
from test_launcher import Up, zkv_process

import zkv
from zkv.cli.topology import Plan, make_plan
from zkv.config import parse_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    launcher = Up(tmp_path)
    try:
        launcher.wait_for("zkv up: ready", timeout=60)
        yield launcher
    finally:
        pids = launcher.children()
        launcher.stop()
        for pid in pids:
            if zkv_process(pid):
                os.kill(pid, signal.SIGKILL)


def edit(up: Up, shards: dict[str, list[str]]) -> Path:
    """Rewrite the file ``zkv up`` runs from with ``shards`` (new nodes on free ports)."""
    path = up.tmp / "config" / "local.yaml"
    doc = yaml.safe_load(path.read_text())
    known = {n["name"]: n for ns in doc["shards"].values() for n in ns}
    doc["shards"] = {
        shard: [
            known.get(name)
            or {
                "name": name,
                "publish": f"tcp://127.0.0.1:{free_port()}",
                "sync": f"tcp://127.0.0.1:{free_port()}",
            }
            for name in names
        ]
        for shard, names in shards.items()
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def apply(up: Up) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "zkv", "apply", "--config", "config/local.yaml", "--yes"],
        cwd=up.tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr + done.stdout
    return done


def test_apply_grows_and_shrinks_the_cluster_under_zkv_up(up: Up) -> None:
    kv = zkv.Client(up.clients, timeout_s=10.0)
    kv.mput({f"k{i}": 0 for i in range(5000)})
    acked: dict[str, int] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        n = 0
        with zkv.Client(up.clients, timeout_s=10.0) as writer:
            while not stop.is_set():
                n += 1
                key = f"k{n % 5000}"
                try:
                    writer.put(key, n)
                except zkv.ZkvError as exc:
                    errors.append(exc)
                    return
                acked[key] = n

    thread = threading.Thread(target=write)
    thread.start()
    try:
        edit(up, {"s0": ["s0a"], "s1": ["s1a", "s1b"], "s2": ["s2a"]})
        done = apply(up)
        assert "add shard s2: nodes s2a" in done.stdout
        assert "add node s1b to shard s1" in done.stdout
        assert "applied" in done.stdout
        nodes = up.status()
        assert set(nodes) == {"s0a", "s1a", "s1b", "s2a"}
        primaries = sorted(n["slots"] for n in nodes.values() if n["role"] == "primary")
        assert primaries == [5461, 5461, 5462]
        edit(up, {"s0": ["s0a"], "s1": ["s1a"]})
        done = apply(up)
        assert "remove shard s2 (nodes s2a) once its slots moved away" in done.stdout
        assert "remove node s1b from shard s1" in done.stdout
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors[:3]
    nodes = up.status()
    assert set(nodes) == {"s0a", "s1a"}
    assert sorted(n["slots"] for n in nodes.values()) == [8192, 8192]
    start = time.monotonic()
    while {"s1b", "s2a"} & {s for s in _launcher_children(up)}:
        assert time.monotonic() - start < 30, "zkv up did not stop the dropped nodes"
        time.sleep(0.1)
    final: dict[str, Any] = kv.mget(list(acked))
    assert {k: final.get(k) for k in acked} == acked
    again = apply(up)
    assert "nothing to do" in again.stdout
    kv.close()


def _launcher_children(up: Up) -> set[str]:
    import json

    raw = json.loads((up.tmp / "data" / "launcher.json").read_text())
    return {name for name, p in raw["processes"].items() if p.get("state") == "running"}


def test_the_plan_of_an_edited_file() -> None:
    status = {
        "slots": 16,
        "slot_map_version": 3,
        "shards": {"s0": {"primary": "s0a"}, "s1": {"primary": "s1b"}},
        "nodes": [
            {"name": "s0a", "shard": "s0", "role": "primary", "slot_ranges": "0-7", "keys": 80},
            {"name": "s1a", "shard": "s1", "role": "replica", "slot_ranges": "", "keys": 80},
            {"name": "s1b", "shard": "s1", "role": "primary", "slot_ranges": "8-15", "keys": 80},
        ],
    }
    doc = {
        "slots": 16,
        "shards": {
            "s0": [{"name": "s0a", "publish": "tcp://127.0.0.1:1", "sync": "tcp://127.0.0.1:2"}],
            "s1": [{"name": "s1a", "publish": "tcp://127.0.0.1:3", "sync": "tcp://127.0.0.1:4"}],
            "s2": [{"name": "s2a", "publish": "tcp://127.0.0.1:5", "sync": "tcp://127.0.0.1:6"}],
        },
    }
    todo: Plan = make_plan(status, parse_config(yaml.safe_dump(doc)))
    assert todo.added_shards == {"s2": ["s2a"]}
    assert todo.removed_nodes == {"s1b": "s1"}
    assert todo.switch == {"s1": "s1b"}  # the dropped node is a primary: switch over first
    assert todo.slots_to_move == 5  # 16 slots over 3 shards: 6, 5, 5
    assert todo.keys_to_copy == 2 * 10 + 3 * 10
    lines = "\n".join(todo.lines())
    assert "move the primary role of shard s1 off s1b" in lines
    assert "move 5 slots (about 50 keys)" in lines
