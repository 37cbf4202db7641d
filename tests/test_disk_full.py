"""A full disk is an error, not a crash: real nodes on a small tmpfs, filled under load.

The test mounts its own tmpfs (CI runs as root) and skips with the reason where it cannot.
It asserts on data: every acknowledged write reads back after the disk is grown and the
cluster restarted, and no node process ever exits.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import grow_tmpfs

import zkv
from zkv.storage.engine import Store
from zkv.storage.log import LOG_MAGIC, scan_file, segments
from zkv.storage.persistence import Persistence
from zkv.storage.recovery import check_directory

ONE_SHARD = {"s0": ["s0a", "s0b"]}
VALUE = "x" * 2000


class Writers:
    """Client threads putting distinct keys until the disk refuses, remembering what was
    acknowledged and which errors came back."""

    def __init__(self, endpoint: str, threads: int = 2) -> None:
        self.endpoint = endpoint
        self.acked: dict[str, str] = {}
        self.unknown: set[str] = set()
        self.refused: list[zkv.StorageError] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        assert not self.errors, self.errors

    def _run(self, t: int) -> None:
        kv = zkv.Client(self.endpoint, timeout_s=10.0)
        try:
            for i in range(20_000):  # bounded: the disk holds far fewer
                if self.stop.is_set():
                    return
                key, value = f"w{t}:{i}", f"{i}:{VALUE}"
                try:
                    kv.put(key, value)
                    self.acked[key] = value
                except zkv.StorageError as exc:
                    self.refused.append(exc)
                    if len(self.refused) >= 20:
                        return
                except zkv.Timeout:
                    self.unknown.add(key)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            kv.close()


@pytest.mark.fault
def test_full_disk_refuses_writes_serves_reads_and_recovers(
    tmpfs: Any, tmp_path: Path, cluster_factory: Any
) -> None:
    small_disk = tmpfs(tmp_path / "disk", "3m")
    c = cluster_factory(
        ONE_SHARD,
        storage={
            "dir": str(small_disk),
            "fsync": "always",
            "min_free_bytes": 0,  # run into the real ENOSPC
            "compact_min_bytes": 1 << 30,
        },
    )
    kv = c.client(timeout_s=10.0)
    c.wait_for(lambda: c.node("s0b")["in_sync"], "s0b in sync")
    kv.put("before", "the disk filled")
    writers = Writers(c.endpoint)
    started = time.monotonic()
    writers.start()
    try:
        c.wait_for(lambda: len(writers.refused) >= 20 or writers.errors, "writes refused", 60)
    finally:
        writers.finish()
    print(
        f"\nfilled the disk in {time.monotonic() - started:.2f} s: {len(writers.acked)} "
        f"writes acknowledged, then {len(writers.refused)} refused"
    )
    assert writers.acked, "nothing was written before the disk filled"
    assert any(isinstance(e, zkv.StorageFull) for e in writers.refused), writers.refused
    assert "No space left on device" in str(writers.refused[-1])
    for proc in c.procs.values():
        assert proc.popen is not None and proc.popen.poll() is None, f"{proc.name} exited"
    c.wait_for(lambda: c.node("s0a")["storage"] == "full", "s0a to report its full disk")
    status = c.status()
    assert status["s0a"]["alive"] and status["s0a"]["role"] == "primary", status["s0a"]
    assert status["s0a"]["free_bytes"] < 1024 * 1024
    with pytest.raises(zkv.StorageFull):
        kv.put("while-full", 1)
    sample = dict(list(writers.acked.items())[-50:])
    assert kv.mget(list(sample)) == sample  # reads go on
    assert kv.get("before") == "the disk filled"

    grow_tmpfs(small_disk, "64m")
    resumed = time.monotonic()
    c.wait_for(lambda: _put(kv, "after", "the disk grew"), "writes to resume", 30)
    print(f"writes resumed {time.monotonic() - resumed:.2f} s after the disk grew")
    # once the disk grew, the shard may stay with s0a or hand over to s0b (whichever reports
    # room first): either way its replica catches up
    c.wait_for(lambda: _replica_in_sync(c), "the replica back in sync", 30)
    kv.put("later", "also")

    for name in ("s0a", "s0b", "broker"):
        c.procs[name].stop()
    for name in ("broker", "s0a", "s0b"):
        c.procs[name].start()
        c.procs[name].wait_ready()
    c.wait_alive(["s0a", "s0b"])
    kv = c.client(timeout_s=20.0)
    expected = {**writers.acked, "before": "the disk filled", "after": "the disk grew"}
    expected["later"] = "also"
    got = kv.mget(list(expected))
    lost = [k for k, v in expected.items() if got.get(k) != v]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    refused_keys = {f"w{t}:{i}" for t in range(2) for i in range(20_000)} - set(writers.acked)
    refused_keys -= writers.unknown
    stray = kv.mget(sorted(refused_keys)[:2000])
    assert not stray, f"writes answered with an error were applied: {list(stray)[:5]}"


def _replica_in_sync(c: Any) -> bool:
    nodes = c.status().values()
    return any(n["role"] == "replica" and n["in_sync"] for n in nodes) and any(
        n["role"] == "primary" and n["alive"] for n in nodes
    )


def _put(kv: zkv.Client, key: str, value: str) -> bool:
    try:
        kv.put(key, value, timeout=2.0)
    except (zkv.StorageError, zkv.Unavailable, zkv.Timeout):
        return False
    return True


def test_a_node_under_min_free_bytes_refuses_writes(tmp_path: Path) -> None:
    stat = os.statvfs(tmp_path)
    free = stat.f_bavail * stat.f_frsize
    persistence = Persistence(tmp_path / "n", "always", min_free_bytes=free * 4)
    store = Store(16384)
    persistence.recover(store)
    try:
        assert persistence.check(store.seq + 1) == "low"
        assert not persistence.writable
        refusal = persistence.refusal()
        assert isinstance(refusal, zkv.StorageFull)
        assert "storage.min_free_bytes" in str(refusal)
        persistence.min_free_bytes = 0
        assert persistence.check(store.seq + 1) == "ok"
        assert persistence.writable
    finally:
        persistence.close()


# ------------------------------------------------------------------ the log, without a node


def _turn(store: Store, persistence: Persistence, start: int, n: int, size: int = 1000) -> None:
    """One loop turn: ``n`` puts, then the flush (raising StorageError if it fails)."""
    store.begin()
    for i in range(start, start + n):
        store.put(f"k{i}".encode(), b"v" * size)
    try:
        persistence.flush()
    except zkv.StorageError:
        store.rollback()
        raise
    store.commit()


def _recovered(directory: Path) -> Store:
    store = Store(16384)
    again = Persistence(directory, "always")
    again.recover(store)
    again.close()
    return store


@pytest.mark.fault
def test_a_failed_write_leaves_no_partial_record_and_loses_nothing(
    tmpfs: Any, tmp_path: Path
) -> None:
    disk = tmpfs(tmp_path / "disk", "256k")
    persistence = Persistence(disk / "n", "always")
    store = Store(16384)
    persistence.recover(store)
    done = 0
    refused = None
    for _ in range(1000):  # bounded: 256 KiB holds about 200 records of 1 KB
        try:
            _turn(store, persistence, done, 10)
        except zkv.StorageFull as exc:
            refused = exc
            break
        done += 10
    assert refused is not None and "No space left on device" in str(refused)
    assert persistence.state == "full" and not persistence.writable
    assert store.seq == done and len(store) == done  # the failed turn was rolled back
    [segment] = segments(disk / "n")
    scan, payloads = scan_file(segment.path, LOG_MAGIC)
    assert scan.clean and len(payloads) == done  # cut back: no partial record stays
    assert persistence.check(store.seq + 1) == "full"  # no room yet

    grow_tmpfs(disk, "4m")
    assert persistence.check(store.seq + 1) == "ok"
    _turn(store, persistence, done, 10)
    persistence.close()
    again = _recovered(disk / "n")
    assert again.seq == done + 10 and len(again) == done + 10
    assert check_directory(disk / "n")[0]


def test_after_a_failed_fsync_the_unconfirmed_records_go_to_a_new_segment(
    tmp_path: Path,
) -> None:
    persistence = Persistence(tmp_path / "n", "everysec")
    store = Store(16384)
    persistence.recover(store)
    _turn(store, persistence, 0, 5)
    with persistence._lock:  # what the fsync thread does once a second
        persistence.log.sync()
    _turn(store, persistence, 5, 5)
    _turn(store, persistence, 10, 5)
    # the fsync thread's next fsync fails (EIO): on Linux, pages it could not write may be
    # dropped while a later fsync reports success, so the segment is never trusted again
    persistence.log.untrusted = True
    persistence._sync_error = OSError(errno.EIO, "Input/output error")
    with pytest.raises(zkv.StorageError, match="repair"):  # writes meanwhile are refused
        _turn(store, persistence, 15, 1)
    assert store.seq == 15
    assert persistence.check(store.seq + 1) == "ok"  # repaired at once: the disk works
    _turn(store, persistence, 15, 5)
    persistence.close()
    found = segments(tmp_path / "n")
    assert [s.first_seq for s in found] == [1, 6]  # records 6..15 rewritten after the cut
    first = scan_file(found[0].path, LOG_MAGIC)[1]
    assert len(first) == 5
    again = _recovered(tmp_path / "n")
    assert again.seq == 20 and len(again) == 20
    assert check_directory(tmp_path / "n")[0]


@pytest.mark.fault
def test_primary_that_cannot_log_hands_over_to_its_replica(
    tmpfs: Any, tmp_path: Path, cluster_factory: Any
) -> None:
    data = tmp_path / "data"
    small = tmpfs(data / "s0a", "2m")  # only the primary's folder is on a small disk
    c = cluster_factory(
        ONE_SHARD,
        storage={"dir": str(data), "fsync": "always", "min_free_bytes": 0},
        replication={"ack_timeout_s": 1.0},
    )
    kv = c.client(timeout_s=20.0)
    c.wait_for(lambda: c.node("s0b")["in_sync"], "s0b in sync")
    acked: dict[str, str] = {}
    refused = 0
    handed_over = None
    for i in range(5000):  # bounded: 2 MiB holds about a thousand
        key, value = f"h:{i}", f"{i}:{VALUE}"
        try:
            kv.put(key, value)
            acked[key] = value
        except zkv.StorageFull:  # only while the broker starts the switch-over
            refused += 1
        if i % 10 == 0 and c.node("s0b")["role"] == "primary":
            handed_over = i
            break
    assert handed_over is not None, "the primary never handed over"
    print(f"\nhanded over after {handed_over} writes, {refused} refused meanwhile")
    assert refused < 10
    for i in range(handed_over + 1, handed_over + 200):
        key, value = f"h:{i}", f"{i}:{VALUE}"
        kv.put(key, value)
        acked[key] = value
    status = c.status()
    assert status["s0a"]["alive"] and status["s0a"]["storage"] == "full", status["s0a"]
    assert c.procs["s0a"].popen is not None and c.procs["s0a"].popen.poll() is None
    grow_tmpfs(small, "64m")
    c.wait_for(lambda: c.node("s0a")["in_sync"], "s0a back in sync after its disk grew", 30)
    kv.failover("s0", to="s0a")
    got = kv.mget(list(acked))
    assert got == acked


def test_a_node_started_below_min_free_bytes_says_so_and_serves_reads(
    tmp_path: Path, cluster_factory: Any
) -> None:
    c = cluster_factory(
        {"s0": ["s0a"]},
        storage={"dir": str(tmp_path / "data"), "fsync": "no", "min_free_bytes": 2**50},
    )
    kv = c.client(timeout_s=5.0)
    with pytest.raises(zkv.StorageFull, match=r"storage\.min_free_bytes"):
        kv.put("k", 1)
    assert kv.get("k", default="absent") == "absent"  # reads are served
    node = c.node("s0a")
    assert node["storage"] == "low" and node["free_bytes"] > 0
    lines = [ln for ln in c.procs["s0a"].log_file.read_text().splitlines() if "min_free" in ln]
    assert len(lines) == 1, lines
    assert c.procs["s0a"].popen is not None and c.procs["s0a"].popen.poll() is None
