"""zkv against Redis (through redis-py) on this machine, with two pure-pyzmq baselines.

Run from the repository root; it starts redis-server (if installed), a zkv cluster of three
shards (one node each, ``storage.fsync: everysec``) and the baseline processes, all on
127.0.0.1 in a temporary folder, and stops every one of them at the end:

    python examples/bench_vs_redis.py                      # about two minutes
    python examples/bench_vs_redis.py --seconds 1 --repeat 1 --json

Workloads (each ``--seconds`` long, ``--repeat`` times, median reported), over 10,000
pre-loaded 16-byte keys with 100-byte values: (a) GET one at a time, one client; (b) GET in
pipelines of 100; (c) GET from 8 threads, each with its own client; (d) PUT one at a time.
Baselines: a bare DEALER -> ROUTER echo, and a pure-Python ROUTER/ROUTER forwarding broker
with one DEALER echo worker (the shape of zkv's path, minus zkv), one round trip at a time.
"""

from __future__ import annotations

import argparse
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
    """redis-server on a free port of 127.0.0.1, without persistence; a redis-py client."""
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with open(folder / "redis.log", "wb") as out:
        args += ["--appendonly", "no", "--dir", str(folder)]
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


def measure_baselines(folder: Path, seconds: float, repeat: int) -> dict[str, Any]:
    """Round trips/s of the two pyzmq baselines, one request at a time."""
    procs: list[subprocess.Popen[bytes]] = []
    code = [sys.executable, "-c", SERVER]
    lifetime = str(repeat * (seconds + 1) + 60)
    # A request shaped like a zkv GET: a 31-byte header, a 16-byte key, a small body.
    frames = [b"h" * 31, KEYS[0].encode(), b"\x80"]
    out: dict[str, Any] = {}
    try:
        echo = spawn(procs, [*code, "echo", lifetime, ""], folder, "echo")["endpoint"]
        fwd = spawn(procs, [*code, "broker", lifetime, ""], folder, "fwd")
        spawn(procs, [*code, "worker", lifetime, fwd["workers"]], folder, "worker")
        for name, endpoint in (("zmq_echo", echo), ("zmq_forwarding_broker", fwd["clients"])):
            sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)  # a lost reply raises instead of hanging
            sock.connect(endpoint)
            try:

                def round_trip(_: object, sock: zmq.Socket[bytes] = sock) -> object:
                    sock.send_multipart(frames)
                    return sock.recv_multipart()

                run_loop(round_trip, [None], min(seconds, 0.5))  # warm up
                out[name] = summary([run_loop(round_trip, [None], seconds) for _ in range(repeat)])
            finally:
                sock.close()
            print(f"  {name}: {out[name]['ops_per_s']:,.0f} round trips/s", file=sys.stderr)
    finally:
        stop_all(procs)
    return out


def measure_workloads(
    r: Any, endpoint: str, seconds: float, repeat: int
) -> dict[str, dict[str, Any]]:
    """Each workload, redis-py then zkv, interleaved ``repeat`` times (zkv only if no ``r``)."""
    batches = [KEYS[i : i + PIPELINE] for i in range(0, len(KEYS), PIPELINE)]

    def redis_pipe(batch: list[str]) -> object:
        with r.pipeline(transaction=False) as p:
            for k in batch:
                p.get(k)
            return p.execute()

    def redis_conn() -> tuple[Callable[[str], object], Callable[[], None]]:
        import redis

        c = redis.Redis(host="127.0.0.1", port=r.connection_pool.connection_kwargs["port"])
        return c.get, c.close

    def zkv_conn() -> tuple[Callable[[str], object], Callable[[], None]]:
        c = zkv.Client(endpoint, timeout_s=10)
        return c.get, c.close

    results: dict[str, dict[str, Any]] = {}
    with zkv.Client(endpoint, timeout_s=10) as kv:

        def zkv_pipe(batch: list[str]) -> object:
            with kv.pipeline() as p:
                for k in batch:
                    p.get(k)
                return p.execute()

        # name -> (redis-py, zkv): (call, items, ops per call), or (connect, None, 0) for threads
        plans: dict[str, tuple[tuple[Any, Any, int], tuple[Any, Any, int]]] = {
            "get": ((r and r.get, KEYS, 1), (kv.get, KEYS, 1)),
            "get_pipeline_100": ((redis_pipe, batches, PIPELINE), (zkv_pipe, batches, PIPELINE)),
            "get_8_threads": ((redis_conn, None, 0), (zkv_conn, None, 0)),
            "put": ((lambda k: r.set(k, VALUE), KEYS, 1), (lambda k: kv.put(k, VALUE), KEYS, 1)),
        }

        def run(call: Any, items: Any, weight: int) -> tuple[float, float | None]:
            if items is None:
                return run_threads(call, seconds), None
            return run_loop(call, items, seconds, weight)

        for name, (on_redis, on_zkv) in plans.items():
            runs: dict[str, list[tuple[float, float | None]]] = {"redis": [], "zkv": []}
            for _ in range(repeat):
                if r is not None:
                    runs["redis"].append(run(*on_redis))
                runs["zkv"].append(run(*on_zkv))
            results[name] = {k: summary(v) if v else None for k, v in runs.items()}
            print(f"  {name}: done", file=sys.stderr)
    return results


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


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    return a["ops_per_s"] / b["ops_per_s"] if a and b else None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    w, base = res["workloads"], res["baselines"]
    checks = [
        ("single GET zkv >= 0.9 x forwarding-broker baseline", "get", 0.9, True),
        ("pipeline-100 zkv >= 1.0 x redis-py pipeline", "get_pipeline_100", 1.0, False),
        ("8 threads zkv >= 0.5 x redis-py 8 threads", "get_8_threads", 0.5, False),
    ]
    out = []
    for label, name, goal, vs_base in checks:
        other = base.get("zmq_forwarding_broker") if vs_base else w[name]["redis"]
        value = ratio(w[name]["zkv"], other)
        met = None if value is None else value >= goal
        out.append({"target": label, "ratio": value, "goal": goal, "met": met})
    return out


def print_table(res: dict[str, Any]) -> None:
    env, w, base = res["environment"], res["workloads"], res["baselines"]
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    print(
        f"{res['seconds']:g} s per run, median of {res['repeat']} runs; 10,000 keys of 16 B, "
        "100 B values; zkv: 3 shards x 1 node, fsync everysec; redis: no persistence"
    )
    fmt = "{:<26} {:>14} {:>14} {:>10} {:>15}"
    print(fmt.format("workload", "redis-py ops/s", "zkv ops/s", "zkv/redis", "zkv/fwd-broker"))
    labels = {
        "get": "a. GET, one at a time",
        "get_pipeline_100": "b. GET, pipeline of 100",
        "get_8_threads": "c. GET, 8 threads",
        "put": "d. PUT, one at a time",
    }
    fwd = base.get("zmq_forwarding_broker")

    def num(x: float | None, spec: str = ",.0f") -> str:
        return "-" if x is None else format(x, spec)

    for name, label in labels.items():
        rd, zk = w[name]["redis"], w[name]["zkv"]
        vs_fwd = num(ratio(zk, fwd), ".2f") if name == "get" else ""
        rd_ops = rd["ops_per_s"] if rd else None
        cells = (num(rd_ops), num(zk["ops_per_s"]), num(ratio(zk, rd), ".2f"), vs_fwd)
        print(fmt.format(label, *cells))
        if name == "get":
            p50 = (num(rd["p50_us"] if rd else None, ".1f"), num(zk["p50_us"], ".1f"))
            print(fmt.format("   p50 latency (us)", *p50, "", ""))
    print("baselines (pyzmq, one round trip at a time, round trips/s; p50 us):")
    for name, b in base.items():
        print(f"   {name:<24} {b['ops_per_s']:>10,.0f}  p50 {b['p50_us']:.1f}  runs {b['runs']}")
    print("individual runs (ops/s):")
    for name, label in labels.items():
        redis_runs = f"redis-py {w[name]['redis']['runs']}, " if w[name]["redis"] else ""
        print(f"   {label:<26} {redis_runs}zkv {w[name]['zkv']['runs']}")
    print("targets:")
    for t in res["targets"]:
        state = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
        print(f"   [{state:^7}] {t['target']}: {num(t['ratio'], '.2f')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (median)")
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
    with tempfile.TemporaryDirectory(prefix="zkv-vs-redis-") as tmp:
        try:
            print("baselines...", file=sys.stderr, flush=True)
            res["baselines"] = measure_baselines(Path(tmp), args.seconds, args.repeat)
            endpoint = start_zkv(Path(tmp) / "zkv", procs)
            r = start_redis(Path(tmp), procs) if have_redis else None
            preload(r, endpoint)
            print("workloads...", file=sys.stderr, flush=True)
            res["workloads"] = measure_workloads(r, endpoint, args.seconds, args.repeat)
            if r is not None:
                r.close()
        finally:
            stop_all(procs)
    res["targets"] = targets(res)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
