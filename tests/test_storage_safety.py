"""Recovery never silently empties or shortens a node; ``zkv check`` says so; ``set_aside``.

Real files in ``tmp_path``: a folder is written by a real ``Persistence`` and ``Store``,
then damaged the way a disk, an operator or a second process would damage it.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from zkv.cli import main
from zkv.errors import StorageCorrupted
from zkv.storage.engine import Store
from zkv.storage.lock import LOCK_NAME, lock_folder
from zkv.storage.log import FRAME_HEADER, LOG_MAGIC, encode_frame, read_frames, scan_file, segments
from zkv.storage.persistence import Persistence
from zkv.storage.recovery import Recovery, check_directory
from zkv.storage.snapshot import SnapshotWriter, snapshot_path, snapshots

SLOTS = 256


# --------------------------------------------------------------------------- helpers


def _open(directory: Path) -> tuple[Persistence, Store, Recovery]:
    store = Store(SLOTS)
    persistence = Persistence(directory, "no")
    return persistence, store, persistence.recover(store)


def _recover(directory: Path) -> tuple[Store, Recovery]:
    persistence, store, report = _open(directory)
    persistence.close()
    return store, report


def _refused(directory: Path) -> StorageCorrupted:
    """Recover ``directory``, which must fail; the error (the folder must be unchanged)."""
    before = _files(directory)
    with pytest.raises(StorageCorrupted) as info:
        Persistence(directory, "no").recover(Store(SLOTS))
    assert _files(directory) == before, "a refused recovery changed files"
    message = str(info.value)
    assert "\n" not in message
    return info.value


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative name -> content)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _puts(persistence: Persistence, store: Store, first: int, last: int) -> None:
    for i in range(first, last + 1):
        store.put(b"k%03d" % i, b"v%03d" % i)
    persistence.flush()


def _compact(persistence: Persistence, store: Store) -> None:
    persistence.start_compaction(store)
    deadline = time.monotonic() + 30  # its last step is a thread's fsync: no bound on speed
    while time.monotonic() < deadline:
        persistence.maybe_compact(store)
        if not persistence.compacting:
            return
        time.sleep(0.001)
    raise AssertionError("compaction not finished after 30 s")


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


def _offsets(path: Path) -> list[int]:
    return [offset for offset, _ in read_frames(path.read_bytes(), len(LOG_MAGIC))]


def _seqs(path: Path) -> list[int]:
    _, payloads = scan_file(path, LOG_MAGIC)
    return [msgpack.unpackb(p)[0] for p in payloads]


def _state(store: Store) -> dict[bytes, Any]:
    return {b"k%03d" % i: store.get(b"k%03d" % i) for i in range(1, 100)}


def _check_cli(directory: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> int:
    capsys.readouterr()
    return main(["check", "--data", str(directory), *extra])


def _compacted_at_30(directory: Path) -> Path:
    """Records 1..30 compacted into snapshot-30 (log-1 deleted), an empty log-31; closed."""
    persistence, store, _ = _open(directory)
    _puts(persistence, store, 1, 30)
    _compact(persistence, store)
    persistence.close()
    assert sorted(p.name for p in directory.iterdir()) == [
        "log-00000000000000000031.zkv",
        "snapshot-00000000000000000030.zkv",
    ]
    return snapshot_path(directory, 30)


# --------------------------------------------------------------------------- the error


def test_storage_corrupted_keeps_its_plain_constructor() -> None:
    err = StorageCorrupted("plain")
    assert str(err) == "plain" and err.path is None and err.offset is None and err.last_seq == 0
    err = StorageCorrupted("x", path=Path("f"), offset=8, last_seq=5)
    assert (err.path, err.offset, err.last_seq) == (Path("f"), 8, 5)


# --------------------------------------------------------------------------- evidence


def test_only_snapshot_corrupt_and_empty_log_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = _compacted_at_30(tmp_path)
    _flip(snap, snap.stat().st_size // 2)

    err = _refused(tmp_path)
    assert str(err).startswith(f"{snap}: damaged (")
    assert "records 1..30 are missing" in str(err)
    assert err.path == snap and err.last_seq == 30

    ok, lines = check_directory(tmp_path)
    assert ok is False
    assert lines[0].startswith(f"{snap.name}: BAD: ")
    assert lines[-1].startswith(f"{snap.name}: HISTORY SHORT: ")
    assert "records 1..30 are missing" in lines[-1]
    assert _check_cli(tmp_path, capsys) == 1


def test_only_snapshot_corrupt_and_log_continuing_it_refuses(tmp_path: Path) -> None:
    snap = _compacted_at_30(tmp_path)
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 31, 35)
    persistence.close()
    _flip(snap, snap.stat().st_size // 2)
    log_31 = segments(tmp_path)[0].path
    size = log_31.stat().st_size
    with open(log_31, "ab") as f:  # and a torn tail, which must not be cut by a refusal
        f.write(b"\x00\x00")

    err = _refused(tmp_path)
    assert err.path == snap and err.last_seq == 35
    assert "records 1..30 are missing" in str(err) and log_31.name in str(err)
    assert log_31.stat().st_size == size + 2

    ok, lines = check_directory(tmp_path)
    assert ok is False
    assert any("GAP" in line and "records 1..30 are missing" in line for line in lines)


def test_empty_segment_beyond_the_records_refuses(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 1, 5)
    persistence.close()
    beyond = tmp_path / "log-00000000000000000011.zkv"
    beyond.write_bytes(LOG_MAGIC)  # says records 1..10 existed; 6..10 are nowhere

    err = _refused(tmp_path)
    assert str(err).startswith(f"{beyond}: its name says history reached seq 10")
    assert "records 6..10 are missing" in str(err)
    assert err.path == beyond and err.offset is None and err.last_seq == 10
    ok, lines = check_directory(tmp_path)
    assert ok is False and lines[-1].startswith(f"{beyond.name}: HISTORY SHORT")


def test_bad_newest_snapshot_with_older_snapshot_and_continuous_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap_30 = _compacted_at_30(tmp_path)
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 31, 50)
    store.delete(b"k001")
    persistence.close()
    writer = SnapshotWriter(tmp_path, store.seq)  # as of 51; log-31 stays (not compacted)
    for slot in store.slot_numbers():
        writer.write(store.slot_items(slot))
    snap_51 = writer.finish()
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 52, 55)
    persistence.close()
    _flip(snap_51, snap_51.stat().st_size - 3)

    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq == 30 and recovered.seq == 55 and report.records == 25
    assert len(report.warnings) == 1 and snap_51.name in report.warnings[0]
    assert _state(recovered) == _state(store)

    ok, lines = check_directory(tmp_path)
    assert ok is False  # the bad snapshot is reported, though recovery does without it
    assert [line.split(":")[0] for line in lines] == [
        snap_51.name,
        snap_30.name,
        "log-00000000000000000031.zkv",
    ]
    assert "BAD" in lines[0] and lines[2].endswith("(records 31..55): ok")
    assert _check_cli(tmp_path, capsys) == 1


def test_bad_newest_snapshot_whose_log_was_compacted_away_refuses(tmp_path: Path) -> None:
    snap_30 = _compacted_at_30(tmp_path)
    keep = tmp_path.parent / "snapshot-30-copy"
    shutil.copy(snap_30, keep)
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 31, 40)
    _compact(persistence, store)  # snapshot-40; deletes log-31 and snapshot-30
    _puts(persistence, store, 41, 42)
    persistence.close()
    shutil.copy(keep, snap_30)  # an older valid snapshot is back, but 31..40 are not
    snap_40 = snapshot_path(tmp_path, 40)
    _flip(snap_40, snap_40.stat().st_size // 2)

    err = _refused(tmp_path)
    assert err.path == snap_40 and err.last_seq == 42
    assert "records 31..40 are missing" in str(err)


# --------------------------------------------------------------------------- sequence order


def _two_writers(directory: Path, rotate_first: bool) -> tuple[Path, int]:
    """Two ``Persistence`` objects append to one folder (no lock: what the lock prevents).

    Both recover records 1..5 from log-1. With ``rotate_first`` the first one rotates to
    log-6 and writes 6, 7 there while the second writes 6, 7 into log-1 (duplicates across
    segments); otherwise both write into log-1, turn by turn (duplicates within one). The
    file and offset of the first duplicate.
    """
    persistence, store, _ = _open(directory)
    _puts(persistence, store, 1, 5)
    persistence.close()
    p1, s1, _ = _open(directory)
    p2, s2, _ = _open(directory)
    log_1 = segments(directory)[0].path
    if rotate_first:
        p1.log.rotate(6)
        _puts(p1, s1, 6, 7)
        _puts(p2, s2, 6, 7)
        p1.close()
        p2.close()
        return directory / "log-00000000000000000006.zkv", len(LOG_MAGIC)
    _puts(p1, s1, 6, 6)
    _puts(p2, s2, 6, 6)
    _puts(p1, s1, 7, 7)
    p1.close()
    p2.close()
    return log_1, _offsets(log_1)[6]


@pytest.mark.parametrize("rotate_first", [True, False], ids=["across-segments", "within-one"])
def test_duplicate_seqs_from_two_writers_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rotate_first: bool
) -> None:
    path, offset = _two_writers(tmp_path, rotate_first)
    assert 6 in _seqs(path)

    err = _refused(tmp_path)
    assert err.path == path and err.offset == offset and err.last_seq == 7
    assert re.match(
        rf"{re.escape(str(path))}: sequence number 6 follows [67] at offset {offset}: "
        r"a duplicate or out of order \(did two processes append to this folder\?\); ",
        str(err),
    ), str(err)

    ok, lines = check_directory(tmp_path)
    assert ok is False
    bad = [line for line in lines if "CORRUPT" in line]
    assert len(bad) == 1 and bad[0].startswith(f"{path.name}: ")
    assert "sequence number 6 follows" in bad[0] and f"at offset {offset}" in bad[0]
    assert _check_cli(tmp_path, capsys) == 1

    # --repair cuts at the duplicate; what is left starts and is continuous
    ok, lines = check_directory(tmp_path, repair=True)
    assert ok is True, lines
    assert any(f"repaired: cut {path.name} at offset {offset}" in line for line in lines)
    store, _ = _recover(tmp_path)
    assert store.seq in (6, 7) and store.get(b"k005") == b"v005"


def _rewrite_segment(directory: Path, order: list[int]) -> Path:
    """Records 1..5 in log-1, rewritten with the record of each seq in ``order``."""
    persistence, store, _ = _open(directory)
    _puts(persistence, store, 1, 5)
    persistence.close()
    path = segments(directory)[0].path
    _, payloads = scan_file(path, LOG_MAGIC)
    path.write_bytes(LOG_MAGIC + b"".join(encode_frame(payloads[s - 1]) for s in order))
    return path


@pytest.mark.parametrize(
    ("order", "bad_index", "why"),
    [
        ([1, 2, 3, 2, 4], 3, "sequence number 2 follows 3 at offset {}: a duplicate or out"),
        ([1, 2, 4, 3, 5], 2, "number 4 follows 2 in the same file at offset {}: records 3..3"),
        ([1, 2, 3, 3], 3, "sequence number 3 follows 3 at offset {}: a duplicate"),
    ],
)
def test_misordered_records_within_a_segment(
    tmp_path: Path, order: list[int], bad_index: int, why: str
) -> None:
    path = _rewrite_segment(tmp_path, order)
    offset = _offsets(path)[bad_index]
    why = why.format(offset)
    err = _refused(tmp_path)
    assert why in str(err) and err.path == path and err.offset == offset
    assert err.last_seq == max(order)
    ok, lines = check_directory(tmp_path)
    assert ok is False and len(lines) == 1
    assert f"{bad_index} good records" in lines[0] and f"{why}" in lines[0]
    assert f"at offset {offset}" in lines[0]


def test_records_below_the_snapshot_are_skipped(tmp_path: Path) -> None:
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 1, 10)
    persistence.close()
    writer = SnapshotWriter(tmp_path, 10)
    for slot in store.slot_numbers():
        writer.write(store.slot_items(slot))
    writer.finish()
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 11, 12)
    persistence.close()
    recovered, report = _recover(tmp_path)
    assert report.snapshot_seq == 10 and report.records == 2 and recovered.seq == 12
    assert check_directory(tmp_path)[0] is True


# --------------------------------------------------------------------------- set_aside


def test_set_aside_moves_the_data_and_a_new_persistence_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "s0a"
    snap = _compacted_at_30(directory)
    persistence, store, _ = _open(directory)
    _puts(persistence, store, 31, 33)
    persistence.close()
    _flip(snap, snap.stat().st_size // 2)
    (directory / "log-00000000000000000001.zkv.corrupt").write_bytes(b"old repair")
    (directory / "snapshot-00000000000000000040.zkv.tmp").write_bytes(b"half a snapshot")
    earlier = directory / "damaged-20200101T000000Z"
    earlier.mkdir()
    (earlier / "log-00000000000000000001.zkv").write_bytes(LOG_MAGIC)
    lock = lock_folder(directory)
    try:
        data = {
            name: content
            for name, content in _files(directory).items()
            if "/" not in name and name != LOCK_NAME
        }
        assert len(data) == 4
        lock_bytes = (directory / LOCK_NAME).read_bytes()

        failed = Persistence(directory, "no")
        with pytest.raises(StorageCorrupted) as info:
            failed.recover(Store(SLOTS))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zkv.storage.persistence"):
            aside = failed.set_aside(str(info.value))

        assert aside.parent == directory
        assert re.fullmatch(r"damaged-\d{8}T\d{6}Z", aside.name)
        moved = {p.name: p.read_bytes() for p in aside.iterdir() if p.name != "README.txt"}
        assert moved == data  # everything, byte for byte
        readme = (aside / "README.txt").read_text()
        assert str(info.value) in readme and "snapshot-00000000000000000030.zkv" in readme
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            [LOCK_NAME, earlier.name, aside.name]
        )
        assert (directory / LOCK_NAME).read_bytes() == lock_bytes
        assert (earlier / "log-00000000000000000001.zkv").exists()  # left where it was
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [f"moved damaged data aside to {aside}: {info.value}"]

        fresh, empty, report = _open(directory)  # what the node does: new objects
        assert empty.seq == 0 and len(empty) == 0 and report.records == 0
        assert report.snapshot_seq is None and report.warnings == []
        empty.put(b"new", b"1")
        fresh.close()
        assert sorted(p.name for p in directory.glob("*.zkv")) == ["log-00000000000000000001.zkv"]
        again, _ = _recover(directory)
        assert again.get(b"new") == b"1" and again.seq == 1
        assert check_directory(directory)[0] is True
    finally:
        lock.release()


def test_recover_again_on_the_same_object_after_set_aside(tmp_path: Path) -> None:
    snap = _compacted_at_30(tmp_path)
    _flip(snap, snap.stat().st_size // 2)
    persistence = Persistence(tmp_path, "no")
    with pytest.raises(StorageCorrupted):
        persistence.recover(Store(SLOTS))
    first = persistence.set_aside("test")
    second = persistence.set_aside("nothing left")  # same second: a folder of its own
    assert first != second and second.name.startswith(first.name)
    assert [p.name for p in second.iterdir()] == ["README.txt"]
    store = Store(SLOTS)
    report = persistence.recover(store)
    assert report.seq == 0 and len(store) == 0
    with pytest.raises(RuntimeError, match="log closed"):
        persistence.set_aside("while open")
    persistence.close()
    assert snapshots(tmp_path) == [] and len(segments(tmp_path)) == 1


def test_segments_and_snapshots_ignore_damaged_folders(tmp_path: Path) -> None:
    _compacted_at_30(tmp_path)
    aside = Persistence(tmp_path, "no").set_aside("test")
    assert len(list(aside.glob("*.zkv"))) == 2
    assert segments(tmp_path) == [] and snapshots(tmp_path) == []
    ok, lines = check_directory(tmp_path)
    assert ok is True and lines == [f"{aside.name}/: files set aside earlier (not checked)"]


# --------------------------------------------------------------------------- zkv check


def test_check_cli_healthy_folder_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _compacted_at_30(tmp_path)
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 31, 32)
    persistence.close()
    with open(segments(tmp_path)[0].path, "ab") as f:
        f.write(FRAME_HEADER.pack(100, 0))  # a torn tail is fine
    assert _check_cli(tmp_path, capsys) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("snapshot as of seq 30, 30 keys: ok")
    assert "2 good records (records 31..32), then torn tail" in out[1]


def test_check_cli_missing_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _check_cli(tmp_path / "nosuch", capsys) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"zkv: {tmp_path / 'nosuch'}: no such folder"
    assert not (tmp_path / "nosuch").exists()


def test_repair_keeps_an_earlier_corrupt_file(tmp_path: Path) -> None:
    snap = _compacted_at_30(tmp_path)
    persistence, store, _ = _open(tmp_path)
    _puts(persistence, store, 31, 31)
    persistence.close()
    writer = SnapshotWriter(tmp_path, 31)
    for slot in store.slot_numbers():
        writer.write(store.slot_items(slot))
    snap_31 = writer.finish()
    _flip(snap_31, snap_31.stat().st_size // 2)
    earlier = snap_31.with_name(snap_31.name + ".corrupt")
    earlier.write_bytes(b"from an earlier repair")
    ok, lines = check_directory(tmp_path, repair=True)
    assert ok is True, lines
    assert earlier.read_bytes() == b"from an earlier repair"
    assert snap_31.with_name(snap_31.name + ".2.corrupt").exists() and not snap_31.exists()
    store, report = _recover(tmp_path)
    assert report.snapshot_seq == 30 and store.seq == 31 and snap.exists()
