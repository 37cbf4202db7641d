"""The ``zkv`` command line.

Processes: ``zkv up`` (the whole local cluster), ``zkv broker``, ``zkv node --name NAME``,
``zkv http`` (the HTTP gateway).
Storage: ``zkv check --data DIR [--repair]``.
Operations: ``zkv status``, ``zkv failover SHARD [--to NODE]``.
Data: ``zkv put KEY VALUE [--ttl S] [--json]``, ``zkv get KEY``, ``zkv del KEY``,
``zkv keys [PREFIX]``, ``zkv status``; each takes ``--config FILE`` or ``--connect ENDPOINT``.

Exit status: 0 success, 1 the key is missing (``check``: the folder is damaged), 2 bad
usage, a bad config file, or a data folder in use by another process, 3 the cluster is
unavailable or timed out; every failure prints one line on stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import zmq

from zkv import __version__
from zkv.config import load_config
from zkv.errors import (
    ConfigError,
    FolderLocked,
    KeyNotFound,
    RequestError,
    StorageCorrupted,
    TransportError,
    ZkvError,
)

__all__ = ["main"]

DEFAULT_CONFIG: Final = "config/local.yaml"
EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class _UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zkv`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except KeyNotFound as exc:
        return _fail(str(exc), EXIT_MISSING)
    except (ConfigError, _UsageError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except TransportError as exc:
        return _fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except RequestError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ZkvError as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int) -> int:
    print(f"zkv: {message}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zkv", description="zkv: a sharded, replicated key-value store on ZeroMQ."
    )
    parser.add_argument("--version", action="version", version=f"zkv {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], int], help_: str, process: bool = False
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=run)
        if process:
            p.add_argument(
                "--config",
                default=DEFAULT_CONFIG,
                help=f"cluster YAML file (default {DEFAULT_CONFIG})",
            )
            p.add_argument(
                "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
            )
        else:
            target = p.add_mutually_exclusive_group()
            target.add_argument("--config", help=f"cluster YAML file (default {DEFAULT_CONFIG})")
            target.add_argument(
                "--connect", metavar="ENDPOINT", help="broker endpoint, e.g. tcp://127.0.0.1:7400"
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                metavar="S",
                help="seconds to wait for the cluster",
            )
        return p

    command("up", _up, "run the whole cluster of a config file on this machine", True)
    p = command("broker", _broker, "run the broker process", True)
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    p = command("http", _http, "run the HTTP gateway (REST API, /metrics) at http.listen", True)
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    p = command("node", _node, "run one shard node process", True)
    p.add_argument("--name", required=True, help="the node's name in the config file")
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)

    p = sub.add_parser(
        "check",
        help="check a node's data folder",
        description="Check a node's data folder (e.g. data/s0a) for damage.",
    )
    p.set_defaults(run=_check)
    p.add_argument("--data", required=True, metavar="DIR", help="the node's data folder")
    p.add_argument(
        "--repair",
        action="store_true",
        help="cut the log at the first bad record (what follows is lost)",
    )

    p = command("put", _put, "set a key")
    p.add_argument("key")
    p.add_argument("value", help="a string, or JSON with --json")
    p.add_argument("--ttl", type=float, metavar="S", help="expire after S seconds")
    p.add_argument("--json", action="store_true", help="parse VALUE as JSON")
    p = command("get", _get, "print a key's value as JSON")
    p.add_argument("key")
    p = command("del", _del, "delete a key")
    p.add_argument("key")
    p = command("keys", _keys, "list keys, one per line")
    p.add_argument("prefix", nargs="?", default="")
    command("status", _status, "show every node of the cluster")
    p = command("bench", _bench, "measure throughput and latency of a running cluster")
    p.add_argument("--workload", choices=["get", "put", "mixed"], default="get")
    p.add_argument("--read-ratio", type=float, default=0.9, help="share of reads in mixed")
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--value-size", type=int, default=100, metavar="BYTES")
    p.add_argument("--threads", type=int, default=1, help="client threads per process")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--pipeline", type=int, default=1, metavar="N", help="operations per request")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--consistency", choices=["strong", "eventual"])
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("failover", _failover, "move a shard's primary role to a replica, losing no write")
    p.add_argument("shard")
    p.add_argument(
        "--to",
        metavar="NODE",
        help="the replica to promote (default: the most advanced in-sync one)",
    )
    return parser


# ---------------------------------------------------------------------------- processes


def _up(args: argparse.Namespace) -> int:
    from zkv.launcher import Launcher
    from zkv.runtime import configure_logging

    configure_logging("up", args.log_level)
    path = Path(args.config)
    return Launcher(load_config(path), path, args.log_level).run()


def _broker(args: argparse.Namespace) -> int:
    from zkv.broker.server import Broker
    from zkv.runtime import configure_logging, on_stop_signals

    configure_logging("broker", args.log_level)
    broker = Broker(load_config(args.config), ready_file=args.ready_file)
    on_stop_signals(broker.stop)
    return _serve(broker.run, "broker")


def _node(args: argparse.Namespace) -> int:
    from zkv.node.server import Node
    from zkv.runtime import configure_logging, on_stop_signals

    configure_logging(args.name, args.log_level)
    node = Node(load_config(args.config), args.name, ready_file=args.ready_file)
    on_stop_signals(node.stop)
    return _serve(node.run, f"node {args.name}")


def _http(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import signal

    from zkv.http import serve
    from zkv.runtime import configure_logging, write_ready_file

    configure_logging("http", args.log_level)
    config = load_config(args.config)
    host = config.http.host

    def ready(port: int) -> None:
        if args.ready_file is not None:
            write_ready_file(args.ready_file, {"listen": f"{host}:{port}"})

    async def main() -> None:
        task = asyncio.ensure_future(
            serve(
                config.broker.clients,
                host,
                config.http.port,
                timeout_s=config.defaults.timeout_s,
                consistency=config.defaults.consistency,
                max_request_bytes=config.limits.max_request_bytes,
                ready=ready,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except OSError as exc:
        print(
            f"zkv: http gateway cannot listen at {config.http.listen}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


def _serve(run: Callable[[], None], what: str) -> int:
    try:
        run()
    except zmq.ZMQError as exc:
        print(f"zkv: {what} cannot start: {exc}", file=sys.stderr)
        return 1
    except FolderLocked as exc:  # another process uses the data folder: the operator's to fix
        print(f"zkv: {what} cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageCorrupted as exc:
        print(f"zkv: {what} cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"zkv: {what} stopped: storage error: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from zkv.storage.lock import folder_holder, lock_folder
    from zkv.storage.recovery import check_directory

    directory = Path(args.data)
    if not directory.is_dir():
        return _fail(f"{directory}: no such folder", EXIT_USAGE)
    if args.repair:
        try:
            lock = lock_folder(directory)  # no node may start (or write) while we cut
        except FolderLocked as exc:
            return _fail(
                f"cannot repair {directory}: it is in use by a live zkv process "
                f"({_pid(exc.pid)}); stop it first",
                EXIT_USAGE,
            )
        with lock:
            ok, lines = check_directory(directory, repair=True)
    else:
        holder = folder_holder(directory)
        if holder is not None:
            print(
                f"zkv: note: a live zkv process ({_pid(holder)}) holds {directory} and may "
                "write to it meanwhile, so this result may be stale",
                file=sys.stderr,
            )
        ok, lines = check_directory(directory)
    for line in lines:
        print(line)
    if ok:
        return EXIT_OK
    if args.repair:
        print(
            f"zkv: {args.data} is still not fit to start from: records are missing that no "
            "cut brings back; restore the missing files, or move the folder aside so the "
            "node starts empty and resyncs from its shard",
            file=sys.stderr,
        )
    else:
        print(
            f"zkv: {args.data} is damaged; `zkv check --data {args.data} --repair` cuts the "
            "log at the first bad record and sets bad snapshots aside (losing what follows)",
            file=sys.stderr,
        )
    return 1


def _pid(pid: int | None) -> str:
    return f"pid {pid}" if pid else "pid unknown"


# ---------------------------------------------------------------------------- data


def _client(args: argparse.Namespace) -> Any:
    from zkv.client import Client

    kwargs: dict[str, Any] = {}
    if args.timeout is not None:
        if not args.timeout > 0:
            raise _UsageError("--timeout must be a positive number of seconds")
        kwargs["timeout_s"] = args.timeout
    if args.connect:
        return Client(args.connect, **kwargs)
    return Client.from_config(args.config or DEFAULT_CONFIG, **kwargs)


def _put(args: argparse.Namespace) -> int:
    value: Any = args.value
    if args.json:
        try:
            value = json.loads(args.value)
        except json.JSONDecodeError as exc:
            raise _UsageError(f"VALUE is not valid JSON: {exc}") from None
    with _client(args) as kv:
        kv.put(args.key, value, ttl=args.ttl)
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    with _client(args) as kv:
        value = kv[args.key]
    print(json.dumps(value, default=_json_default, ensure_ascii=False))
    return EXIT_OK


def _del(args: argparse.Namespace) -> int:
    with _client(args) as kv:
        del kv[args.key]
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    with _client(args) as kv:
        for key in kv.keys(args.prefix):
            print(key if isinstance(key, str) else repr(key))
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    from zkv.bench import BenchConfig, report, run_bench

    for name in ("keys", "value_size", "threads", "processes", "pipeline"):
        if getattr(args, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.seconds > 0 or not 0 <= args.read_ratio <= 1:
        raise _UsageError("--seconds must be positive and --read-ratio between 0 and 1")
    with _client(args) as kv:
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
        seconds=args.seconds,
        consistency=args.consistency,
    )
    result = run_bench(config, show_progress=not args.json)
    print(report(config, result, args.json))
    return EXIT_OK


def _failover(args: argparse.Namespace) -> int:
    with _client(args) as kv:
        result = kv.failover(args.shard, args.to, timeout=args.timeout)
    print(
        f"shard {result['shard']}: {result['primary']} is the primary now (epoch {result['epoch']})"
    )
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    with _client(args) as kv:
        status = kv.cluster_status()
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
    ]
    rows = [
        [_bytes(node.get("free_bytes")) if c == "free" else _cell(node.get(c)) for c in columns]
        for node in status["nodes"]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print(
        f"cluster {status['cluster']}: {status['slots']} slots, broker pid "
        f"{status['broker']['pid']}, clients at {status['broker']['clients']}"
    )
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for node in status["nodes"]:
        if node.get("state") == "failed":  # the launcher (`zkv up`) gave up restarting it
            print(
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
            print(f"{node.get('name')}: storage {storage}: {detail}")
    return EXIT_OK


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


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
