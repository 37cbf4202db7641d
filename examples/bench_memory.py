"""Memory benchmark: bytes per key against RSS, the cost of LRU/LFU marks, and put throughput
with no limit, at 90% of ``memory.max_bytes``, and full (evicting on every write).

Run from the repository root:

    python examples/bench_memory.py              # 1,000,000 keys, about a minute
    python examples/bench_memory.py --quick      # 200,000 keys

It prints:
1. for each policy family (none, allkeys-lru, allkeys-lfu, and keys with a TTL): the RSS a
   ``Store`` grows by per key (16-byte keys, 100-byte values) next to ``used_bytes`` per key
   (the accounting formula of ``zkv/storage/eviction.py``), and the alternative exact LRU
   order (an ``OrderedDict`` beside the store);
2. the cost per operation: a get (which touches the order), and a put that evicts;
3. puts/s through the real client, broker and one node: no limit; a node whose data is at 90%
   of its limit (the run stays under it); and a full node under ``allkeys-lru``, where every
   put evicts one key.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import zkv

PROBE = """
import gc, os, sys, time
from collections import OrderedDict
from zkv.storage.engine import Store
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
n, kind = int(sys.argv[1]), sys.argv[2]
keys = [b"k%015d" % i for i in range(n)]
values = [b"%0100d" % i for i in range(n)]
gc.collect()
before = rss()
policy = {"lru": "allkeys-lru", "lfu": "allkeys-lfu"}.get(kind, "noeviction")
s = Store(16384, policy=policy)
ttl = 1e6 if kind == "ttl" else None
for k, v in zip(keys, values):
    s.put(k, v, ttl)
extra = OrderedDict.fromkeys(keys) if kind == "exact-lru" else None
gc.collect()
grown = (rss() - before) / n
t = time.perf_counter()
for k in keys[: n // 2]:
    s.get(k)
    if extra is not None:
        extra.move_to_end(k)
get_us = (time.perf_counter() - t) / (n // 2) * 1e6
s.max_bytes = s.used_bytes
t = time.perf_counter()
m = min(n // 4, 100_000)
if kind != "ttl":
    s.policy = s.policy if policy != "noeviction" else s.policy
    from zkv.storage.eviction import Policy
    if policy == "noeviction":
        s.policy = Policy.ALLKEYS_RANDOM
    for i in range(m):
        s.put(b"n%015d" % i, values[i])
        if extra is not None:
            extra.popitem(last=False)
            extra[b"n%015d" % i] = None
evict_us = (time.perf_counter() - t) / m * 1e6 if kind != "ttl" else 0.0
print(grown, s.used_bytes / s.held, get_us, evict_us)
"""

#: Bytes per key of the objects built before the probe's baseline (16-byte key, 100-byte
#: value), added back as the bench_storage.py probe does.
PREBUILT = sys.getsizeof(b"k" * 16) + sys.getsizeof(b"v" * 100)


def bench_bytes(keys: int) -> None:
    print(f"1-2. {keys:,} keys of 16 bytes with 100-byte values in one Store")
    print(
        f"   {'order':18} {'RSS B/key':>10} {'used_bytes/key':>15} {'get us':>7} "
        f"{'evicting put us':>16}"
    )
    for kind, label in [
        ("none", "none (noeviction)"),
        ("lru", "allkeys-lru"),
        ("lfu", "allkeys-lfu"),
        ("exact-lru", "+ OrderedDict LRU"),
        ("ttl", "none, all with TTL"),
    ]:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(keys), kind],
            capture_output=True,
            text=True,
            check=True,
        )
        grown, used, get_us, evict_us = map(float, out.stdout.split())
        rss_per_key = grown + PREBUILT
        evict = f"{evict_us:16.2f}" if kind != "ttl" else f"{'-':>16}"
        print(f"   {label:18} {rss_per_key:10.0f} {used:15.0f} {get_us:7.2f} {evict}")
    print(
        "   (the none row's evicting put is allkeys-random; + OrderedDict LRU is the store "
        "with no policy plus an exact LRU order kept beside it)"
    )


class OneNode:
    """A broker and one node on 127.0.0.1 (port 0) in ``folder``, with a ``memory`` section."""

    def __init__(self, folder: Path, memory: dict[str, Any]) -> None:
        folder.mkdir(parents=True)
        doc: dict[str, Any] = {
            "cluster": "bench",
            "broker": {"clients": "tcp://127.0.0.1:0", "nodes": "tcp://127.0.0.1:0"},
            "storage": {"dir": str(folder / "data"), "fsync": "no"},
            "memory": memory,
            "shards": {
                "s0": [{"name": "n0", "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"}]
            },
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        (folder / "broker.yaml").write_text(yaml.safe_dump(doc))
        ready = self._start(folder, ["broker", "--config", str(folder / "broker.yaml")], "b")
        self.endpoint = ready["clients"]
        doc["broker"] = {"clients": ready["clients"], "nodes": ready["nodes"]}
        (folder / "cluster.yaml").write_text(yaml.safe_dump(doc))
        self._start(folder, ["node", "--config", str(folder / "cluster.yaml"), "--name", "n0"], "n")

    def _start(self, folder: Path, args: list[str], tag: str) -> dict[str, Any]:
        ready = folder / f"{tag}.ready"
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "zkv", *args, "--ready-file", str(ready)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 20
        while not ready.exists() or not ready.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{args[0]} did not start")
            time.sleep(0.05)
        result: dict[str, Any] = yaml.safe_load(ready.read_text())
        return result

    def stop(self) -> None:
        """Stop the processes this started, by PID."""
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(10)


def bench_throughput(folder: Path, keys: int, seconds: float) -> None:
    print(f"3. puts/s, one client, 100-character values, {keys:,} keys first (fsync no)")
    per_key = 16 + 102 + 110 + 42
    limit = int(keys * per_key / 0.9)
    for label, memory, fill in [
        ("no limit", {}, False),
        ("at 90% of the limit, allkeys-lru", {"max_bytes": limit}, False),
        ("full, allkeys-lru (every put evicts)", {"max_bytes": limit}, True),
    ]:
        node = OneNode(
            folder / label.split(",")[0].replace(" ", "-"), {"policy": "allkeys-lru", **memory}
        )
        try:
            with zkv.Client(node.endpoint, timeout_s=10) as kv:
                kv.cluster_status()
                value = "x" * 100
                for start in range(0, keys, 1000):
                    kv.mput({f"key:{i:012d}": value for i in range(start, start + 1000)})
                if fill:  # fill up to the limit: from here every put evicts a key
                    i = keys
                    while not kv.cluster_status()["nodes"][0]["evictions"]:
                        kv.mput({f"key:{j:012d}": value for j in range(i, i + 1000)})
                        i += 1000
                n, t = 0, time.perf_counter()
                while time.perf_counter() - t < seconds:
                    kv.put(f"new:{n:012d}", value, consistency="eventual")
                    n += 1
                rate = n / (time.perf_counter() - t)
                time.sleep(0.3)
                info = kv.cluster_status()["nodes"][0]
            print(
                f"   {label:34} {rate:8,.0f} puts/s  (used {info['used_bytes']:,} of "
                f"{info['max_bytes'] or 'no limit'}, {info['evictions']:,} evictions)"
            )
        finally:
            node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="200,000 keys, 2 s runs")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.seconds = 200_000, 2.0
    print(f"zkv {zkv.__version__}, Python {sys.version.split()[0]}")
    bench_bytes(args.keys)
    with tempfile.TemporaryDirectory(prefix="zkv-bench-memory-") as tmp:
        bench_throughput(Path(tmp), min(args.keys, 100_000), args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
