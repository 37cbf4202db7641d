"""zkv.coordination: the pure lease timing and document checks, then a real etcd.

The etcd tests start Debian's ``etcd`` (``apt-get install etcd-server``) once for the module
on free loopback ports with a temporary data folder, and stop it by PID. Times are printed
(``pytest -s``) and asserted only with generous bounds.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from zkv.coordination import (
    ControllerLease,
    EtcdDriver,
    EtcdState,
    LeaseTimer,
    decode_routing,
    encode_routing,
)
from zkv.errors import CoordinationError, ZkvError

ETCD = shutil.which("etcd")
TTL_S = 2.0  # etcd's minimum lease TTL with its default election timeout
TIMEOUT_S = 0.5

DOC: dict[str, Any] = {
    "version": 3,
    "slots": {"s0": [[0, 8191]], "s1": [[8192, 16383]]},
    "nodes": {"s0": ["a0", "a1"], "s1": ["b0", "b1"]},
    "shards": {"s0": {"primary": "a0", "epoch": 2}, "s1": {"primary": "b1", "epoch": 5}},
    "move": None,
}


class Etcd:
    """One etcd member on loopback, started and stopped by PID."""

    def __init__(self, data_dir: Path) -> None:
        assert ETCD is not None
        self.data_dir = data_dir
        self.log_path = data_dir.parent / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        assert ETCD is not None and self.proc is None
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            ETCD,
            "--name=zkvtest",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=zkvtest={peer}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 15.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited ({self.proc.returncode}): {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=0.5) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy within {timeout} s: {self.log()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    if ETCD is None:
        pytest.skip("etcd binary not found: apt-get install etcd-server")
    server = Etcd(tmp_path_factory.mktemp("etcd") / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def driver(etcd: Etcd) -> Iterator[EtcdDriver]:
    d = EtcdDriver([etcd.url], TIMEOUT_S)
    yield d
    d.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/zkv/{request.node.name.replace('[', '-').replace(']', '')}"


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a partitioned etcd)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _tick_until(leases: list[ControllerLease], done: Any, timeout: float) -> float:
    """Tick every lease every 50 ms until ``done()``; the seconds it took."""
    start = time.monotonic()
    while not done():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        for lease in leases:
            lease.tick()
        time.sleep(0.05)
    return time.monotonic() - start


# --------------------------------------------------------------------------- pure


def test_lease_timer_deadline_is_shorter_than_the_ttl() -> None:
    timer = LeaseTimer()
    assert not timer.valid(0.0) and not timer.keepalive_due(0.0) and timer.deadline is None
    timer.granted(10.0, 2.0)
    assert timer.deadline == 11.5  # three quarters of the TTL after the grant was sent
    assert timer.valid(11.49) and not timer.valid(11.5)
    assert not timer.keepalive_due(10.49) and timer.keepalive_due(10.5)
    timer.attempted(10.5)  # a keep-alive that gets no answer: the deadline stays
    assert not timer.keepalive_due(10.9) and timer.keepalive_due(11.0)
    assert timer.deadline == 11.5
    timer.renewed(11.0, 2.0)
    assert timer.deadline == 12.5
    timer.lost()
    assert not timer.valid(11.1) and timer.deadline is None


def test_routing_document_round_trip_and_checks() -> None:
    assert decode_routing(encode_routing(DOC)) == DOC
    without_move = {k: v for k, v in DOC.items() if k != "move"}
    assert decode_routing(encode_routing(without_move)) == without_move
    with pytest.raises(ValueError, match="version must be an integer"):
        encode_routing({**DOC, "version": -1})
    with pytest.raises(ValueError, match="shards must map"):
        encode_routing({**DOC, "shards": {"s0": {"primary": "a0"}}})
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        encode_routing({**DOC, "bogus": 1})
    with pytest.raises(CoordinationError, match="does not hold JSON"):
        decode_routing(b"\xff", "/zkv/x/routing")
    with pytest.raises(CoordinationError, match="not a zkv routing document: nodes is missing"):
        decode_routing(b'{"version": 1}', "/zkv/x/routing")


def test_driver_refuses_a_bad_url() -> None:
    with pytest.raises(ValueError, match="not an etcd client URL"):
        EtcdDriver(["https://127.0.0.1:2379"])


# --------------------------------------------------------------------------- real etcd


def test_save_load_round_trip(driver: EtcdDriver, prefix: str) -> None:
    state = EtcdState(driver, prefix)
    assert state.load() == (None, 0)
    assert state.poll(0) is None
    revision = state.save(DOC, 0)
    assert revision is not None and revision > 0
    assert state.load() == (DOC, revision)
    assert state.poll(revision) is None  # nothing new since
    assert state.poll(revision - 1) == (DOC, revision)
    changed = {**DOC, "version": 4}
    newer = state.save(changed, revision)
    assert newer is not None and newer > revision
    assert state.poll(revision) == (changed, newer)


def test_stale_revision_is_refused(driver: EtcdDriver, prefix: str) -> None:
    state = EtcdState(driver, prefix)
    first = state.save(DOC, 0)
    assert first is not None
    assert state.save({**DOC, "version": 9}, 0) is None  # creation: the key exists already
    mine, theirs = {**DOC, "version": 4}, {**DOC, "version": 5}
    assert state.save(theirs, first) is not None  # another controller saved first...
    assert state.save(mine, first) is None  # ...so a save from the same revision is refused
    assert state.load()[0] == theirs


def test_a_foreign_value_is_a_coordination_error(driver: EtcdDriver, prefix: str) -> None:
    state = EtcdState(driver, prefix)
    driver.txn(
        "test put",
        [],
        [{"request_put": {"key": _b64(state.key), "value": _b64("not json")}}],
        [],
    )
    with pytest.raises(CoordinationError, match="does not hold JSON"):
        state.load()


def test_only_one_controller(driver: EtcdDriver, prefix: str) -> None:
    leases = [ControllerLease(driver, prefix, name, TTL_S) for name in ("b1", "b2", "b3")]
    try:
        for _ in range(5):
            for lease in leases:
                lease.tick()
            assert sum(lease.is_controller() for lease in leases) == 1
            time.sleep(0.05)
        winner = next(lease for lease in leases if lease.is_controller())
        assert all(lease.holder == winner.name for lease in leases)
        assert winner.fence() is not None
        assert all(lease.fence() is None for lease in leases if lease is not winner)
    finally:
        for lease in leases:
            lease.stop()


def test_stop_hands_over_within_a_campaign_interval(driver: EtcdDriver, prefix: str) -> None:
    a = ControllerLease(driver, prefix, "a", TTL_S)
    b = ControllerLease(driver, prefix, "b", TTL_S)
    try:
        assert a.tick() and not b.tick()
        a.stop()
        assert not a.is_controller()
        took = _tick_until([b], b.is_controller, timeout=5 * TTL_S)
        print(f"\ncontroller stopped: the other took over after {took:.2f} s")
        assert took < TTL_S  # revoking deletes the key: no TTL to wait out
    finally:
        a.stop()
        b.stop()


def test_partitioned_controller_deposes_itself_before_another_takes_over(
    driver: EtcdDriver, prefix: str, blackhole: str
) -> None:
    state = EtcdState(driver, prefix)
    revision = state.save(DOC, 0)
    assert revision is not None
    a = ControllerLease(driver, prefix, "a", TTL_S)
    b = ControllerLease(driver, prefix, "b", TTL_S)
    try:
        assert a.tick() and not b.tick()
        old_fence = a.fence()
        assert old_fence is not None
        # a's link to etcd goes silent: its requests time out, nothing is refused
        a.driver = EtcdDriver([blackhole], TIMEOUT_S)
        cut = time.monotonic()
        a_deposed = b_took_over = None
        while b_took_over is None:
            assert time.monotonic() - cut < 5 * TTL_S, "nobody took over"
            start = time.monotonic()
            a.tick()
            assert time.monotonic() - start < 2 * TIMEOUT_S + 0.5  # a tick never hangs
            if a_deposed is None and not a.is_controller():
                a_deposed = time.monotonic()
                assert isinstance(a.last_error, CoordinationError)
            if b.tick():
                b_took_over = time.monotonic()
            time.sleep(0.05)
        assert a_deposed is not None
        print(
            f"\npartition: a deposed itself after {a_deposed - cut:.2f} s, "
            f"b took over after {b_took_over - cut:.2f} s (TTL {TTL_S:g} s)"
        )
        assert a_deposed < b_took_over
        assert a_deposed - cut < TTL_S  # before etcd could let the lease expire
        assert b_took_over - cut < 3 * TTL_S
        # a decision a prepared before the partition cannot land now, though the routing
        # revision it read is still current: the fence (the controller key) has changed
        assert state.save({**DOC, "version": 4}, revision, old_fence) is None
        assert state.save({**DOC, "version": 4}, revision, b.fence()) is not None
    finally:
        a.driver = driver
        a.stop()
        b.stop()


def test_unreachable_etcd_fails_fast_and_clearly(etcd: Etcd, blackhole: str) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(CoordinationError, match="etcd unreachable") as info:
        EtcdState(EtcdDriver([refused], TIMEOUT_S), "/zkv/x").load()
    assert time.monotonic() - start < 1.0
    assert refused in str(info.value) and "Connection refused" in str(info.value)
    assert isinstance(info.value, ZkvError)
    start = time.monotonic()
    with pytest.raises(CoordinationError, match="timed out"):
        EtcdState(EtcdDriver([blackhole], TIMEOUT_S), "/zkv/x").load()
    assert time.monotonic() - start < TIMEOUT_S + 1.0
    # a dead endpoint first in the list is skipped
    assert EtcdState(EtcdDriver([refused, etcd.url], TIMEOUT_S), "/zkv/x").load() == (None, 0)


def test_etcd_restart(etcd: Etcd, driver: EtcdDriver, prefix: str) -> None:
    state = EtcdState(driver, prefix)
    revision = state.save(DOC, 0)
    lease = ControllerLease(driver, prefix, "a", TTL_S)
    try:
        assert lease.tick()
        etcd.stop()
        with pytest.raises(CoordinationError, match="etcd unreachable"):
            state.load()
        assert lease.tick() in (True, False)  # never raises
        took = _tick_until([lease], lambda: not lease.is_controller(), timeout=2 * TTL_S)
        print(f"\netcd stopped: the controller stepped down after {took:.2f} s")
        assert isinstance(lease.last_error, CoordinationError)
        started = time.monotonic()
        etcd.start()
        assert state.load() == (DOC, revision)
        took = _tick_until([lease], lease.is_controller, timeout=5 * TTL_S)
        print(
            f"etcd back after {time.monotonic() - started - took:.2f} s: controller again "
            f"after {took:.2f} s more"
        )
        assert lease.last_error is None
    finally:
        if etcd.proc is None:
            etcd.start()
        lease.stop()
