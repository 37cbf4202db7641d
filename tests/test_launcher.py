"""`zkv up`: starts the cluster of a config file, supervises it, and stops it cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cluster_doc, free_port

import zkv
import zkv.cli
from zkv.cli import main as zkv_main
from zkv.http.metrics import GatewayMetrics
from zkv.launcher import ErrorLine, StderrTap
from zkv.slots import SlotMap
from zkv.supervision import (
    LAUNCHER_FILE,
    ProcessState,
    read_launcher_state,
    write_launcher_state,
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def zkv_process(pid: int) -> bool:
    """Whether ``pid`` is alive and still a zkv process (not a number since reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: trust the number
        return pid_alive(pid)
    return b"zkv" in cmdline


class Up:
    """A `zkv up` process and the config it runs."""

    def __init__(
        self, tmp: Path, shadow: bool = False, args: tuple[str, ...] = (), **overrides: Any
    ) -> None:
        self.tmp = tmp
        self.clients = f"tcp://127.0.0.1:{free_port()}"
        doc = cluster_doc(
            {"s0": ["s0a"], "s1": ["s1a"]},
            Path("data"),
            broker_clients=self.clients,
            broker_nodes=f"tcp://127.0.0.1:{free_port()}",
            **overrides,
        )
        self.ports = {}
        for nodes in doc["shards"].values():
            for node in nodes:
                for field in ("publish", "sync"):
                    port = free_port()
                    node[field] = f"tcp://127.0.0.1:{port}"
                    self.ports[(node["name"], field)] = port
        (tmp / "config").mkdir()
        (tmp / "config" / "local.yaml").write_text(yaml.safe_dump(doc))
        self.log = tmp / "up.log"
        argv = [sys.executable, "-m", "zkv", "up", *args]
        if shadow:  # a folder named zkv where `zkv up` runs must not be imported as zkv
            (tmp / "zkv").mkdir()
            (tmp / "zkv" / "__init__.py").write_text("raise ImportError('the bogus zkv')\n")
            argv.insert(1, "-P")  # as the `zkv` script runs: the cwd is not on sys.path
        with open(self.log, "wb") as log:
            # no --config: `zkv up` reads config/local.yaml from its working directory
            self.proc = subprocess.Popen(
                argv, cwd=tmp, stdout=log, stderr=subprocess.STDOUT
            )  # the last step: nothing after it can fail and leave the launcher running

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, dict[str, Any]]:
        with zkv.Client(self.clients, timeout_s=2.0) as kv:
            return {n["name"]: n for n in kv.cluster_status()["nodes"]}

    def children(self) -> set[int]:
        """The PIDs of the launcher's children, from its state file (read as it is: a
        launcher that died left it behind) and from the broker."""
        pids: set[Any] = set()
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            raw = json.loads((self.tmp / "data" / LAUNCHER_FILE).read_text())
            pids |= {p.get("pid") for p in raw["processes"].values()}
        if self.proc.poll() is None:  # else its broker is gone too: no need to wait for that
            with contextlib.suppress(zkv.ZkvError):
                pids |= {n["pid"] for n in self.status().values()}
        return {pid for pid in pids if type(pid) is int and pid > 0}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def up(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Up]:
    """`zkv up` in ``tmp_path``; indirect parametrization adds top-level config sections."""
    launcher = Up(tmp_path, **getattr(request, "param", {}))
    try:
        yield launcher
    finally:
        pids = launcher.children()
        launcher.stop()
        for pid in pids:  # never leave a child behind, even when the test failed
            if zkv_process(pid):
                os.kill(pid, signal.SIGKILL)


def test_up_children_ignore_a_zkv_folder_in_the_working_directory(tmp_path: Path) -> None:
    launcher = Up(tmp_path, shadow=True, args=("--foreground-logs",))
    try:
        launcher.wait_for("zkv up: ready", timeout=30)
        assert "bogus" not in launcher.output()
        assert " broker INFO " in launcher.output()  # --foreground-logs: on the terminal
        assert not (tmp_path / "data" / "logs").exists()
        with zkv.Client(launcher.clients, timeout_s=5.0) as kv:
            kv.put("shadow", 1)
            assert kv.get("shadow") == 1
    finally:
        pids = launcher.children()
        launcher.stop()
        for pid in pids:
            if zkv_process(pid):
                os.kill(pid, signal.SIGKILL)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_up_serves_and_stops_every_child(up: Up) -> None:
    up.wait_for("zkv up: ready. Clients connect to " + up.clients)
    summary = up.output()
    assert "zkv up: cluster 'test': 2 shards, 2 nodes, 4 processes" in summary, summary
    assert f"clients {up.clients}" in summary and "http://127.0.0.1:" in summary
    assert "shard s0  publish tcp://127.0.0.1:" in summary
    assert f"logs: {Path('data') / 'logs'}/<name>.log" in summary
    with zkv.Client(up.clients) as kv:
        kv.mput({f"k{i}": i for i in range(100)})
        assert len(kv) == 100
        status = kv.cluster_status()
    pids = [status["broker"]["pid"], *(n["pid"] for n in status["nodes"])]
    assert all(pid_alive(p) for p in pids)
    assert (up.tmp / "data" / "s0a").is_dir()
    states = read_launcher_state(up.tmp / "data")
    assert {n: (st.state, st.pid, st.restarts) for n, st in states.items()} == {
        "broker": ("running", status["broker"]["pid"], 0),
        "s0a": ("running", pids[1], 0),
        "s1a": ("running", pids[2], 0),
        "http": ("running", states["http"].pid, 0),
    }
    # each child's stderr goes to its own log file, not to the terminal
    assert " broker INFO " not in up.output()
    assert " broker INFO " in (up.tmp / "data" / "logs" / "broker.log").read_text()
    assert " s1a INFO " in (up.tmp / "data" / "logs" / "s1a.log").read_text()
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(15) == 0
    assert not [p for p in pids if pid_alive(p)], "children left behind"
    assert "every process stopped" in up.output()
    assert not (up.tmp / "data" / LAUNCHER_FILE).exists()  # removed on a clean stop


def test_up_restarts_a_killed_node(up: Up) -> None:
    up.wait_for("Clients connect to")
    old = up.status()["s0a"]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(
        lambda: (n := up.status()["s0a"])["alive"] and n["pid"] != old, 15, "s0a to come back"
    )
    assert f"s0a (pid {old}) exited" in up.output()
    with zkv.Client(up.clients) as kv:
        kv.mput({f"k{i}": i for i in range(50)})  # keys on both shards
        assert kv.mget([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}


@pytest.mark.fault
@pytest.mark.parametrize(
    "up",
    [{"launcher": {"max_crashes": 3, "backoff_first_s": 0.1, "backoff_max_s": 0.2}}],
    indirect=True,
)
def test_up_gives_up_on_a_child_that_keeps_crashing(
    up: Up, capsys: pytest.CaptureFixture[str]
) -> None:
    up.wait_for("Clients connect to")
    pid = up.status()["s1a"]["pid"]
    # a file where s1a's data folder was: every restart fails, before the first one starts
    data = up.tmp / "data"
    (data / "s1a").rename(data / "s1a.aside")
    (data / "s1a").write_text("not a folder")
    os.kill(pid, signal.SIGKILL)
    up.wait_for("giving up on it", timeout=30)
    assert up.proc.poll() is None  # the launcher and the rest keep running

    # the launcher's record: s1a failed, with the line it died on
    raw = json.loads((up.tmp / "data" / LAUNCHER_FILE).read_text())
    assert raw["pid"] == up.proc.pid
    states = read_launcher_state(up.tmp / "data")
    failed = states["s1a"]
    assert failed.state == "failed" and failed.pid is None, failed
    assert failed.restarts == 2 and failed.exit_status == 1, failed
    assert failed.error is not None and "File exists" in failed.error, failed
    assert failed.error.startswith("zkv: node s1a stopped: storage error"), failed
    assert {states[n].state for n in ("broker", "s0a", "http")} == {"running"}

    # the broker's STATUS reads the launcher's record (once it has marked s1a down)
    wait_until(lambda: up.status()["s1a"].get("state") == "failed", 15, "s1a shown failed")
    status = up.status()
    assert "File exists" in (status["s1a"].get("error") or ""), status["s1a"]
    capsys.readouterr()
    assert zkv_main(["status", "--connect", up.clients]) == 0
    shown = capsys.readouterr().out
    assert f"s1a: FAILED, no longer restarted; last error: {failed.error}" in shown, shown

    assert status["s0a"]["alive"]
    slot_map = SlotMap.even(["s0", "s1"], 16384)
    on_s0 = next(k for k in (f"k{i}" for i in range(100)) if slot_map.shard_of(k.encode()) == "s0")
    with zkv.Client(up.clients) as kv:
        kv.put(on_s0, 1)
        assert kv.get(on_s0) == 1
    assert "storage error" in up.output()


# --------------------------------------------------------------------------- unit


def test_error_line_picks_the_last_error() -> None:
    def last(*lines: str) -> str | None:
        errors = ErrorLine()
        for line in lines:
            errors.feed(line + "\n")
        return errors.line

    assert last() is None
    assert last("", "   ") is None
    assert last("starting", "serving") == "serving"  # no error: the last line
    log_error = "2024-01-01 12:00:00,000 s1a ERROR zkv.node: disk full"
    assert last("a", log_error, "b") == log_error
    assert last("x 12:00 s1a CRITICAL zkv: boom", "bye") == "x 12:00 s1a CRITICAL zkv: boom"
    assert last(log_error, "zkv: node s1a cannot start: Address already in use", "") == (
        "zkv: node s1a cannot start: Address already in use"
    )
    traceback = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "    raise ValueError('bad')",
        "ValueError: bad",
    ]
    assert last(log_error, *traceback, "more output") == "ValueError: bad"
    assert last(*traceback, "", "During handling ...", "", *traceback[:3], "OSError: x") == (
        "OSError: x"
    )
    assert last("ERROR alone is not a log record") == "ERROR alone is not a log record"
    long = last("zkv: " + "x" * 5000)
    assert long is not None and len(long) == 1000 and long.endswith("\u2026")


def test_stderr_tap_drains_forwards_and_ends(capfd: pytest.CaptureFixture[str]) -> None:
    # far more than a pipe holds: the child must never block on it
    script = (
        "import sys\n"
        "for i in range(4000): sys.stderr.write(f'line {i} ' + 'x' * 60 + '\\n')\n"
        "sys.stderr.write('zkv: node n1 cannot start: nope\\n')\n"
        "sys.stderr.write('done, no newline')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        assert child.stderr is not None
        tap = StderrTap("n1", child.stderr)
        assert child.wait(30) == 0
        assert tap.join(30), "the reader thread did not end when the pipe closed"
    finally:
        if child.poll() is None:  # a failed check leaves no child behind
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
    assert tap.error == "zkv: node n1 cannot start: nope"
    err = capfd.readouterr().err
    assert err.count("\n") == 4001 and "line 3999 " in err
    assert err.endswith("zkv: node n1 cannot start: nope\ndone, no newline")


def test_read_launcher_state(tmp_path: Path) -> None:
    running = ProcessState("s0a", "running", 1234, 0, None, None, 1.5)
    failed = ProcessState("s1a", "failed", None, 2, 1, "zkv: node s1a cannot start: x", 2.0)
    assert read_launcher_state(tmp_path) == {}  # no file
    write_launcher_state(tmp_path, {"s0a": running, "s1a": failed})
    assert read_launcher_state(tmp_path) == {"s0a": running, "s1a": failed}
    path = tmp_path / LAUNCHER_FILE
    assert json.loads(path.read_text())["processes"]["s1a"] == {
        "state": "failed",
        "pid": None,
        "restarts": 2,
        "exit_status": 1,
        "error": "zkv: node s1a cannot start: x",
        "since": 2.0,
    }
    assert [p.name for p in tmp_path.iterdir()] == [LAUNCHER_FILE]  # no temporary left

    # a launcher that is gone: its file is stale
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    write_launcher_state(tmp_path, {"s1a": failed}, pid=dead.pid)
    assert read_launcher_state(tmp_path) == {}
    for pid in (0, -1, True, "1"):
        path.write_text(json.dumps({"pid": pid, "processes": {}}))
        assert read_launcher_state(tmp_path) == {}, pid

    # malformed: never raises
    for text in ("", "{", "[]", "null", '{"pid": 1}', '{"processes": {}}', "\xff"):
        path.write_text(text.replace('"pid": 1', f'"pid": {os.getpid()}'))
        assert read_launcher_state(tmp_path) == {}, text
    path.write_bytes(b"\xff\xfe")
    assert read_launcher_state(tmp_path) == {}
    good = failed.to_json()
    path.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "processes": {
                    "s1a": good,
                    "bad-state": {**good, "state": "sleeping"},
                    "bad-pid": {**good, "pid": "12"},
                    "no-since": {k: v for k, v in good.items() if k != "since"},
                    "not-a-dict": 3,
                    "extra": {**good, "future_field": 1},
                },
            }
        )
    )
    assert set(read_launcher_state(tmp_path)) == {"s1a", "extra"}
    path.unlink()
    path.mkdir()  # unreadable as a file
    assert read_launcher_state(tmp_path) == {}


def test_metrics_show_a_failed_node() -> None:
    metrics = GatewayMetrics()
    nodes = [
        {"name": "s0a", "shard": "s0", "alive": True, "state": "serving"},
        {"name": "s1a", "shard": "s1", "alive": False, "state": "failed", "error": "zkv: x"},
    ]
    body, _ = metrics.render({"nodes": nodes, "shards": {}, "broker": {}})
    text = body.decode()
    assert 'zkv_node_failed{node="s0a",shard="s0"} 0.0' in text
    assert 'zkv_node_failed{node="s1a",shard="s1"} 1.0' in text


def test_zkv_status_shows_the_error_of_a_failed_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node = {"shard": "s0", "role": "primary", "alive": True, "pid": 7, "state": "serving"}
    status = {
        "cluster": "test",
        "slots": 16384,
        "broker": {"pid": 1, "clients": "tcp://127.0.0.1:7400"},
        "nodes": [
            {**node, "name": "s0a"},
            {
                **node,
                "name": "s1a",
                "alive": False,
                "pid": None,
                "state": "failed",
                "error": "zkv: node s1a cannot start: Address already in use",
            },
            {**node, "name": "s2a", "alive": False, "state": "failed"},  # no error known
        ],
    }

    class FakeClient:
        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def cluster_status(self) -> dict[str, Any]:
            return status

    monkeypatch.setattr(zkv.cli, "_client", lambda args: FakeClient())
    assert zkv_main(["status", "--connect", "tcp://127.0.0.1:1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "failed" in next(line for line in lines if line.startswith("s1a "))
    assert lines[-2:] == [
        "s1a: FAILED, no longer restarted; last error: "
        "zkv: node s1a cannot start: Address already in use",
        "s2a: FAILED, no longer restarted; last error: (none recorded)",
    ]
    assert not any(line.startswith("s0a:") for line in lines)
