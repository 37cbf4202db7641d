"""Durability at process level: real nodes are killed, stopped and restarted, their files
damaged, and every acknowledged write must come back (and nothing that was never written).

Each node keeps its data in ``<storage.dir>/<node name>/``: log segments ``log-<seq>.zkv``
(``ZKVLOG1\\n`` then frames ``length u32 | crc32 u32 | payload``) and snapshots. The frame
layout is parsed here independently of ``zkv.storage`` so the tests can aim at one record.
"""

from __future__ import annotations

import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

import zkv
from zkv.slots import SlotMap

SHARDS = ["s0", "s1", "s2"]
LOG_MAGIC = b"ZKVLOG1\n"
FRAME_HEADER = struct.Struct(">II")
UNKNOWN_ERRORS = (zkv.Timeout, zkv.Unavailable)


# ---------------------------------------------------------------------------- helpers


def storage(tmp_path: Path, index: int = 0, **settings: Any) -> dict[str, Any]:
    """A ``storage`` section whose folder lies inside the tmp folder of cluster ``index``
    of this test (``cluster_factory`` names them ``cluster0``, ``cluster1``, ...)."""
    return {"dir": str(tmp_path / f"cluster{index}" / "data"), **settings}


def data_dir(c: Any, name: str) -> Path:
    path = Path(c.doc["storage"]["dir"]) / name
    assert path.is_relative_to(c.tmp), path
    return path


def log_mark(proc: Any) -> int:
    """Where the process log ends now (its later output is read from there)."""
    return proc.log_file.stat().st_size if proc.log_file.exists() else 0


def log_since(proc: Any, mark: int) -> str:
    with open(proc.log_file, "rb") as f:
        f.seek(mark)
        return f.read().decode(errors="replace")


def start_node(c: Any, name: str) -> None:
    proc = c.procs[name]
    proc.start()
    proc.wait_ready()
    c.wait_alive([name])


def kill_node(c: Any, name: str) -> None:
    proc = c.procs[name]
    proc.signal(signal.SIGKILL)
    assert proc.popen is not None and proc.popen.returncode == -signal.SIGKILL


def stop_node(c: Any, name: str) -> None:
    """SIGTERM and wait: a clean stop must exit 0."""
    proc = c.procs[name]
    proc.stop()
    assert proc.popen is not None and proc.popen.returncode == 0, proc.popen.returncode


def segments(directory: Path) -> list[Path]:
    """The log segments, oldest first (names carry a 20-digit sequence number)."""
    return sorted(directory.glob("log-*.zkv"))


def snapshots(directory: Path) -> list[Path]:
    return sorted(directory.glob("snapshot-*.zkv"))


def seq_of(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def frames(path: Path) -> list[tuple[int, int]]:
    """``(offset, total length)`` of every frame of a clean log segment."""
    data = path.read_bytes()
    assert data.startswith(LOG_MAGIC)
    found = []
    offset = len(LOG_MAGIC)
    while offset < len(data):
        length, crc = FRAME_HEADER.unpack_from(data, offset)
        body = offset + FRAME_HEADER.size
        assert zlib.crc32(data[body : body + length]) == crc, f"bad frame at {offset}"
        found.append((offset, FRAME_HEADER.size + length))
        offset = body + length
    assert offset == len(data)
    return found


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def run_check(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zkv", "check", "--data", str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )


def mget_all(kv: zkv.Client, keys: list[str], timeout: float = 10.0) -> dict[Any, Any]:
    found: dict[Any, Any] = {}
    for i in range(0, len(keys), 500):
        found.update(kv.mget(keys[i : i + 500], timeout=timeout))
    return found


class History:
    """Every write one thread sent, per key: ``(acknowledged, value)``, value None for a
    delete. Only this thread writes its keys, so their order is the order applied."""

    def __init__(self) -> None:
        self.ops: dict[str, list[tuple[bool, Any]]] = {}
        self.acked = 0
        self.unknown = 0

    def record(self, changes: dict[str, Any], acked: bool) -> None:
        for key, value in changes.items():
            self.ops.setdefault(key, []).append((acked, value))
        if acked:
            self.acked += 1
        else:
            self.unknown += 1

    def allowed(self, key: str) -> list[Any]:
        """The values ``key`` may hold: the latest acknowledged one (absent if none), or
        that of any write after it whose outcome is unknown."""
        ops = self.ops[key]
        last_ack = max((i for i, (acked, _) in enumerate(ops) if acked), default=-1)
        values = [ops[last_ack][1] if last_ack >= 0 else None]
        values += [value for _, value in ops[last_ack + 1 :]]
        return values


def random_write(
    kv: zkv.Client, rng: random.Random, keys: list[str], tag: str, timeout: float
) -> tuple[dict[str, Any], bool]:
    """One put, delete or mput of ``keys`` with a value unique to ``tag``; whether acked."""
    roll = rng.random()
    if roll < 0.2:
        changes: dict[str, Any] = {k: f"{tag}:{k}" for k in rng.sample(keys, 5)}
        call: Any = lambda: kv.mput(changes, timeout=timeout)  # noqa: E731
    elif roll < 0.3:
        key = rng.choice(keys)
        changes = {key: None}
        call = lambda: kv.delete(key, timeout=timeout)  # noqa: E731
    else:
        key = rng.choice(keys)
        changes = {key: tag}
        call = lambda: kv.put(key, tag, timeout=timeout)  # noqa: E731
    try:
        call()
    except UNKNOWN_ERRORS:
        return changes, False
    return changes, True


def check_histories(kv: zkv.Client, histories: list[History], prefix: str) -> None:
    """Every key holds an allowed value; every listed key was sent."""
    sent = {k: h for h in histories for k in h.ops}
    stored = mget_all(kv, sorted(sent))
    wrong = {
        k: (stored.get(k), h.allowed(k))
        for k, h in sent.items()
        if stored.get(k) not in h.allowed(k)
    }
    assert not wrong, (
        f"{len(wrong)} keys hold a value never acknowledged: {list(wrong.items())[:5]}"
    )
    listed = set(kv.keys(prefix, timeout=10.0))
    assert listed <= set(sent), f"keys never written: {sorted(listed - set(sent))[:5]}"
    assert listed == set(stored), sorted(set(stored) ^ listed)[:5]


# ---------------------------------------------------------------------------- 1. crash


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_acknowledged_writes_survive_sigkill_under_load(
    cluster_factory: Any, tmp_path: Path
) -> None:
    # small compaction thresholds: some kills land in the middle of a compaction
    c = cluster_factory(
        storage=storage(tmp_path, fsync="always", compact_min_bytes=20000, compact_ratio=1.0)
    )
    victim, victim_shard = "s1a", "s1"
    threads_n, keys_per_thread = 4, 150
    rng = random.Random(20240611)
    histories = [History() for _ in range(threads_n)]
    clients = [c.client(timeout_s=5.0) for _ in range(threads_n)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(tid: int) -> None:
        kv, history = clients[tid], histories[tid]
        wrng = random.Random(tid)
        keys = [f"crash:t{tid}:k{j}" for j in range(keys_per_thread)]
        deadline = time.monotonic() + 60
        try:
            for i in range(50_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                changes, acked = random_write(kv, wrng, keys, f"t{tid}:{i}", timeout=2.0)
                history.record(changes, acked)
        except BaseException as exc:
            errors.append(exc)

    def acked() -> int:
        return sum(h.acked for h in histories)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    kills = 6
    try:
        for _ in range(kills):
            progress = acked() + 200  # writes go on between kills
            wait_for(lambda p=progress: acked() >= p or errors, 20, "writes to progress")
            # killed at a random point of the stream, down for a random while (jitter:
            # no check depends on either)
            time.sleep(rng.uniform(0.0, 0.4))
            kill_node(c, victim)
            time.sleep(rng.uniform(0.0, 0.3))
            start_node(c, victim)
        progress = acked() + 200
        wait_for(lambda: acked() >= progress or errors, 20, "writes after the last restart")
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert not any(w.is_alive() for w in workers)
    assert not errors, errors

    log = c.procs[victim].log_file.read_text(errors="replace")
    assert log.count(f"node {victim} recovered") == kills + 1
    slot_map = SlotMap.even(SHARDS, 16384)
    on_victim = [
        k for h in histories for k in h.ops if slot_map.shard_of(k.encode()) == victim_shard
    ]
    assert len(on_victim) > 50  # the killed node held a real share of the keys
    total_acked = acked()
    total_unknown = sum(h.unknown for h in histories)
    assert total_acked > 1000
    assert total_unknown < total_acked // 5, (total_acked, total_unknown)

    kv = c.client(timeout_s=10.0)
    check_histories(kv, histories, "crash:")
    # deleted keys stay deleted (and the test did delete some)
    deleted = [k for h in histories for k in h.ops if h.allowed(k) == [None]]
    assert deleted
    assert mget_all(kv, deleted) == {}


# ---------------------------------------------------------------------------- 2. torn tail


class Torn:
    """A node's newest segment after keys, then one last key, were written and it was killed."""

    def __init__(self, c: Any, prefix: str) -> None:
        kv = c.client()
        self.expected = {f"{prefix}k{i:02d}": f"v{i}" for i in range(40)}
        for k, v in self.expected.items():
            kv.put(k, v)
        self.last = f"{prefix}last"
        kv.put(self.last, "the last record")
        kill_node(c, "s0a")
        self.segment = segments(data_dir(c, "s0a"))[-1]
        self.original = self.segment.read_bytes()
        found = frames(self.segment)
        # the record that sets the last key (a write may log more records after it, such
        # as the outcome kept for retries: those are the last records of the file)
        [self.set_off] = [
            off for off, n in found if self.last.encode() in self.original[off : off + n]
        ]
        self.last_off, self.last_len = found[-1]
        assert self.set_off <= self.last_off


def restart_damaged(c: Any, segment: Path, damaged: bytes, cut_at: int) -> str:
    """Write the damaged segment, start the node; the warning line it logs."""
    proc = c.procs["s0a"]
    if proc.popen is not None and proc.popen.poll() is None:
        kill_node(c, "s0a")
    segment.write_bytes(damaged)
    mark = log_mark(proc)
    start_node(c, "s0a")
    lines = [ln for ln in log_since(proc, mark).splitlines() if "torn tail" in ln]
    assert len(lines) == 1, log_since(proc, mark)
    assert "WARNING" in lines[0]
    assert str(segment) in lines[0]
    assert f"at offset {cut_at} " in lines[0]
    assert segment.stat().st_size == cut_at  # the tail was cut off
    return lines[0]


@pytest.mark.fault
def test_torn_tail_is_cut_and_earlier_records_survive(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    t = Torn(c, "torn:")
    original, last_off, last_len, set_off = t.original, t.last_off, t.last_len, t.set_off
    garbage = random.Random(7).randbytes(40)
    assert FRAME_HEADER.unpack_from(garbage)[0] > len(garbage)  # a header claiming too much
    cases = [
        # (damaged file, where the tail is cut)
        (original[: last_off + 3], last_off),  # the last record's header cut short
        (original[: last_off + FRAME_HEADER.size], last_off),  # no payload
        (original[: last_off + last_len // 2], last_off),  # payload cut in half
        (original[: last_off + last_len - 1], last_off),  # one byte short
        (original[: last_off + 5] + garbage, last_off),  # overwritten with garbage
        (original[: set_off + 11], set_off),  # cut in the record that sets the last key
        (original[: set_off + 5] + garbage, set_off),
        (original + garbage, len(original)),  # garbage after a complete record
    ]
    kv = c.client(timeout_s=10.0)
    for damaged, cut_at in cases:
        restart_damaged(c, t.segment, damaged, cut_at)
        survives = cut_at > set_off  # the last key's record is whole
        assert mget_all(kv, list(t.expected)) == t.expected
        assert kv.get(t.last) == ("the last record" if survives else None)
        assert sorted(kv.keys("torn:")) == sorted([*t.expected, *[t.last][: int(survives)]])
    # the node appends after the cut: a new write survives another crash
    kv.put("torn:after", "after")
    kill_node(c, "s0a")
    start_node(c, "s0a")
    assert kv.get("torn:after") == "after"
    assert mget_all(kv, list(t.expected)) == t.expected


@pytest.mark.fault
def test_zero_filled_tail_is_cut_like_a_torn_tail(cluster_factory: Any) -> None:
    # after a machine crash a file can keep its new length with the new blocks never
    # written: the tail reads back as zeros
    c = cluster_factory({"s0": ["s0a"]})
    t = Torn(c, "zero:")
    kv = c.client(timeout_s=10.0)
    restart_damaged(c, t.segment, t.original + bytes(64), len(t.original))
    assert mget_all(kv, list(t.expected)) == t.expected
    assert kv.get(t.last) == "the last record"


@pytest.mark.fault
def test_check_repairs_a_zero_filled_tail(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    t = Torn(c, "zcheck:")
    t.segment.write_bytes(t.original + bytes(64))
    directory = data_dir(c, "s0a")
    check = run_check(directory)
    assert "Traceback" not in check.stderr, check.stderr
    assert check.returncode in (0, 1), check
    repair = run_check(directory, "--repair")
    assert "Traceback" not in repair.stderr, repair.stderr
    assert repair.returncode == 0, repair
    start_node(c, "s0a")
    kv = c.client(timeout_s=10.0)
    assert mget_all(kv, [*t.expected, t.last]) == {**t.expected, t.last: "the last record"}


# ---------------------------------------------------------------------------- 3. corruption


@pytest.mark.fault
def test_corruption_mid_log_refuses_to_start_until_repaired(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    kv = c.client(timeout_s=10.0)
    keys = [f"mid:k{i:02d}" for i in range(30)]
    for i, k in enumerate(keys):
        kv.put(k, f"v{i}")
    kill_node(c, "s0a")
    directory = data_dir(c, "s0a")
    segment = segments(directory)[-1]
    found = frames(segment)
    data = bytearray(segment.read_bytes())
    bad = 5  # damage the record that sets keys[5]: valid records follow
    [index] = [i for i, (off, n) in enumerate(found) if keys[bad].encode() in data[off : off + n]]
    offset, length = found[index]
    assert index + 1 < len(found)
    data[offset + FRAME_HEADER.size + (length - FRAME_HEADER.size) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))

    proc = c.procs["s0a"]
    mark = log_mark(proc)
    started = time.monotonic()
    proc.start()
    assert proc.popen is not None
    assert proc.popen.wait(30) != 0  # it exits by itself: no hang
    print(f"the node refused to start after {time.monotonic() - started:.2f} s")
    output = log_since(proc, mark)
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output  # one line says it all
    line = lines[0]
    assert "cannot start" in line
    assert str(segment) in line
    assert f"at offset {offset}" in line
    assert f"valid records follow at offset {found[index + 1][0]}" in line
    assert f"zkv check --data {directory}" in line
    assert not proc.ready_file.exists()

    check = run_check(directory)
    assert check.returncode == 1, check
    assert "CORRUPT" in check.stdout
    assert f"at offset {offset}" in check.stdout
    assert segment.read_bytes() == bytes(data)  # checking changes nothing

    repair = run_check(directory, "--repair")
    assert repair.returncode == 0, repair
    assert "repaired" in repair.stdout
    assert segment.stat().st_size == offset
    again = run_check(directory)
    assert again.returncode == 0, again
    assert "CORRUPT" not in again.stdout

    start_node(c, "s0a")
    assert mget_all(kv, keys) == {k: f"v{i}" for i, k in enumerate(keys[:bad])}
    assert sorted(kv.keys("mid:")) == sorted(keys[:bad])
    kv.put("mid:new", "new")  # and it takes writes again
    assert kv.get("mid:new") == "new"


# ---------------------------------------------------------------------------- 4. compaction


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_compaction_under_load_keeps_every_latest_value(
    cluster_factory: Any, tmp_path: Path
) -> None:
    c = cluster_factory(
        {"s0": ["s0a"]},
        storage=storage(tmp_path, fsync="everysec", compact_min_bytes=20000, compact_ratio=1.0),
    )
    threads_n, keys_per_thread = 2, 2000  # 4000 keys: a snapshot takes several steps
    latest: list[dict[str, str]] = [{} for _ in range(threads_n)]
    clients = [c.client(timeout_s=10.0) for _ in range(threads_n)]
    errors: list[BaseException] = []
    pad = "x" * 24

    def writer(tid: int) -> None:
        kv, mine = clients[tid], latest[tid]
        wrng = random.Random(100 + tid)
        keys = [f"cmp:t{tid}:k{j}" for j in range(keys_per_thread)]
        try:
            for rnd in range(4):  # every key, in batches of 200
                for b in range(0, keys_per_thread, 200):
                    batch = {k: f"{tid}:{rnd}:{k}:{pad}" for k in keys[b : b + 200]}
                    kv.mput(batch)
                    mine.update(batch)
                    for i in range(50):  # and single puts in between
                        k = wrng.choice(keys)
                        value = f"{tid}:{rnd}:{b}:{i}:{pad}"
                        kv.put(k, value)
                        mine[k] = value
        except BaseException as exc:
            errors.append(exc)

    proc = c.procs["s0a"]
    directory = data_dir(c, "s0a")
    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(90)
    assert not any(w.is_alive() for w in workers)
    assert not errors, errors
    expected = {k: v for mine in latest for k, v in mine.items()}
    assert len(expected) == threads_n * keys_per_thread

    def settled() -> bool:  # no compaction in flight: as many finished as started
        log = proc.log_file.read_text(errors="replace")
        started = log.count("compaction: snapshot as of seq")
        return started == log.count("compaction: snapshot of") and len(snapshots(directory)) == 1

    wait_for(settled, 20, "the last compaction to finish")
    log = proc.log_file.read_text(errors="replace")
    assert log.count("compaction: snapshot of") >= 3, log[-3000:]
    assert c.status()["s0a"]["compactions"] >= 3
    [snapshot] = snapshots(directory)
    remaining = segments(directory)
    # the segments the snapshot covers are gone; the log goes on after it
    assert remaining and seq_of(remaining[0]) == seq_of(snapshot) + 1, (snapshot, remaining)
    assert not (directory / f"log-{1:020d}.zkv").exists()
    assert not list(directory.glob("*.tmp"))

    kv = c.client(timeout_s=10.0)
    assert mget_all(kv, list(expected)) == expected
    assert kv.count() == len(expected)

    # a clean restart, then a crash: the snapshot plus the log still give every value
    stop_node(c, "s0a")
    mark = log_mark(proc)
    start_node(c, "s0a")
    assert f"recovered {len(expected)} keys" in log_since(proc, mark)
    assert "(snapshot as of seq" in log_since(proc, mark)
    assert mget_all(kv, list(expected)) == expected
    kill_node(c, "s0a")
    start_node(c, "s0a")
    assert mget_all(kv, list(expected)) == expected
    assert sorted(kv.keys("cmp:")) == sorted(expected)


# ---------------------------------------------------------------------------- 5. TTL


@pytest.mark.fault
def test_ttls_expire_and_stay_expired_across_restart(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    kv = c.client(timeout_s=10.0)
    # TTLs that pass during the test, and one far too long to: each phase waits for its TTLs
    # to pass, and no key's TTL is running out while the test checks that it is still there
    short_ttl, down_ttl, long_ttl = 1.0, 1.0, 3600.0
    groups = {
        name: {f"ttl:{name}:{i}": f"{name}{i}" for i in range(n)}
        for name, n in [
            ("get", 10),
            ("mget", 10),
            ("exists", 10),
            ("scan", 10),
            ("unread", 300),
            ("down", 20),
            ("long", 10),
            ("forever", 10),
        ]
    }
    short = ["get", "mget", "exists", "scan", "unread"]
    every = {k: v for g in groups.values() for k, v in g.items()}
    # every key first without a TTL: the status is seen to count them all, however slowly
    kv.mput(every)
    assert mget_all(kv, list(groups["get"])) == groups["get"]
    wait_for(lambda: c.status()["s0a"]["keys"] == len(every), 10, "the status to count all")
    long_before = time.time()
    for k, v in groups["long"].items():
        kv.put(k, v, ttl=long_ttl)
    long_after = time.time()
    for name in short:
        kv.mput(groups[name], ttl=short_ttl)
    short_done = time.time()

    # past the short TTL (expiry times are on this wall clock: the node's is the same one)
    wait_for(lambda: time.time() > short_done + short_ttl + 0.05, 10, "short TTLs to pass")
    for k in groups["get"]:
        assert kv.get(k) is None
    assert kv.mget(list(groups["mget"])) == {}
    assert not any(kv.exists(k) for k in groups["exists"])
    assert list(kv.keys("ttl:scan:")) == []
    # the unread ones are reclaimed by the sweep: the node holds only the others
    survivors = len(groups["down"]) + len(groups["long"]) + len(groups["forever"])
    wait_for(lambda: c.status()["s0a"]["keys"] == survivors, 10, "the sweep")
    assert mget_all(kv, list(groups["down"])) == groups["down"]

    # crash; the 'down' keys expire while the node is down (if it is slow to go down, they
    # expire just before: the restart must drop them all the same)
    kv.mput(groups["down"], ttl=down_ttl)
    down_done = time.time()
    kill_node(c, "s0a")
    wait_for(lambda: time.time() > down_done + down_ttl + 0.05, 10, "down TTLs to pass")
    start_node(c, "s0a")

    alive = {**groups["long"], **groups["forever"]}
    expired = [k for k in every if k not in alive]
    assert mget_all(kv, expired) == {}
    assert mget_all(kv, list(alive)) == alive
    assert sorted(kv.keys("ttl:")) == sorted(alive)
    assert not any(kv.exists(k) for k in groups["down"])
    wait_for(lambda: c.status()["s0a"]["keys"] == len(alive), 10, "the sweep after restart")
    for k in groups["long"]:
        asked = time.time()
        left = kv.ttl(k)
        answered = time.time()
        assert left is not None
        # expires_at is in [long_before, long_after] + long_ttl; the node read its clock
        # somewhere in [asked, answered]
        assert long_before + long_ttl - answered - 0.05 <= left, (left, k)
        assert left <= long_after + long_ttl - asked + 0.05, (left, k)
        assert left < long_ttl - down_ttl  # time did pass: the down TTL, at least
    for k in groups["forever"]:
        assert kv.ttl(k) is None


# ---------------------------------------------------------------------------- 6. clean stop


@pytest.mark.fault
@pytest.mark.parametrize("fsync", ["everysec", "no"])
def test_clean_stop_keeps_every_acknowledged_write(
    cluster_factory: Any, tmp_path: Path, fsync: str
) -> None:
    c = cluster_factory(storage=storage(tmp_path, fsync=fsync))
    kv = c.client(timeout_s=10.0)
    names = ["s0a", "s1a", "s2a"]
    expected = {f"clean:k{i}": f"v{i}" for i in range(300)}
    for k, v in expected.items():
        kv.put(k, v)
    batch = {f"clean:m{i}": [i, "m"] for i in range(200)}
    kv.mput(batch)
    expected.update(batch)
    for i in range(0, 300, 6):
        assert kv.delete(f"clean:k{i}")
        del expected[f"clean:k{i}"]
    for i in range(1, 300, 6):
        kv.put(f"clean:k{i}", {"again": i})
        expected[f"clean:k{i}"] = {"again": i}

    # a writer goes on while each node is stopped in turn
    history = History()
    errors: list[BaseException] = []
    stop = threading.Event()
    busy = c.client(timeout_s=5.0)

    def writer() -> None:
        wrng = random.Random(3)
        keys = [f"clean:w{j}" for j in range(100)]
        try:
            for i in range(20_000):
                if stop.is_set():
                    return
                history.record(*random_write(busy, wrng, keys, f"w{i}", timeout=2.0))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=writer)
    worker.start()
    try:
        for name in names:
            progress = history.acked + 50
            wait_for(lambda p=progress: history.acked >= p or errors, 20, "writes to progress")
            mark = log_mark(c.procs[name])
            stop_node(c, name)
            assert f"node {name} stopped" in log_since(c.procs[name], mark)
            start_node(c, name)
        progress = history.acked + 50
        wait_for(lambda: history.acked >= progress or errors, 20, "writes after the restarts")
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert not errors, errors

    assert mget_all(kv, list(expected)) == expected
    assert sorted(kv.keys("clean:k")) == sorted(k for k in expected if k.startswith("clean:k"))
    check_histories(kv, [history], "clean:w")
    # and once more with every node down at the same time
    for name in names:
        stop_node(c, name)
    for name in names:
        start_node(c, name)
    assert mget_all(kv, list(expected)) == expected
    check_histories(kv, [history], "clean:w")


# ---------------------------------------------------------------------------- write outcomes


@pytest.mark.fault
@pytest.mark.parametrize(
    "compact",
    [
        pytest.param(False, id="log"),
        pytest.param(True, id="snapshot"),
    ],
)
def test_retried_write_is_answered_with_its_first_outcome_after_restart(
    cluster_factory: Any, tmp_path: Path, compact: bool
) -> None:
    # with compaction after every write, a snapshot soon covers the create and the log
    # segment holding its outcome is deleted; without, the restart replays it from the log
    c = cluster_factory(
        {"s0": ["s0a"]},
        storage=storage(
            tmp_path,
            fsync="always",
            compact_min_bytes=0 if compact else 1 << 30,
            compact_ratio=1.0,
        ),
        # a paused node stays "alive" to the broker for 2 s: time to forward the create to it
        heartbeat={"interval_s": 0.1, "liveness": 20},
    )
    kv = c.client(timeout_s=10.0)
    kv.put("once:warm", 1)
    node, broker = c.procs["s0a"], c.procs["broker"]
    directory = data_dir(c, "s0a")
    outcome: list[Any] = []

    def create() -> None:
        try:
            kv.create("once:k", "first", timeout=30.0)
            outcome.append("created")
        except Exception as exc:
            outcome.append(exc)

    def logged(files: str = "log-*.zkv") -> bool:
        for path in directory.glob(files):
            try:
                if b"once:k" in path.read_bytes():
                    return True
            except FileNotFoundError:  # deleted by a compaction meanwhile
                pass
        return False

    # the broker counts each client request as it takes it (and routes it at once); a probe
    # of its own STATUS requests tells how many others it took: one probe, one request
    probe = c.client(timeout_s=5.0)
    probes = 0

    def broker_took_others() -> int:
        nonlocal probes
        probes += 1
        return int(probe.cluster_status()["broker"]["requests"]) - probes

    # the node is paused when the create reaches it and the broker is gone when it answers:
    # the create is applied, its reply is lost, and the client sends it again later
    node.signal(signal.SIGSTOP)
    mark = log_mark(node)
    worker = threading.Thread(target=create)
    took = broker_took_others()
    worker.start()
    try:
        # the broker took the create, so it forwarded it to the paused node
        wait_for(lambda: broker_took_others() > took, 10, "the broker to take the create")
        broker.signal(signal.SIGKILL)
        node.signal(signal.SIGCONT)
        # in the log, or already in a snapshot when a compaction was quick to follow
        wait_for(lambda: logged("*.zkv"), 10, "the create to be applied and logged")
        if compact:
            wait_for(
                lambda: "compaction: snapshot of 2 keys" in log_since(node, mark),
                10,
                "a snapshot that covers the create",
            )
            assert not logged()  # its log segment is gone
        assert not outcome  # still retrying: the client never had the reply
        kill_node(c, "s0a")
        broker.start()
        broker.wait_ready()
        start_node(c, "s0a")
    finally:
        node.signal(signal.SIGCONT)
        worker.join(40)
    assert not worker.is_alive()
    assert kv.get("once:k") == "first"
    assert outcome == ["created"]  # the retry is answered with the first outcome
