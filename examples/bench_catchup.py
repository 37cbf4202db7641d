"""Catch-up benchmark: how long, and how many bytes, for a replica to get back in step after
it was down for a few seconds under load?

Starts a broker and one shard of two nodes (``zkv broker`` / ``zkv node`` processes, on free
127.0.0.1 ports in a temporary folder), preloads ``--keys`` keys, then, while a client
writes in a loop, kills the replica with SIGKILL, waits ``--outage`` seconds and starts it
again. It prints:

- the writes the replica missed;
- the time from the restart to the replica being back in sync (following, and in the
  primary's in-sync set, as the broker's status shows it; process start and recovery of its
  folder included), and the time from the replica's "following primary" log line to the
  end of its resync (its own log's timestamps);
- the bytes the primary sent on its sync socket to the restarted replica (snapshot or
  catch-up), read from the kernel's TCP counters (``ss -ti``: ``bytes_sent`` of the
  connections on the sync port), so the figure means the same for any version of zkv;
- the primary's own ``resync_full`` / ``resync_partial`` / ``resync_bytes`` counters where
  the version reports them.

``--source DIR`` runs the cluster from another checkout (e.g. a worktree of ``main``, to
compare before and after): its processes get ``PYTHONPATH=DIR``.

    python examples/bench_catchup.py [--keys 100000] [--outage 5] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

import zkv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One ``python -m zkv`` child process, stopped by PID."""

    def __init__(self, name: str, args: list[str], folder: Path, env: dict[str, str]) -> None:
        self.name, self.args, self.folder, self.env = name, args, folder, env
        self.log = folder / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready = self.folder / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "zkv", *self.args, "--ready-file", str(ready)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.folder,  # not ours: `-m` puts the working folder first on the path
            )
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text().strip()):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        popen.terminate()
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)


def config(folder: Path) -> tuple[Path, str, int]:
    clients = f"tcp://127.0.0.1:{free_port()}"
    sync_port = free_port()
    doc: dict[str, Any] = {
        "cluster": "bench-catchup",
        "slots": 16384,
        "broker": {"clients": clients, "nodes": f"tcp://127.0.0.1:{free_port()}"},
        "storage": {"dir": str(folder / "data"), "fsync": "everysec"},
        "defaults": {"consistency": "eventual", "timeout_s": 10.0},
        "heartbeat": {"interval_s": 0.1, "liveness": 5},
        "shards": {
            "s0": [
                {
                    "name": "s0a",
                    "publish": f"tcp://127.0.0.1:{free_port()}",
                    "sync": f"tcp://127.0.0.1:{sync_port}",
                },
                {
                    "name": "s0b",
                    "publish": f"tcp://127.0.0.1:{free_port()}",
                    "sync": f"tcp://127.0.0.1:{free_port()}",
                },
            ]
        },
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, clients, sync_port


def nodes(kv: zkv.Client) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in kv.cluster_status()["nodes"]}


def wait(what: str, predicate: Any, timeout: float = 120.0) -> float:
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except zkv.ZkvError:
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def sync_bytes_sent(port: int) -> int:
    """Bytes sent on the established TCP connections from ``port`` (kernel counters)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(m) for m in re.findall(r"bytes_sent:(\d+)", out))


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_DONE = re.compile(r"synced \d+ keys|caught up \d+ records|in step with the primary")


def resync_seconds(log: str) -> tuple[float, str] | None:
    """From the last start's "following primary" line to the end of its resync."""
    start = log.rfind(" recovered ")
    begin = end = None
    for line in log[start:].splitlines():
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if begin is None and "following primary" in line:
            begin = when
        elif begin is not None and _DONE.search(line):
            end = when
            return (end - begin).total_seconds(), line.split(": ", 1)[-1]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--outage", type=float, default=5.0)
    parser.add_argument("--source", type=Path, help="run the cluster from this checkout")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.source is not None:
        env["PYTHONPATH"] = str(args.source.resolve())
    with tempfile.TemporaryDirectory(prefix="zkv-bench-catchup-") as tmp:
        folder = Path(tmp)
        path, clients, sync_port = config(folder)
        procs = {
            "broker": Proc("broker", ["broker", "--config", str(path)], folder, env),
            "s0a": Proc("s0a", ["node", "--config", str(path), "--name", "s0a"], folder, env),
            "s0b": Proc("s0b", ["node", "--config", str(path), "--name", "s0b"], folder, env),
        }
        try:
            run(args, procs, clients, sync_port)
        finally:
            for proc in reversed(procs.values()):
                proc.stop()


def run(args: argparse.Namespace, procs: dict[str, Proc], clients: str, sync_port: int) -> None:
    procs["broker"].start()
    procs["s0a"].start()
    kv = zkv.Client(clients, timeout_s=20.0)
    wait("a primary", lambda: nodes(kv)["s0a"]["role"] == "primary")
    procs["s0b"].start()
    value = "x" * args.value_bytes
    started = time.monotonic()
    for first in range(0, args.keys, 2000):
        kv.mput({f"pre:{i}": value for i in range(first, min(first + 2000, args.keys))})
    print(
        f"preloaded {args.keys} keys of {args.value_bytes} bytes in "
        f"{time.monotonic() - started:.1f} s"
    )

    def in_step() -> bool:
        n = nodes(kv)
        return bool(n["s0b"]["state"] == "following" and n["s0b"]["seq"] == n["s0a"]["seq"])

    def back_in_sync(pid: int) -> bool:
        """The restarted replica follows and is in the primary's in-sync set (it has
        acknowledged everything the primary had): under load the two sequence numbers the
        broker shows are rarely equal at one instant."""
        b = nodes(kv)["s0b"]
        return bool(b["pid"] == pid and b["state"] == "following" and b["in_sync"])

    wait("the replica to follow", in_step)
    before = nodes(kv)["s0a"]
    writes = [0]
    stop = threading.Event()

    def load() -> None:
        writer = zkv.Client(clients, timeout_s=20.0)
        i = 0
        while not stop.is_set():
            writer.put(f"live:{i % 50_000}", i, consistency="eventual")
            i += 1
            writes[0] = i
        writer.close()

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        procs["s0b"].kill()
        seq_down = nodes(kv)["s0a"]["seq"]
        w0 = writes[0]
        time.sleep(args.outage)
        w1 = writes[0]
        restarted = time.monotonic()
        procs["s0b"].start()
        assert procs["s0b"].popen is not None
        pid = procs["s0b"].popen.pid
        wait("the replica to be back in sync", lambda: back_in_sync(pid))
        back = time.monotonic() - restarted  # its start and recovery included
        sent = sync_bytes_sent(sync_port)
    finally:
        stop.set()
        thread.join(30)
    wait("the replica to be in step", in_step)
    after = nodes(kv)["s0a"]
    kv.close()
    log = procs["s0b"].log.read_text()
    resync = resync_seconds(log)
    print(
        f"replica down {args.outage:g} s under load: {w1 - w0} writes missed "
        f"(primary at seq {seq_down} when it went down, {after['seq']} at the end)"
    )
    print(f"back in sync {back:.2f} s after the restart (its start and recovery included)")
    if resync is not None:
        print(f"resync itself (replica's log): {resync[0]:.3f} s, ending with: {resync[1]}")
    print(f"bytes the primary sent on its sync socket to the restarted replica: {sent:,}")
    counters = {
        k: (after.get(k) or 0) - (before.get(k) or 0)
        for k in ("resync_full", "resync_partial", "resync_bytes")
        if after.get(k) is not None
    }
    print("primary counters:", json.dumps(counters) if counters else "not reported")


if __name__ == "__main__":
    main()
