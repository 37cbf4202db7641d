"""What moving slots costs: slot move times, held requests, throughput during a rebalance,
and a 3 -> 4 -> 3 shard round trip under load.

    python examples/bench_reshard.py            # full sizes (about 4 to 5 minutes here)
    python examples/bench_reshard.py --quick    # smaller sizes, about a minute

Starts its own clusters (a broker and shards of one node each, fsync everysec, on
127.0.0.1 with free ports, in a temporary folder; every process is stopped by its PID at
the end, even after an error) and prints, as a table at the end:

1. **slot moves**: on 2 shards, the time to move one slot holding 10,000 keys and one
   holding 100,000 (100-byte values, put with ``mput`` in chunks of 5,000 under a ``{tag}``
   whose slot is the source's last, so ``reshard("s0", "s1", 1)`` moves exactly that slot),
   with keys/s, when the slot changed owner (the commit) and the ``longest_hold_ms`` the
   broker reports; an empty slot first, for the fixed cost of a move;
2. **held requests seen by a client**: during each of those moves one thread reads keys of
   the moving slot and another keys of a slot that stays: max and p99 latency before the
   move and during it;
3. **throughput during a rebalance**: N threads (``--threads``, 4) doing gets and puts on
   random keys of 200,000, ops/s over a few seconds before and during a
   ``reshard(src, dst, 4096)``, several times (the moves alternate direction); medians and
   the ratio;
4. **3 -> 4 -> 3 round trip under load**: the 4th shard added (config rewritten, broker
   restarted, node started, ``reshard()``), then its slots moved back to the 3 others
   (``reshard("s3", other, n)`` each), config rewritten without it, broker restarted, node
   stopped. Time of each leg and step, ops/s during each leg, errors the load saw, and a
   final check that every acknowledged write reads back.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import zkv
from zkv.slots import slot_of

HERE = Path(__file__).resolve().parent.parent

SLOTS = 16384
VALUE = b"v" * 100
CHUNK = 5000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class Cluster:
    """A broker and single-node shards on free ports in ``work``; the config file can gain
    and lose shards, the broker can restart, nodes can start and stop. ``stop()`` stops
    every process it started, by PID."""

    #: ``heartbeat.interval_s`` of the clusters (None: the default, 0.5 s); ``--heartbeat``.
    heartbeat: float | None = None

    def __init__(self, work: Path, shards: list[str]) -> None:
        work.mkdir(parents=True)
        self.work = work
        self.clients = endpoint()
        self.config = work / "cluster.yaml"
        self.nodes: dict[str, dict[str, str]] = {}  # every node ever named, by shard
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": str(HERE)}
        self.write_config(shards)

    def write_config(self, shards: list[str]) -> None:
        for shard in shards:
            self.nodes.setdefault(
                shard, {"name": f"{shard}a", "publish": endpoint(), "sync": endpoint()}
            )
        if not self.config.exists():
            self.broker_nodes = endpoint()
        doc: dict[str, Any] = {
            "cluster": "bench-reshard",
            "broker": {"clients": self.clients, "nodes": self.broker_nodes},
            "storage": {"dir": str(self.work / "data"), "fsync": "everysec"},
            "shards": {s: [self.nodes[s]] for s in shards},
        }
        if self.heartbeat is not None:
            doc["heartbeat"] = {"interval_s": self.heartbeat}
        self.config.write_text(yaml.safe_dump(doc))

    def _start(self, name: str, args: list[str]) -> None:
        ready = self.work / f"{name}.ready"
        ready.unlink(missing_ok=True)
        flags = ["--config", str(self.config), "--log-level", "WARNING", "--ready-file", str(ready)]
        with open(self.work / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zkv", *args, *flags],
                env=self.env,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                log_text = (self.work / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start:\n{log_text}")
            time.sleep(0.02)

    def start_broker(self) -> None:
        self._start("broker", ["broker"])

    def start_node(self, shard: str) -> None:
        name = self.nodes[shard]["name"]
        self._start(name, ["node", "--name", name])
        self.wait_alive(name)

    def wait_alive(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with zkv.Client(self.clients, timeout_s=2.0) as kv:
            while True:
                with contextlib.suppress(zkv.TransportError):
                    nodes = {n["name"]: n for n in kv.cluster_status()["nodes"]}
                    if name in nodes and nodes[name]["alive"] and nodes[name]["role"] == "primary":
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {name} not alive after {timeout} s")
                time.sleep(0.02)

    def stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart_broker(self) -> None:
        self.stop_proc("broker")
        self.start_broker()

    def start(self, shards: list[str]) -> None:
        self.start_broker()
        for shard in shards:
            self.start_node(shard)

    def stop(self) -> None:
        for name in list(self.procs):  # a process that resists does not spare the others
            try:
                self.stop_proc(name)
            except Exception as exc:  # pragma: no cover - reported, then the next one
                print(f"stopping {name}: {exc}", file=sys.stderr)


@contextlib.contextmanager
def running(work: Path, shards: list[str]) -> Iterator[Cluster]:
    c = Cluster(work, shards)
    try:
        c.start(shards)
        yield c
    finally:
        c.stop()


# ---------------------------------------------------------------------- helpers


def owned(kv: zkv.Client, shard: str) -> list[int]:
    """``shard``'s slots, ascending, from the broker's status."""
    for node in kv.cluster_status()["nodes"]:
        if node["shard"] == shard and node["role"] == "primary" and node["alive"]:
            slots: list[int] = []
            for run in filter(None, node["slot_ranges"].split(",")):
                first, _, last = run.partition("-")
                slots.extend(range(int(first), int(last or first) + 1))
            return slots
    raise RuntimeError(f"no primary for {shard}")


def slot_counts(kv: zkv.Client) -> dict[str, int]:
    nodes = kv.cluster_status()["nodes"]
    return {n["shard"]: n["slots"] for n in nodes if n["role"] == "primary" and n["alive"]}


def tag_for(slot: int, salt: str) -> str:
    """A ``{tag}`` whose keys hash to ``slot``."""
    for i in range(10_000_000):
        tag = f"{salt}{i}"
        if slot_of(tag.encode(), SLOTS) == slot:
            return tag
    raise RuntimeError(f"no tag for slot {slot}")


def load(kv: zkv.Client, keys: list[str]) -> None:
    for first in range(0, len(keys), CHUNK):
        kv.mput({k: VALUE for k in keys[first : first + CHUNK]}, timeout=60)


@dataclass
class Moved:
    """One reshard followed to its end."""

    seconds: float  # from the call to moves_left == 0
    commit_s: float | None  # from the call to the first new map version
    keys: int
    hold_ms: float
    failed: str | None


def follow(kv: zkv.Client, start: Callable[[], Any], poll_s: float = 0.01) -> Moved:
    """Call ``start`` (a reshard) and poll the status until its last move ended."""
    version = kv.cluster_status()["slot_map_version"]
    t0 = time.monotonic()
    start()
    commit: float | None = None
    while True:
        status = kv.cluster_status()
        now = time.monotonic() - t0
        if commit is None and status["slot_map_version"] != version:
            commit = now
        r = status["reshard"]
        if r is not None and r["moves_left"] == 0:
            return Moved(now, commit, r["keys_copied"], r["longest_hold_ms"], r["failed"])
        if now > 600:
            raise RuntimeError(f"reshard not done after 600 s: {r}")
        time.sleep(poll_s)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Reader(threading.Thread):
    """Gets on ``keys`` in a loop, recording (end time, latency) of each."""

    def __init__(self, address: str, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.kv = zkv.Client(address, timeout_s=30.0)
        self.keys = keys
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(1)
        try:
            while not self.halt.is_set():
                key = rng.choice(self.keys)
                t = time.monotonic()
                try:
                    self.kv.get(key)
                except zkv.ZkvError as exc:
                    self.errors.append(repr(exc))
                end = time.monotonic()
                self.samples.append((end, end - t))
        finally:
            self.kv.close()

    def between(self, a: float, b: float) -> list[float]:
        return [lat for end, lat in self.samples if a <= end - lat and end - lat < b]


class Load:
    """``threads`` clients doing gets and puts (half each) on random keys of ``keys``.

    Each thread writes only its own keys (index % threads) with increasing values and
    records what was acknowledged; errors are counted by type with the time they came."""

    def __init__(self, address: str, keys: int, threads: int) -> None:
        self.address, self.keys, self.n = address, keys, threads
        self.halt = threading.Event()
        self.ops = [0] * threads
        self.acked: list[dict[str, int]] = [{} for _ in range(threads)]
        self.errors: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(60)

    def total(self) -> int:
        return sum(self.ops)

    def errors_between(self, a: float, b: float) -> list[str]:
        return [e for t, e in self.errors if a <= t < b]

    def _run(self, me: int) -> None:
        rng = random.Random(me)
        acked = self.acked[me]
        n = 0
        with zkv.Client(self.address, timeout_s=15.0) as kv:
            while not self.halt.is_set():
                i = rng.randrange(self.keys)
                try:
                    if rng.random() < 0.5:
                        kv.get(f"k{i}")
                    else:
                        i -= i % self.n - me  # one of this thread's keys
                        if i >= self.keys:
                            i -= self.n
                        n += 1
                        kv.put(f"k{i}", n)
                        acked[f"k{i}"] = n
                    self.ops[me] += 1
                except zkv.ZkvError as exc:  # a timed-out write is not counted as acked
                    self.errors.append((time.monotonic(), type(exc).__name__))

    def rate(self, seconds: float) -> float:
        before = self.total()
        time.sleep(seconds)
        return (self.total() - before) / seconds


# ---------------------------------------------------------------------- parts


def bench_slots(tmp: Path, sizes: list[int], results: dict[str, Any]) -> None:
    """Parts 1 and 2: single-slot moves, with readers on the moving slot and on another."""
    with running(tmp / "slots", ["s0", "s1"]) as c, zkv.Client(c.clients, timeout_s=60) as kv:
        other_tag = tag_for(0, "o")  # slot 0 stays on s0 throughout
        other_keys = [f"{{{other_tag}}}{i}" for i in range(1000)]
        load(kv, other_keys)
        rows = []
        for size in [0, *sizes]:
            slot = owned(kv, "s0")[-1]
            tag = tag_for(slot, f"m{size}-")
            keys = [f"{{{tag}}}{i}" for i in range(max(size, 1))]
            t = time.monotonic()
            if size:
                load(kv, keys)
            print(
                f"slot {slot}: {size:,} keys put in {time.monotonic() - t:.1f} s", file=sys.stderr
            )
            moving, staying = Reader(c.clients, keys), Reader(c.clients, other_keys)
            moving.start()
            staying.start()
            time.sleep(2.0)
            t_move = time.monotonic()
            moved = follow(kv, lambda: kv.reshard("s0", "s1", 1))
            t_end = time.monotonic()
            time.sleep(0.3)
            moving.halt.set()
            staying.halt.set()
            moving.join()
            staying.join()
            if moved.failed:
                raise RuntimeError(f"move failed: {moved.failed}")
            assert slot in owned(kv, "s1"), "the slot did not move"
            if size:
                got = kv.mget(keys[:CHUNK])
                assert len(got) == min(size, CHUNK), "keys missing after the move"
            m_before, m_during = moving.between(t_move - 2.0, t_move), moving.between(t_move, t_end)
            o_before, o_during = (
                staying.between(t_move - 2.0, t_move),
                staying.between(t_move, t_end),
            )
            row = {
                "keys": size,
                "seconds": moved.seconds,
                "commit_s": moved.commit_s,
                "keys_per_s": size / moved.seconds if size else None,
                "hold_ms": moved.hold_ms,
                "moving_before": (pct(m_before, 0.99), max(m_before, default=0)),
                "moving_during": (pct(m_during, 0.99), max(m_during, default=0)),
                "moving_gets": len(m_during),
                "other_before": (pct(o_before, 0.99), max(o_before, default=0)),
                "other_during": (pct(o_during, 0.99), max(o_during, default=0)),
                "errors": moving.errors + staying.errors,
            }
            rows.append(row)
            print(
                f"slot of {size:,} keys moved in {moved.seconds:.2f} s (hold {moved.hold_ms} ms)",
                file=sys.stderr,
            )
        results["slots"] = rows


def bench_rebalance(
    tmp: Path, keys: int, count: int, threads: int, reps: int, seconds: float, out: dict[str, Any]
) -> None:
    """Part 3: ops/s before and during ``reshard(src, dst, count)``, ``reps`` times."""
    with running(tmp / "rebalance", ["s0", "s1"]) as c, zkv.Client(c.clients, timeout_s=60) as kv:
        t = time.monotonic()
        load(kv, [f"k{i}" for i in range(keys)])
        print(f"{keys:,} keys put in {time.monotonic() - t:.1f} s", file=sys.stderr)
        runs = []
        with Load(c.clients, keys, threads) as work:
            time.sleep(1.0)  # warm up
            for rep in range(reps):
                src, dst = ("s0", "s1") if rep % 2 == 0 else ("s1", "s0")
                before = work.rate(seconds)
                ops0, t0 = work.total(), time.monotonic()
                moved = follow(kv, lambda s=src, d=dst: kv.reshard(s, d, count), poll_s=0.05)
                during = (work.total() - ops0) / (time.monotonic() - t0)
                if moved.failed:
                    raise RuntimeError(f"reshard failed: {moved.failed}")
                runs.append(
                    {
                        "before": before,
                        "during": during,
                        "seconds": moved.seconds,
                        "keys": moved.keys,
                        "hold_ms": moved.hold_ms,
                    }
                )
                print(
                    f"rebalance {rep + 1}/{reps}: {before:,.0f} -> {during:,.0f} ops/s, "
                    f"{moved.seconds:.1f} s, {moved.keys:,} keys, hold {moved.hold_ms} ms",
                    file=sys.stderr,
                )
        out["rebalance"] = {
            "runs": runs,
            "count": count,
            "keys": keys,
            "threads": threads,
            "errors": [e for _, e in work.errors],
        }


def bench_round_trip(
    tmp: Path, keys: int, threads: int, seconds: float, out: dict[str, Any]
) -> None:
    """Part 4: 3 -> 4 -> 3 shards under load; every acknowledged write reads back."""
    three = ["s0", "s1", "s2"]
    with running(tmp / "trip", three) as c, zkv.Client(c.clients, timeout_s=60) as kv:
        t = time.monotonic()
        load(kv, [f"k{i}" for i in range(keys)])
        print(f"{keys:,} keys put in {time.monotonic() - t:.1f} s", file=sys.stderr)
        legs: dict[str, dict[str, Any]] = {}
        with Load(c.clients, keys, threads) as work:
            time.sleep(1.0)
            baseline = work.rate(seconds)

            def leg(name: str, steps: list[tuple[str, Callable[[], Any]]]) -> None:
                t0, ops0 = time.monotonic(), work.total()
                timings = []
                for what, step in steps:
                    s = time.monotonic()
                    step()
                    timings.append((what, time.monotonic() - s))
                    print(f"{name}: {what} {timings[-1][1]:.2f} s", file=sys.stderr)
                t1 = time.monotonic()
                legs[name] = {
                    "seconds": t1 - t0,
                    "ops_per_s": (work.total() - ops0) / (t1 - t0),
                    "steps": timings,
                    "errors": work.errors_between(t0, t1),
                }

            def rebalance() -> None:
                moved = follow(kv, kv.reshard, poll_s=0.05)
                if moved.failed:
                    raise RuntimeError(moved.failed)
                legs.setdefault("holds", {})["grow"] = moved.hold_ms

            def give(to: str, n: int) -> Callable[[], None]:
                def step() -> None:
                    moved = follow(kv, lambda: kv.reshard("s3", to, n), poll_s=0.05)
                    if moved.failed:
                        raise RuntimeError(moved.failed)
                    holds = legs.setdefault("holds", {})
                    holds["shrink"] = max(holds.get("shrink", 0.0), moved.hold_ms)

                return step

            leg(
                "grow 3 -> 4",
                [
                    (
                        "config + broker restart",
                        lambda: (c.write_config([*three, "s3"]), c.restart_broker()),
                    ),
                    ("start s3a", lambda: c.start_node("s3")),
                    ("reshard() (rebalance)", rebalance),
                ],
            )
            grown = slot_counts(kv)
            n3 = grown["s3"]
            shares = [n3 // 3 + (1 if i < n3 % 3 else 0) for i in range(3)]
            leg(
                "shrink 4 -> 3",
                [
                    *(
                        (f"reshard s3 -> {s} ({n})", give(s, n))
                        for s, n in zip(three, shares, strict=True)
                    ),
                    (
                        "config + broker restart",
                        lambda: (c.write_config(three), c.restart_broker()),
                    ),
                    ("stop s3a", lambda: c.stop_proc("s3a")),
                ],
            )
            time.sleep(0.5)
        shrunk = slot_counts(kv)
        acked: dict[str, int] = {}
        for part in work.acked:
            acked.update(part)
        names = list(acked)
        final: dict[str, Any] = {}
        for first in range(0, len(names), CHUNK):
            final.update(kv.mget(names[first : first + CHUNK]))
        lost = [k for k, v in acked.items() if final.get(k) != v]
        count = kv.count()
        out["trip"] = {
            "keys": keys,
            "threads": threads,
            "baseline": baseline,
            "legs": legs,
            "grown": grown,
            "shrunk": shrunk,
            "acked": len(acked),
            "writes": sum(acked.values()),
            "lost": lost,
            "count": count,
            "errors": [e for _, e in work.errors],
        }


# ---------------------------------------------------------------------- report


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def report(r: dict[str, Any]) -> None:
    print()
    if "slots" in r:
        print("1-2. Moving one slot (2 shards x 1 node, fsync everysec), reads during the move")
        head = (
            f"{'keys':>8} {'move':>9} {'switched':>9} {'keys/s':>8} {'hold':>9} "
            f"{'slot gets p99/max before':>25} {'during':>17} {'other slot during':>18}"
        )
        print(head)
        for row in r["slots"]:
            kps = "-" if row["keys_per_s"] is None else f"{row['keys_per_s']:,.0f}"
            mb, md, od = row["moving_before"], row["moving_during"], row["other_during"]
            print(
                f"{row['keys']:>8,} {row['seconds']:>8.2f}s {row['commit_s'] or 0:>8.2f}s "
                f"{kps:>8} {row['hold_ms']:>6.1f} ms {ms(mb[0]):>11} / {ms(mb[1]):>10} "
                f"{ms(md[0]):>7} / {ms(md[1]):>7} {ms(od[0]):>7} / {ms(od[1]):>8}"
            )
        errors = [e for row in r["slots"] for e in row["errors"]]
        print(f"   reader errors: {len(errors)} {errors[:3]}")
        print()
    if "rebalance" in r:
        rb = r["rebalance"]
        runs = rb["runs"]
        print(
            f"3. Throughput during reshard(src, dst, {rb['count']}) with {rb['keys']:,} keys "
            f"loaded, {rb['threads']} threads of gets+puts ({len(runs)} runs)"
        )
        print(
            f"{'run':>5} {'before ops/s':>13} {'during ops/s':>13} {'ratio':>6} "
            f"{'reshard':>8} {'keys':>8} {'hold':>9}"
        )
        for i, run in enumerate(runs):
            print(
                f"{i + 1:>5} {run['before']:>13,.0f} {run['during']:>13,.0f} "
                f"{run['during'] / run['before']:>6.2f} {run['seconds']:>7.1f}s "
                f"{run['keys']:>8,} {run['hold_ms']:>6.1f} ms"
            )
        before = statistics.median(x["before"] for x in runs)
        during = statistics.median(x["during"] for x in runs)
        secs = statistics.median(x["seconds"] for x in runs)
        print(
            f"{'median':>5} {before:>13,.0f} {during:>13,.0f} {during / before:>6.2f} "
            f"{secs:>7.1f}s   (ratio of medians)"
        )
        print(f"   load errors: {len(rb['errors'])} {sorted(set(rb['errors']))}")
        print()
    if "trip" in r:
        t = r["trip"]
        print(
            f"4. 3 -> 4 -> 3 shards under load ({t['threads']} threads of gets+puts on "
            f"{t['keys']:,} keys); before: {t['baseline']:,.0f} ops/s"
        )
        print(f"{'leg / step':<34} {'time':>8} {'ops/s':>8} {'errors':>7}")
        for name, leg in t["legs"].items():
            if name == "holds":
                continue
            errs = leg["errors"]
            print(f"{name:<34} {leg['seconds']:>7.2f}s {leg['ops_per_s']:>8,.0f} {len(errs):>7}")
            for what, secs in leg["steps"]:
                print(f"  {what:<32} {secs:>7.2f}s")
            if errs:
                print(f"  errors: {sorted(set(errs))}")
        print(f"   longest hold: {t['legs'].get('holds', {})}")
        print(f"   slots after growing: {t['grown']}; after shrinking: {t['shrunk']}")
        print(
            f"   acknowledged writes: {t['acked']:,} keys checked, {len(t['lost'])} lost; "
            f"count() = {t['count']:,} (loaded {t['keys']:,}); load errors: {len(t['errors'])}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    parser.add_argument("--threads", type=int, default=4, help="load threads (parts 3, 4)")
    parser.add_argument(
        "--parts", default="1,3,4", help="which parts to run: 1 (and 2), 3, 4; e.g. 1,3"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        help="heartbeat.interval_s of the clusters (default: the config default, 0.5 s)",
    )
    args = parser.parse_args()
    Cluster.heartbeat = args.heartbeat
    parts = set(args.parts.split(","))
    if args.quick:
        sizes, rb_keys, rb_count, reps, secs, trip_keys = (
            [2_000, 20_000],
            40_000,
            1024,
            2,
            2.0,
            20_000,
        )
    else:
        sizes, rb_keys, rb_count, reps, secs, trip_keys = (
            [10_000, 100_000],
            200_000,
            4096,
            3,
            3.0,
            100_000,
        )
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zkv-reshard-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            if "1" in parts:
                bench_slots(tmp, sizes, results)
            if "3" in parts:
                bench_rebalance(tmp, rb_keys, rb_count, args.threads, reps, secs, results)
            if "4" in parts:
                bench_round_trip(tmp, trip_keys, args.threads, secs, results)
        finally:
            report(results)
    print(
        f"\n({'--quick' if args.quick else 'full'} run, {time.monotonic() - t0:.0f} s, "
        f"nproc = {os.cpu_count()})"
    )


if __name__ == "__main__":
    main()
