"""Launcher: ``zkv up`` runs the whole cluster of one YAML file as child processes.

Each child is its own command line (``zkv broker --config FILE`` and
``zkv node --config FILE --name NAME``, run as ``python -m zkv ...``), so an operator sees
and signals each by name with ``ps``. The broker starts first; nodes follow once it serves.
Each child writes a ready file when it serves, and the launcher says where clients connect
once all have.

Supervision: a child that dies is restarted after a back-off that doubles with each quick
crash; a child that crashes ``MAX_CRASHES`` times within ``CRASH_WINDOW_S`` is given up on,
with a clear message, and the others keep running. SIGINT or SIGTERM stops every child
(SIGTERM, then SIGKILL after a grace period). On Linux, children also get SIGTERM if the
launcher itself dies (``PR_SET_PDEATHSIG``), so nothing is left orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from zkv.config import ClusterConfig
from zkv.runtime import on_stop_signals, read_ready_file

__all__ = ["Child", "Launcher"]

log = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 15.0
STOP_GRACE_S: Final = 5.0
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 8.0
MAX_CRASHES: Final = 5
CRASH_WINDOW_S: Final = 60.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    ready_file: Path
    process: subprocess.Popen[bytes] | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None
    given_up: bool = False

    def start(self) -> None:
        """Start (or restart) the process."""
        self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [*self.argv, "--ready-file", str(self.ready_file)],
            preexec_fn=_die_with_parent,
        )
        log.info("started %s (pid %d)", self.name, self.process.pid)

    @property
    def pid(self) -> int | None:
        """The running process's pid, if any."""
        return self.process.pid if self.process is not None else None


class Launcher:
    """Starts, supervises and stops every process of one cluster config."""

    def __init__(self, config: ClusterConfig, config_path: Path, log_level: str = "INFO") -> None:
        self.config = config
        self._stopping = False
        self._run_dir = Path(tempfile.mkdtemp(prefix="zkv-up-"))
        base = [sys.executable, "-m", "zkv"]
        common = ["--config", str(config_path), "--log-level", log_level]
        self.children = [Child("broker", [*base, "broker", *common], self._run_dir / "broker.json")]
        self.http = Child("http", [*base, "http", *common], self._run_dir / "http.json")
        for node in config.nodes():
            self.children.append(
                Child(
                    node.name,
                    [*base, "node", *common, "--name", node.name],
                    self._run_dir / f"{node.name}.json",
                )
            )
        self.children.append(self.http)

    def stop(self) -> None:
        """Ask ``run`` to stop every child and return (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> int:
        """Start the cluster, supervise it until asked to stop; the exit status."""
        on_stop_signals(self.stop)
        for path in {self.config.storage.dir / c.name for c in self.children[:-1]}:
            path.mkdir(parents=True, exist_ok=True)
        try:
            broker, nodes = self.children[0], self.children[1:-1]
            if not all(self._start_all(group) for group in ([broker], nodes, [self.http])):
                return 1
            self._announce()
            while not self._stopping:
                self._supervise(time.monotonic())
                time.sleep(0.1)
            return 0
        finally:
            self._stop_all()

    def _start_all(self, children: list[Child]) -> bool:
        for child in children:
            child.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = list(children)
        while waiting and not self._stopping:
            for child in list(waiting):
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    print(
                        f"zkv up: {child.name} exited with status {code} while starting "
                        "(see its log above); stopping the cluster",
                        file=sys.stderr,
                    )
                    return False
                if read_ready_file(child.ready_file) is not None:
                    waiting.remove(child)
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in waiting)
                print(
                    f"zkv up: {names} not ready after {START_TIMEOUT_S:g} s; stopping",
                    file=sys.stderr,
                )
                return False
            time.sleep(0.05)
        return not self._stopping

    def _announce(self) -> None:
        nodes = len(self.children) - 2
        shards = len(self.config.shards)
        print(
            f"zkv up: cluster {self.config.cluster!r} is up: {shards} shards, {nodes} nodes. "
            f"Clients connect to {self.config.broker.clients}; HTTP at "
            f"http://{self.config.http.listen}/. Ctrl-C stops it.",
            flush=True,
        )

    def _supervise(self, now: float) -> None:
        for child in self.children:
            if child.given_up or child.process is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.start()
                continue
            code = child.process.poll()
            if code is None:
                continue
            child.crashes = [t for t in child.crashes if now - t < CRASH_WINDOW_S] + [now]
            if len(child.crashes) >= MAX_CRASHES:
                child.given_up = True
                log.error(
                    "%s exited (status %s) %d times within %g s; giving up on it, "
                    "the rest of the cluster keeps running",
                    child.name,
                    code,
                    len(child.crashes),
                    CRASH_WINDOW_S,
                )
                continue
            delay = min(BACKOFF_FIRST_S * 2 ** (len(child.crashes) - 1), BACKOFF_MAX_S)
            child.restart_at = now + delay
            log.warning(
                "%s (pid %d) exited with status %s; restarting it in %.1f s",
                child.name,
                child.process.pid,
                code,
                delay,
            )

    def _stop_all(self) -> None:
        running = [
            c.process for c in self.children if c.process is not None and c.process.poll() is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %g s; killing it", process.pid, STOP_GRACE_S)
                process.kill()
                process.wait()
        for child in self.children:
            child.ready_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.rmdir(self._run_dir)
        if running:
            print("zkv up: every process stopped", file=sys.stderr, flush=True)
