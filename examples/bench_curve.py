"""What CURVE costs: the same cluster with and without a ``security`` section, in turns.

    python examples/bench_curve.py [--rounds 5] [--seconds 2]

Two clusters from this tree (a broker and 3 shards of one node, fsync everysec, on
127.0.0.1 with free ports, in a temporary folder): one plain, one with every link
encrypted and authenticated (keys from ``zkv keygen --config``). ``zkv bench`` runs single
GETs and pipelines of 100 GETs against each, the two taking turns round by round so a
noisy neighbour hurts both alike. Prints the median ops/s and p50 of each and the ratio
secure/plain. Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ab import HERE, bench, cluster

WORKLOADS: dict[str, list[str]] = {
    "get": ["--workload", "get"],
    "get, pipeline 100": ["--workload", "get", "--pipeline", "100"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {"plain": [], "curve": []} for w in WORKLOADS
    }
    with tempfile.TemporaryDirectory(prefix="zkv-curve-") as tmp_name:
        tmp = Path(tmp_name)
        keys = tmp / "keys"
        security = {"keys": str(keys), "clients": ["bench", "gateway"]}
        key_args = ["--key", str(keys / "bench.key_secret")]
        with (
            cluster(HERE, tmp / "plain") as plain,
            cluster(HERE, tmp / "curve", security=security) as secure,
        ):
            for round_ in range(args.rounds):
                for name, wargs in WORKLOADS.items():
                    runs[name]["plain"].append(bench(HERE, plain, wargs, args.seconds))
                    runs[name]["curve"].append(
                        bench(HERE, secure, [*wargs, *key_args], args.seconds)
                    )
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"medians of {args.rounds} rounds of {args.seconds:g} s, in turns")
    header = f"{'workload':<20} {'plain ops/s':>12} {'CURVE ops/s':>12} {'ratio':>6}"
    print(f"{header} {'plain p50':>10} {'CURVE p50':>10}")
    for name, sides in runs.items():
        p_ops = statistics.median(r["ops_per_s"] for r in sides["plain"])
        c_ops = statistics.median(r["ops_per_s"] for r in sides["curve"])
        p_p50 = statistics.median(r["p50_us"] for r in sides["plain"])
        c_p50 = statistics.median(r["p50_us"] for r in sides["curve"])
        print(
            f"{name:<20} {p_ops:>12,.0f} {c_ops:>12,.0f} {c_ops / p_ops:>6.2f} "
            f"{p_p50:>8.0f}us {c_p50:>8.0f}us"
        )


if __name__ == "__main__":
    main()
