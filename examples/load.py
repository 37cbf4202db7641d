"""Load many keys into a running cluster and read them back, with a progress bar.

Start the cluster first (`zkv up`), then:

    python examples/load.py --keys 100000 --batch 500
"""

from __future__ import annotations

import argparse
import sys
import time

import zkv


def progress(label: str, done: int, total: int, started: float) -> None:
    """Draw a one-line progress bar on stderr."""
    width = 40
    filled = width * done // max(total, 1)
    rate = done / max(time.monotonic() - started, 1e-9)
    sys.stderr.write(
        f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
        f"{done}/{total} keys, {rate:,.0f} keys/s"
    )
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="tcp://127.0.0.1:7400")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="keys per mput/mget")
    parser.add_argument("--prefix", default="load:")
    args = parser.parse_args()

    with zkv.Client(args.connect, timeout_s=10.0) as kv:
        started = time.monotonic()
        for first in range(0, args.keys, args.batch):
            last = min(first + args.batch, args.keys)
            kv.mput({f"{args.prefix}{i}": {"i": i, "pad": "x" * 32} for i in range(first, last)})
            progress("write", last, args.keys, started)

        started = time.monotonic()
        wrong = 0
        for first in range(0, args.keys, args.batch):
            last = min(first + args.batch, args.keys)
            keys = [f"{args.prefix}{i}" for i in range(first, last)]
            got = kv.mget(keys)
            wrong += sum(
                1
                for i, k in zip(range(first, last), keys, strict=True)
                if got.get(k, {}).get("i") != i
            )
            progress("read ", last, args.keys, started)

    if wrong:
        print(f"{wrong} keys did not read back as written", file=sys.stderr)
        return 1
    print(f"all {args.keys} keys read back as written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
