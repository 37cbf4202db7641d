"""Storage benchmark: write throughput per fsync policy, fsyncs/s, recovery, stalls, memory.

Run from the repository root (it starts its own one-node clusters on 127.0.0.1 in a temporary
folder, and stops them):

    python examples/bench_storage.py                # about two minutes
    python examples/bench_storage.py --quick        # smaller and shorter

It prints:
1. put throughput through the real client, broker and node, for each ``storage.fsync``
   policy with 1 and with 16 client threads (each thread its own client), median of
   ``--repeat`` runs, with the fsyncs per second the node reports;
2. recovery time of a node folder holding ``--keys`` keys, from the log alone and from a
   snapshot, and the longest stall a compaction step caused;
3. memory: bytes of RSS per key for ``--keys`` keys of 16-byte keys and 100-byte values in
   a ``Store``, next to a plain ``dict`` of the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

import zkv
from zkv.storage.engine import Store
from zkv.storage.persistence import Persistence


class OneNodeCluster:
    """A broker and one node on 127.0.0.1 (port 0), in ``folder``."""

    def __init__(self, folder: Path, fsync: str) -> None:
        folder.mkdir(parents=True)
        doc: dict[str, Any] = {
            "cluster": "bench",
            "broker": {"clients": "tcp://127.0.0.1:0", "nodes": "tcp://127.0.0.1:0"},
            "storage": {"dir": str(folder / "data"), "fsync": fsync},
            "heartbeat": {"interval_s": 0.2, "liveness": 5},
            "shards": {
                "s0": [{"name": "n0", "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"}]
            },
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        broker_cfg = folder / "broker.yaml"
        broker_cfg.write_text(yaml.safe_dump(doc))
        ready = self._start(folder, ["broker", "--config", str(broker_cfg)], "broker")
        self.endpoint = ready["clients"]
        doc["broker"] = {"clients": ready["clients"], "nodes": ready["nodes"]}
        node_cfg = folder / "cluster.yaml"
        node_cfg.write_text(yaml.safe_dump(doc))
        self._start(folder, ["node", "--config", str(node_cfg), "--name", "n0"], "n0")
        with zkv.Client(self.endpoint, timeout_s=10) as kv:
            deadline = time.monotonic() + 10
            while not kv.cluster_status()["nodes"][0]["alive"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("node did not register")
                time.sleep(0.05)

    def _start(self, folder: Path, args: list[str], name: str) -> dict[str, Any]:
        ready = folder / f"{name}.ready"
        log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "zkv",
                    *args,
                    "--log-level",
                    "WARNING",
                    "--ready-file",
                    str(ready),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 15
        while not ready.exists():
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise RuntimeError(f"{name} did not start; see {folder}/{name}.log")
            time.sleep(0.02)
        data: dict[str, Any] = json.loads(ready.read_text())
        return data

    def node_status(self) -> dict[str, Any]:
        with zkv.Client(self.endpoint, timeout_s=5) as kv:
            status: dict[str, Any] = kv.cluster_status()["nodes"][0]
            return status

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def put_throughput(endpoint: str, threads: int, seconds: float) -> int:
    """Puts acknowledged by ``threads`` clients in ``seconds``."""
    value = "v" * 100
    counts = [0] * threads
    stop = threading.Event()

    def work(t: int) -> None:
        with zkv.Client(endpoint, timeout_s=10) as kv:
            n = 0
            while not stop.is_set():
                kv.put(f"t{t}:{n % 10000}", value)
                n += 1
            counts[t] = n

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts)


def bench_policies(tmp: Path, seconds: float, repeat: int) -> None:
    print(f"1. put throughput, 100-byte values, one node; median of {repeat} runs of {seconds:g} s")
    print(f"   {'fsync':9} {'threads':>7} {'puts/s':>9} {'fsyncs/s':>9}  runs (puts/s)")
    for policy in ("always", "everysec", "no"):
        cluster = OneNodeCluster(tmp / f"policy-{policy}", policy)
        try:
            for threads in (1, 16):
                rates, fsync_rates = [], []
                for _ in range(repeat):
                    before = cluster.node_status()["fsyncs"]
                    started = time.monotonic()
                    ops = put_throughput(cluster.endpoint, threads, seconds)
                    elapsed = time.monotonic() - started
                    time.sleep(0.3)  # one heartbeat brings the node's fsync count
                    rates.append(ops / elapsed)
                    fsync_rates.append((cluster.node_status()["fsyncs"] - before) / elapsed)
                runs = ", ".join(f"{r:,.0f}" for r in rates)
                print(
                    f"   {policy:9} {threads:>7} {statistics.median(rates):>9,.0f} "
                    f"{statistics.median(fsync_rates):>9,.0f}  {runs}",
                    flush=True,
                )
        finally:
            cluster.stop()


def bench_recovery(tmp: Path, keys: int) -> None:
    print(f"2. recovery and compaction, {keys:,} keys of 16 bytes with 100-byte values")
    folder = tmp / "recovery"
    store = Store(16384)
    persistence = Persistence(folder, "no", compact_min_bytes=1 << 62)
    persistence.recover(store)
    value = b"v" * 100
    started = time.perf_counter()
    for i in range(keys):
        store.put(b"key:%012d" % i, value)
        if i % 1000 == 999:
            persistence.flush()
    persistence.flush()
    print(
        f"   wrote {keys:,} single-put records in {time.perf_counter() - started:.1f} s "
        f"({persistence.log_bytes / 1e6:.0f} MB of log)"
    )
    persistence.close()

    fresh = Store(16384)
    again = Persistence(folder, "no", compact_min_bytes=1 << 62)
    report = again.recover(fresh)
    print(
        f"   recovery from the log: {report.seconds:.2f} s ({report.records:,} records, "
        f"{fresh.held:,} keys)"
    )
    started = time.perf_counter()
    again.start_compaction(fresh)
    steps = 0
    while again.compacting:
        again.maybe_compact(fresh)
        steps += 1
        if not again._writer:  # the final fsync runs in a thread
            time.sleep(0.001)
    print(
        f"   compaction: {time.perf_counter() - started:.2f} s in {steps} steps, longest "
        f"stall {again.max_stall_s * 1000:.1f} ms"
    )
    again.close()
    third = Store(16384)
    report = Persistence(folder, "no", compact_min_bytes=1 << 62).recover(third)
    print(f"   recovery from the snapshot: {report.seconds:.2f} s ({third.held:,} keys)")
    assert third.held == keys


MEMORY_PROBE = """
import gc, os, sys
from zkv.storage.engine import Store
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
n = int(sys.argv[1])
kind = sys.argv[2]
keys = [b"k%015d" % i for i in range(n)]
values = [b"%0100d" % i for i in range(n)]
gc.collect()
before = rss()
if kind == "store":
    s = Store(16384)
    for k, v in zip(keys, values):
        s.put(k, v)
else:
    d = dict(zip(keys, values))
gc.collect()
print((rss() - before) / n)
"""


def bench_memory(keys: int) -> None:
    print(
        f"3. memory per key, {keys:,} keys (16-byte keys, 100-byte values; key and value "
        "objects counted as in a node)"
    )
    for kind in ("dict", "store"):
        # keys and values are built before the baseline; add their own size back
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(keys), kind],
            capture_output=True,
            text=True,
            check=True,
        )
        per_key = float(out.stdout) + sys.getsizeof(b"k" * 16) + sys.getsizeof(b"v" * 100)
        label = "plain dict (baseline)" if kind == "dict" else "zkv Store"
        print(f"   {label:22} {per_key:6.0f} bytes per key")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="1 s runs, 100k keys, 1 repeat")
    parser.add_argument("--only", choices=["policies", "recovery", "memory"])
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeat, args.keys = 1.0, 1, 100_000
    print(f"zkv {zkv.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="zkv-bench-") as tmp:
        if args.only in (None, "policies"):
            bench_policies(Path(tmp), args.seconds, args.repeat)
        if args.only in (None, "recovery"):
            bench_recovery(Path(tmp), args.keys)
        if args.only in (None, "memory"):
            bench_memory(args.keys)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
