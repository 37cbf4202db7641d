"""A/B benchmark: this tree against another revision, measured in turns in one run.

    python examples/bench_ab.py --base 46a99b9            # a commit, tag or branch
    python examples/bench_ab.py --base-tree /path/to/zkv   # or a checkout of another version

Each side runs its own cluster (a broker and 3 shards of one node, fsync everysec, on
127.0.0.1 with free ports, in a temporary folder) from its own source tree, and its own
`zkv bench` against it; the sides take turns workload by workload, round by round, so a
noisy neighbour hurts both alike. Prints the median ops/s and p50 of each side and the
ratio B/A (B = this tree). The base revision is checked out with `git worktree` into a
temporary folder and removed afterwards. Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent.parent
WORKLOADS: dict[str, list[str]] = {
    "get": ["--workload", "get"],
    "put": ["--workload", "put"],
    "get, pipeline 100": ["--workload", "get", "--pipeline", "100"],
    "get, 8 threads": ["--workload", "get", "--threads", "8"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def cluster(tree: Path, work: Path, **extra: Any) -> Iterator[str]:
    """Run a broker and three single-node shards from ``tree``; yields the client endpoint.

    ``extra`` adds top-level sections to the config (a ``security`` section: its keys are
    created with ``zkv keygen --config`` first)."""
    work.mkdir(parents=True)
    clients = f"tcp://127.0.0.1:{free_port()}"
    doc: dict[str, Any] = {
        "cluster": "bench",
        "broker": {"clients": clients, "nodes": f"tcp://127.0.0.1:{free_port()}"},
        "storage": {"dir": str(work / "data"), "fsync": "everysec"},
        "shards": {
            f"s{i}": [
                {
                    "name": f"s{i}a",
                    "publish": f"tcp://127.0.0.1:{free_port()}",
                    "sync": f"tcp://127.0.0.1:{free_port()}",
                }
            ]
            for i in range(3)
        },
    }
    doc.update(extra)
    config = work / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if "security" in doc:
        subprocess.run(
            [sys.executable, "-m", "zkv", "keygen", "--config", str(config)],
            env=env,
            check=True,
            capture_output=True,
        )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for args in (["broker"], *(["node", "--name", f"s{i}a"] for i in range(3))):
            ready = work / f"{args[-1]}.ready"
            flags = ["--config", str(config), "--log-level", "WARNING", "--ready-file", str(ready)]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-P", "-m", "zkv", *args, *flags],
                    env=env,
                    cwd=work,
                    stdout=subprocess.DEVNULL,
                    stderr=open(work / f"{args[-1]}.log", "wb"),  # noqa: SIM115
                )
            )
            deadline = time.monotonic() + 30
            while not ready.exists():
                if time.monotonic() > deadline or procs[-1].poll() is not None:
                    raise RuntimeError(f"{args} from {tree} did not start")
                time.sleep(0.05)
        yield clients
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bench(tree: Path, endpoint: str, args: list[str], seconds: float) -> dict[str, Any]:
    # -P: the current folder (this repository) must not shadow PYTHONPATH's tree
    command = [sys.executable, "-P", "-m", "zkv", "bench", "--connect", endpoint, "--json"]
    out = subprocess.run(
        [*command, "--seconds", str(seconds), *args],
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"zkv bench from {tree} failed: {out.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(out.stdout)["result"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="git revision to compare against (A)")
    base.add_argument("--base-tree", type=Path, help="source tree to compare against (A)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zkv-ab-") as tmp_name:
        tmp = Path(tmp_name)
        tree_a = args.base_tree
        if args.base:
            tree_a = tmp / "base"
            subprocess.run(
                ["git", "-C", str(HERE), "worktree", "add", "--detach", str(tree_a), args.base],
                check=True,
                capture_output=True,
            )
        try:
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                w: {"A": [], "B": []} for w in WORKLOADS
            }
            with cluster(tree_a, tmp / "a") as end_a, cluster(HERE, tmp / "b") as end_b:
                for round_ in range(args.rounds):
                    for name, wargs in WORKLOADS.items():
                        for side, tree, endpoint in (("A", tree_a, end_a), ("B", HERE, end_b)):
                            runs[name][side].append(bench(tree, endpoint, wargs, args.seconds))
                    print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            if args.base:
                subprocess.run(
                    ["git", "-C", str(HERE), "worktree", "remove", "--force", str(tree_a)],
                    check=False,
                    capture_output=True,
                )
    label = args.base or str(args.base_tree)
    print(f"A = {label}, B = this tree; medians of {args.rounds} rounds of {args.seconds:g} s")
    print(f"{'workload':<20} {'A ops/s':>10} {'B ops/s':>10} {'B/A':>6} {'A p50':>9} {'B p50':>9}")
    for name, sides in runs.items():
        a_ops = statistics.median(r["ops_per_s"] for r in sides["A"])
        b_ops = statistics.median(r["ops_per_s"] for r in sides["B"])
        a_p50 = statistics.median(r["p50_us"] for r in sides["A"])
        b_p50 = statistics.median(r["p50_us"] for r in sides["B"])
        print(
            f"{name:<20} {a_ops:>10,.0f} {b_ops:>10,.0f} {b_ops / a_ops:>6.2f} "
            f"{a_p50:>7.0f}us {b_p50:>7.0f}us"
        )


if __name__ == "__main__":
    main()
