"""Failover benchmark: how long after a primary fails are its shard's writes served again?

Runs `zkv up` on a config like config/local.yaml (3 shards x 2 nodes, the default heartbeat
of 0.5 s x 3) but on free ports in a temporary folder, writes to one shard in a loop, then
makes that shard's primary fail in two ways and prints, for each, the time from the fault to
the first write that succeeds again:

- SIGKILL: the primary's connection drops, so the broker notices at once;
- SIGSTOP: the process hangs with its connections open, so only missed heartbeats tell
  (the target is liveness x interval + 1 s = 2.5 s).

    python examples/bench_failover.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import zkv
from zkv.slots import SlotMap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path) -> tuple[Path, str]:
    doc = yaml.safe_load(Path(__file__).parent.parent.joinpath("config", "local.yaml").read_text())
    clients = f"tcp://127.0.0.1:{free_port()}"
    doc["broker"] = {"clients": clients, "nodes": f"tcp://127.0.0.1:{free_port()}"}
    doc["storage"]["dir"] = str(folder / "data")
    for nodes in doc["shards"].values():
        for node in nodes:
            node["publish"] = f"tcp://127.0.0.1:{free_port()}"
            node["sync"] = f"tcp://127.0.0.1:{free_port()}"
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, clients


def primary_pid(kv: zkv.Client, shard: str) -> tuple[str, int]:
    for node in kv.cluster_status()["nodes"]:
        if node["shard"] == shard and node["role"] == "primary" and node["alive"]:
            return node["name"], node["pid"]
    raise RuntimeError(f"shard {shard} has no primary")


def measure(kv: zkv.Client, key: str, sig: signal.Signals) -> float:
    """Seconds from sending ``sig`` to the shard's primary until a write succeeds again."""
    name, pid = primary_pid(kv, "s0")
    kv.put(key, 0)
    os.kill(pid, sig)
    started = time.monotonic()
    while True:
        try:
            kv.put(key, 1, timeout=0.2)
            elapsed = time.monotonic() - started
            break
        except zkv.ZkvError:
            if time.monotonic() - started > 30:
                raise RuntimeError("writes did not resume within 30 s") from None
    if sig == signal.SIGSTOP:
        os.kill(pid, signal.SIGCONT)  # it comes back fenced, as a replica
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the shard has an in-sync replica again
        nodes = [n for n in kv.cluster_status()["nodes"] if n["shard"] == "s0"]
        if any(n["role"] == "replica" and n["in_sync"] for n in nodes):
            break
        time.sleep(0.1)
    print(f"  {sig.name:8} {name}: writes served again after {elapsed:.2f} s", flush=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zkv-failover-") as tmp:
        config, clients = write_config(Path(tmp))
        log = open(Path(tmp) / "up.log", "wb")  # noqa: SIM115 - closed below
        up = subprocess.Popen(
            [sys.executable, "-m", "zkv", "up", "--config", str(config), "--log-level", "WARNING"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            kv = zkv.Client(clients, timeout_s=10)
            key = next(
                k
                for k in (f"k{i}" for i in range(100))
                if SlotMap.even(["s0", "s1", "s2"], 16384).shard_of(k.encode()) == "s0"
            )
            deadline = time.monotonic() + 20
            while True:
                try:
                    nodes = kv.cluster_status()["nodes"]
                    if all(n["alive"] for n in nodes) and any(n["in_sync"] for n in nodes):
                        break
                except zkv.ZkvError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not come up")
                time.sleep(0.1)
            print("failover with heartbeat 0.5 s x 3 (target 2.5 s):")
            results: dict[str, list[float]] = {"SIGKILL": [], "SIGSTOP": []}
            for _ in range(args.repeat):
                for sig in (signal.SIGKILL, signal.SIGSTOP):
                    results[sig.name].append(measure(kv, key, sig))
            for name, times in results.items():
                print(f"  {name}: median {statistics.median(times):.2f} s over {len(times)} runs")
            kv.close()
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(30)
            log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
