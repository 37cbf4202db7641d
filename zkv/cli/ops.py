"""The operations commands: ``status`` (and ``--watch``), ``bench``, ``failover``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from zkv.cli._common import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    _connect,
    _UsageError,
)
from zkv.errors import (
    TransportError,
)


def _bench(args: argparse.Namespace) -> int:
    from zkv.bench import BenchConfig, remove_bench_keys, report, run_bench

    for name in ("keys", "value_size", "threads", "processes", "pipeline", "concurrency"):
        if getattr(args, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.concurrency > 1 and args.pipeline > 1:
        raise _UsageError("give --pipeline or --concurrency, not both")
    if not args.seconds > 0 or not 0 <= args.read_ratio <= 1:
        raise _UsageError("--seconds must be positive and --read-ratio between 0 and 1")
    kv = _connect(args)
    kv.cluster_status()  # fail fast, with exit 3, if nothing answers
    endpoint = kv.endpoint
    config = BenchConfig(
        endpoint=endpoint,
        workload=args.workload,
        read_ratio=args.read_ratio,
        keys=args.keys,
        value_size=args.value_size,
        threads=args.threads,
        processes=args.processes,
        pipeline=args.pipeline,
        concurrency=args.concurrency,
        seconds=args.seconds,
        consistency=args.consistency,
        curve=kv.curve,  # every worker's client proves the same key
    )
    try:
        result = run_bench(config, show_progress=not args.json and sys.stderr.isatty())
    finally:
        if not args.keep:
            remove_bench_keys(config)
    print(report(config, result, args.json))
    return EXIT_OK


def _failover(args: argparse.Namespace) -> int:
    result = _connect(args).failover(args.shard, args.to, timeout=args.timeout)
    print(
        f"shard {result['shard']}: {result['primary']} is the primary now (epoch {result['epoch']})"
    )
    return EXIT_OK


def _rebalance(args: argparse.Namespace) -> int:
    return _follow_reshard(args, _connect(args), None, None, None)


def _reshard(args: argparse.Namespace) -> int:
    if (args.target is None) != (args.count is None):
        raise _UsageError("give --to and --count together, or neither (to drain --from)")
    return _follow_reshard(args, _connect(args), args.source, args.target, args.count)


def _follow_reshard(
    args: argparse.Namespace,
    kv: Any,
    source: str | None,
    target: str | None,
    count: int | None,
) -> int:
    """Start a reshard and, unless ``--no-wait``, follow it to its end: a progress bar on a
    terminal (slots moved of total, keys copied, keys/s, time left), plain lines otherwise.
    Exit 0 once done, 3 if it stopped on a failure."""
    planned = kv.reshard(source, target, count)
    if not planned["moves"]:
        print("nothing to move: the slots are spread as asked already")
        return EXIT_OK
    print(f"moving {planned['slots']} slots in {planned['moves']} moves")
    if getattr(args, "no_wait", False):
        return EXIT_OK
    tty = sys.stdout.isatty()
    start = time.monotonic()
    last_line = 0.0
    while True:
        reshard = kv.cluster_status()["reshard"] or {}
        elapsed = time.monotonic() - start
        line = _progress(reshard, elapsed)
        if tty:
            print(f"\r{line}\x1b[K", end="", flush=True)
        elif elapsed - last_line >= 5.0 or reshard.get("moves_left") == 0:
            print(line, flush=True)
            last_line = elapsed
        if reshard.get("moves_left") == 0:
            if tty:
                print()
            if reshard.get("failed"):
                print(f"zkv: {reshard['failed']}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            print(f"done in {elapsed:.1f} s")
            return EXIT_OK
        time.sleep(0.2)


def _progress(reshard: dict[str, Any], elapsed: float) -> str:
    """``[#####.....] 120/300 slots, 2,450 keys copied, 900 keys/s, 3 s left``."""
    total = max(1, int(reshard.get("slots_total", 0)))
    done = int(reshard.get("slots_done", 0))
    keys = int(reshard.get("keys_copied", 0))
    width = 30
    filled = width * done // total
    rate = keys / elapsed if elapsed > 0 else 0.0
    left = elapsed * (total - done) / done if done else None
    eta = "" if left is None else f", {left:.0f} s left"
    held = reshard.get("held", 0)
    waiting = f", {held} requests held" if held else ""
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} slots, {keys:,} keys "
        f"copied, {rate:,.0f} keys/s{eta}{waiting}"
    )


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    status = _connect(args).cluster_status()
    if args.json:
        from zkv.http.codec import value_to_json

        print(
            json.dumps(status, default=value_to_json, ensure_ascii=False, allow_nan=False, indent=2)
        )
        return EXIT_OK
    print("\n".join(_status_lines(status)))
    return EXIT_OK


def _status_lines(status: dict[str, Any]) -> list[str]:
    """The ``zkv status`` table and notes, one string a line."""
    lines: list[str] = []
    columns = [
        "name",
        "shard",
        "role",
        "state",
        "alive",
        "pid",
        "epoch",
        "seq",
        "lag",
        "in_sync",
        "keys",
        "slots",
        "requests",
        "errors",
        "storage",
        "free",
        "memory",
        "evictions",
    ]
    rows = [[_column(node, c) for c in columns] for node in status["nodes"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    version = status.get("slot_map_version")
    lines.append(
        f"cluster {status['cluster']}: {status['slots']} slots"
        + ("" if version is None else f", slot map version {version}")
        + f", broker pid {status['broker']['pid']}, clients at {status['broker']['clients']}"
    )
    lines.append("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    if status.get("reshard") is not None:
        lines.append(_reshard_line(status["reshard"]))
    for node in status["nodes"]:
        if node.get("state") == "failed":  # the launcher (`zkv up`) gave up restarting it
            lines.append(
                f"{node.get('name')}: FAILED, no longer restarted; last error: "
                f"{node.get('error') or '(none recorded)'}"
            )
    for node in status["nodes"]:
        storage = node.get("storage")
        if storage is not None and storage != "ok":  # low, full or error: writes may be refused
            free = _bytes(node.get("free_bytes"))
            detail = node.get("storage_error") or (
                f"{free} free" if free != "-" else "(no error recorded)"
            )
            lines.append(f"{node.get('name')}: storage {storage}: {detail}")
    return lines


def _reshard_line(reshard: dict[str, Any]) -> str:
    """The reshard under the table: ``reshard: 1792/5461 slots moved (12 moves left), 2,207
    keys copied, now slots 1792-1919 s0 -> s3 (copy), longest hold 1.2 ms``; or ``reshard:
    done, 5461 slots moved``, or ``reshard: stopped: <why>``."""
    done = int(reshard.get("slots_done") or 0)
    if reshard.get("failed"):
        return f"reshard: stopped: {reshard['failed']}"
    left = int(reshard.get("moves_left") or 0)
    if left == 0:
        return f"reshard: done, {done} slots moved"
    line = (
        f"reshard: {done}/{int(reshard.get('slots_total') or 0)} slots moved ({left} "
        f"move{'' if left == 1 else 's'} left), {int(reshard.get('keys_copied') or 0):,} "
        "keys copied"
    )
    current = reshard.get("current")
    if current:
        attempts = int(current.get("attempts") or 0)
        attempt = f", attempt {attempts + 1}" if attempts else ""
        line += (
            f", now slots {current.get('slots')} {current.get('from')} -> {current.get('to')} "
            f"({current.get('phase')}{attempt})"
        )
    line += f", longest hold {float(reshard.get('longest_hold_ms') or 0):.1f} ms"
    held = int(reshard.get("held") or 0)
    if held:
        line += f", {held:,} requests held"
    return line


_watch_sleep = time.sleep  # a test replaces it


def _watch(args: argparse.Namespace) -> int:
    """``zkv status --watch``: the table again every ``--interval`` s until Ctrl-C; a cluster
    that stops answering is shown as such, and watched on."""
    if not args.interval > 0:
        raise _UsageError("--interval must be a positive number of seconds")
    kv = _connect(args)
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            try:
                lines = _status_lines(kv.cluster_status())
            except TransportError as exc:
                lines = [f"cluster unavailable: {exc}"]
            stamp = time.strftime("%H:%M:%S")
            print(f"{clear}{stamp}  every {args.interval:g} s, Ctrl-C stops", *lines, sep="\n")
            sys.stdout.flush()
            _watch_sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _column(node: dict[str, Any], column: str) -> str:
    """One cell of the status table."""
    if column == "free":
        return _bytes(node.get("free_bytes"))
    if column == "memory":  # used of the limit (``memory.max_bytes``; none: no limit)
        used, limit = node.get("used_bytes"), node.get("max_bytes")
        if used is None:
            return "-"
        return f"{_bytes(used)}/{_bytes(limit) if limit else 'none'}"
    return _cell(node.get(column))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def _bytes(count: Any) -> str:
    """A byte count for people, in decimal units (``12.3 MB``); ``-`` if unknown (None, -1)."""
    if isinstance(count, bool) or not isinstance(count, int | float) or not count >= 0:
        return "-"
    if count < 1000:
        return f"{int(count)} B"
    value = count / 1000
    for unit in ("kB", "MB", "GB", "TB"):
        if value < 999.95:  # what rounds to 1000.0 is shown in the next unit
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"
