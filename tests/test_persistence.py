"""Storage-level tests for zkv.storage.persistence with zkv.storage.engine.Store.

Real files in tmp_path: no processes, no sockets, no mocked disk.
"""

from __future__ import annotations

import random
import shutil
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from zkv.errors import KeyNotFound, StorageCorrupted
from zkv.node.catchup import RECORD_OVERHEAD_BYTES, Backlog
from zkv.storage.engine import RecordOp, Store
from zkv.storage.log import FRAME_HEADER, LOG_MAGIC, encode_frame, read_frames, scan_file, segments
from zkv.storage.persistence import Persistence
from zkv.storage.recovery import Recovery, check_directory
from zkv.storage.snapshot import SnapshotWriter, snapshots

SLOTS = 256
#: A compaction's end is waited for this long at most (seconds): its last step is a thread's.
COMPACT_WAIT_S = 30.0


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --------------------------------------------------------------------------- helpers


def _open(
    directory: Path, fsync: str = "no", clock: FakeClock | None = None, **kw: Any
) -> tuple[Persistence, Store, Recovery]:
    store = Store(SLOTS, clock=clock) if clock is not None else Store(SLOTS)
    persistence = Persistence(directory, fsync, **kw)
    report = persistence.recover(store)
    return persistence, store, report


def _recover(directory: Path, clock: FakeClock | None = None) -> tuple[Store, Recovery]:
    """Recover ``directory`` into a fresh store and close the persistence again."""
    persistence, store, report = _open(directory, clock=clock)
    persistence.close()
    return store, report


def _records(path: Path) -> list[list[Any]]:
    scan, payloads = scan_file(path, LOG_MAGIC)
    assert scan.clean, scan.problem
    return [msgpack.unpackb(p, raw=False) for p in payloads]


def _frame_offsets(path: Path) -> list[int]:
    return [offset for offset, _ in read_frames(path.read_bytes(), len(LOG_MAGIC))]


def _only_segment(directory: Path) -> Path:
    found = segments(directory)
    assert len(found) == 1, found
    return found[0].path


def _state(store: Store, keys: set[bytes]) -> dict[bytes, tuple[bytes | None, Any]]:
    """Every key's get() and ttl() (or "missing")."""
    out: dict[bytes, tuple[bytes | None, Any]] = {}
    for key in sorted(keys):
        value = store.get(key)
        try:
            ttl: Any = store.ttl(key)
        except KeyNotFound:
            ttl = "missing"
        out[key] = (value, ttl)
    return out


def _assert_same(original: Store, recovered: Store, keys: set[bytes]) -> None:
    assert recovered.seq == original.seq
    assert _state(recovered, keys) == _state(original, keys)
    assert len(recovered) == len(original)
    assert recovered.held == original.held
    assert recovered.data_bytes == original.data_bytes


def _fifty_puts(directory: Path, fsync: str) -> Path:
    """50 puts (the last one with a longer value), closed; the segment's path."""
    persistence, store, _ = _open(directory, fsync)
    for i in range(1, 51):
        store.put(b"key-%02d" % i, b"value-%02d" % i * (3 if i == 50 else 1))
        persistence.flush()
    persistence.close()
    return _only_segment(directory)


def _flip(path: Path, position: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


def _compact_fully(persistence: Persistence, store: Store, write: Any = None) -> None:
    """Drive a started compaction to its end, calling ``write()`` between steps."""
    assert persistence.compacting
    deadline = time.monotonic() + COMPACT_WAIT_S  # its last step is a thread's fsync
    while time.monotonic() < deadline:
        persistence.maybe_compact(store)
        if not persistence.compacting:
            return
        if write is not None:
            write()
            persistence.flush()
        time.sleep(0.001)
    raise AssertionError(f"compaction not finished after {COMPACT_WAIT_S} s")


# --------------------------------------------------------------------------- basics


def test_fresh_folder_recovers_empty(tmp_path: Path) -> None:
    directory = tmp_path / "node" / "data"  # created by recover
    persistence, store, report = _open(directory)
    assert report.snapshot_seq is None
    assert report.records == 0 and report.seq == 0 and report.warnings == []
    assert store.seq == 0 and len(store) == 0
    assert [s.first_seq for s in segments(directory)] == [1]
    persistence.close()


def test_round_trip_of_every_record_kind(tmp_path: Path, clock: FakeClock) -> None:
    persistence, store, _ = _open(tmp_path, clock=clock)
    store.put(b"gone", b"x")
    store.clear()
    store.put(b"a", b"1")
    store.put(b"b", b"2", ttl=50)
    store.mput([[b"m1", b"x"], [b"m2", b"y"]], ttl=30)
    store.mput([[b"m3", b"z"]])
    assert store.create(b"c", b"3")
    assert store.cas(b"b", b"2", b"22")  # keeps the TTL
    assert store.expire(b"a", 100)
    assert store.delete(b"m3")
    assert store.expire(b"m2", 0)  # non-positive: a DEL
    store.put(b"bin\x00\xff", bytes(range(256)))
    persistence.close()
    assert [r[1] for r in _records(_only_segment(tmp_path))] == [
        RecordOp.SET,
        RecordOp.CLEAR,
        RecordOp.SET,
        RecordOp.SET,
        RecordOp.MSET,
        RecordOp.MSET,
        RecordOp.SET,
        RecordOp.SET,
        RecordOp.EXPIRE_AT,
        RecordOp.DEL,
        RecordOp.DEL,
        RecordOp.SET,
    ]
    recovered, report = _recover(tmp_path, clock)
    assert report.records == 12 and report.seq == 12
    keys = {b"gone", b"a", b"b", b"m1", b"m2", b"m3", b"c", b"bin\x00\xff"}
    _assert_same(store, recovered, keys)
    assert recovered.get(b"b") == b"22" and recovered.ttl(b"b") == 50
    assert recovered.ttl(b"a") == 100 and recovered.get(b"gone") is None


def test_records_not_flushed_are_lost_with_the_process(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    store.put(b"flushed", b"1")
    persistence.flush()
    store.put(b"buffered", b"2")
    # No flush and no close: a crash. Only what reached the OS is on disk.
    recovered, report = _recover(tmp_path)
    assert recovered.get(b"flushed") == b"1"
    assert recovered.get(b"buffered") is None
    assert report.seq == 1
    persistence.log._buffer.clear()  # the "crashed" process never writes again
    persistence.close()


# --------------------------------------------------------------------------- seq


def test_recovery_sets_seq_and_numbering_continues(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(30):
        store.put(b"k%d" % i, b"v%d" % i)
    store.delete(b"k3")
    persistence.close()
    assert store.seq == 31

    persistence, recovered, report = _open(tmp_path)
    assert report.seq == recovered.seq == 31 and report.records == 31
    seen: list[int] = []
    recovered.subscribe(lambda seq, _record: seen.append(seq))
    recovered.put(b"new", b"n")
    recovered.delete(b"k4")
    assert seen == [32, 33]
    persistence.close()

    seqs = [r[0] for r in _records(_only_segment(tmp_path))]
    assert seqs == list(range(1, 34))  # one segment, contiguous numbering on disk

    again, report = _recover(tmp_path)
    assert report.seq == again.seq == 33 and report.records == 33
    assert again.get(b"new") == b"n"
    assert again.get(b"k3") is None and again.get(b"k4") is None
    assert again.get(b"k5") == b"v5"
    assert len(again) == 29


def test_recovery_hands_the_replayed_records_to_the_backlog(tmp_path: Path) -> None:
    # a node restarted refills its replication backlog from its log's tail, so that its
    # replicas catch up from it instead of taking a snapshot; the payloads are the bytes
    # logged, in order, after the snapshot only
    persistence, store, _ = _open(tmp_path)
    for i in range(10):
        store.put(b"k%d" % i, b"v%d" % i)
    persistence.flush()
    persistence.start_compaction(store)
    _compact_fully(persistence, store)  # a snapshot at seq 10
    for i in range(10, 25):
        store.put(b"k%d" % i, b"v%d" % i)
    persistence.close()
    logged = {seq: payload for seq, payload in _payloads(tmp_path)}

    backlog = Backlog(1 << 20)
    persistence = Persistence(tmp_path, "no")
    recovered = Store(SLOTS)
    persistence.recover(recovered, lambda seq, payload, _record: backlog.append(seq, payload))
    persistence.close()
    assert (backlog.first_seq, backlog.last_seq) == (11, 25)
    assert backlog.since(10, 25) == [logged[seq] for seq in range(11, 26)]
    small = Backlog(3 * (len(logged[25]) + RECORD_OVERHEAD_BYTES))  # bounded as ever
    again = Persistence(tmp_path, "no")
    again.recover(Store(SLOTS), lambda seq, payload, _record: small.append(seq, payload))
    again.close()
    assert small.last_seq == 25 and len(small) <= 3


def _payloads(directory: Path) -> list[tuple[int, bytes]]:
    out = []
    for segment in segments(directory):
        for payload in scan_file(segment.path, LOG_MAGIC)[1]:
            out.append((msgpack.unpackb(payload)[0], payload))
    return out


# --------------------------------------------------------------------------- torn tail


@pytest.mark.parametrize("fsync", ["always", "no"])
def test_torn_tail_at_every_offset_of_the_last_record(tmp_path: Path, fsync: str) -> None:
    source = _fifty_puts(tmp_path / "src", fsync)
    full = source.read_bytes()
    last = _frame_offsets(source)[-1]
    assert len(full) - last > 40  # the last record is long enough to be interesting

    for cut in range(last, len(full)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        segment = directory / source.name
        segment.write_bytes(full[:cut])

        store, report = _recover(directory)
        assert store.seq == 49 == report.seq
        assert store.get(b"key-49") == b"value-49"
        assert store.get(b"key-50") is None
        assert len(store) == 49
        if cut == last:  # cut exactly at a record boundary: nothing torn
            assert report.warnings == []
        else:
            assert len(report.warnings) == 1
            warning = report.warnings[0]
            assert str(segment) in warning
            assert f"at offset {last}" in warning
            assert f"({cut - last} bytes:" in warning
        assert segment.stat().st_size == last
        assert segment.read_bytes() == full[:last]

        store2, report2 = _recover(directory)
        assert report2.warnings == [] and store2.seq == 49
        assert segment.stat().st_size == last
        shutil.rmtree(directory)


def test_flipped_byte_in_the_last_record_is_cut(tmp_path: Path) -> None:
    source = _fifty_puts(tmp_path / "src", "no")
    full = source.read_bytes()
    last = _frame_offsets(source)[-1]
    for position in range(last, len(full)):
        for mask in (0xFF, 0x01):
            directory = tmp_path / f"flip-{position}-{mask}"
            directory.mkdir()
            segment = directory / source.name
            data = bytearray(full)
            data[position] ^= mask
            segment.write_bytes(bytes(data))

            store, report = _recover(directory)
            assert store.seq == 49 and len(store) == 49
            assert store.get(b"key-50") is None
            assert store.get(b"key-01") == b"value-01"
            assert len(report.warnings) == 1, (position, mask)
            assert str(segment) in report.warnings[0]
            assert f"at offset {last}" in report.warnings[0]
            assert segment.read_bytes() == full[:last]

            _, report2 = _recover(directory)
            assert report2.warnings == []
            shutil.rmtree(directory)


def test_recovered_log_after_a_torn_tail_accepts_new_writes(tmp_path: Path) -> None:
    segment = _fifty_puts(tmp_path, "no")
    last = _frame_offsets(segment)[-1]
    with open(segment, "r+b") as f:
        f.truncate(last + 5)
    persistence, store, report = _open(tmp_path)
    assert len(report.warnings) == 1
    store.put(b"key-50", b"again")
    persistence.close()
    again, report = _recover(tmp_path)
    assert report.warnings == []
    assert again.get(b"key-50") == b"again" and again.seq == 50
    assert [r[0] for r in _records(segment)] == list(range(1, 51))


@pytest.mark.parametrize("size", [0, 3, 7])
def test_last_segment_cut_inside_its_magic(tmp_path: Path, size: int) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(10):
        store.put(b"k%d" % i, b"v")
    persistence.flush()
    persistence.log.rotate(store.seq + 1)
    persistence.close()
    first, second = segments(tmp_path)
    assert second.first_seq == 11
    second.path.write_bytes(LOG_MAGIC[:size])

    persistence, recovered, report = _open(tmp_path)
    assert recovered.seq == 10 and len(recovered) == 10
    assert len(report.warnings) == 1
    assert str(second.path) in report.warnings[0]
    assert "at offset 0" in report.warnings[0]
    assert "cut inside its header" in report.warnings[0]
    assert second.path.read_bytes() == LOG_MAGIC  # header rewritten
    recovered.put(b"after", b"a")
    persistence.close()

    again, report = _recover(tmp_path)
    assert report.warnings == []
    assert again.seq == 11 and again.get(b"after") == b"a"
    assert [r[0] for r in _records(second.path)] == [11]
    assert [r[0] for r in _records(first.path)] == list(range(1, 11))


def test_only_segment_cut_inside_its_magic(tmp_path: Path) -> None:
    persistence, _, _ = _open(tmp_path)
    persistence.close()
    segment = _only_segment(tmp_path)
    segment.write_bytes(LOG_MAGIC[:3])
    store, report = _recover(tmp_path)
    assert store.seq == 0 and len(store) == 0
    assert len(report.warnings) == 1 and str(segment) in report.warnings[0]
    assert segment.read_bytes() == LOG_MAGIC


# --------------------------------------------------------------------------- corruption


def _corrupt_record(segment: Path, index: int) -> tuple[int, int]:
    """Flip a payload byte of record ``index``; its offset and the next record's."""
    offsets = _frame_offsets(segment)
    _flip(segment, offsets[index] + FRAME_HEADER.size + 2, 0x20)
    return offsets[index], offsets[index + 1]


def test_mid_file_corruption_refuses_to_start(tmp_path: Path) -> None:
    segment = _fifty_puts(tmp_path, "no")
    before = segment.read_bytes()
    bad, following = _corrupt_record(segment, 4)  # record seq 5
    corrupted = segment.read_bytes()

    with pytest.raises(StorageCorrupted) as info:
        Persistence(tmp_path, "no").recover(Store(SLOTS))
    message = str(info.value)
    assert str(segment) in message
    assert f"at offset {bad}" in message
    assert f"valid records follow at offset {following}" in message
    assert "record checksum mismatch" in message
    assert segment.read_bytes() == corrupted  # nothing was cut
    assert len(before) == len(corrupted)

    ok, lines = check_directory(tmp_path)
    assert ok is False
    assert len(lines) == 1
    assert "CORRUPT" in lines[0] and segment.name in lines[0]
    assert f"at offset {bad}" in lines[0]
    assert f"valid records follow at offset {following}" in lines[0]
    assert "4 good records (records 1..4)" in lines[0]
    assert segment.read_bytes() == corrupted  # check without repair changes nothing

    ok, lines = check_directory(tmp_path, repair=True)
    assert ok is True
    assert any("repaired: cut" in line and f"offset {bad}" in line for line in lines)
    assert segment.stat().st_size == bad

    store, report = _recover(tmp_path)
    assert report.warnings == []
    assert store.seq == 4 and len(store) == 4
    assert [store.get(b"key-%02d" % i) for i in range(1, 6)] == [
        b"value-01",
        b"value-02",
        b"value-03",
        b"value-04",
        None,
    ]
    ok, lines = check_directory(tmp_path)
    assert ok is True and lines == [f"{segment.name}: 4 records (records 1..4): ok"]


def test_bad_magic_on_the_last_segment_refuses_to_start(tmp_path: Path) -> None:
    segment = _fifty_puts(tmp_path, "no")
    _flip(segment, 0, 0x01)
    with pytest.raises(StorageCorrupted, match="bad magic"):
        Persistence(tmp_path, "no").recover(Store(SLOTS))
    ok, lines = check_directory(tmp_path)
    assert ok is False and "CORRUPT" in lines[0]


def _three_segments(directory: Path) -> list[Path]:
    """Records 1..5, 6..10, 11..15 in three segments (rotated by hand), closed."""
    persistence, store, _ = _open(directory)
    for part in range(3):
        for i in range(5):
            store.put(b"k%02d" % (part * 5 + i + 1), b"v" * 10)
        persistence.flush()
        if part < 2:
            persistence.log.rotate(store.seq + 1)
    persistence.close()
    found = segments(directory)
    assert [s.first_seq for s in found] == [1, 6, 11]
    return [s.path for s in found]


@pytest.mark.parametrize("damage", ["tail-cut", "tail-flip", "middle-flip"])
def test_corruption_in_a_segment_that_is_not_the_last(tmp_path: Path, damage: str) -> None:
    paths = _three_segments(tmp_path)
    target = paths[1]
    offsets = _frame_offsets(target)
    if damage == "tail-cut":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size - 3)
        bad = offsets[-1]
    elif damage == "tail-flip":
        _flip(target, target.stat().st_size - 1)
        bad = offsets[-1]
    else:
        bad, _ = _corrupt_record(target, 1)
    size = target.stat().st_size

    with pytest.raises(StorageCorrupted) as info:
        Persistence(tmp_path, "no").recover(Store(SLOTS))
    message = str(info.value)
    assert str(target) in message and f"at offset {bad}" in message
    if damage == "middle-flip":
        assert "valid records follow" in message
    else:
        assert "in a log segment that is not the last" in message
    assert target.stat().st_size == size  # not cut

    ok, lines = check_directory(tmp_path)
    assert ok is False
    assert any("CORRUPT" in line and target.name in line for line in lines)

    ok, lines = check_directory(tmp_path, repair=True)
    assert ok is True
    assert target.stat().st_size == bad
    assert not paths[2].exists()
    assert (tmp_path / (paths[2].name + ".corrupt")).exists()
    assert any("moved" in line and paths[2].name in line for line in lines)

    store, report = _recover(tmp_path)
    assert report.warnings == []
    kept = 5 + (len(offsets) - 1 if damage != "middle-flip" else 1)
    assert store.seq == kept and len(store) == kept


@pytest.mark.parametrize(("missing", "gap"), [(1, "6..10"), (0, "1..5")])
def test_seq_gap_refuses_to_start(tmp_path: Path, missing: int, gap: str) -> None:
    paths = _three_segments(tmp_path)
    paths[missing].unlink()
    with pytest.raises(StorageCorrupted) as info:
        Persistence(tmp_path, "no").recover(Store(SLOTS))
    message = str(info.value)
    assert f"records {gap} are missing" in message
    assert paths[missing + 1].name in message


def test_check_directory_reports_a_seq_gap(tmp_path: Path) -> None:
    paths = _three_segments(tmp_path)
    paths[1].unlink()
    with pytest.raises(StorageCorrupted, match=r"records 6\.\.10 are missing"):
        Persistence(tmp_path, "no").recover(Store(SLOTS))
    ok, _lines = check_directory(tmp_path)
    assert ok is False  # "whether the folder is fit to start from": it is not


def test_record_with_valid_checksum_that_does_not_decode(tmp_path: Path) -> None:
    segment = _fifty_puts(tmp_path, "no")
    junk = b"\xc1\xc1"  # never valid msgpack, but framed with a correct checksum
    with open(segment, "ab") as f:
        f.write(FRAME_HEADER.pack(len(junk), zlib.crc32(junk)) + junk)
    with pytest.raises(StorageCorrupted, match="does not decode"):
        Persistence(tmp_path, "no").recover(Store(SLOTS))


# --------------------------------------------------------------------------- check_directory


def test_check_directory_missing_folder(tmp_path: Path) -> None:
    ok, lines = check_directory(tmp_path / "nope")
    assert ok is False
    assert lines == [f"{tmp_path / 'nope'}: no such folder"]


def test_check_directory_healthy(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(20):
        store.put(b"k%d" % i, b"v")
    persistence.start_compaction(store)
    _compact_fully(persistence, store)
    for i in range(5):
        store.put(b"after%d" % i, b"v")
    persistence.close()

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["log-00000000000000000021.zkv", "snapshot-00000000000000000020.zkv"]
    ok, lines = check_directory(tmp_path)
    assert ok is True
    assert lines == [
        "snapshot-00000000000000000020.zkv: snapshot as of seq 20, 20 keys: ok",
        "log-00000000000000000021.zkv: 5 records (records 21..25): ok",
    ]


def test_check_directory_torn_tail_is_ok(tmp_path: Path) -> None:
    segment = _fifty_puts(tmp_path, "no")
    last = _frame_offsets(segment)[-1]
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 4)
    ok, lines = check_directory(tmp_path)
    assert ok is True
    assert "torn tail" in lines[0] and f"at offset {last}" in lines[0]
    assert segment.stat().st_size == size - 4
    ok, lines = check_directory(tmp_path, repair=True)
    assert ok is True and segment.stat().st_size == last
    store, report = _recover(tmp_path)
    assert report.warnings == [] and store.seq == 49


def test_check_directory_bad_snapshot_is_reported(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    store.put(b"a", b"1")
    persistence.close()
    path = _write_store_snapshot(tmp_path, store)
    _flip(path, path.stat().st_size - 2)
    ok, lines = check_directory(tmp_path)
    assert ok is False  # any BAD file fails the check, even if the log still holds everything
    assert lines[0].startswith(f"{path.name}: BAD: ")
    ok, lines = check_directory(tmp_path, repair=True)  # sets the bad snapshot aside
    assert ok is True
    assert f"  repaired: moved {path.name} aside to {path.name}.corrupt" in lines
    assert not path.exists() and path.with_name(path.name + ".corrupt").exists()
    assert check_directory(tmp_path)[0] is True
    store, _ = _recover(tmp_path)
    assert store.get(b"a") == b"1"


# --------------------------------------------------------------------------- snapshots


def _write_store_snapshot(directory: Path, store: Store) -> Path:
    """A snapshot of ``store`` as of its seq, written outside of compaction."""
    writer = SnapshotWriter(directory, store.seq)
    for slot in store.slot_numbers():
        writer.write(store.slot_items(slot))
    return writer.finish()


def _damage_snapshot(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "no-end-frame":
        last = [o for o, _ in read_frames(data, 8)][-1]
        path.write_bytes(data[:last])
    elif how == "flipped":
        _flip(path, len(data) // 2, 0x04)
    elif how == "truncated":
        path.write_bytes(data[: len(data) - 5])
    elif how == "key-count":
        # Rewrite the end frame with a wrong count (valid checksums everywhere).
        last = [o for o, _ in read_frames(data, 8)][-1]
        end = msgpack.unpackb(data[last + 8 :])
        end["keys"] += 1
        path.write_bytes(data[:last] + encode_frame(msgpack.packb(end)))
    else:
        raise AssertionError(how)


DAMAGE = ["no-end-frame", "flipped", "truncated", "key-count"]


def test_recovery_from_snapshot_plus_log(tmp_path: Path, clock: FakeClock) -> None:
    persistence, store, _ = _open(tmp_path, clock=clock)
    for i in range(40):
        store.put(b"k%d" % i, b"v%d" % i, ttl=None if i % 4 else 60)
    persistence.close()
    _write_store_snapshot(tmp_path, store)
    persistence, store, report = _open(tmp_path, clock=clock)
    assert report.snapshot_seq == 40 and report.snapshot_keys == 40 and report.records == 0
    store.delete(b"k0")
    store.put(b"k1", b"new")
    persistence.close()
    recovered, report = _recover(tmp_path, clock)
    assert report.snapshot_seq == 40 and report.records == 2 and report.seq == 42
    _assert_same(store, recovered, {b"k%d" % i for i in range(40)})


@pytest.mark.parametrize("how", DAMAGE)
def test_bad_snapshot_falls_back_to_the_logs(tmp_path: Path, how: str) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(60):
        store.put(b"k%d" % i, b"v%d" % i)
    persistence.close()
    path = _write_store_snapshot(tmp_path, store)
    # Make the snapshot differ from the log so that loading it would show.
    persistence, store, report = _open(tmp_path)
    assert report.snapshot_seq == 60
    store.put(b"extra", b"e")
    persistence.close()
    _damage_snapshot(path, how)

    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq is None
    assert report.records == 61 and report.seq == 61
    assert len(report.warnings) == 1
    assert path.name in report.warnings[0] and "skipped snapshot" in report.warnings[0]
    _assert_same(store, recovered, {b"k%d" % i for i in range(60)} | {b"extra"})


@pytest.mark.parametrize("how", DAMAGE)
def test_bad_snapshot_falls_back_to_an_older_snapshot(tmp_path: Path, how: str) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(30):
        store.put(b"k%d" % i, b"old")
    persistence.close()
    older = _write_store_snapshot(tmp_path, store)
    persistence, store, _ = _open(tmp_path)
    for i in range(20, 50):
        store.put(b"k%d" % i, b"new")
    store.delete(b"k0")
    persistence.close()
    newer = _write_store_snapshot(tmp_path, store)
    persistence, store, _ = _open(tmp_path)
    store.put(b"last", b"l")
    persistence.close()
    _damage_snapshot(newer, how)

    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq == 30 and report.snapshot_keys == 30
    assert report.records == 31 + 1
    assert len(report.warnings) == 1 and newer.name in report.warnings[0]
    _assert_same(store, recovered, {b"k%d" % i for i in range(50)} | {b"last"})
    assert older.exists() and newer.exists()


def test_bad_snapshot_whose_logs_were_compacted_away_refuses(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(30):
        store.put(b"k%d" % i, b"v")
    persistence.start_compaction(store)
    _compact_fully(persistence, store)
    store.put(b"after", b"a")
    persistence.close()
    ((seq, path),) = snapshots(tmp_path)
    assert seq == 30
    _flip(path, path.stat().st_size // 2)
    with pytest.raises(StorageCorrupted, match=r"records 1\.\.30 are missing"):
        Persistence(tmp_path, "no").recover(Store(SLOTS))


def test_snapshot_named_for_another_seq_refuses(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    store.put(b"a", b"1")
    persistence.close()
    path = _write_store_snapshot(tmp_path, store)
    path.rename(path.with_name("snapshot-00000000000000000099.zkv"))
    with pytest.raises(StorageCorrupted, match="named for seq 99 but holds seq 1"):
        Persistence(tmp_path, "no").recover(Store(SLOTS))


def test_leftover_tmp_is_removed_at_recovery(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    store.put(b"a", b"1")
    persistence.close()
    writer = SnapshotWriter(tmp_path, store.seq)  # a crash mid-snapshot
    writer.write(store.slot_items(store.slot_numbers()[0]))
    writer._file.close()
    stray = tmp_path / "whatever.tmp"
    stray.write_bytes(b"junk")
    assert writer.tmp.exists()
    recovered, report = _recover(tmp_path)
    assert not writer.tmp.exists() and not stray.exists()
    assert report.snapshot_seq is None and report.warnings == []
    assert recovered.get(b"a") == b"1"


# --------------------------------------------------------------------------- TTL


def test_ttl_keeps_absolute_expiry_and_sweep_deletes_stay(tmp_path: Path, clock: FakeClock) -> None:
    persistence, store, _ = _open(tmp_path, clock=clock)
    for i in range(10):
        store.put(b"short%d" % i, b"s", ttl=10)
    for i in range(10):
        store.put(b"long%d" % i, b"l", ttl=1000)
    store.put(b"forever", b"f")
    persistence.flush()
    clock.advance(20)
    assert store.sweep() == 10  # DEL records for every short key
    persistence.close()
    assert store.seq == 31

    # Recover with the clock turned back: were the DELs not logged, the keys would be live.
    early = FakeClock(clock.now - 20)
    recovered, report = _recover(tmp_path, early)
    assert report.seq == 31
    assert all(recovered.get(b"short%d" % i) is None for i in range(10))
    assert recovered.held == 11
    assert recovered.ttl(b"long0") == pytest.approx(1000)  # expires_at is absolute
    assert recovered.ttl(b"forever") is None

    later = FakeClock(clock.now + 500)
    recovered, _ = _recover(tmp_path, later)
    assert recovered.ttl(b"long3") == pytest.approx(1000 - 520)
    assert recovered.seq == 31

    expired = FakeClock(clock.now + 2000)
    recovered, _ = _recover(tmp_path, expired)
    assert recovered.get(b"long1") is None
    assert len(recovered) == 1 and recovered.get(b"forever") == b"f"


def test_ttl_survives_compaction(tmp_path: Path, clock: FakeClock) -> None:
    persistence, store, _ = _open(tmp_path, clock=clock)
    store.put(b"t", b"1", ttl=100)
    store.put(b"u", b"2")
    assert store.expire(b"u", 300)
    persistence.start_compaction(store)
    _compact_fully(persistence, store)
    persistence.close()
    clock.advance(50)
    recovered, report = _recover(tmp_path, clock)
    assert report.snapshot_seq == 3
    assert recovered.ttl(b"t") == pytest.approx(50)
    assert recovered.ttl(b"u") == pytest.approx(250)


# --------------------------------------------------------------------------- fsync policies


def test_fsync_always_is_one_per_flush_with_records(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path, "always")
    base = persistence.log.fsyncs
    for turn in range(1, 6):
        for i in range(25):  # group commit: 25 records, one fsync
            store.put(b"t%d-%d" % (turn, i), b"v")
        persistence.flush()
        assert persistence.log.fsyncs == base + turn
        persistence.flush()  # nothing new: no fsync
        assert persistence.log.fsyncs == base + turn
    persistence.close()
    recovered, _ = _recover(tmp_path)
    assert len(recovered) == 125


def test_fsync_no_never_fsyncs_on_flush(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path, "no")
    for turn in range(5):
        for i in range(10):
            store.put(b"t%d-%d" % (turn, i), b"v")
        persistence.flush()
    assert persistence.log.fsyncs == 0
    persistence.close()
    assert persistence.log.fsyncs == 0
    recovered, _ = _recover(tmp_path)
    assert len(recovered) == 50


def test_fsync_everysec_syncs_in_the_background(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path, "everysec")
    store.put(b"a", b"1")
    persistence.flush()
    assert persistence.log.fsyncs == 0  # flush alone does not fsync
    deadline = time.monotonic() + 20  # once a second, in a thread that may be slow to run
    while persistence.log.fsyncs == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert persistence.log.fsyncs >= 1
    persistence.close()
    assert persistence._syncer is not None and not persistence._syncer.is_alive()
    recovered, _ = _recover(tmp_path)
    assert recovered.get(b"a") == b"1"


# --------------------------------------------------------------------------- compaction


def _random_ops(
    store: Store, rng: random.Random, clock: FakeClock, keys: set[bytes], n: int
) -> None:
    for _ in range(n):
        key = b"key-%05d" % rng.randrange(12_000)
        r = rng.random()
        if r < 0.55:
            keys.add(key)
            ttl = rng.choice([None, None, None, 5.0, 50.0, 5000.0])
            store.put(key, rng.randbytes(rng.randrange(1, 24)), ttl=ttl)
        elif r < 0.7:
            store.delete(key)
        elif r < 0.78:
            items = [[b"m-%04d" % rng.randrange(2000), b"mv%d" % i] for i in range(3)]
            keys.update(k for k, _ in items)
            store.mput(items, ttl=rng.choice([None, 30.0]))
        elif r < 0.84:
            value = store.get(key)
            if value is not None:
                store.cas(key, value, value + b"+")
        elif r < 0.9:
            keys.add(key)
            store.create(key, b"created")
        elif r < 0.95:
            store.expire(key, rng.choice([-1.0, 3.0, 400.0]))
        elif r < 0.98:
            clock.advance(rng.random() * 2)
            store.sweep()
        else:
            store.get(key)  # may emit a DEL for an expired key


def test_compaction_while_writing_preserves_the_state(tmp_path: Path, clock: FakeClock) -> None:
    rng = random.Random(20240601)
    keys: set[bytes] = set()
    persistence, store, _ = _open(tmp_path, clock=clock, compact_ratio=1.0, compact_min_bytes=1)
    assert persistence.compact_min_bytes == 1
    _random_ops(store, rng, clock, keys, 3000)
    store.clear()
    _random_ops(store, rng, clock, keys, 16_000)
    persistence.flush()
    assert store.held > 2 * 2000  # at least three compaction steps

    snapshot_seqs: list[int] = []
    for _ in range(20_000):
        before = persistence.compacting
        persistence.maybe_compact(store)
        if not before and persistence.compacting:
            snapshot_seqs.append(store.seq)
            assert persistence.compacting
        _random_ops(store, rng, clock, keys, 25)
        persistence.flush()
        if persistence.compactions >= 2 and not persistence.compacting:
            break
        if persistence.compacting and persistence._writer is None:
            time.sleep(0.001)  # the finishing thread is fsyncing
    else:
        raise AssertionError("compactions did not complete")
    assert persistence.compactions == 2
    assert persistence.max_stall_s > 0
    newest = snapshot_seqs[1]

    # Old segments and older snapshots are gone; the current segment is all that is left.
    assert [s for s, _ in snapshots(tmp_path)] == [newest]
    assert [s.first_seq for s in segments(tmp_path)] == [newest + 1]
    assert not list(tmp_path.glob("*.tmp"))
    assert persistence.log_bytes == _only_segment(tmp_path).stat().st_size

    _random_ops(store, rng, clock, keys, 500)
    persistence.close()
    ok, lines = check_directory(tmp_path)
    assert ok is True and len(lines) == 2

    recovered, report = _recover(tmp_path, clock)
    assert report.snapshot_seq == newest
    assert report.records == store.seq - newest
    assert report.seq == store.seq and report.warnings == []
    _assert_same(store, recovered, keys)

    # And once more, from the folder the recovery just reopened.
    again, report = _recover(tmp_path, clock)
    assert report.warnings == []
    _assert_same(store, again, keys)


def test_compaction_deletes_covered_segments_and_older_snapshots(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    for round_ in range(3):
        for i in range(50):
            store.put(b"k%d" % i, b"r%d" % round_)
        persistence.flush()
        persistence.log.rotate(store.seq + 1)  # several segments before compacting
        store.put(b"x%d" % round_, b"x")
    persistence.flush()
    assert len(segments(tmp_path)) == 4
    SnapshotWriter(tmp_path, 5).finish()  # an older snapshot lying around

    persistence.start_compaction(store)
    seq = store.seq
    assert persistence.compacting
    persistence.start_compaction(store)  # already compacting: ignored
    store.put(b"during", b"d")
    persistence.flush()
    _compact_fully(persistence, store)
    assert persistence.compactions == 1
    assert [s for s, _ in snapshots(tmp_path)] == [seq]
    assert [s.first_seq for s in segments(tmp_path)] == [seq + 1]
    assert [r[0] for r in _records(_only_segment(tmp_path))] == [seq + 1]
    persistence.close()

    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq == seq and report.snapshot_keys == 53 and report.records == 1
    _assert_same(store, recovered, {b"k%d" % i for i in range(50)} | {b"during", b"x0"})


def test_maybe_compact_threshold(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path, compact_ratio=2.0, compact_min_bytes=10_000)
    for i in range(100):
        store.put(b"k%03d" % i, b"v" * 40)  # ~4.7 KB of data, ~6 KB of log
    persistence.flush()
    persistence.maybe_compact(store)
    assert not persistence.compacting  # under compact_min_bytes
    for _ in range(3):
        for i in range(100):
            store.put(b"k%03d" % i, b"w" * 40)
    persistence.flush()
    assert persistence.log_bytes > 10_000
    assert persistence.log_bytes > 2 * store.data_bytes
    persistence.maybe_compact(store)
    assert persistence.compacting
    _compact_fully(persistence, store)
    assert persistence.log_bytes == len(LOG_MAGIC)
    persistence.close()


def test_close_during_a_compaction_walk_keeps_the_log(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(5000):
        store.put(b"k%05d" % i, b"v")
    persistence.start_compaction(store)
    persistence.maybe_compact(store)  # one step: not done with 5000 keys
    assert persistence._writer is not None
    store.put(b"late", b"l")
    persistence.close()
    assert snapshots(tmp_path) == []
    assert not list(tmp_path.glob("*.tmp"))
    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq is None and report.records == 5001
    assert len(recovered) == 5001 and recovered.get(b"late") == b"l"


def test_close_while_the_snapshot_is_finishing_completes_it(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    for i in range(100):
        store.put(b"k%d" % i, b"v")
    persistence.start_compaction(store)
    persistence.maybe_compact(store)  # the only step: hands over to the finishing thread
    assert persistence._writer is None and persistence.compacting
    persistence.close()
    assert persistence.compactions == 1
    assert [s for s, _ in snapshots(tmp_path)] == [100]
    assert [s.first_seq for s in segments(tmp_path)] == [101]
    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq == 100 and len(recovered) == 100


def test_fuzzy_snapshot_replay(tmp_path: Path, clock: FakeClock) -> None:
    """Writes between compaction steps to slots walked before and after."""
    persistence, store, _ = _open(tmp_path, clock=clock)
    keys = {b"k%05d" % i for i in range(6000)}
    for key in sorted(keys):
        store.put(key, b"v0")
    persistence.start_compaction(store)
    step = 0
    ordered = sorted(keys)
    deadline = time.monotonic() + COMPACT_WAIT_S  # its last step is a thread's fsync
    while persistence.compacting:
        persistence.maybe_compact(store)
        step += 1
        for key in ordered[step::97]:
            store.put(key, b"v%d" % step, ttl=100 if step % 2 else None)
        for key in ordered[step + 1 :: 89]:
            store.delete(key)
        persistence.flush()
        time.sleep(0.001)
        assert time.monotonic() < deadline, f"compaction not finished after {COMPACT_WAIT_S} s"
    assert step > 2
    persistence.close()
    recovered, report = _recover(tmp_path, clock)
    assert report.snapshot_seq == 6000
    _assert_same(store, recovered, keys)


def test_compaction_with_nothing_new_since_the_last_one(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    store.put(b"a", b"1")
    persistence.start_compaction(store)
    _compact_fully(persistence, store)
    persistence.start_compaction(store)  # no write since: the rotation target exists
    store.put(b"b", b"2")
    persistence.flush()
    persistence.close()
    recovered, _ = _recover(tmp_path)
    assert recovered.get(b"b") == b"2"


def test_maybe_compact_on_an_empty_store_with_min_bytes_zero(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path, compact_ratio=2.0, compact_min_bytes=0)
    persistence.maybe_compact(store)  # log 8 bytes > max(0, 2.0 * 0)
    store.put(b"a", b"1")
    persistence.flush()
    persistence.close()
    recovered, _ = _recover(tmp_path)
    assert recovered.get(b"a") == b"1"


def test_fuzzy_snapshot_expire_then_delete(tmp_path: Path, clock: FakeClock) -> None:
    persistence, store, _ = _open(tmp_path, clock=clock)
    store.put(b"k", b"v")
    store.put(b"other", b"x")
    persistence.start_compaction(store)  # snapshot as of seq 2; k walked later
    store.expire(b"k", 10)  # EXPIRE_AT k (seq 3)
    store.delete(b"k")  # DEL k (seq 4): the snapshot will not hold k
    persistence.flush()
    _compact_fully(persistence, store)
    persistence.close()

    recovered, report = _recover(tmp_path, clock)
    assert report.snapshot_seq == 2 and report.records == 2
    clock.advance(100)
    recovered.primary = store.primary = False
    assert len(recovered) == len(store) == 1  # replica view: only "other"
    recovered.primary = store.primary = True
    seq = recovered.seq
    assert len(recovered) == 1
    assert recovered.seq == seq  # no DEL for a key that does not exist


def test_old_log_and_snapshot_only_once(tmp_path: Path) -> None:
    """Records both in the snapshot and in a segment it covers are applied once."""
    persistence, store, _ = _open(tmp_path)
    for i in range(10):
        store.put(b"k%d" % i, b"v")
    store.delete(b"k0")
    persistence.close()
    _write_store_snapshot(tmp_path, store)  # seq 11; the log 1..11 stays too
    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq == 11 and report.records == 0
    assert len(recovered) == 9 and recovered.get(b"k0") is None


def _iter_records(directory: Path) -> Iterator[list[Any]]:
    for segment in segments(directory):
        yield from _records(segment.path)


def test_log_holds_msgpack_seq_op_args(tmp_path: Path, clock: FakeClock) -> None:
    persistence, store, _ = _open(tmp_path, clock=clock)
    store.put(b"a", b"1", ttl=5)
    store.delete(b"a")
    store.clear()
    persistence.close()
    assert list(_iter_records(tmp_path)) == [
        [1, RecordOp.SET, b"a", b"1", clock.now + 5],
        [2, RecordOp.DEL, b"a"],
        [3, RecordOp.CLEAR],
    ]
