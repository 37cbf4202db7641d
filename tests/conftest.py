"""Real clusters for tests: broker and node processes on 127.0.0.1, in temporary folders.

Every process binds port 0 and writes its bound endpoints to a ready file, which the
fixture waits for (no port races, no sleeps). Teardown stops every process by PID
(SIGTERM, wait, SIGKILL), even when the test failed, and a cluster whose start-up fails
part-way stops what it had started before the error reaches the test.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import zkv
from zkv.config import load_config
from zkv.runtime import read_ready_file
from zkv.security import CurveKeys, generate_config_keys

START_TIMEOUT_S = 15.0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that was free a moment ago (for `zkv up`, which takes fixed ports), and
    never one this test process was given before: a config asking for the same port twice
    is refused, and the system may well give a port just released out again."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def ttl_left(ttl: float | None, seconds: float, since: float) -> bool:
    """Whether ``ttl`` can be what is left of a TTL of ``seconds`` set after ``since`` (a
    ``time.monotonic()`` reading): at most ``seconds``, and at least ``seconds`` less the
    time elapsed since ``since``, however long that was (no bound on the test's speed)."""
    if ttl is None:
        return False
    elapsed = time.monotonic() - since
    return seconds - elapsed - 0.05 <= ttl <= seconds


def cluster_doc(
    shards: dict[str, list[str]],
    data_dir: Path,
    *,
    broker_clients: str,
    broker_nodes: str,
    **overrides: Any,
) -> dict[str, Any]:
    """A cluster config as a dict; node endpoints on port 0 unless overridden."""
    doc: dict[str, Any] = {
        "cluster": "test",
        "slots": 16384,
        "broker": {"clients": broker_clients, "nodes": broker_nodes},
        "storage": {"dir": str(data_dir), "fsync": "no"},
        "limits": {"max_key_bytes": 256, "max_value_bytes": 64 * 1024},
        "defaults": {"consistency": "strong", "timeout_s": 5.0},
        "heartbeat": {"interval_s": 0.1, "liveness": 3},
        "http": {"listen": "127.0.0.1:0"},
        "shards": {
            shard: [
                {"name": n, "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"}
                for n in names
            ]
            for shard, names in shards.items()
        },
    }
    for key, value in overrides.items():
        doc[key] = value
    doc["storage"].setdefault("dir", str(data_dir))  # never the working directory's ./data
    return doc


class Proc:
    """One child process of a test cluster."""

    def __init__(self, name: str, argv: list[str], ready_file: Path, log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.ready_file = ready_file
        self.log_file = log_file
        self.popen: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        if self.popen is not None:
            assert self.popen.poll() is not None, f"{self.name} is still running"
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(
                [*self.argv, "--ready-file", str(self.ready_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = read_ready_file(self.ready_file)
            if info is not None:
                self.info = info
                return info
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}:\n"
                    f"{self.log_file.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} not ready after {timeout} s")

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            if sig == signal.SIGKILL:
                self.popen.wait(10)

    def stop(self) -> None:
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        if sys.platform != "win32":
            os.kill(popen.pid, signal.SIGCONT)  # in case a test paused it
        popen.terminate()
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


class Cluster:
    """A running broker and nodes, with helpers to reach, kill and restart them."""

    def __init__(
        self,
        tmp: Path,
        shards: dict[str, list[str]],
        *,
        lazy: tuple[str, ...] = (),
        **overrides: Any,
    ) -> None:
        self.tmp = tmp
        self.shards = shards
        self.clients: list[zkv.Client] = []
        #: With a ``security`` override: the keys of its first client, used by ``client()``
        #: and ``status()`` (the keys are created in ``security.keys`` before the start).
        self.curve: CurveKeys | None = None
        self.procs: dict[str, Proc] = {}
        try:
            self._start(tmp, shards, lazy, overrides)
        except BaseException:
            self.stop()  # whatever did start: a failed start-up leaks no process
            raise

    def _start(
        self,
        tmp: Path,
        shards: dict[str, list[str]],
        lazy: tuple[str, ...],
        overrides: dict[str, Any],
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        doc = cluster_doc(
            shards,
            tmp / "data",
            broker_clients="tcp://127.0.0.1:0",
            broker_nodes="tcp://127.0.0.1:0",
            **overrides,
        )
        self.broker_config = tmp / "broker.yaml"
        self.broker_config.write_text(yaml.safe_dump(doc))
        if "security" in doc:
            config = load_config(self.broker_config)
            generate_config_keys(config)
            self.curve = CurveKeys.for_client(config, next(iter(doc["security"]["clients"])))
        broker = self._proc("broker", ["broker", "--config", str(self.broker_config)])
        broker.start()
        endpoints = broker.wait_ready()
        self.endpoint: str = endpoints["clients"]
        self.nodes_endpoint: str = endpoints["nodes"]
        doc["broker"] = {"clients": self.endpoint, "nodes": self.nodes_endpoint}
        self.doc = doc
        self.config = tmp / "cluster.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        # a restarted broker binds the same endpoints again
        broker.argv[broker.argv.index(str(self.broker_config))] = str(self.config)
        names = [n for ns in shards.values() for n in ns]
        for name in names:
            proc = self._proc(name, ["node", "--config", str(self.config), "--name", name])
            if name not in lazy:  # lazy nodes are started by the test: c.start(name)
                proc.start()
        started = [n for n in names if n not in lazy]
        for name in started:
            self.procs[name].wait_ready()
        self.wait_alive(started)

    def start(self, name: str) -> None:
        """Start a node (a lazy one, or one that was stopped) and wait until it is alive."""
        self.procs[name].start()
        self.procs[name].wait_ready()
        self.wait_alive([name])

    def node(self, name: str) -> dict[str, Any]:
        """One node's entry in the broker's status."""
        return self.status()[name]

    def wait_for(self, predicate: Any, what: str, timeout: float = 20.0) -> None:
        """Poll ``predicate()`` until it is true; fail with ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except zkv.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")
            time.sleep(0.05)

    def _proc(self, name: str, args: list[str]) -> Proc:
        proc = Proc(
            name,
            [sys.executable, "-m", "zkv", *args],
            self.tmp / f"{name}.ready.json",
            self.tmp / f"{name}.log",
        )
        self.procs[name] = proc
        return proc

    def client(self, **kwargs: Any) -> zkv.Client:
        kwargs.setdefault("timeout_s", 5.0)
        if self.curve is not None:
            kwargs.setdefault("curve", self.curve)
        kv = zkv.Client(self.endpoint, **kwargs)
        self.clients.append(kv)
        return kv

    def status(self) -> dict[str, dict[str, Any]]:
        curve = {} if self.curve is None else {"curve": self.curve}
        with zkv.Client(self.endpoint, timeout_s=2.0, **curve) as kv:
            return {n["name"]: n for n in kv.cluster_status()["nodes"]}

    def wait_alive(self, names: list[str], alive: bool = True, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                nodes = self.status()
                if all(nodes[n]["alive"] is alive for n in names):
                    return
            except zkv.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {names} not alive={alive} after {timeout} s")
            time.sleep(0.05)

    def restart(self, name: str) -> None:
        proc = self.procs[name]
        proc.stop()
        proc.start()
        proc.wait_ready()
        if name != "broker":
            self.wait_alive([name])

    def stop(self) -> None:
        """Stop every process started, by PID; one that resists does not spare the others."""
        errors: list[BaseException] = []
        for kv in self.clients:
            try:
                kv.close()
            except Exception as exc:
                errors.append(exc)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.log_file.read_text(errors='replace')[-2000:]}"
            for p in self.procs.values()
            if p.log_file.exists()
        )


@pytest.fixture
def tmpfs() -> Iterator[Any]:
    """Mount small tmpfs volumes: ``tmpfs(path, "2m")``; unmounted at teardown.

    Skips the test with the reason where mounting is impossible (it needs root; CI runs as
    root). Request it before ``cluster_factory`` so that the cluster stops first.
    """
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (CI runs as root)")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def grow_tmpfs(path: Path, size: str) -> None:
    """Resize a tmpfs mounted by the ``tmpfs`` fixture."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, timeout=30)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Any]:
    """Start clusters on demand; every one is stopped at teardown."""
    clusters: list[Cluster] = []
    counter = itertools.count()

    def make(shards: dict[str, list[str]] | None = None, **overrides: Any) -> Cluster:
        shards = shards or {"s0": ["s0a"], "s1": ["s1a"], "s2": ["s2a"]}
        cluster = Cluster(tmp_path / f"cluster{next(counter)}", shards, **overrides)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for cluster in clusters:  # every one, even if stopping another failed
            try:
                cluster.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-shard cluster shared by a test module; tests namespace their keys with `ns`."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), {"s0": ["s0a"], "s1": ["s1a"], "s2": ["s2a"]})
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def kv(cluster: Cluster) -> Iterator[zkv.Client]:
    """A client of the module's cluster."""
    with zkv.Client(cluster.endpoint, timeout_s=5.0) as client:
        yield client


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to this test."""
    return f"{request.node.name}:"
