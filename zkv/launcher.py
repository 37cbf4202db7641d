"""Launcher: ``zkv up`` runs the whole cluster of one YAML file as child processes.

Each child is its own command line (``zkv broker --config FILE`` and
``zkv node --config FILE --name NAME``, run as ``python -m zkv ...``), so an operator sees
and signals each by name with ``ps``. The broker starts first; nodes follow once it serves.
Each child writes a ready file when it serves, and the launcher says where clients connect
once all have.

Supervision: a child that dies is restarted after a back-off that doubles with each quick
crash; a child that crashes ``launcher.max_crashes`` times within ``launcher.crash_window_s``
(config file) is given up on, with a clear message, and the others keep running. SIGINT or
SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period); SIGHUP is passed on to
every running child (each reads the file's keys, clients, tokens and shards again), then the
nodes the file gained are started and those it dropped stopped (``zkv apply`` does the
whole sequence, moving slots and roles away first). On Linux, children
also get SIGTERM if the launcher itself dies (``PR_SET_PDEATHSIG``), so nothing is left
orphaned.

Each child's stderr goes through a pipe: a thread per child process writes every line,
unchanged, to the child's log file ``<storage.dir>/logs/<name>.log`` (appended to; or to the
launcher's stderr with ``zkv up --foreground-logs``) and remembers the child's last error
line. The state of
every child (running, restarting, failed, with that error line) is recorded in
``<storage.dir>/launcher.json`` (see ``zkv.supervision``), which the broker reads for its
STATUS reply; the file is removed when the launcher stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from zkv.config import ClusterConfig, EtcdMember, load_config
from zkv.errors import ConfigError, ZkvError
from zkv.runtime import on_reload_signal, on_stop_signals, read_ready_file
from zkv.supervision import ProcessState, remove_launcher_state, write_launcher_state

__all__ = ["Child", "ErrorLine", "Launcher", "StderrTap"]

log = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 15.0
STOP_GRACE_S: Final = 5.0
#: How long to wait, once a child exited, for its last stderr lines to be read.
STDERR_DRAIN_S: Final = 1.0
#: An error line longer than this is cut (it goes into a JSON file and the STATUS reply).
MAX_ERROR_CHARS: Final = 1000

_PR_SET_PDEATHSIG: Final = 1
_stderr_lock = threading.Lock()


def _load_libc() -> Any:
    """libc, loaded in the launcher (never in a child between fork and exec), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC: Final = _load_libc()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Only a call into the already loaded libc: the launcher has threads, so the child
    # must not import, dlopen or take locks here.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ErrorLine:
    """Picks a process's last error line out of its stderr, fed one line at a time.

    The error line is the last line containing `` ERROR `` or `` CRITICAL `` (a log
    record), starting with ``zkv: `` (the command line's one-line failures), or ending a
    traceback (``ValueError: ...``); without any, the last non-blank line.
    """

    def __init__(self) -> None:
        self._error: str | None = None
        self._last: str | None = None
        self._in_traceback = False

    @property
    def line(self) -> str | None:
        """The error line so far, or None if nothing but blank lines was seen."""
        return self._error if self._error is not None else self._last

    def feed(self, line: str) -> None:
        """Take the next line of output (its line ending may be there or not)."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        text = line.strip()
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 1] + "\u2026"
        self._last = text
        if line.startswith("Traceback (most recent call last):"):
            self._in_traceback = True
        elif self._in_traceback:
            if not line[0].isspace():  # the exception after the indented frames
                self._in_traceback = False
                self._error = text
        elif " ERROR " in line or " CRITICAL " in line or line.startswith("zkv: "):
            self._error = text


def _forward(line: bytes) -> None:
    """Write ``line`` to our stderr unchanged; never raises (the pipe must keep draining)."""
    with _stderr_lock:
        try:
            out = getattr(sys.stderr, "buffer", None)
            if out is not None:
                out.write(line)
                out.flush()
            else:
                sys.stderr.write(line.decode(errors="replace"))
                sys.stderr.flush()
        except (OSError, ValueError):
            pass  # our stderr is closed or broken: keep reading, drop the line


class StderrTap:
    """A thread that drains one child process's stderr pipe until it closes.

    Every line is forwarded unchanged to the launcher's stderr (so ``zkv up`` shows what it
    always did) and fed to an ``ErrorLine``. The thread always reads, whatever happens to
    the forwarding, so the child can never block on a full pipe; it ends when the pipe
    closes (the child and anything that inherited the pipe exited).
    """

    def __init__(self, name: str, stream: IO[bytes], log_file: Path | None = None) -> None:
        self._stream = stream
        self._log_file = log_file
        self._errors = ErrorLine()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"zkv-up-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sink: IO[bytes] | None = None
        if self._log_file is not None:
            try:
                sink = open(self._log_file, "ab")  # noqa: SIM115 - closed below
            except OSError as exc:
                _forward(f"zkv up: cannot write {self._log_file}: {exc}\n".encode())
        try:
            for line in iter(self._stream.readline, b""):
                if sink is None:
                    _forward(line)
                else:
                    try:
                        sink.write(line)
                        sink.flush()
                    except OSError:
                        pass  # a full disk: keep draining the pipe
                with self._lock:
                    self._errors.feed(line.decode(errors="replace"))
        except (OSError, ValueError):
            pass  # the pipe went away
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.close()

    @property
    def error(self) -> str | None:
        """The child's last error line so far (see ``ErrorLine``)."""
        with self._lock:
            return self._errors.line

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the pipe to close; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    ready_file: Path
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    tap: StderrTap | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None
    restarts: int = 0
    given_up: bool = False
    #: For a process that writes no ready file (etcd): how to tell it serves.
    ready_check: Callable[[], bool] | None = None
    #: Whether SIGHUP is passed on to it (etcd would stop on one).
    reloads: bool = True

    def start(self) -> None:
        """Start (or restart) the process, its stderr through a pipe that ``tap`` drains."""
        self.ready_file.unlink(missing_ok=True)
        ready_args = [] if self.ready_check else ["--ready-file", str(self.ready_file)]
        self.process = subprocess.Popen(
            [*self.argv, *ready_args],
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self.process.stderr is not None
        self.tap = StderrTap(self.name, self.process.stderr, self.log_file)
        log.debug("started %s (pid %d)", self.name, self.process.pid)

    def last_error(self) -> str | None:
        """Once the process exited: its last error line (after reading what it left)."""
        if self.tap is None:
            return None
        self.tap.join(STDERR_DRAIN_S)
        return self.tap.error

    @property
    def pid(self) -> int | None:
        """The running process's pid, if any."""
        return self.process.pid if self.process is not None else None

    def ready(self) -> bool:
        """Whether it serves: its ready file is written, or its check says so."""
        if self.ready_check is not None:
            return self.ready_check()
        return read_ready_file(self.ready_file) is not None


class Launcher:
    """Starts, supervises and stops every process of one cluster config."""

    def __init__(
        self,
        config: ClusterConfig,
        config_path: Path,
        log_level: str = "INFO",
        foreground_logs: bool = False,
    ) -> None:
        self.config = config
        #: Where each child's stderr goes (None: the launcher's stderr).
        self.log_dir: Path | None = None if foreground_logs else config.storage.dir / "logs"
        self._stopping = False
        self._reload = False
        self._run_dir = Path(tempfile.mkdtemp(prefix="zkv-up-"))
        self._states: dict[str, ProcessState] = {}
        self._state_write_failed = False
        self.config_path = config_path
        # -P: the children import the installed zkv, whatever the working folder holds
        base = self._base = [sys.executable, "-P", "-m", "zkv"]
        common = self._common = ["--config", str(config_path), "--log-level", log_level]
        members = config.coordination.etcd.members if config.coordination else ()
        #: The etcd members ``zkv up`` runs (``coordination.etcd.members``), the brokers, the
        #: nodes and the HTTP gateway, started in that order.
        self.etcds = [_etcd_child(m, members, config, self._run_dir) for m in members]
        several = len(config.broker_list()) > 1 or bool(config.brokers)
        self.brokers = [
            Child(
                b.name,
                [*base, "broker", *common, *(["--name", b.name] if several else [])],
                self._run_dir / f"{b.name}.json",
            )
            for b in config.broker_list()
        ]
        self.http = Child("http", [*base, "http", *common], self._run_dir / "http.json")
        self.children = [*self.etcds, *self.brokers]
        for node in config.nodes():
            self.children.append(
                Child(
                    node.name,
                    [*base, "node", *common, "--name", node.name],
                    self._run_dir / f"{node.name}.json",
                )
            )
        self.children.append(self.http)
        if self.log_dir is not None:
            for child in self.children:
                child.log_file = self.log_dir / f"{child.name}.log"

    def stop(self) -> None:
        """Ask ``run`` to stop every child and return (safe from a signal handler)."""
        self._stopping = True

    def request_reload(self) -> None:
        """Ask ``run`` to pass SIGHUP on to every running child (safe from a signal
        handler): each reads the config file's keys, clients and tokens again."""
        self._reload = True

    def _forward_reload(self) -> None:
        """SIGHUP: pass it on to every running child (the broker first, so it knows the
        file's nodes before they start), then start the nodes the file gained and stop the
        ones it dropped, unless the broker's saved routing still needs them (a dropped
        shard that owns slots, a dropped node that is a primary): those keep running, and
        the log says how to move their slots or role away first."""
        self._reload = False
        for child in self.children:
            if child.reloads and child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGHUP)
                log.info("passed SIGHUP on to %s (pid %d)", child.name, child.process.pid)
        try:
            new = load_config(self.config_path)
        except ZkvError as exc:
            log.error("SIGHUP: cannot read %s: %s", self.config_path, exc)
            return
        wanted = {n.name for n in new.nodes()}
        running = {c.name for c in self.children} - {
            c.name for c in (*self.etcds, *self.brokers, self.http)
        }
        for node in new.nodes():
            if node.name not in running:
                child = Child(
                    node.name,
                    [*self._base, "node", *self._common, "--name", node.name],
                    self._run_dir / f"{node.name}.json",
                )
                if self.log_dir is not None:
                    child.log_file = self.log_dir / f"{node.name}.log"
                (new.storage.dir / node.name).mkdir(parents=True, exist_ok=True)
                self.children.insert(len(self.children) - 1, child)  # before http
                log.info("node %s joined %s: starting it", node.name, self.config_path)
                self._start(child)
        needed = _still_needed(self.config, new)
        for name in sorted(running - wanted):
            if name in needed:
                log.error("node %s left the file but %s; it keeps running", name, needed[name])
                continue
            child = next(c for c in self.children if c.name == name)
            log.info("node %s left %s: stopping it", name, self.config_path)
            self._stop_child(child)
            self.children.remove(child)
            self._states.pop(name, None)
            self._record_states()
        self.config = new

    def _stop_child(self, child: Child) -> None:
        if child.process is not None and child.process.poll() is None:
            self._terminate([child.process])

    def run(self) -> int:
        """Start the cluster, supervise it until asked to stop; the exit status."""
        on_stop_signals(self.stop)
        on_reload_signal(self.request_reload)
        for path in {self.config.storage.dir / c.name for c in self.children[:-1]}:
            path.mkdir(parents=True, exist_ok=True)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            first = len(self.etcds) + len(self.brokers)
            nodes = self.children[first:-1]
            groups = [self.etcds, self.brokers, nodes, [self.http]]
            if not all(self._start_all(group) for group in groups if group):
                return 1
            self._announce()
            while not self._stopping:
                if self._reload:
                    self._forward_reload()
                self._supervise(time.monotonic())
                time.sleep(0.1)
            return 0
        finally:
            self._stop_all()

    def _start(self, child: Child) -> None:
        child.start()
        self._record(child, "running", pid=child.pid)

    def _record(
        self,
        child: Child,
        state: str,
        *,
        pid: int | None = None,
        exit_status: int | None = None,
        error: str | None = None,
    ) -> None:
        """Note ``child``'s new state and rewrite ``launcher.json``."""
        self._states[child.name] = ProcessState(
            name=child.name,
            state=state,
            pid=pid,
            restarts=child.restarts,
            exit_status=exit_status,
            error=error,
            since=time.time(),
        )
        self._record_states()

    def _record_states(self) -> None:
        try:
            write_launcher_state(self.config.storage.dir, self._states)
        except OSError as exc:
            if not self._state_write_failed:  # say it once, not on every change
                log.warning("cannot record the launcher's state in %s: %s", exc.filename, exc)
            self._state_write_failed = True
        else:
            self._state_write_failed = False

    def _start_all(self, children: list[Child]) -> bool:
        for child in children:
            self._start(child)
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = list(children)
        while waiting and not self._stopping:
            for child in list(waiting):
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    error = child.last_error()
                    self._record(child, "failed", exit_status=code, error=error)
                    where = child.log_file or "its log above"
                    print(
                        f"zkv up: {child.name} exited with status {code} while starting; "
                        f"last error: {error or '(nothing on stderr)'} (see {where}); "
                        "stopping the cluster",
                        file=sys.stderr,
                    )
                    return False
                if child.ready():
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
        """One summary of what runs where, then the ready line."""
        config = self.config
        http = read_ready_file(self.http.ready_file) or {}
        http_url = f"http://{http.get('listen') or config.http.listen}/"
        nodes = {n.name: n for n in config.nodes()}
        lines = [
            f"zkv up: cluster {config.cluster!r}: {len(config.shards)} shards, "
            f"{len(nodes)} nodes, {len(self.children)} processes"
        ]
        width = max(len(c.name) for c in self.children)
        brokers = {b.name: b for b in config.broker_list()}
        members = {
            f"etcd-{m.name}": m
            for m in (config.coordination.etcd.members if config.coordination else ())
        }
        for child in self.children:
            if child.name in brokers:
                b = brokers[child.name]
                where = f"clients {b.clients}  nodes {b.nodes}"
            elif child.name in members:
                where = f"etcd client {members[child.name].client}  peer {members[child.name].peer}"
            elif child.name == "http":
                where = http_url
            else:
                node = nodes[child.name]
                where = f"shard {node.shard}  publish {node.publish}  sync {node.sync}"
            lines.append(f"  {child.name:<{width}}  pid {child.pid:<7}  {where}")
        if self.log_dir is not None:
            lines.append(f"  logs: {self.log_dir}/<name>.log")
        lines.append(
            f"zkv up: ready. Clients connect to {','.join(b.clients for b in brokers.values())}; "
            f"HTTP at {http_url}. "
            f"Ctrl-C stops it; kill -HUP {os.getpid()} reloads the file "
            "(keys, clients, tokens, shards)."
        )
        print("\n".join(lines), flush=True)

    def _supervise(self, now: float) -> None:
        limits = self.config.launcher
        for child in self.children:
            if child.given_up or child.process is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    self._start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            error = child.last_error()
            window = limits.crash_window_s
            child.crashes = [t for t in child.crashes if now - t < window] + [now]
            if len(child.crashes) >= limits.max_crashes:
                child.given_up = True
                self._record(child, "failed", exit_status=code, error=error)
                log.error(
                    "%s exited (status %s) %d times within %g s; giving up on it, "
                    "the rest of the cluster keeps running. Its last error: %s",
                    child.name,
                    code,
                    len(child.crashes),
                    window,
                    error or "(nothing on stderr)",
                )
                continue
            delay = min(
                limits.backoff_first_s * 2 ** (len(child.crashes) - 1), limits.backoff_max_s
            )
            child.restart_at = now + delay
            self._record(child, "restarting", exit_status=code, error=error)
            log.warning(
                "%s (pid %d) exited with status %s; restarting it in %.1f s",
                child.name,
                child.process.pid,
                code,
                delay,
            )

    @staticmethod
    def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM, then SIGKILL whatever is still running after ``STOP_GRACE_S``."""
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %g s; killing it", process.pid, STOP_GRACE_S)
                process.kill()
                process.wait()

    def _stop_all(self) -> None:
        """Stop every child: the brokers, nodes and gateway first, then etcd (the brokers
        still need it while they stop; its members stop together)."""
        etcds = {id(c) for c in self.etcds}
        others = [c for c in self.children if id(c) not in etcds]
        running: list[subprocess.Popen[bytes]] = []
        for group in (others, self.etcds):
            stopping = [
                c.process for c in group if c.process is not None and c.process.poll() is None
            ]
            self._terminate(stopping)
            running += stopping
        for child in self.children:
            if child.tap is not None:  # let the last lines of each child through first
                child.tap.join(STDERR_DRAIN_S)
            child.ready_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            remove_launcher_state(self.config.storage.dir)
        with contextlib.suppress(OSError):
            os.rmdir(self._run_dir)
        if running:
            print("zkv up: every process stopped", file=sys.stderr, flush=True)


def _still_needed(old: ClusterConfig, new: ClusterConfig) -> dict[str, str]:
    """Nodes of ``old`` that ``new`` dropped but the broker's saved routing still needs,
    each with why: their shard owns slots, or it is its shard's primary."""
    try:
        saved = json.loads((new.data_dir("broker") / "routing.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}
    needed: dict[str, str] = {}
    raw_slots = saved.get("slots")
    slots: dict[str, Any] = raw_slots if isinstance(raw_slots, dict) else {}
    for shard, nodes in old.shards.items():
        if shard not in new.shards and slots.get(shard):
            for node in nodes:
                needed[node.name] = (
                    f"its shard {shard} still owns slots (zkv reshard --from {shard})"
                )
    kept = {n.name for n in new.nodes()}
    raw_shards = saved.get("shards")
    shards: dict[str, Any] = raw_shards if isinstance(raw_shards, dict) else {}
    for shard, entry in shards.items():
        primary = entry.get("primary") if isinstance(entry, dict) else None
        if isinstance(primary, str) and shard in new.shards and primary not in kept:
            needed[primary] = f"it is the primary of shard {shard} (zkv failover {shard})"
    return needed


def _etcd_child(
    member: EtcdMember, members: tuple[EtcdMember, ...], config: ClusterConfig, run_dir: Path
) -> Child:
    """An etcd member of ``coordination.etcd.members``: Debian's ``etcd``, its data in
    ``<storage.dir>/etcd-<name>``, ready once its ``/health`` says so."""
    binary = shutil.which("etcd")
    if binary is None:
        raise ConfigError(
            f"{config.path or 'config'}: coordination.etcd.members asks zkv up to run etcd, and "
            "there is no etcd binary on PATH (apt-get install etcd-server)"
        )
    cluster = ",".join(f"{m.name}={m.peer}" for m in members)
    argv = [
        binary,
        f"--name={member.name}",
        f"--data-dir={config.storage.dir.resolve() / f'etcd-{member.name}'}",
        f"--listen-client-urls={member.client}",
        f"--advertise-client-urls={member.client}",
        f"--listen-peer-urls={member.peer}",
        f"--initial-advertise-peer-urls={member.peer}",
        f"--initial-cluster={cluster}",
        f"--initial-cluster-token=zkv-{config.cluster}",
        "--log-level=warn",
    ]

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(member.client + "/health", timeout=0.5) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    return Child(
        f"etcd-{member.name}",
        argv,
        run_dir / f"etcd-{member.name}.json",
        ready_check=healthy,
        reloads=False,
    )
