"""The ``zkv`` command line.

Processes: ``zkv up`` (the whole local cluster), ``zkv broker``, ``zkv node --name NAME``,
``zkv http`` (the HTTP gateway).
Storage: ``zkv check --data DIR [--repair]``.
Operations: ``zkv status [--json]``, ``zkv failover SHARD [--to NODE]``, ``zkv bench``.
Data: ``put``, ``create``, ``cas``, ``mput``, ``get KEY...``, ``del KEY...``, ``exists``,
``ttl``, ``expire``, ``count``, ``clear``, ``keys [PREFIX]``, ``watch [PREFIX] [--cursor C]``
(a change feed, one JSON line per event); each takes ``--config FILE``
or ``--connect ENDPOINT`` (``HOST:PORT`` or ``tcp://HOST:PORT``). Without either, the config
file is ``$ZKV_CONFIG``, else ``./config/local.yaml``, else ``~/.config/zkv/config.yaml``.
Security: ``zkv keygen --config FILE`` (or ``--out DIR NAME...``) writes CURVE key pairs;
``zkv token --name NAME --role ROLE`` makes a bearer token for the HTTP gateway;
data and operations commands take ``--key FILE`` (else ``$ZKV_KEY``), a client's secret key,
required for a config with a ``security`` section (the broker's public key is ``broker.key``
beside it, or ``--server-key FILE`` / ``$ZKV_SERVER_KEY``).

Exit status: 0 success, 1 the key is missing (``check``: the folder is damaged), 2 bad
usage, a bad config file, or a data folder in use by another process, 3 the cluster is
unavailable or timed out, 4 permission denied (the client's role or key prefixes); every
failure prints one line on stderr. A closed stdout (``zkv keys | head``) ends the command
quietly.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from zkv import __version__
from zkv.cli._common import (
    CONFIG_HELP,
    EXIT_DENIED,
    EXIT_MISSING,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    KEY_HELP,
    SERVER_KEY_HELP,
    _fail,
    _UsageError,
    config_path,
)
from zkv.cli.completion import _completion
from zkv.cli.data import (
    _cas,
    _clear,
    _count,
    _create,
    _del,
    _exists,
    _expire,
    _get,
    _keys,
    _mput,
    _put,
    _ttl,
)

# the seam every data command connects through (tests replace it)
from zkv.cli.data import _client as _client
from zkv.cli.ops import _bench, _failover, _rebalance, _reshard, _status
from zkv.cli.processes import _broker, _check, _http, _keygen, _node, _up
from zkv.cli.processes import _serve as _serve  # tests use it from here
from zkv.cli.tokens import _token
from zkv.cli.topology import _apply, _shard_add, _shard_remove
from zkv.cli.watch import _watch
from zkv.errors import (
    ClientClosed,
    ConfigError,
    KeyNotFound,
    PermissionDenied,
    RequestError,
    TransportError,
    ZkvError,
)

__all__ = ["config_path", "main"]

_VALUE_COMMANDS: Final = frozenset(
    {"put", "create", "cas", "mput", "get", "del", "exists", "ttl", "expire", "keys", "watch"}
)
_EXAMPLES: Final = {
    "up": "example:\n  zkv up --config config/local.yaml",
    "broker": "example (a cluster across machines):\n  zkv broker --config cluster.yaml",
    "node": "example (a cluster across machines):\n  zkv node --config cluster.yaml --name s0a",
    "http": "example:\n  zkv http --config config/local.yaml",
    "keygen": "examples:\n  zkv keygen --config config/secure.yaml\n"
    "  zkv keygen --out keys broker s0a s0b app",
    "token": "examples:\n  zkv token --name dashboard --role read\n"
    "  zkv token --name app-writer --role write --prefix app: --prefix jobs:",
    "check": "examples:\n  zkv check --data data/s0a\n  zkv check --data data/s0a --repair",
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
    "watch": "examples:\n  zkv watch user:\n  zkv watch user: --cursor 's0@2:1200,s1@2:980'"
    " --count 100",
    "status": "examples:\n  zkv status\n  zkv status --json\n  zkv status --watch --interval 2",
    "completion": "examples:\n  source <(zkv completion bash)     # in ~/.bashrc\n"
    "  source <(zkv completion zsh)      # in ~/.zshrc",
    "bench": "examples:\n  zkv bench --workload mixed --threads 4 --seconds 10\n"
    "  zkv bench --pipeline 100\n  zkv bench --concurrency 64   # one AsyncClient",
    "failover": "example:\n  zkv failover s0 --to s0b",
    "rebalance": "example (after adding shard s3 to the config file):\n  zkv rebalance",
    "shard": "examples:\n  zkv shard add s3 --config config/local.yaml   # the file lists s3 now\n"
    "  zkv shard remove s3                           # drain it, then drop it from the file",
    "add": "example:\n  zkv shard add s3 --config config/local.yaml",
    "remove": "example:\n  zkv shard remove s3",
    "apply": "example (after editing the file: a new shard, a replica, a node dropped):\n"
    "  zkv apply --config config/local.yaml",
    "reshard": "examples:\n  zkv reshard --from s0 --to s1 --count 100\n"
    "  zkv reshard --from s3        # drain s3 before it leaves the config file",
}


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
            # with CURVE, a broker that refuses the key looks the same as no broker
            hint = ", and does it admit this --key" if getattr(kv, "curve", None) else ""
            return _fail(
                f"cannot reach the cluster at {kv.endpoint} (is it running{hint}? start it "
                "with `zkv up`, or point --connect at it)",
                EXIT_UNAVAILABLE,
            )
        return _fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except PermissionDenied as exc:
        return _fail(str(exc), EXIT_DENIED)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zkv", description="zkv: a sharded, replicated key-value store on ZeroMQ."
    )
    parser.add_argument("--version", action="version", version=f"zkv {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str,
        run: Callable[[argparse.Namespace], int],
        help_: str,
        process: bool = False,
        parent: Any = None,
    ) -> argparse.ArgumentParser:
        p = (parent or sub).add_parser(
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
                help="broker endpoint, HOST:PORT or tcp://HOST:PORT, e.g. 127.0.0.1:7400 "
                "(several brokers of one cluster: separated by commas)",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                metavar="S",
                help="seconds to wait for the cluster",
            )
            # dest: KEY is the positional of the data commands
            p.add_argument("--key", dest="key_file", metavar="FILE", help=KEY_HELP)
            p.add_argument(
                "--server-key", dest="server_key_file", metavar="FILE", help=SERVER_KEY_HELP
            )
        return p

    p = command("up", _up, "run the whole cluster of a config file on this machine", True)
    p.add_argument(
        "--foreground-logs",
        action="store_true",
        help="send each process's log to this terminal, not to <storage.dir>/logs/<name>.log",
    )
    p = command("broker", _broker, "run the broker process", True)
    p.add_argument("--name", help="which broker of the config's brokers list (default: the first)")
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
        epilog=_EXAMPLES["check"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p = command("watch", _watch, "print changes to keys under PREFIX, one JSON line each")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--cursor", metavar="C", help="go on after the event whose cursor is C")
    p.add_argument("--no-values", action="store_true", help="leave values out")
    p.add_argument("--snapshot", action="store_true", help="after a resync, print the current keys")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument("--wait", type=float, metavar="S", help=argparse.SUPPRESS)
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
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="operations in flight at once on one AsyncClient per thread (instead of --pipeline)",
    )
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
    p = command(
        "rebalance",
        _rebalance,
        "move slots while serving until every shard of the config owns an even share",
    )
    p.add_argument("--no-wait", action="store_true", help="start it and return at once")
    p = command(
        "reshard",
        _reshard,
        "move slots from one shard to another while serving (or drain a shard: --from alone)",
    )
    p.add_argument("--from", dest="source", required=True, metavar="SHARD")
    p.add_argument("--to", dest="target", metavar="SHARD", help="with --count")
    p.add_argument("--count", type=int, metavar="N", help="how many slots (with --to)")
    p.add_argument("--no-wait", action="store_true", help="start it and return at once")
    p = command(
        "apply",
        _apply,
        "make the running cluster match its edited config file: add and remove shards and "
        "nodes, move slots, while serving",
    )
    p.add_argument("--yes", action="store_true", help="do not ask before applying")
    shard = sub.add_parser(
        "shard",
        help="add a shard the config file gained, or drain one before it leaves",
        description="zkv shard add SHARD | zkv shard remove SHARD (zkv apply does both)",
        epilog=_EXAMPLES["shard"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = shard.add_subparsers(required=True, metavar="ACTION")
    p = command(
        "add",
        _shard_add,
        "start serving a shard the config file gained: zkv apply, checked to hold it",
        parent=actions,
    )
    p.add_argument("name", metavar="SHARD")
    p.add_argument("--yes", action="store_true", help="do not ask before applying")
    p = command(
        "remove",
        _shard_remove,
        "drain a shard before it leaves the config file: its slots move to the others",
        parent=actions,
    )
    p.add_argument("name", metavar="SHARD")
    p.add_argument("--no-wait", action="store_true", help="start it and return at once")
    p = sub.add_parser(
        "keygen",
        help="write CURVE key pairs (NAME.key, NAME.key_secret) with zmq.auth",
        description="Write the CURVE key pairs a secured cluster needs: with --config, one "
        "for the broker, each node and each client the file's security section names, into "
        "security.keys; with --out, one for each NAME into DIR. Existing pairs are kept; "
        "secret files are mode 0600.",
        epilog=_EXAMPLES["keygen"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="cluster YAML file with a security section")
    p.add_argument("--out", type=Path, metavar="DIR", help="the keys' folder (with NAMEs)")
    p.add_argument("names", nargs="*", metavar="NAME", help="a process or client name")
    p.set_defaults(run=_keygen)
    p = sub.add_parser(
        "token",
        help="make a bearer token for the HTTP gateway (the token, and its line for http.tokens)",
        description="Print a new random bearer token for the HTTP gateway, then the line to "
        "put under http.tokens in the config file: the token's SHA-256, its role and its key "
        "prefixes. The token is shown once: the file keeps only its digest. `zkv http` "
        "reads the file again on SIGHUP.",
        epilog=_EXAMPLES["token"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", required=True, help="the token's name in http.tokens")
    p.add_argument(
        "--role", required=True, choices=["read", "write", "admin"], help="what it may do"
    )
    p.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="P",
        help="only keys starting with P (repeat for several; none: every key)",
    )
    p.set_defaults(run=_token)
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
