"""zkv against Redis (through redis-py) on this machine, with two pure-pyzmq baselines.

Run from the repository root; it starts redis-server (if installed; ``appendonly yes``,
``appendfsync everysec``), a zkv cluster of three shards (one node each, ``storage.fsync:
everysec``) and the baseline processes, all on 127.0.0.1 in a temporary folder, and stops
every one of them at the end:

    python examples/bench_vs_redis.py                      # about three minutes
    python examples/bench_vs_redis.py --seconds 1 --repeat 3 --json

Workloads over 10,000 pre-loaded 16-byte keys with 100-byte values, each ``--seconds`` long:
(a) GET one at a time, one client; (b) GET in pipelines of 100; (c) GET from 8 threads, each
with its own client; (d) PUT one at a time; (e) 64 concurrent GETs on one ``AsyncClient``
against 64 on one ``redis.asyncio.Redis`` (its default connection pool); (f) memory: RSS
grown per key by 150,000 more keys (after 300,000 that fill the fixed-size buffers), one
zkv node against redis-server.
Baselines: a bare DEALER -> ROUTER echo, and a pure-Python ROUTER/ROUTER forwarding broker
with one DEALER echo worker (the shape of zkv's path, minus zkv), one round trip at a time.

Every workload runs ``--repeat`` times as side-by-side pairs, zkv and Redis rep by rep (and
the forwarding broker beside each single-GET rep), the order turned each rep; a ratio is the
median of the pairs' ratios, so a noisy machine moves both sides of a pair alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
import zmq

import zkv

KEYS = [f"key:{i:012d}" for i in range(10_000)]  # 16 bytes each
VALUE = b"v" * 100
PIPELINE = 100
THREADS = 8
CONCURRENT = 64
MEMORY_KEYS = 150_000
#: Keys loaded first, to fill the fixed-size buffers (2 x 16 MiB of ~130-byte records).
WARM_KEYS = 300_000

# The baseline processes: "echo" (ROUTER echo), "broker" (ROUTER clients / ROUTER workers,
# frames forwarded untouched) and "worker" (DEALER echo). Each exits after its lifetime.
SERVER = r"""
import json, os, sys, time
import zmq
mode, lifetime, peer, ready = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
end = time.monotonic() + lifetime
ctx = zmq.Context()
def write_ready(info):
    with open(ready + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(ready + ".tmp", ready)
if mode in ("echo", "worker"):
    sock = ctx.socket(zmq.ROUTER if mode == "echo" else zmq.DEALER)
    if mode == "echo":
        sock.bind("tcp://127.0.0.1:*")
    else:
        sock.connect(peer)
        sock.send(b"READY")
    write_ready({"endpoint": sock.LAST_ENDPOINT.decode()})
    while time.monotonic() < end:
        if sock.poll(100):
            sock.send_multipart(sock.recv_multipart())
else:
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    front.bind("tcp://127.0.0.1:*")
    back.bind("tcp://127.0.0.1:*")
    write_ready({"clients": front.LAST_ENDPOINT.decode(), "workers": back.LAST_ENDPOINT.decode()})
    poller = zmq.Poller()
    poller.register(back, zmq.POLLIN)
    worker = None
    while time.monotonic() < end:
        for sock, _ in poller.poll(100):
            if sock is back:
                frames = back.recv_multipart()
                if worker is None:  # READY: clients are read only once a worker is there
                    worker = frames[0]
                    poller.register(front, zmq.POLLIN)
                else:
                    front.send_multipart(frames[1:])
            else:
                back.send_multipart([worker, *front.recv_multipart()])
"""


def spawn(
    procs: list[subprocess.Popen[bytes]], args: list[str], folder: Path, name: str
) -> dict[str, Any]:
    """Start ``args`` (output to ``<name>.log``, remembered in ``procs`` to be stopped later)
    and return what it writes to ``<name>.ready``, the path passed as its last argument."""
    ready = folder / f"{name}.ready"
    with open(folder / f"{name}.log", "wb") as out:
        proc = subprocess.Popen([*args, str(ready)], stdout=out, stderr=subprocess.STDOUT)
    procs.append(proc)
    deadline = time.monotonic() + 15
    while not ready.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{name} did not start; see {folder / name}.log")
        time.sleep(0.02)
    data: dict[str, Any] = json.loads(ready.read_text())
    return data


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate each process by its PID (last started first), then kill it if it lingers."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    procs.clear()


def start_zkv(folder: Path, procs: list[subprocess.Popen[bytes]], shards: int = 3) -> str:
    """A broker and ``shards`` one-node shards on 127.0.0.1 (port 0); the clients' endpoint."""
    folder.mkdir(parents=True)
    any_port = "tcp://127.0.0.1:0"
    doc: dict[str, Any] = {
        "cluster": "bench",
        "broker": {"clients": any_port, "nodes": any_port},
        "storage": {"dir": str(folder / "data"), "fsync": "everysec"},
        "heartbeat": {"interval_s": 0.2, "liveness": 5},
        "shards": {
            f"s{i}": [{"name": f"n{i}", "publish": any_port, "sync": any_port}]
            for i in range(shards)
        },
    }
    cmd = [sys.executable, "-m", "zkv"]
    opts = ["--log-level", "WARNING", "--ready-file"]
    (folder / "broker.yaml").write_text(yaml.safe_dump(doc))
    args = [*cmd, "broker", "--config", str(folder / "broker.yaml"), *opts]
    ready = spawn(procs, args, folder, "broker")
    doc["broker"] = {"clients": ready["clients"], "nodes": ready["nodes"]}
    (folder / "cluster.yaml").write_text(yaml.safe_dump(doc))
    for i in range(shards):
        args = [*cmd, "node", "--config", str(folder / "cluster.yaml"), "--name", f"n{i}", *opts]
        spawn(procs, args, folder, f"n{i}")
    with zkv.Client(ready["clients"], timeout_s=10) as kv:
        deadline = time.monotonic() + 15
        while not all(n["alive"] for n in kv.cluster_status()["nodes"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"zkv nodes did not register; see {folder}/*.log")
            time.sleep(0.05)
    return str(ready["clients"])


def start_redis(folder: Path, procs: list[subprocess.Popen[bytes]]) -> Any:
    """redis-server on a free port of 127.0.0.1 (AOF, fsync every second); a redis-py
    client."""
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with open(folder / "redis.log", "wb") as out:
        # as zkv's everysec: an append-only file, fsynced once a second
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(folder)]
        procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
    r = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            return r
        except redis.ConnectionError:
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                raise RuntimeError(f"redis-server did not start; see {folder}/redis.log") from None
            time.sleep(0.05)


def run_loop(
    call: Callable[[Any], object], items: Sequence[Any], seconds: float, weight: int = 1
) -> tuple[float, float]:
    """Call ``call`` on ``items`` in turn for ``seconds``: (ops/s, p50 microseconds per call)."""
    clock = time.perf_counter_ns
    latencies: list[int] = []
    n, count = len(items), 0
    started = now = clock()
    end = started + int(seconds * 1e9)
    while now < end:
        call(items[count % n])
        after = clock()
        latencies.append(after - now)
        now = after
        count += 1
    return count * weight / ((now - started) / 1e9), statistics.median(latencies) / 1000


def run_threads(
    connect: Callable[[], tuple[Callable[[str], object], Callable[[], None]]], seconds: float
) -> float:
    """GETs/s from ``THREADS`` threads, each with its own connection (``connect()``)."""
    rates = [0.0] * THREADS
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS + 1, timeout=30)

    def work(t: int) -> None:
        try:
            get, close = connect()
            try:
                barrier.wait()
                started = now = time.monotonic()
                n = 0
                while now < started + seconds:
                    get(KEYS[(t * 1237 + n) % len(KEYS)])
                    now = time.monotonic()
                    n += 1
                rates[t] = n / (now - started)
            finally:
                close()
        except Exception as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(THREADS)]
    for w in workers:
        w.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    for w in workers:
        w.join(seconds + 30)
    if errors:
        raise RuntimeError(f"{len(errors)} client thread(s) failed") from errors[0]
    return sum(rates)


def summary(runs: list[tuple[float, float | None]]) -> dict[str, Any]:
    p50s = [r[1] for r in runs if r[1] is not None]
    ops = statistics.median(r[0] for r in runs)
    return {"ops_per_s": ops, "p50_us": statistics.median(p50s) if p50s else None,
            "runs": [round(r[0]) for r in runs]}  # fmt: skip


def run_async(connect: Callable[[], Any], seconds: float) -> float:
    """GETs/s of ``CONCURRENT`` tasks sharing one asyncio client (``connect()`` makes it,
    inside the loop): each awaits one GET after another."""

    async def main() -> float:
        client = connect()
        count = 0

        async def task(t: int) -> None:
            nonlocal count
            i = t
            while time.monotonic() < end:
                await client.get(KEYS[i % len(KEYS)])
                i += CONCURRENT
                count += 1

        try:
            await client.get(KEYS[0])  # connected before the clock starts
            started = time.monotonic()
            end = started + seconds
            await asyncio.gather(*(task(t) for t in range(CONCURRENT)))
            return count / (time.monotonic() - started)
        finally:
            await client.aclose()

    return asyncio.run(main())


class Baselines:
    """The two pyzmq baselines, running for the whole benchmark; ``round_trip(name)`` is a
    call sending one GET-shaped request (v1's three frames, as the baseline has always
    been measured) and waiting for it to come back."""

    def __init__(self, folder: Path, lifetime: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        code = [sys.executable, "-c", SERVER]
        life = str(lifetime)
        self.endpoints: dict[str, str] = {}
        self.socks: list[zmq.Socket[bytes]] = []
        try:
            echo = spawn(self.procs, [*code, "echo", life, ""], folder, "echo")["endpoint"]
            fwd = spawn(self.procs, [*code, "broker", life, ""], folder, "fwd")
            spawn(self.procs, [*code, "worker", life, fwd["workers"]], folder, "worker")
        except BaseException:
            stop_all(self.procs)
            raise
        self.endpoints = {"zmq_echo": echo, "zmq_forwarding_broker": fwd["clients"]}

    def round_trip(self, name: str) -> Callable[[object], object]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)  # a lost reply raises instead of hanging
        sock.connect(self.endpoints[name])
        self.socks.append(sock)
        # A request shaped like a zkv GET of protocol v1: a 31-byte header, a 16-byte key
        # frame, a small body (kept as it was, so that figures compare across versions).
        frames = [b"h" * 31, KEYS[0].encode(), b"\x80"]

        def call(_: object) -> object:
            sock.send_multipart(frames)
            return sock.recv_multipart()

        call(None)
        return call

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        stop_all(self.procs)


def paired(
    sides: dict[str, Callable[[], tuple[float, float | None]]], repeat: int
) -> dict[str, list[tuple[float, float | None]]]:
    """Run each side once per rep, in turn (the order turned each rep)."""
    runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name in sides}
    names = list(sides)
    for rep in range(repeat):
        turn = rep % len(names)
        for name in names[turn:] + names[:turn]:
            runs[name].append(sides[name]())
    return runs


def pair_ratio(a: list[tuple[float, float | None]], b: list[tuple[float, float | None]]) -> float:
    """The median over reps of ``a``'s ops/s over ``b``'s in the same rep."""
    return statistics.median(x[0] / y[0] for x, y in zip(a, b, strict=True))


def measure_workloads(
    r: Any, endpoint: str, seconds: float, repeat: int, baselines: Baselines
) -> dict[str, dict[str, Any]]:
    """Each workload as pairs of zkv and redis-py (zkv only if no ``r``) rep by rep; the
    single GET also beside both baselines."""
    batches = [KEYS[i : i + PIPELINE] for i in range(0, len(KEYS), PIPELINE)]
    port = r.connection_pool.connection_kwargs["port"] if r is not None else 0

    def redis_pipe(batch: list[str]) -> object:
        with r.pipeline(transaction=False) as p:
            for k in batch:
                p.get(k)
            return p.execute()

    def redis_conn() -> tuple[Callable[[str], object], Callable[[], None]]:
        import redis

        c = redis.Redis(host="127.0.0.1", port=port)
        return c.get, c.close

    def zkv_conn() -> tuple[Callable[[str], object], Callable[[], None]]:
        c = zkv.Client(endpoint, timeout_s=10)
        return c.get, c.close

    def redis_async() -> Any:
        import redis.asyncio

        return redis.asyncio.Redis(host="127.0.0.1", port=port)

    results: dict[str, dict[str, Any]] = {}
    with zkv.Client(endpoint, timeout_s=10) as kv:

        def zkv_pipe(batch: list[str]) -> object:
            with kv.pipeline() as p:
                for k in batch:
                    p.get(k)
                return p.execute()

        def loop(call: Any, items: Any, weight: int = 1) -> Callable[[], tuple[float, float]]:
            return lambda: run_loop(call, items, seconds, weight)

        plans: dict[str, dict[str, Callable[[], tuple[float, float | None]]]] = {
            "get": {
                "redis": loop(r and r.get, KEYS),
                "zkv": loop(kv.get, KEYS),
                "fwd": loop(baselines.round_trip("zmq_forwarding_broker"), [None]),
                "echo": loop(baselines.round_trip("zmq_echo"), [None]),
            },
            "get_pipeline_100": {
                "redis": loop(redis_pipe, batches, PIPELINE),
                "zkv": loop(zkv_pipe, batches, PIPELINE),
            },
            "get_8_threads": {
                "redis": lambda: (run_threads(redis_conn, seconds), None),
                "zkv": lambda: (run_threads(zkv_conn, seconds), None),
            },
            "put": {
                "redis": loop(lambda k: r.set(k, VALUE), KEYS),
                "zkv": loop(lambda k: kv.put(k, VALUE), KEYS),
            },
            "get_async_64": {
                "redis": lambda: (run_async(redis_async, seconds), None),
                "zkv": lambda: (
                    run_async(lambda: zkv.AsyncClient(endpoint, timeout_s=10), seconds),
                    None,
                ),
            },
        }
        for name, sides in plans.items():
            if r is None:
                sides.pop("redis")
            runs = paired(sides, repeat)
            results[name] = {side: summary(v) for side, v in runs.items()}
            if "redis" in runs:
                results[name]["zkv_over_redis"] = pair_ratio(runs["zkv"], runs["redis"])
            if "fwd" in runs:
                results[name]["zkv_over_fwd"] = pair_ratio(runs["zkv"], runs["fwd"])
                results[name]["fwd_over_redis"] = (
                    pair_ratio(runs["fwd"], runs["redis"]) if "redis" in runs else None
                )
            print(f"  {name}: done", file=sys.stderr, flush=True)
    return results


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(folder: Path, r: Any, redis_pid: int | None, keys: int) -> dict[str, Any]:
    """RSS grown per key by ``keys`` more 16-byte keys of 100-byte values: one zkv node (a
    cluster of its own: one shard, one node) against redis-server. The growth is taken after
    ``WARM_KEYS`` keys have filled the fixed-size buffers (a node's replication backlog and
    watch history, 16 MiB each by default), so that only what each key costs is counted."""
    out: dict[str, Any] = {"keys": keys}

    def load(first: int, count: int, put_many: Callable[[dict[str, bytes]], object]) -> None:
        for i in range(first, first + count, 1000):
            put_many({f"mem:{j:012d}": VALUE for j in range(i, i + 1000)})  # 16-byte keys

    procs: list[subprocess.Popen[bytes]] = []
    try:
        endpoint = start_zkv(folder, procs, shards=1)
        node = procs[1].pid
        with zkv.Client(endpoint, timeout_s=30) as kv:
            load(0, WARM_KEYS, kv.mput)
            before = rss(node)
            load(WARM_KEYS, keys, kv.mput)
        out["zkv_bytes_per_key"] = (rss(node) - before) / keys
    finally:
        stop_all(procs)
    if r is not None and redis_pid is not None:
        load(0, WARM_KEYS, r.mset)
        before = rss(redis_pid)
        load(WARM_KEYS, keys, r.mset)
        out["redis_bytes_per_key"] = (rss(redis_pid) - before) / keys
        out["zkv_over_redis"] = out["zkv_bytes_per_key"] / out["redis_bytes_per_key"]
    return out


def preload(r: Any, endpoint: str) -> None:
    with zkv.Client(endpoint, timeout_s=30) as kv:
        for i in range(0, len(KEYS), 1000):
            kv.mput(dict.fromkeys(KEYS[i : i + 1000], VALUE))
        assert kv.get(KEYS[-1]) == VALUE
    if r is not None:
        for i in range(0, len(KEYS), 1000):
            r.mset(dict.fromkeys(KEYS[i : i + 1000], VALUE))
        assert r.get(KEYS[-1]) == VALUE


def environment(have_redis: bool) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"model name\s*: (.*)", cpuinfo.read_text()) if cpuinfo.exists() else []
    info: dict[str, Any] = {"cores": os.cpu_count(), "cpu": models[0] if models else "?"}
    info |= {"python": platform.python_version(), "zkv": zkv.__version__}
    info |= {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    if have_redis:
        import redis

        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        info["redis_server"] = out.stdout.split()[2].removeprefix("v=") if out.stdout else "?"
        info["redis_py"] = redis.__version__
        info["hiredis"] = importlib.util.find_spec("hiredis") is not None
    return info


#: (label, workload, ratio key, goal) of issue 20's targets.
TARGETS: list[tuple[str, str, str, float]] = [
    ("a. single GET zkv >= 0.9 x forwarding-broker baseline", "get", "zkv_over_fwd", 0.9),
    ("b. pipeline-100 zkv >= 1.0 x redis-py pipeline", "get_pipeline_100", "zkv_over_redis", 1.0),
    ("c. 8 threads zkv >= 0.8 x redis-py 8 threads", "get_8_threads", "zkv_over_redis", 0.8),
    ("d. single PUT zkv >= 0.3 x redis-py (appendfsync everysec)", "put", "zkv_over_redis", 0.3),
    ("e. 64 async GETs zkv >= 1.0 x redis.asyncio", "get_async_64", "zkv_over_redis", 1.0),
]


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, name, key, goal in TARGETS:
        value = res["workloads"][name].get(key)
        out.append({"target": label, "ratio": value, "goal": goal,
                    "met": None if value is None else value >= goal})  # fmt: skip
    memory = res.get("memory", {}).get("zkv_over_redis")
    out.append({"target": "f. memory per key zkv <= 1.3 x redis-server", "ratio": memory,
                "goal": 1.3, "met": None if memory is None else memory <= 1.3})  # fmt: skip
    return out


def print_table(res: dict[str, Any]) -> None:
    env, w = res["environment"], res["workloads"]
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    print(
        f"{res['seconds']:g} s per run, {res['repeat']} side-by-side pairs per workload "
        "(ratios: median of the pairs); 10,000 keys of 16 B, 100 B values; zkv: 3 shards x "
        "1 node, fsync everysec; redis: appendonly, appendfsync everysec"
    )
    fmt = "{:<28} {:>14} {:>14} {:>10}"
    print(fmt.format("workload", "redis-py ops/s", "zkv ops/s", "zkv/redis"))
    labels = {
        "get": "a. GET, one at a time",
        "get_pipeline_100": "b. GET, pipeline of 100",
        "get_8_threads": "c. GET, 8 threads",
        "put": "d. PUT, one at a time",
        "get_async_64": "e. GET, 64 async at once",
    }

    def num(x: float | None, spec: str = ",.0f") -> str:
        return "-" if x is None else format(x, spec)

    for name, label in labels.items():
        rd, zk = w[name].get("redis"), w[name]["zkv"]
        rd_ops = rd["ops_per_s"] if rd else None
        print(
            fmt.format(
                label, num(rd_ops), num(zk["ops_per_s"]), num(w[name].get("zkv_over_redis"), ".2f")
            )
        )
        if name == "get":
            p50 = (num(rd["p50_us"] if rd else None, ".1f"), num(zk["p50_us"], ".1f"))
            print(fmt.format("   p50 latency (us)", *p50, ""))
    get = w["get"]
    print("baselines beside each single-GET pair (pyzmq, one round trip at a time):")
    for side, label in (("fwd", "forwarding broker"), ("echo", "echo")):
        b = get[side]
        print(f"   {label:<18} {b['ops_per_s']:>10,.0f} round trips/s, p50 {b['p50_us']:.1f} us, "
              f"runs {b['runs']}")  # fmt: skip
    print(f"   zkv GET / forwarding broker: {get['zkv_over_fwd']:.2f} (median of the pairs)")
    if get.get("fwd_over_redis") is not None:
        print(f"   forwarding broker / redis-py GET: {get['fwd_over_redis']:.2f}")
    memory = res.get("memory")
    if memory:
        line = f"memory: per key of {memory['keys']:,} more: one zkv node "
        line += f"{memory['zkv_bytes_per_key']:.0f} B/key (RSS)"
        if "redis_bytes_per_key" in memory:
            line += f", redis-server {memory['redis_bytes_per_key']:.0f} B/key"
        print(line)
    print("individual runs (ops/s):")
    for name, label in labels.items():
        rd = w[name].get("redis")
        redis_runs = f"redis-py {rd['runs']}, " if rd else ""
        print(f"   {label:<28} {redis_runs}zkv {w[name]['zkv']['runs']}")
    print("targets:")
    for t in res["targets"]:
        state = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
        print(f"   [{state:^7}] {t['target']}: {num(t['ratio'], '.2f')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per run")
    parser.add_argument("--repeat", type=int, default=5, help="pairs per workload (median)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    missing = [
        what
        for what, found in (
            ("redis-server (apt-get install -y redis-server)", shutil.which("redis-server")),
            ("redis-py (pip install redis)", importlib.util.find_spec("redis")),
        )
        if not found
    ]
    have_redis = not missing
    if missing:
        out = sys.stderr if args.json else sys.stdout
        print(f"not found: {'; '.join(missing)}; running the zkv parts only", file=out, flush=True)
    res: dict[str, Any] = {"seconds": args.seconds, "repeat": args.repeat}
    res["environment"] = environment(have_redis)
    procs: list[subprocess.Popen[bytes]] = []
    baselines: Baselines | None = None
    with tempfile.TemporaryDirectory(prefix="zkv-vs-redis-") as tmp:
        try:
            lifetime = 5 * args.repeat * (args.seconds + 2) * 4 + 300
            baselines = Baselines(Path(tmp), lifetime)
            endpoint = start_zkv(Path(tmp) / "zkv", procs)
            r = start_redis(Path(tmp), procs) if have_redis else None
            redis_pid = procs[-1].pid if have_redis else None
            preload(r, endpoint)
            print("workloads...", file=sys.stderr, flush=True)
            res["workloads"] = measure_workloads(r, endpoint, args.seconds, args.repeat, baselines)
            print("memory...", file=sys.stderr, flush=True)
            res["memory"] = measure_memory(Path(tmp) / "memory", r, redis_pid, MEMORY_KEYS)
            if r is not None:
                r.close()
        finally:
            if baselines is not None:
                baselines.close()
            stop_all(procs)
    res["targets"] = targets(res)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
