"""Several brokers: throughput with one and with two, and what a broker's death costs.

    python examples/bench_brokers.py [--rounds 3] [--seconds 3]

Runs each cluster with ``zkv up`` in a temporary folder (free ports on 127.0.0.1): one etcd
member, N brokers sharing the routing state through it, 3 shards of one node, fsync
everysec. Prints, medians of ``--rounds`` runs of ``zkv bench`` taken in turns:

1. ops/s of 8 client threads (gets, then puts) against 1 broker and against 2 brokers (the
   clients list both and spread their requests);
2. on a cluster of 2 brokers and one shard of 2 nodes (heartbeat 0.1 s): a broker killed
   (SIGKILL) under load: one that is not the controller, then the controller, then the
   shard's primary and, in the middle of the failover that follows, the controller:
   requests that failed (goal 0: the clients retry), the longest request, and acknowledged
   writes lost (goal 0).

Needs Debian's ``etcd-server`` (``/usr/bin/etcd``). Every process is stopped through
``zkv up`` (SIGTERM to it, by its PID).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

import zkv

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port, never one handed out before (a config refuses a port used twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@contextlib.contextmanager
def cluster(
    work: Path, brokers: int, shards: int = 3, nodes: int = 1, heartbeat_s: float = 0.5
) -> Iterator[dict[str, Any]]:
    """``zkv up`` of one etcd member, ``brokers`` brokers and ``shards`` shards of
    ``nodes`` nodes."""
    work.mkdir(parents=True)

    def tcp() -> str:
        return f"tcp://127.0.0.1:{free_port()}"

    doc: dict[str, Any] = {
        "cluster": "bench",
        "storage": {"dir": str(work / "data"), "fsync": "everysec"},
        "heartbeat": {"interval_s": heartbeat_s, "liveness": 3},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "coordination": {
            "etcd": {
                "members": [
                    {
                        "name": "e1",
                        "client": f"http://127.0.0.1:{free_port()}",
                        "peer": f"http://127.0.0.1:{free_port()}",
                    }
                ],
                "lease_ttl_s": 2,
            }
        },
        "brokers": [
            {"name": f"b{i + 1}", "clients": tcp(), "nodes": tcp()} for i in range(brokers)
        ],
        "shards": {
            f"s{i}": [
                {"name": f"s{i}{chr(97 + j)}", "publish": tcp(), "sync": tcp()}
                for j in range(nodes)
            ]
            for i in range(shards)
        },
    }
    config = work / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc))
    log = work / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "zkv", "up", "--config", str(config)],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "zkv up: ready" not in log.read_text(errors="replace"):
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"zkv up did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        endpoints = ",".join(b["clients"] for b in doc["brokers"])
        with zkv.Client(endpoints, timeout_s=10.0) as kv:  # wait for the elections
            deadline = time.monotonic() + 30
            while True:
                try:
                    kv.put("bench:ready", 1)
                    break
                except zkv.ZkvError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield {"endpoints": endpoints, "work": work, "doc": doc}
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def bench(endpoints: str, workload: str, seconds: float) -> float:
    command = [sys.executable, "-m", "zkv", "bench", "--connect", endpoints, "--json"]
    args = ["--workload", workload, "--threads", "8", "--seconds", str(seconds)]
    out = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, check=True)
    return float(json.loads(out.stdout)["result"]["ops_per_s"])


def pid_of(work: Path, name: str) -> int:
    state = json.loads((work / "data" / "launcher.json").read_text())
    return int(state["processes"][name]["pid"])


def kill_under_load(c: dict[str, Any], victim: str, *then: str) -> dict[str, Any]:
    """Writers on their own client while ``victim`` is killed (then each of ``then``, as
    soon as the controller sees the one before down); what they saw."""
    stop = threading.Event()
    acked: dict[str, int] = {}
    maybe: dict[str, int] = {}
    worst = [0.0]
    failures = [0]

    def write(me: int) -> None:
        n = 0
        with zkv.Client(c["endpoints"], timeout_s=10.0) as kv:
            while not stop.is_set():
                n += 1
                key = f"kill:{me}:{n % 200}"
                started = time.monotonic()
                try:
                    kv.put(key, n)
                    acked[key] = n
                except zkv.ZkvError:
                    failures[0] += 1
                    maybe[key] = n
                worst[0] = max(worst[0], time.monotonic() - started)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # a steady load before the kill
    os.kill(pid_of(c["work"], victim), signal.SIGKILL)
    for name in then:  # e.g. the controller, in the middle of the failover it started
        time.sleep(0.4)  # detection (0.1 s x 3 heartbeats), into the wait for the lease
        os.kill(pid_of(c["work"], name), signal.SIGKILL)
    time.sleep(6.0)  # through the controller's lease TTL, the promotion and the restarts
    stop.set()
    for t in threads:
        t.join(60)
    with zkv.Client(c["endpoints"], timeout_s=10.0) as kv:
        final = kv.mget(list(acked))
    lost = [
        k
        for k, v in acked.items()
        if final.get(k) != v and not (maybe.get(k, -1) > v and final.get(k) == maybe[k])
    ]
    return {"failed": failures[0], "longest_s": worst[0], "lost": len(lost), "acked": len(acked)}


def primary_of(c: dict[str, Any]) -> str:
    with zkv.Client(c["endpoints"], timeout_s=5.0) as kv:
        return str(kv.cluster_status()["shards"]["s0"]["primary"])


def controller(c: dict[str, Any]) -> str:
    with zkv.Client(c["endpoints"], timeout_s=5.0) as kv:
        name = kv.cluster_status()["coordination"]["controller"]
    return str(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if shutil.which("etcd") is None:
        sys.exit("no etcd binary: apt-get install etcd-server")
    runs: dict[tuple[int, str], list[float]] = {}
    tmp = tempfile.mkdtemp(prefix="zkv-brokers-")
    try:
        with cluster(Path(tmp) / "one", 1) as one, cluster(Path(tmp) / "two", 2) as two:
            for round_ in range(args.rounds):
                for workload in ("get", "put"):
                    for n, c in ((1, one), (2, two)):
                        ops = bench(c["endpoints"], workload, args.seconds)
                        runs.setdefault((n, workload), []).append(ops)
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        with cluster(Path(tmp) / "ha", 2, shards=1, nodes=2, heartbeat_s=0.1) as ha:
            boss = controller(ha)
            follower = "b2" if boss == "b1" else "b1"
            kills = {
                f"{follower} (not the controller)": kill_under_load(ha, follower),
            }
            boss = controller(ha)  # the follower came back; the controller may be either
            kills[f"{boss} (the controller)"] = kill_under_load(ha, boss)
            boss, primary = controller(ha), primary_of(ha)
            kills[f"{primary} (the primary), then {boss} during its failover"] = kill_under_load(
                ha, primary, boss
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"1. 8 client threads, medians of {args.rounds} runs of {args.seconds:g} s, in turns")
    for workload in ("get", "put"):
        one_ops = statistics.median(runs[(1, workload)])
        two_ops = statistics.median(runs[(2, workload)])
        print(
            f"   {workload}: 1 broker {one_ops:,.0f} ops/s, 2 brokers {two_ops:,.0f} ops/s "
            f"({two_ops / one_ops:.2f} x)"
        )
    print("2. processes killed (SIGKILL) under 4 writers, then restarted by zkv up")
    for victim, seen in kills.items():
        print(
            f"   {victim}: {seen['failed']} failed requests, longest {seen['longest_s']:.2f} s, "
            f"{seen['lost']} of {seen['acked']} acknowledged writes lost"
        )
    print(f"(nproc = {os.cpu_count()})")


if __name__ == "__main__":
    main()
