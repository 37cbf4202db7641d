"""``zkv bench``: load a running cluster and print throughput and latency percentiles.

In the spirit of redis-benchmark: a workload (``get``, ``put`` or ``mixed`` with a read
ratio) over ``--keys`` keys of ``--value-size`` bytes, from ``--threads`` client threads in
each of ``--processes`` processes (every thread its own ``Client``), one request at a time
or ``--pipeline N`` operations per request, or ``--concurrency N`` operations in flight at
once on one ``AsyncClient`` per thread, for ``--seconds``. It shows live progress on
stderr and prints ops/s with p50/p90/p99/p99.9 latency (per request: one pipeline is one
request), or JSON with ``--json``. Keys are ``bench:<n>``; ``get`` and ``mixed`` load them
first.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from zkv.client import AsyncClient, Client
from zkv.security import CurveKeys

__all__ = ["BenchConfig", "BenchResult", "run_bench"]

LOAD_BATCH = 1000


@dataclass(frozen=True)
class BenchConfig:
    """What to run."""

    endpoint: str
    workload: str = "get"
    read_ratio: float = 0.9
    keys: int = 10_000
    value_size: int = 100
    threads: int = 1
    processes: int = 1
    pipeline: int = 1
    #: Operations in flight at once on one ``AsyncClient`` per thread (1: a ``Client``).
    concurrency: int = 1
    seconds: float = 5.0
    consistency: str | None = None
    timeout_s: float = 10.0
    #: The CURVE keys of a secured cluster's client (every worker's client uses them).
    curve: CurveKeys | None = None


@dataclass
class BenchResult:
    """What came out."""

    ops: int
    requests: int
    errors: int
    seconds: float
    ops_per_s: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float


def _percentile(sorted_us: list[float], q: float) -> float:
    if not sorted_us:
        return 0.0
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


def load_keys(config: BenchConfig) -> None:
    """Write every key the workload reads."""
    value = "v" * config.value_size
    with Client(config.endpoint, timeout_s=config.timeout_s, curve=config.curve) as kv:
        for first in range(0, config.keys, LOAD_BATCH):
            last = min(first + LOAD_BATCH, config.keys)
            kv.mput({f"bench:{i}": value for i in range(first, last)})


def remove_bench_keys(config: BenchConfig) -> None:
    """Delete the ``bench:*`` keys the run wrote (``zkv bench`` does, unless ``--keep``)."""
    with Client(config.endpoint, timeout_s=config.timeout_s, curve=config.curve) as kv:
        for first in range(0, config.keys, LOAD_BATCH):
            with kv.pipeline() as p:
                for i in range(first, min(first + LOAD_BATCH, config.keys)):
                    p.delete(f"bench:{i}")
                p.execute()


def _mix(config: BenchConfig) -> tuple[str, dict[str, Any], float]:
    """What a worker writes, the keyword arguments of its calls and its share of reads."""
    kw: dict[str, Any] = {"consistency": config.consistency} if config.consistency else {}
    reads = {"get": 1.0, "put": 0.0}.get(config.workload, config.read_ratio)
    return "v" * config.value_size, kw, reads


def _worker(
    config: BenchConfig,
    seed: int,
    deadline: float,
    progress: list[int],
    slot: int,
    latencies: list[float],
    errors: list[int],
) -> None:
    rng = random.Random(seed)
    value, kw, reads = _mix(config)
    keys, depth = config.keys, config.pipeline
    with Client(config.endpoint, timeout_s=config.timeout_s, curve=config.curve) as kv:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                if depth == 1:
                    key = f"bench:{rng.randrange(keys)}"
                    if rng.random() < reads:
                        kv.get(key, **kw)
                    else:
                        kv.put(key, value, **kw)
                else:
                    with kv.pipeline() as p:
                        for _ in range(depth):
                            key = f"bench:{rng.randrange(keys)}"
                            if rng.random() < reads:
                                p.get(key)
                            else:
                                p.put(key, value)
                        p.execute(**kw)
            except Exception:
                errors[slot] += 1
                continue
            latencies.append((time.perf_counter() - started) * 1e6)
            progress[slot] += depth


def _async_worker(
    config: BenchConfig,
    seed: int,
    deadline: float,
    progress: list[int],
    slot: int,
    latencies: list[float],
    errors: list[int],
) -> None:
    """``config.concurrency`` tasks sharing one ``AsyncClient``, each doing one operation
    after another (single operations: ``--pipeline`` does not apply)."""
    value, kw, reads = _mix(config)

    async def main() -> None:
        client = AsyncClient(config.endpoint, timeout_s=config.timeout_s, curve=config.curve)
        async with client as kv:

            async def task(n: int) -> None:
                rng = random.Random(seed * 1000 + n)
                while time.monotonic() < deadline:
                    key = f"bench:{rng.randrange(config.keys)}"
                    started = time.perf_counter()
                    try:
                        if rng.random() < reads:
                            await kv.get(key, **kw)
                        else:
                            await kv.put(key, value, **kw)
                    except Exception:
                        errors[slot] += 1
                        continue
                    latencies.append((time.perf_counter() - started) * 1e6)
                    progress[slot] += 1

            await asyncio.gather(*(task(n) for n in range(config.concurrency)))

    asyncio.run(main())


def _run_threads(config: BenchConfig, seed: int, show: bool) -> tuple[int, list[float], int, float]:
    deadline = time.monotonic() + config.seconds
    progress = [0] * config.threads
    errors = [0] * config.threads
    latencies: list[list[float]] = [[] for _ in range(config.threads)]
    threads = [
        threading.Thread(
            target=_worker if config.concurrency == 1 else _async_worker,
            args=(config, seed * 1000 + t, deadline, progress, t, latencies[t], errors),
        )
        for t in range(config.threads)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if show:
            elapsed = time.monotonic() - started
            rate = sum(progress) / max(elapsed, 1e-9)
            sys.stderr.write(
                f"\r  {elapsed:5.1f} s  {sum(progress):>10,} ops  "
                f"{rate * config.processes:>10,.0f} ops/s"
            )
            sys.stderr.flush()
    for t in threads:
        t.join()
    if show:
        sys.stderr.write("\n")
    return (
        sum(progress),
        [x for lat in latencies for x in lat],
        sum(errors),
        (time.monotonic() - started),
    )


def _process_main(args: tuple[BenchConfig, int]) -> tuple[int, list[float], int, float]:
    config, seed = args
    return _run_threads(config, seed, show=False)


def run_bench(config: BenchConfig, show_progress: bool = True) -> BenchResult:
    """Run the workload and measure it."""
    if config.workload in ("get", "mixed"):
        load_keys(config)
    if config.processes == 1:
        ops, latencies, errors, elapsed = _run_threads(config, 1, show_progress)
    else:
        with multiprocessing.get_context("spawn").Pool(config.processes) as pool:
            parts = pool.map(_process_main, [(config, p + 1) for p in range(config.processes)])
        ops = sum(p[0] for p in parts)
        latencies = [x for p in parts for x in p[1]]
        errors = sum(p[2] for p in parts)
        elapsed = max(p[3] for p in parts)
    latencies.sort()
    return BenchResult(
        ops=ops,
        requests=len(latencies),
        errors=errors,
        seconds=round(elapsed, 3),
        ops_per_s=round(ops / elapsed, 1) if elapsed else 0.0,
        p50_us=round(_percentile(latencies, 0.5), 1),
        p90_us=round(_percentile(latencies, 0.9), 1),
        p99_us=round(_percentile(latencies, 0.99), 1),
        p999_us=round(_percentile(latencies, 0.999), 1),
        max_us=round(latencies[-1], 1) if latencies else 0.0,
    )


def report(config: BenchConfig, result: BenchResult, as_json: bool) -> str:
    """The result as a table (or JSON)."""
    if as_json:
        shown = asdict(config)  # the client's public key only: never print a secret key
        shown["curve"] = None if config.curve is None else config.curve.public.decode()
        return json.dumps({"config": shown, "result": asdict(result)}, indent=2)
    workload = (
        f"mixed ({config.read_ratio:.0%} reads)" if config.workload == "mixed" else config.workload
    )
    shape = (
        f"{config.concurrency} async operations at once each"
        if config.concurrency > 1
        else f"pipeline {config.pipeline}"
    )
    lines = [
        f"zkv bench: {workload}, {config.keys:,} keys, {config.value_size}-byte values, "
        f"{config.processes} x {config.threads} clients, {shape}, "
        f"{config.seconds:g} s, against {config.endpoint}",
        f"{'ops/s':>12} {'p50 us':>10} {'p90 us':>10} {'p99 us':>10} {'p99.9 us':>10} "
        f"{'max us':>10} {'requests':>10} {'errors':>7}",
        f"{result.ops_per_s:>12,.0f} {result.p50_us:>10,.0f} {result.p90_us:>10,.0f} "
        f"{result.p99_us:>10,.0f} {result.p999_us:>10,.0f} {result.max_us:>10,.0f} "
        f"{result.requests:>10,} {result.errors:>7,}",
    ]
    return "\n".join(lines)
