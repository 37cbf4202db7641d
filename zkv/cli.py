"""The ``zkv`` command line.

Processes: ``zkv up`` (the whole local cluster), ``zkv broker``, ``zkv node --name NAME``,
``zkv http`` (the HTTP gateway).
Storage: ``zkv check --data DIR [--repair]``.
Operations: ``zkv status [--json]``, ``zkv failover SHARD [--to NODE]``, ``zkv bench``.
Data: ``put``, ``create``, ``cas``, ``mput``, ``get KEY...``, ``del KEY...``, ``exists``,
``ttl``, ``expire``, ``count``, ``clear``, ``keys [PREFIX]``; each takes ``--config FILE``
or ``--connect ENDPOINT`` (``HOST:PORT`` or ``tcp://HOST:PORT``). Without either, the config
file is ``$ZKV_CONFIG``, else ``./config/local.yaml``, else ``~/.config/zkv/config.yaml``.

Exit status: 0 success, 1 the key is missing (``check``: the folder is damaged), 2 bad
usage, a bad config file, or a data folder in use by another process, 3 the cluster is
unavailable or timed out; every failure prints one line on stderr. A closed stdout (``zkv
keys | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import zmq

from zkv import __version__
from zkv.config import load_config
from zkv.errors import (
    ClientClosed,
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
USER_CONFIG: Final = "~/.config/zkv/config.yaml"
CONFIG_HELP: Final = (
    f"cluster YAML file (default: $ZKV_CONFIG, else ./{DEFAULT_CONFIG}, else {USER_CONFIG})"
)
#: Commands whose positionals may start with "-" (a key or a value).
_VALUE_COMMANDS: Final = frozenset(
    {"put", "create", "cas", "mput", "get", "del", "exists", "ttl", "expire", "keys"}
)
_EXAMPLES: Final = {
    "up": "example:\n  zkv up --config config/local.yaml",
    "put": 'examples:\n  zkv put user:1 Ada\n  zkv put user:1 \'{"name": "Ada"}\' --json --ttl 60'
    "\n  echo hello | zkv put greeting -",
    "create": "example:\n  zkv create lock:job1 worker-7 --ttl 30",
    "cas": "example:\n  zkv cas counter 1 2 --json",
    "mput": 'examples:\n  zkv mput \'{"a": 1, "b": "two"}\'\n  zkv mput < batch.json',
    "get": "example:\n  zkv get user:1 user:2",
    "del": "example:\n  zkv del user:1 user:2",
    "exists": "example:\n  zkv exists user:1",
    "ttl": "example:\n  zkv ttl session:9",
    "expire": "example:\n  zkv expire session:9 600",
    "count": "example:\n  zkv count --connect 127.0.0.1:7400",
    "clear": "example:\n  zkv clear --yes",
    "keys": "example:\n  zkv keys user: --limit 10",
    "status": "examples:\n  zkv status\n  zkv status --json\n  zkv status --watch --interval 2",
    "completion": "examples:\n  source <(zkv completion bash)     # in ~/.bashrc\n"
    "  source <(zkv completion zsh)      # in ~/.zshrc",
    "bench": "example:\n  zkv bench --workload mixed --threads 4 --seconds 10",
    "failover": "example:\n  zkv failover s0 --to s0b",
}
EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class _UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zkv`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(
        _positionals_last(parser, list(sys.argv[1:] if argv is None else argv))
    )
    args.kv = None
    try:
        status: int = args.run(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:  # `zkv keys | head`: the reader went away; end quietly
        _silence_stdout()
        return 141  # as a shell reports a command killed by SIGPIPE
    except KeyNotFound as exc:
        return _fail(str(exc), EXIT_MISSING)
    except (ConfigError, _UsageError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except TransportError as exc:
        kv = args.kv
        if kv is not None and not kv.reached and not isinstance(exc, ClientClosed):
            return _fail(
                f"cannot reach the cluster at {kv.endpoint} (is it running? start it with "
                "`zkv up`, or point --connect at it)",
                EXIT_UNAVAILABLE,
            )
        return _fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except RequestError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ZkvError as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return 130
    finally:
        if args.kv is not None:
            args.kv.close()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again (what
    Python's documentation recommends for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def _positionals_last(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with a data command's positionals moved after ``--``, so a key or value that
    starts with ``-`` (``zkv put k -x``) is taken as one, not as an unknown option."""
    if not argv or argv[0] not in _VALUE_COMMANDS or "-h" in argv or "--help" in argv:
        return argv
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = subparsers.choices[argv[0]]._option_string_actions
    options: list[str] = []
    positionals: list[str] = []
    rest = iter(argv[1:])
    for token in rest:
        if token == "--":
            positionals.extend(rest)
            break
        name = token.partition("=")[0]
        action = actions.get(name)
        if action is None or token == "-":
            positionals.append(token)
            continue
        options.append(token)
        if action.nargs != 0 and "=" not in token:
            value = next(rest, None)
            if value is not None:
                options.append(value)
    return [argv[0], *options, "--", *positionals]


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
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(run=run)
        if process:
            p.add_argument("--config", help=CONFIG_HELP)
            p.add_argument(
                "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
            )
        else:
            target = p.add_mutually_exclusive_group()
            target.add_argument("--config", help=CONFIG_HELP)
            target.add_argument(
                "--connect",
                metavar="ENDPOINT",
                help="broker endpoint, HOST:PORT or tcp://HOST:PORT, e.g. 127.0.0.1:7400",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                metavar="S",
                help="seconds to wait for the cluster",
            )
        return p

    p = command("up", _up, "run the whole cluster of a config file on this machine", True)
    p.add_argument(
        "--foreground-logs",
        action="store_true",
        help="send each process's log to this terminal, not to <storage.dir>/logs/<name>.log",
    )
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

    p = command("put", _put, "set a key (prints OK)")
    p.add_argument("key")
    p.add_argument("value", help="a string, or JSON with --json; - reads it from stdin")
    p.add_argument("--ttl", type=float, metavar="S", help="expire after S seconds")
    p.add_argument("--json", action="store_true", help="parse VALUE as JSON")
    p = command("create", _create, "set a key only if it is absent (prints OK)")
    p.add_argument("key")
    p.add_argument("value", help="a string, or JSON with --json; - reads it from stdin")
    p.add_argument("--ttl", type=float, metavar="S", help="expire after S seconds")
    p.add_argument("--json", action="store_true", help="parse VALUE as JSON")
    p = command("cas", _cas, "set KEY to NEW if its value is OLD (prints OK, or exits 1)")
    p.add_argument("key")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--json", action="store_true", help="parse OLD and NEW as JSON")
    p = command("mput", _mput, "set many keys from one JSON object (prints OK)")
    p.add_argument("object", nargs="?", default="-", help="a JSON object; - or none: stdin")
    p.add_argument("--ttl", type=float, metavar="S", help="expire after S seconds")
    p = command("get", _get, "print each key's value as JSON, one line each")
    p.add_argument("key", nargs="+")
    p = command("del", _del, "delete keys; prints how many were present")
    p.add_argument("key", nargs="+")
    p = command("exists", _exists, "print 1 if the key is present, else 0 (and exit 1)")
    p.add_argument("key")
    p = command("ttl", _ttl, "print the seconds before a key expires (-1: no TTL)")
    p.add_argument("key")
    p = command("expire", _expire, "expire a key after S seconds (0 deletes it)")
    p.add_argument("key")
    p.add_argument("seconds", type=float)
    command("count", _count, "print the number of keys in the cluster")
    p = command("clear", _clear, "delete every key in the cluster")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = command("keys", _keys, "list keys, one per line")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--limit", type=int, metavar="N", help="at most N keys")
    p = command("status", _status, "show every node of the cluster")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--watch", action="store_true", help="refresh the table until Ctrl-C")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes"
    )
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
    p.add_argument("--keep", action="store_true", help="keep the bench:* keys afterwards")
    p = command("failover", _failover, "move a shard's primary role to a replica, losing no write")
    p.add_argument("shard")
    p.add_argument(
        "--to",
        metavar="NODE",
        help="the replica to promote (default: the most advanced in-sync one)",
    )
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for the zkv command.",
        epilog=_EXAMPLES["completion"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(run=lambda args: _completion(parser, args.shell))
    return parser


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """Print a completion script: commands, then each command's options (else file names)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands: dict[str, list[str]] = {}
    for name, sub in subparsers.choices.items():
        commands[name] = sorted(
            option
            for action in sub._actions
            if action.help != argparse.SUPPRESS
            for option in action.option_strings
            if option.startswith("--")
        )
    cases = "\n".join(
        f'        {name}) opts="{" ".join(opts)}" ;;' for name, opts in commands.items()
    )
    names = " ".join(commands)
    if shell == "bash":
        print(f"""# zkv bash completion: source <(zkv completion bash)
_zkv() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} opts=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{names} --help --version" -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _zkv zkv""")
    else:
        helps = {a.dest: a.help or "" for a in subparsers._choices_actions}
        described = "\n".join(
            f"        '{name}:{helps.get(name, '').replace(chr(39), '').replace(':', '')}'"
            for name in commands
        )
        print(f"""#compdef zkv
# zkv zsh completion: source <(zkv completion zsh)
_zkv() {{
    local -a commands
    local opts=""
    commands=(
{described}
    )
    if (( CURRENT == 2 )); then
        _describe 'zkv command' commands
        return
    fi
    case $words[2] in
{cases}
    esac
    if [[ $PREFIX == -* ]]; then
        compadd -- ${{=opts}} --help
    else
        _files
    fi
}}
compdef _zkv zkv""")
    return EXIT_OK


# ---------------------------------------------------------------------------- processes


def _up(args: argparse.Namespace) -> int:
    from zkv.launcher import Launcher
    from zkv.runtime import configure_logging

    configure_logging("up", args.log_level)
    path = config_path(args.config)
    return Launcher(load_config(path), path, args.log_level, args.foreground_logs).run()


def _broker(args: argparse.Namespace) -> int:
    from zkv.broker.server import Broker
    from zkv.runtime import configure_logging, on_stop_signals

    configure_logging("broker", args.log_level)
    broker = Broker(load_config(config_path(args.config)), ready_file=args.ready_file)
    on_stop_signals(broker.stop)
    return _serve(broker.run, "broker")


def _node(args: argparse.Namespace) -> int:
    from zkv.node.server import Node
    from zkv.runtime import configure_logging, on_stop_signals

    configure_logging(args.name, args.log_level)
    node = Node(load_config(config_path(args.config)), args.name, ready_file=args.ready_file)
    on_stop_signals(node.stop)
    return _serve(node.run, f"node {args.name}")


def _http(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import signal

    from zkv.http import serve
    from zkv.runtime import configure_logging, write_ready_file

    configure_logging("http", args.log_level)
    config = load_config(config_path(args.config))
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


def config_path(given: str | None) -> Path:
    """The config file: ``--config``, else ``$ZKV_CONFIG``, else ``./config/local.yaml``,
    else ``~/.config/zkv/config.yaml``; ``ConfigError`` listing where it looked."""
    if given:
        return Path(given)
    env = os.environ.get("ZKV_CONFIG")
    if env:
        return Path(env)
    candidates = [Path(DEFAULT_CONFIG), Path(USER_CONFIG).expanduser()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no config file found; looked for --config, $ZKV_CONFIG (not set), "
        f"./{DEFAULT_CONFIG} and {candidates[1]}; pass --config FILE or --connect HOST:PORT"
    )


def _client(args: argparse.Namespace) -> Any:
    from zkv.client import Client

    kwargs: dict[str, Any] = {}
    if args.timeout is not None:
        if not args.timeout > 0:
            raise _UsageError("--timeout must be a positive number of seconds")
        kwargs["timeout_s"] = args.timeout
    if args.connect:
        args.kv = Client(args.connect, **kwargs)
    else:
        args.kv = Client.from_config(config_path(args.config), **kwargs)
    return args.kv


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text} is out of the range of a double")
    return number


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (zkv stores only finite numbers)")


def _json_value(text: str, what: str) -> Any:
    """``text`` parsed as a JSON value zkv can store (no NaN or Infinity; ``{"$b64": ...}``
    is bytes, as in the HTTP API)."""
    from zkv.http.codec import value_from_json

    try:
        doc = json.loads(text, parse_float=_finite, parse_constant=_reject)
    except RecursionError:
        raise _UsageError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise _UsageError(f"{what} is not valid JSON: {exc}") from None
    return value_from_json(doc, what)


def _dumps(value: Any) -> str:
    """A stored value as one line of JSON (bytes as ``{"$b64": ...}``)."""
    from zkv.http.codec import value_to_json

    return json.dumps(value_to_json(value), ensure_ascii=False, allow_nan=False)


def _show_key(key: Any) -> str:
    from zkv.http.codec import key_to_json

    shown = key_to_json(key)
    return shown if isinstance(shown, str) else json.dumps(shown)


def _value_arg(text: str, as_json: bool, what: str = "VALUE") -> Any:
    if text == "-":
        text = sys.stdin.read()
        if not as_json:
            text = text.removesuffix("\n")
    return _json_value(text, what) if as_json else text


def _put(args: argparse.Namespace) -> int:
    value = _value_arg(args.value, args.json)
    _client(args).put(args.key, value, ttl=args.ttl)
    print("OK")
    return EXIT_OK


def _create(args: argparse.Namespace) -> int:
    value = _value_arg(args.value, args.json)
    _client(args).create(args.key, value, ttl=args.ttl)
    print("OK")
    return EXIT_OK


def _cas(args: argparse.Namespace) -> int:
    old = _value_arg(args.old, args.json, "OLD")
    new = _value_arg(args.new, args.json, "NEW")
    if _client(args).cas(args.key, old, new):
        print("OK")
        return EXIT_OK
    return _fail(f"{args.key}: the value is not OLD (or the key is missing); not set", 1)


def _mput(args: argparse.Namespace) -> int:
    mapping = _value_arg(args.object, True, "OBJECT")
    if not isinstance(mapping, dict):
        raise _UsageError("OBJECT must be a JSON object of keys and values")
    if mapping:
        _client(args).mput(mapping, ttl=args.ttl)
    print("OK")
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    kv = _client(args)
    if len(args.key) == 1:
        print(_dumps(kv[args.key[0]]))
        return EXIT_OK
    found = kv.mget(args.key)
    missing = [key for key in args.key if key not in found]
    for key in args.key:
        print(_dumps(found[key]) if key in found else "")  # an empty line: missing
    sys.stdout.flush()
    for key in missing:
        print(f"zkv: key {key!r} not found", file=sys.stderr)
    return EXIT_MISSING if missing else EXIT_OK


def _del(args: argparse.Namespace) -> int:
    kv = _client(args)
    if len(args.key) == 1:
        deleted = int(kv.delete(args.key[0]))
    else:
        with kv.pipeline() as p:
            for key in args.key:
                p.delete(key)
            deleted = sum(map(bool, p.execute()))
    print(deleted)
    return EXIT_OK


def _exists(args: argparse.Namespace) -> int:
    present = _client(args).exists(args.key)
    print(int(present))
    return EXIT_OK if present else EXIT_MISSING


def _ttl(args: argparse.Namespace) -> int:
    kv = _client(args)
    ttl = kv.ttl(args.key)
    if ttl is None:
        if not kv.exists(args.key):
            raise KeyNotFound(f"key {args.key!r} not found")
        print(-1)
    else:
        print(f"{ttl:.3f}")
    return EXIT_OK


def _expire(args: argparse.Namespace) -> int:
    if not _client(args).expire(args.key, args.seconds):
        raise KeyNotFound(f"key {args.key!r} not found")
    print("OK")
    return EXIT_OK


def _count(args: argparse.Namespace) -> int:
    print(_client(args).count())
    return EXIT_OK


def _clear(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise _UsageError("clear deletes every key: pass --yes to confirm (no terminal)")
        kv = _client(args)
        answer = input(f"delete all {kv.count()} keys of the cluster at {kv.endpoint}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not cleared")
            return EXIT_OK
    _client(args).clear()
    print("OK")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise _UsageError("--limit must be 0 or more")
    kv = _client(args)
    for shown, key in enumerate(kv.keys(args.prefix)):
        if args.limit is not None and shown >= args.limit:
            break
        print(_show_key(key))
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    from zkv.bench import BenchConfig, remove_bench_keys, report, run_bench

    for name in ("keys", "value_size", "threads", "processes", "pipeline"):
        if getattr(args, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.seconds > 0 or not 0 <= args.read_ratio <= 1:
        raise _UsageError("--seconds must be positive and --read-ratio between 0 and 1")
    kv = _client(args)
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
    try:
        result = run_bench(config, show_progress=not args.json and sys.stderr.isatty())
    finally:
        if not args.keep:
            remove_bench_keys(config)
    print(report(config, result, args.json))
    return EXIT_OK


def _failover(args: argparse.Namespace) -> int:
    result = _client(args).failover(args.shard, args.to, timeout=args.timeout)
    print(
        f"shard {result['shard']}: {result['primary']} is the primary now (epoch {result['epoch']})"
    )
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    status = _client(args).cluster_status()
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
    ]
    rows = [
        [_bytes(node.get("free_bytes")) if c == "free" else _cell(node.get(c)) for c in columns]
        for node in status["nodes"]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines.append(
        f"cluster {status['cluster']}: {status['slots']} slots, broker pid "
        f"{status['broker']['pid']}, clients at {status['broker']['clients']}"
    )
    lines.append("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
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


_watch_sleep = time.sleep  # a test replaces it


def _watch(args: argparse.Namespace) -> int:
    """``zkv status --watch``: the table again every ``--interval`` s until Ctrl-C; a cluster
    that stops answering is shown as such, and watched on."""
    if not args.interval > 0:
        raise _UsageError("--interval must be a positive number of seconds")
    kv = _client(args)
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
