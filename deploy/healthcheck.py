#!/usr/bin/env python3
"""zkv-healthcheck: the container image's HEALTHCHECK, one verdict per role.

The image runs one zkv server process per container (``zkv broker|node|http ...``); this
finds it in ``/proc`` (PID 1, or a child of an init such as ``docker run --init``), reads
the same config file and asks what that process's health really means:

- **broker NAME**: ``zkv status --connect`` at *this* broker's client endpoint answers
  (exit 0). ``zkv status --config`` would be answered by any broker of the list, so a dead
  broker would look healthy beside two live ones.
- **node NAME**: the brokers see this node alive (``zkv status --json --config``, the
  node's ``alive``). A node process that runs but cannot reach any broker, or that the
  brokers declared dead, serves nobody: it is unhealthy.
- **http**: the gateway answers HTTP at ``http.listen`` (any answer below 500, a 401 of a
  gateway that asks for tokens included).

With a ``security`` section ``zkv status`` proves the client key of ``$ZKV_KEY`` (the image
sets ``/etc/zkv/keys/health.key_secret``: a ``read`` client limited to ``health:`` keys,
which may ask for the status and nothing else of use). Exit status 0: healthy, 1:
unhealthy, as Docker expects; one line on stdout says why (``docker inspect`` keeps it).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The zkv commands that run a server process.
SERVER_COMMANDS = ("broker", "node", "http")
HEALTHY, UNHEALTHY = 0, 1


def server_argv(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``zkv`` (``["node", "--name", "s0a", ...]``) if ``argv`` is a zkv
    server process (``zkv node ...``, ``python -m zkv node ...``), else None."""
    for i, arg in enumerate(argv):
        if Path(arg).name == "zkv" or (arg == "zkv" and i > 0 and argv[i - 1] == "-m"):
            rest = list(argv[i + 1 :])
            if rest and rest[0] in SERVER_COMMANDS:
                return rest
    return None


def find_server(proc: Path = Path("/proc")) -> list[str] | None:
    """The server arguments of the first zkv server process in ``proc``, lowest PID first."""
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found = server_argv([a.decode(errors="replace") for a in raw.split(b"\0") if a])
        if found is not None:
            return found
    return None


def option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``, else None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.partition("=")[2]
    return None


def node_verdict(status: dict[str, Any], name: str) -> tuple[bool, str]:
    """Whether ``zkv status --json`` shows node ``name`` alive, and why (one line)."""
    for node in status.get("nodes", []):
        if node.get("name") == name:
            if node.get("alive"):
                return True, f"node {name}: alive, {node.get('role')}, seq {node.get('seq')}"
            return False, f"node {name}: the brokers see it down (state {node.get('state')})"
    return False, f"node {name}: not in the cluster's status (is --name in the config file?)"


def zkv_status(target: list[str], timeout_s: float) -> tuple[int, str, str]:
    """Run ``zkv status --json`` with ``target`` (``--connect EP`` or ``--config FILE``)."""
    command = [sys.executable, "-m", "zkv", "status", "--json", *target]
    command += ["--timeout", f"{timeout_s:g}"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s + 5, check=False
        )
    except subprocess.TimeoutExpired:
        return 3, "", f"zkv status gave no answer within {timeout_s + 5:g} s"
    return done.returncode, done.stdout, done.stderr.strip()


def check(args: Sequence[str], timeout_s: float = 2.0) -> tuple[bool, str]:
    """The verdict on the zkv server process started with ``args`` (after ``zkv``)."""
    from zkv.cli import config_path
    from zkv.config import load_config

    command = args[0]
    path = config_path(option(args, "--config"))
    config = load_config(path)
    name = option(args, "--name")
    if command == "http":
        return _http_verdict(config.http.host, config.http.port, config.http.tls is not None)
    if command == "broker":
        brokers = config.broker_list()
        broker = next((b for b in brokers if b.name == name), brokers[0])
        code, _out, err = zkv_status(["--connect", broker.clients], timeout_s)
        if code != 0:
            return False, f"broker {broker.name}: zkv status exit {code}: {err}"
        return True, f"broker {broker.name}: answers at {broker.clients}"
    if name is None:
        return False, "node without --name"
    code, out, err = zkv_status(["--config", str(path)], timeout_s)
    if code != 0:
        return False, f"node {name}: zkv status exit {code}: {err}"
    return node_verdict(json.loads(out), name)


def _http_verdict(host: str, port: int, tls: bool) -> tuple[bool, str]:
    scheme = "https" if tls else "http"
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/openapi.json"
    context = None
    if tls:  # whether it serves is the question here, not whom its certificate names
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2.0, context=context) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return False, f"http gateway: no answer at {url}: {exc}"
    return status < 500, f"http gateway: HTTP {status} at {url}"


def main() -> int:
    """Find the container's zkv server process and print the verdict on it."""
    args = find_server()
    if args is None:
        print("no zkv broker, node or http process runs in this container")
        return UNHEALTHY
    try:
        ok, reason = check(args, float(os.environ.get("ZKV_HEALTH_TIMEOUT", "2")))
    except Exception as exc:  # a bad config or key file: unhealthy, said in one line
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    print(reason)
    return HEALTHY if ok else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
