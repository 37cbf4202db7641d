"""A Jepsen-style workload for clusters in network namespaces: client processes that record
what they did, and an agent that lets the test (outside every namespace) use a client.

``python tests/jepsen.py worker ...`` runs in a client namespace until its stop file
appears. It does, at random, strong reads, writes and compare-and-swaps of a few keys
(values unique to it: ``"<worker>-<n>"``), eventual reads of the same keys, and writes of
keys of its own (``w:<worker>:<n>``, strong and eventual in turn) for the audit that every
acknowledged write survives (``--eventual-only``: eventual writes of its keys only). Each
operation is one JSON line in its history file, written when it completed: call and return
times (``time.monotonic()``, one clock for every process of the machine) and the outcome;
an operation that failed (a timeout, ``Unavailable``) has no return time, since it may or
may not have taken effect.

``python tests/jepsen.py agent ...`` answers JSON-line calls of ``zkv.Client`` methods on a
Unix socket (the file system is shared by the namespaces, the network is not).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import zkv


def connect(config: str, client: str, broker: str | None, timeout_s: float) -> zkv.Client:
    """A client of every broker of ``config``, or of the one named ``broker`` only."""
    if broker is None:
        return zkv.Client.from_config(config, client=client, timeout_s=timeout_s)
    from zkv.config import load_config
    from zkv.security import CurveKeys

    cluster = load_config(config)
    endpoint = next(b.clients for b in cluster.broker_list() if b.name == broker)
    return zkv.Client(endpoint, curve=CurveKeys.for_client(cluster, client), timeout_s=timeout_s)


def worker(args: argparse.Namespace) -> None:
    rng = random.Random(args.id)
    keys = args.keys.split(",")
    seen: dict[str, Any] = dict.fromkeys(keys)
    stop = Path(args.stop)
    n = 0
    with (
        connect(args.config, args.client, args.broker, args.timeout_s) as kv,
        open(args.out, "a", buffering=1) as out,
    ):
        while not stop.exists():
            n += 1
            key = rng.choice(keys)
            kinds = ["read", "write", "cas", "eread", "audit"]
            kind = "audit" if args.eventual_only else rng.choices(kinds, [3, 2, 2, 1, 2])[0]
            value = f"{args.id}-{n}"
            arg: Any = None
            level = "strong"
            if kind == "write":
                arg = value
            elif kind == "cas":
                arg = [seen[key], value]
            elif kind == "audit":
                key, arg = f"w:{args.id}:{n}", n
                level = "eventual" if n % 2 or args.eventual_only else "strong"
            call = time.monotonic()
            try:
                if kind == "read":
                    result = kv.get(key, None)
                    seen[key] = result
                elif kind == "eread":
                    result = kv.get(key, None, consistency="eventual")
                elif kind == "write":
                    result = kv.put(key, value)
                elif kind == "cas":
                    result = kv.cas(key, seen[key], value)
                else:
                    result = kv.put(key, arg, consistency=level)
                ret: float | None = time.monotonic()
            except zkv.ZkvError as exc:
                result, ret = type(exc).__name__, None
            record = {
                "client": args.id,
                "key": key,
                "kind": kind,
                "level": level,
                "call": call,
                "ret": ret,
                "arg": arg,
                "result": result,
            }
            out.write(json.dumps(record) + "\n")


def agent(args: argparse.Namespace) -> None:
    path = Path(args.socket)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    clients: dict[str | None, zkv.Client] = {}
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rw", buffering=1) as stream:
            for line in stream:
                call = json.loads(line)
                try:
                    broker = call.get("broker")
                    if broker not in clients:
                        clients[broker] = connect(args.config, args.client, broker, 2.0)
                    method = getattr(clients[broker], call["method"])
                    answer = {"ok": method(*call.get("args", []), **call.get("kwargs", {}))}
                except Exception as exc:
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                stream.write(json.dumps(answer, default=str) + "\n")


class AgentError(Exception):
    """The agent's client raised (its type and message)."""


class Agent:
    """The test's end of an agent: ``agent.call("put", "k", 1)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def connect(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.path))
                self.sock = sock
                self.stream = sock.makefile("rw", buffering=1)
                return
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def call(self, method: str, *args: Any, broker: str | None = None, **kwargs: Any) -> Any:
        """``method`` of a client of every broker, or of ``broker`` only."""
        assert self.sock is not None
        self.sock.settimeout(60)
        call = {"method": method, "args": args, "kwargs": kwargs, "broker": broker}
        self.stream.write(json.dumps(call) + "\n")
        answer = json.loads(self.stream.readline())
        if "error" in answer:
            raise AgentError(answer["error"])
        return answer["ok"]

    def close(self) -> None:
        if self.sock is not None:
            self.stream.close()
            self.sock.close()
            self.sock = None


def load_history(paths: list[Path]) -> list[dict[str, Any]]:
    """Every operation the workers recorded (a torn last line, if any, is skipped)."""
    ops = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                op = json.loads(line)
            except ValueError:
                continue
            op["ret"] = math.inf if op["ret"] is None else op["ret"]
            ops.append(op)
    return ops


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--config", required=True)
    w.add_argument("--client", required=True)
    w.add_argument("--id", type=int, required=True)
    w.add_argument("--keys", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--stop", required=True)
    w.add_argument("--timeout-s", type=float, default=3.0)
    w.add_argument("--eventual-only", action="store_true", help="eventual writes of its own keys")
    w.add_argument("--broker", help="talk to this broker only (default: to every one)")
    a = sub.add_parser("agent")
    a.add_argument("--config", required=True)
    a.add_argument("--client", required=True)
    a.add_argument("--socket", required=True)
    args = parser.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    (worker if args.what == "worker" else agent)(args)


if __name__ == "__main__":
    sys.exit(main())
