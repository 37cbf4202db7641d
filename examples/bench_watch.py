"""What watching costs and delivers: events/s to 1 and to 10 watchers, and write throughput
with 0 and with 10 watchers.

    python examples/bench_watch.py            # about a minute here
    python examples/bench_watch.py --quick    # smaller sizes, about 20 seconds

Starts its own cluster (a broker and 2 shards of one node each, fsync everysec, on
127.0.0.1 with free ports, in a temporary folder; every process is stopped by its PID at the
end, even after an error) and prints a table:

1. **delivery**: ``--events`` changes (puts of 100-byte values, written with ``mput`` in
   batches of 100: one record, 100 events) are written while nobody reads them; then 1, or
   10, watcher *processes* (each its own client, so no GIL is shared) read them all from a
   cursor taken before the writes. Events/s per watcher and in total (each watcher gets
   every event): the median of ``--rounds`` rounds, run in turns.
2. **write cost**: ``--writers`` threads ``put`` single keys for ``--seconds``, with 0
   watchers, 1 and 10 watcher processes following the feed live (``values=True``);
   writes/s, and the CPU the broker and nodes spent per 1,000 puts (``/proc``), the median
   of ``--rounds`` rounds run in turns (0, 1, 10, 0, 1, 10, ...). On a machine with few
   cores the watcher processes compete with the writers and servers for CPU: the server
   CPU per put says what watching costs the cluster itself.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import signal
import socket
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
from zkv.client.watch import Resync

HERE = Path(__file__).resolve().parent.parent
VALUE = "v" * 100
BATCH = 100


def endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Cluster:
    """A broker and single-node shards on free ports in ``work``; ``stop()`` stops every
    process it started, by PID."""

    def __init__(self, work: Path, shards: list[str], linger_s: float | None = None) -> None:
        self.work = work
        self.clients = endpoint()
        self.config = work / "cluster.yaml"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        doc = {
            "cluster": "bench-watch",
            "broker": {"clients": self.clients, "nodes": endpoint()},
            "storage": {"dir": str(work / "data"), "fsync": "everysec"},
            "shards": {
                s: [{"name": f"{s}a", "publish": endpoint(), "sync": endpoint()}] for s in shards
            },
        }
        if linger_s is not None:
            doc["watch"] = {"linger_s": linger_s}
        self.config.write_text(yaml.safe_dump(doc))
        self.names = [f"{s}a" for s in shards]

    def _start(self, name: str, args: list[str]) -> None:
        ready = self.work / f"{name}.ready"
        flags = ["--config", str(self.config), "--log-level", "WARNING", "--ready-file", str(ready)]
        with open(self.work / f"{name}.log", "ab") as log:
            self.procs[name] = proc = subprocess.Popen(
                [sys.executable, "-m", "zkv", *args, *flags],
                env={**os.environ, "PYTHONPATH": str(HERE)},
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name} did not start: see {self.work / (name + '.log')}")
            time.sleep(0.02)

    def start(self) -> None:
        self._start("broker", ["broker"])
        for name in self.names:
            self._start(name, ["node", "--name", name])
        deadline = time.monotonic() + 30
        with zkv.Client(self.clients, timeout_s=2.0) as kv:
            while True:
                with contextlib.suppress(zkv.TransportError):
                    nodes = kv.cluster_status()["nodes"]
                    if sum(n["alive"] and n["role"] == "primary" for n in nodes) == len(self.names):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError("the nodes did not become primaries")
                time.sleep(0.05)

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            del self.procs[name]


# ---------------------------------------------------------------------- watcher processes


def drain(endpoint: str, cursor: str, events: int, ready: Any, go: Any, out: Any) -> None:
    """Read ``events`` events from ``cursor``; the seconds it took go to ``out`` (a child
    process)."""
    with zkv.Client(endpoint, timeout_s=10.0) as kv:
        ready.wait()
        go.wait()
        started = time.perf_counter()
        for seen, event in enumerate(kv.watch("bench:", cursor=cursor, wait=1.0), 1):
            if isinstance(event, Resync):
                raise RuntimeError(f"resync: {event.reason}")
            if seen >= events:
                out.put(time.perf_counter() - started)
                return


def follow(endpoint: str, stop: Any, counts: Any, index: int) -> None:
    """Follow the feed live until ``stop`` is set; the events seen go to ``counts[index]``."""
    with zkv.Client(endpoint, timeout_s=10.0) as kv:
        seen = 0
        for _ in kv.watch("bench:", wait=0.2):
            seen += 1
            if seen % 100 == 0:
                counts[index] = seen
                if stop.is_set():
                    break
        counts[index] = seen


def delivery(c: Cluster, watchers: int, events: int) -> tuple[float, float]:
    """Events/s per watcher (median of the watchers) and in total."""
    ctx = mp.get_context("spawn")
    with zkv.Client(c.clients, timeout_s=10.0) as kv:
        feed = kv.watch("bench:", wait=0.5)
        kv.put("bench:marker", 0)
        cursor = str(next(feed).cursor)  # the events after the marker: this round's
        feed.close()  # type: ignore[attr-defined]
        for start in range(0, events, BATCH):
            kv.mput({f"bench:{i}": VALUE for i in range(start, start + BATCH)})
    go = ctx.Event()
    ready = ctx.Barrier(watchers + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=drain, args=(c.clients, cursor, events, ready, go, out))
        for _ in range(watchers)
    ]
    for p in procs:
        p.start()
    ready.wait(60)
    go.set()
    times = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    per = statistics.median(events / t for t in times)
    return per, events * watchers / max(times)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_rate(c: Cluster, writers: int, seconds: float, watchers: int) -> tuple[float, float, int]:
    """Puts/s of ``writers`` threads over ``seconds`` with ``watchers`` live followers, the
    CPU milliseconds the broker and nodes spent per 1,000 puts, and the events the
    followers saw (in total)."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    counts = ctx.Array("q", watchers or 1)
    procs = [ctx.Process(target=follow, args=(c.clients, stop, counts, i)) for i in range(watchers)]
    for p in procs:
        p.start()
    time.sleep(1.0 if watchers else 0.0)  # the followers connect and start
    done = [0] * writers
    halt = threading.Event()

    def write(w: int) -> None:
        with zkv.Client(c.clients, timeout_s=10.0) as kv:
            i = 0
            while not halt.is_set():
                kv.put(f"bench:w{w}:{i % 1000}", VALUE)
                i += 1
            done[w] = i

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    servers = [p.pid for p in c.procs.values()]
    cpu_before = sum(map(cpu_s, servers))
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    halt.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    server_ms = (sum(map(cpu_s, servers)) - cpu_before) * 1000 / max(1, sum(done)) * 1000
    stop.set()
    with zkv.Client(c.clients) as kv:  # wakes the followers up to see ``stop``
        kv.mput({f"bench:stop{i}": 1 for i in range(100)})
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    return sum(done) / elapsed, server_ms, sum(counts[:watchers]) if watchers else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--events", type=int, help="events per delivery round")
    parser.add_argument("--rounds", type=int, help="rounds of each measure (medians)")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, help="seconds of each write round")
    parser.add_argument("--linger", type=float, help="watch.linger_s of the nodes (0.005)")
    args = parser.parse_args()
    events = args.events or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    with tempfile.TemporaryDirectory(prefix="zkv-bench-watch-") as tmp:
        c = Cluster(Path(tmp), ["s0", "s1"], args.linger)
        try:
            c.start()
            rows: dict[str, list[float]] = {}
            for _ in range(rounds):
                for n in (1, 10):
                    per, total = delivery(c, n, events)
                    rows.setdefault(
                        f"delivery to {n:>2} watcher(s), events/s per watcher", []
                    ).append(per)
                    rows.setdefault(f"delivery to {n:>2} watcher(s), events/s in total", []).append(
                        total
                    )
            for _ in range(rounds):
                for n in (0, 1, 10):
                    rate, server_ms, _seen = write_rate(c, args.writers, seconds, n)
                    rows.setdefault(
                        f"broker + nodes CPU ms per 1,000 puts with {n:>2} watchers", []
                    ).append(server_ms)
                    rows.setdefault(
                        f"puts/s with {n:>2} watchers ({args.writers} writer threads)", []
                    ).append(rate)
        finally:
            c.stop()
    linger = "default" if args.linger is None else f"{args.linger:g} s"
    print(
        f"\nzkv watch bench: 2 shards, {events:,} events per delivery round, medians of "
        f"{rounds}, watch.linger_s {linger}"
    )
    width = max(map(len, rows))
    for name, values in rows.items():
        print(f"  {name:<{width}}  {statistics.median(values):>12,.0f}")
    base = statistics.median(rows[f"puts/s with  0 watchers ({args.writers} writer threads)"])
    watched = statistics.median(rows[f"puts/s with 10 watchers ({args.writers} writer threads)"])
    print(f"  write throughput with 10 watchers: {100 * watched / base:.0f}% of none")


if __name__ == "__main__":
    main()
