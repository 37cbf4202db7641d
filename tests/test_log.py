"""Storage-level tests for zkv.storage.log (framing, scan_file, segments, AppendLog) and
zkv.storage.snapshot (SnapshotWriter, load_snapshot), on real files in tmp_path."""

from __future__ import annotations

import random
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from zkv.errors import StorageCorrupted
from zkv.storage.log import (
    FRAME_HEADER,
    LOG_MAGIC,
    AppendLog,
    Segment,
    encode_frame,
    read_frames,
    scan_file,
    segment_path,
    segments,
)
from zkv.storage.snapshot import (
    SNAPSHOT_MAGIC,
    SnapshotWriter,
    load_snapshot,
    snapshot_path,
    snapshots,
)

PAYLOADS = [
    b"x",
    b"hello world",
    bytes(range(256)),
    b"\x00" * 1000,
    random.Random(7).randbytes(70_000),
]


def _framed(payloads: list[bytes], magic: bytes = LOG_MAGIC) -> bytes:
    return magic + b"".join(encode_frame(p) for p in payloads)


def _offsets(payloads: list[bytes], start: int = len(LOG_MAGIC)) -> list[int]:
    """Where each payload's frame starts in ``_framed(payloads)``."""
    out = []
    offset = start
    for p in payloads:
        out.append(offset)
        offset += FRAME_HEADER.size + len(p)
    return out


# --------------------------------------------------------------------------- framing


def test_encode_frame_layout() -> None:
    frame = encode_frame(b"abc")
    assert frame[:8] == struct.pack(">II", 3, zlib.crc32(b"abc"))
    assert frame[8:] == b"abc"
    assert len(encode_frame(b"")) == 8


def test_read_frames_round_trip() -> None:
    data = b"".join(encode_frame(p) for p in PAYLOADS)
    got = list(read_frames(data, 0))
    assert [p for _, p in got] == PAYLOADS
    assert [o for o, _ in got] == _offsets(PAYLOADS, start=0)


def test_read_frames_from_a_start_offset_and_memoryview() -> None:
    data = _framed(PAYLOADS)
    got = list(read_frames(memoryview(data), len(LOG_MAGIC)))
    assert [p for _, p in got] == PAYLOADS
    # Starting at the second frame skips the first.
    second = _offsets(PAYLOADS)[1]
    assert [p for _, p in read_frames(data, second)] == PAYLOADS[1:]


def test_read_frames_empty_input() -> None:
    assert list(read_frames(b"", 0)) == []


def test_zeros_stop_reading_like_a_torn_tail() -> None:
    # a machine crash can leave a file's new length with blocks never written: zeros read
    # as an empty frame whose checksum matches (crc32(b"") == 0); no real record is empty
    data = encode_frame(b"x") + bytes(64)
    assert [p for _, p in read_frames(data, 0)] == [b"x"]
    assert list(read_frames(b"\x00\x00\x00", 0)) == []  # shorter than a header


@pytest.mark.parametrize("bad_index", [0, 2, 4])
def test_read_frames_stops_at_first_bad_checksum(bad_index: int) -> None:
    payloads = [b"rec-%d" % i + b"." * i for i in range(6)]
    data = bytearray(b"".join(encode_frame(p) for p in payloads))
    offset = _offsets(payloads, start=0)[bad_index]
    data[offset + FRAME_HEADER.size] ^= 0x01  # first payload byte
    got = [p for _, p in read_frames(bytes(data), 0)]
    assert got == payloads[:bad_index]  # valid frames after the bad one are NOT returned


def test_read_frames_stops_at_cut_short_frame() -> None:
    payloads = [b"a" * 10, b"b" * 10, b"c" * 10]
    data = b"".join(encode_frame(p) for p in payloads)
    for cut in range(len(data)):
        got = [p for _, p in read_frames(data[:cut], 0)]
        whole = sum(1 for end in (18, 36, 54) if end <= cut)
        assert got == payloads[:whole], cut


def test_read_frames_rejects_length_beyond_data() -> None:
    bogus = struct.pack(">II", 1000, zlib.crc32(b"abc")) + b"abc"
    assert list(read_frames(encode_frame(b"ok") + bogus, 0)) == [(0, b"ok")]


# --------------------------------------------------------------------------- scan_file


def test_scan_file_clean(tmp_path: Path) -> None:
    path = tmp_path / "f.zkv"
    path.write_bytes(_framed(PAYLOADS))
    scan, payloads = scan_file(path, LOG_MAGIC)
    assert payloads == PAYLOADS
    assert scan.clean and not scan.torn_tail
    assert scan.frames == len(PAYLOADS)
    assert scan.good_end == scan.size == path.stat().st_size
    assert scan.problem is None and scan.valid_after is None
    assert scan.path == path


def test_scan_file_uses_given_data_instead_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.zkv"
    path.write_bytes(b"garbage")
    scan, payloads = scan_file(path, LOG_MAGIC, data=_framed([b"a", b"b"]))
    assert scan.clean and payloads == [b"a", b"b"]


def test_scan_file_only_magic(tmp_path: Path) -> None:
    path = tmp_path / "f.zkv"
    path.write_bytes(LOG_MAGIC)
    scan, payloads = scan_file(path, LOG_MAGIC)
    assert scan.clean and payloads == [] and scan.good_end == 8 and scan.frames == 0


@pytest.mark.parametrize("size", range(len(LOG_MAGIC)))
def test_scan_file_cut_inside_magic_is_a_torn_tail(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f.zkv"
    path.write_bytes(LOG_MAGIC[:size])
    scan, payloads = scan_file(path, LOG_MAGIC)
    assert payloads == []
    assert scan.torn_tail and not scan.clean
    assert scan.good_end == 0 and scan.size == size
    assert scan.problem == f"file is {size} bytes, cut inside its header"


@pytest.mark.parametrize("data", [b"NOTZKV!!" + encode_frame(b"x"), b"XY", b"ZKVSNAP1"])
def test_scan_file_bad_magic_is_not_a_torn_tail(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f.zkv"
    path.write_bytes(data)
    scan, payloads = scan_file(path, LOG_MAGIC)
    assert payloads == []
    assert scan.problem == "not a zkv file (bad magic)"
    assert scan.valid_after == 0
    assert not scan.torn_tail and not scan.clean


def test_scan_file_torn_tail_at_every_offset(tmp_path: Path) -> None:
    payloads = [b"record-%03d" % i + b"z" * (i % 7) for i in range(12)]
    full = _framed(payloads)
    offsets = _offsets(payloads)
    last = offsets[-1]
    path = tmp_path / "f.zkv"
    for cut in range(last + 1, len(full)):
        path.write_bytes(full[:cut])
        scan, got = scan_file(path, LOG_MAGIC)
        assert got == payloads[:-1], cut
        assert scan.torn_tail, cut
        assert scan.good_end == last and scan.size == cut
        assert scan.frames == len(payloads) - 1
        if cut - last < FRAME_HEADER.size:
            assert scan.problem == f"record header cut short ({cut - last} of 8 bytes)"
        else:
            assert scan.problem == f"record of {len(payloads[-1])} bytes cut short"


def test_scan_file_checksum_mismatch_at_tail(tmp_path: Path) -> None:
    payloads = [b"one", b"two", b"three"]
    data = bytearray(_framed(payloads))
    data[-1] ^= 0xFF
    path = tmp_path / "f.zkv"
    path.write_bytes(bytes(data))
    scan, got = scan_file(path, LOG_MAGIC)
    assert got == payloads[:2]
    assert scan.problem == "record checksum mismatch"
    assert scan.torn_tail
    assert scan.good_end == _offsets(payloads)[2]


def test_scan_file_mid_file_corruption_finds_the_next_valid_frame(tmp_path: Path) -> None:
    payloads = [msgpack.packb([i, 1, b"key%d" % i, b"v" * 20, None]) for i in range(1, 21)]
    offsets = _offsets(payloads)
    path = tmp_path / "f.zkv"
    for bad in (0, 5, 18):
        data = bytearray(_framed(payloads))
        data[offsets[bad] + FRAME_HEADER.size + 3] ^= 0x40
        path.write_bytes(bytes(data))
        scan, got = scan_file(path, LOG_MAGIC)
        assert got == payloads[:bad]
        assert scan.problem == "record checksum mismatch"
        assert scan.good_end == offsets[bad]
        assert scan.valid_after == offsets[bad + 1]
        assert not scan.torn_tail and not scan.clean


def test_scan_file_garbage_at_the_tail_is_a_torn_tail(tmp_path: Path) -> None:
    payloads = [b"a" * 30, b"b" * 30]
    path = tmp_path / "f.zkv"
    rng = random.Random(11)
    for _ in range(50):
        junk = rng.randbytes(rng.randrange(1, 64))
        path.write_bytes(_framed(payloads) + junk)
        scan, got = scan_file(path, LOG_MAGIC)
        assert got == payloads
        assert scan.good_end == len(_framed(payloads))
        assert scan.torn_tail, junk


# --------------------------------------------------------------------------- segments


def test_segments_sorted_numerically_and_filtered(tmp_path: Path) -> None:
    for seq in (100, 2, 30):
        segment_path(tmp_path, seq).write_bytes(LOG_MAGIC)
    for name in (
        "log-abc.zkv",
        "log-00000000000000000007.zkv.corrupt",
        "log-00000000000000000008.zkv.tmp",
        "snapshot-00000000000000000005.zkv",
        "other.zkv",
        "log-.zkv",
    ):
        (tmp_path / name).write_bytes(b"")
    found = segments(tmp_path)
    assert [s.first_seq for s in found] == [2, 30, 100]
    assert found[0] == Segment(tmp_path / "log-00000000000000000002.zkv", 2)
    assert segments(tmp_path / "nothing-here") == []


def test_segment_path_name() -> None:
    assert segment_path(Path("/d"), 42).name == "log-00000000000000000042.zkv"


# --------------------------------------------------------------------------- AppendLog


def _log_payloads(path: Path) -> list[bytes]:
    scan, payloads = scan_file(path, LOG_MAGIC)
    assert scan.clean, scan.problem
    return payloads


def test_append_log_open_starts_a_segment_with_magic(tmp_path: Path) -> None:
    log = AppendLog(tmp_path, "no")
    log.open(7)
    assert log.path == tmp_path / "log-00000000000000000007.zkv"
    assert log.path.read_bytes() == LOG_MAGIC
    assert log.segment_bytes == len(LOG_MAGIC)
    assert log.fileno() is not None
    log.close()
    assert log.fileno() is None
    log.close()  # twice is harmless


def test_append_log_buffers_until_flush(tmp_path: Path) -> None:
    log = AppendLog(tmp_path, "no")
    log.open(1)
    assert log.path is not None
    assert not log.pending
    log.append(b"first")
    log.append(b"second")
    assert log.pending
    assert log.path.read_bytes() == LOG_MAGIC  # nothing reached the OS yet
    assert log.segment_bytes == 8 + 8 + 5 + 8 + 6  # buffered appends are counted
    log.flush()
    assert not log.pending
    assert _log_payloads(log.path) == [b"first", b"second"]
    assert log.path.stat().st_size == log.segment_bytes
    log.flush()  # nothing pending: no change
    assert log.path.stat().st_size == log.segment_bytes
    log.close()


def test_append_log_close_flushes(tmp_path: Path) -> None:
    log = AppendLog(tmp_path, "no")
    log.open(1)
    log.append(b"pending")
    log.close()
    assert _log_payloads(segment_path(tmp_path, 1)) == [b"pending"]


def test_append_log_reopen_appends_to_newest_segment(tmp_path: Path) -> None:
    log = AppendLog(tmp_path, "no")
    log.open(1)
    log.append(b"a")
    log.rotate(2)
    log.append(b"b")
    log.close()
    again = AppendLog(tmp_path, "no")
    again.open(999)  # existing segments win over first_seq
    assert again.path == segment_path(tmp_path, 2)
    assert again.segment_bytes == segment_path(tmp_path, 2).stat().st_size
    again.append(b"c")
    again.close()
    assert [s.first_seq for s in segments(tmp_path)] == [1, 2]
    assert _log_payloads(segment_path(tmp_path, 1)) == [b"a"]
    assert _log_payloads(segment_path(tmp_path, 2)) == [b"b", b"c"]


def test_append_log_rotate(tmp_path: Path) -> None:
    log = AppendLog(tmp_path, "no")
    log.open(1)
    for i in range(5):
        log.append(b"r%d" % i)
    fsyncs = log.fsyncs
    log.rotate(6)
    assert log.fsyncs == fsyncs + 1  # rotate fsyncs the old segment even under "no"
    assert log.path == segment_path(tmp_path, 6)
    assert log.segment_bytes == len(LOG_MAGIC)
    log.append(b"r5")
    log.close()
    assert _log_payloads(segment_path(tmp_path, 1)) == [b"r%d" % i for i in range(5)]
    assert _log_payloads(segment_path(tmp_path, 6)) == [b"r5"]


def test_append_log_rotate_to_existing_name_fails(tmp_path: Path) -> None:
    log = AppendLog(tmp_path, "no")
    log.open(1)
    with pytest.raises(FileExistsError):
        log.rotate(1)


@pytest.mark.parametrize(
    ("policy", "flush_fsyncs", "close_fsyncs"),
    [("always", 1, 1), ("everysec", 0, 1), ("no", 0, 0)],
)
def test_append_log_fsync_policy(
    tmp_path: Path, policy: str, flush_fsyncs: int, close_fsyncs: int
) -> None:
    log = AppendLog(tmp_path, policy)
    log.open(1)
    assert log.fsyncs == 0
    for turn in range(3):
        for i in range(10):  # group commit: 10 appends, one flush
            log.append(b"t%d-%d" % (turn, i))
        log.flush()
        assert log.fsyncs == flush_fsyncs * (turn + 1)
    log.flush()  # nothing pending: no fsync
    assert log.fsyncs == flush_fsyncs * 3
    log.sync()
    assert log.fsyncs == flush_fsyncs * 3 + 1
    log.close()
    assert log.fsyncs == flush_fsyncs * 3 + 1 + close_fsyncs
    assert len(_log_payloads(segment_path(tmp_path, 1))) == 30


def test_append_log_flush_writes_large_buffers(tmp_path: Path) -> None:
    log = AppendLog(tmp_path, "no")
    log.open(1)
    big = [random.Random(i).randbytes(300_000) for i in range(8)]
    for p in big:
        log.append(p)
    log.flush()
    log.close()
    assert _log_payloads(segment_path(tmp_path, 1)) == big


# --------------------------------------------------------------------------- snapshots


def _items(n: int, seed: int = 1) -> list[Any]:
    rng = random.Random(seed)
    flat: list[Any] = []
    for i in range(n):
        expires = None if i % 3 else 1_000_000.0 + rng.random() * 100
        flat += [b"key-%05d" % i, rng.randbytes(rng.randrange(0, 40)), expires]
    return flat


def _write_snapshot(directory: Path, seq: int, flat: list[Any], chunk_keys: int = 7) -> Path:
    writer = SnapshotWriter(directory, seq)
    for i in range(0, len(flat), chunk_keys * 3):
        writer.write(flat[i : i + chunk_keys * 3])
    return writer.finish()


def _load_all(path: Path) -> tuple[int, list[Any]]:
    seq, chunks = load_snapshot(path)
    flat: list[Any] = []
    for chunk in chunks:
        flat += chunk
    return seq, flat


def test_snapshot_round_trip(tmp_path: Path) -> None:
    flat = _items(100)
    writer = SnapshotWriter(tmp_path, 1234)
    assert writer.tmp.exists() and not writer.path.exists()
    for i in range(0, len(flat), 30):
        writer.write(flat[i : i + 30])
    writer.write([])  # empty chunks are dropped
    assert writer.keys == 100
    path = writer.finish()
    assert path == snapshot_path(tmp_path, 1234) == writer.path
    assert path.name == "snapshot-00000000000000001234.zkv"
    assert not writer.tmp.exists()
    assert path.read_bytes().startswith(SNAPSHOT_MAGIC)
    assert writer.bytes == path.stat().st_size
    seq, got = _load_all(path)
    assert seq == 1234
    assert got == flat


def test_snapshot_empty(tmp_path: Path) -> None:
    path = SnapshotWriter(tmp_path, 0).finish()
    seq, chunks = load_snapshot(path)
    assert seq == 0 and list(chunks) == []


def test_snapshot_abort_removes_tmp(tmp_path: Path) -> None:
    writer = SnapshotWriter(tmp_path, 5)
    writer.write(_items(3))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_snapshots_listed_newest_first(tmp_path: Path) -> None:
    for seq in (3, 100, 20):
        SnapshotWriter(tmp_path, seq).finish()
    (tmp_path / "snapshot-abc.zkv").write_bytes(b"")
    (tmp_path / "snapshot-00000000000000000999.zkv.tmp").write_bytes(b"")
    segment_path(tmp_path, 1).write_bytes(LOG_MAGIC)
    assert [s for s, _ in snapshots(tmp_path)] == [100, 20, 3]
    assert snapshots(tmp_path)[0][1] == snapshot_path(tmp_path, 100)


def test_snapshot_is_checked_whole_before_the_first_chunk(tmp_path: Path) -> None:
    path = _write_snapshot(tmp_path, 9, _items(50))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the end frame
    path.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted) as info:
        load_snapshot(path)  # raised before any chunk could be applied
    assert str(path) in str(info.value)


def test_snapshot_without_end_frame_is_rejected(tmp_path: Path) -> None:
    path = snapshot_path(tmp_path, 4)
    chunk = msgpack.packb(_items(5), use_bin_type=True)
    path.write_bytes(SNAPSHOT_MAGIC + encode_frame(msgpack.packb({"seq": 4})) + encode_frame(chunk))
    with pytest.raises(StorageCorrupted, match=re.escape(str(path))):
        load_snapshot(path)
    path.write_bytes(SNAPSHOT_MAGIC + encode_frame(msgpack.packb({"seq": 4})))
    with pytest.raises(StorageCorrupted, match="no header or end frame"):
        load_snapshot(path)
    path.write_bytes(SNAPSHOT_MAGIC)
    with pytest.raises(StorageCorrupted, match="no header or end frame"):
        load_snapshot(path)


@pytest.mark.parametrize(
    ("header", "end"),
    [
        ({"seq": 4}, {"end": False, "keys": 0}),
        ({"seq": "4"}, {"end": True, "keys": 0}),
        ({"nope": 4}, {"end": True, "keys": 0}),
        ({"seq": 4}, {"end": True, "keys": "0"}),
        ([4], {"end": True, "keys": 0}),
        ({"seq": 4}, {"end": True}),
    ],
)
def test_snapshot_bad_header_or_end_frame(tmp_path: Path, header: Any, end: Any) -> None:
    path = snapshot_path(tmp_path, 4)
    path.write_bytes(
        SNAPSHOT_MAGIC + encode_frame(msgpack.packb(header)) + encode_frame(msgpack.packb(end))
    )
    with pytest.raises(StorageCorrupted, match=re.escape(str(path))):
        load_snapshot(path)


def test_snapshot_key_count_mismatch_is_rejected_while_reading(tmp_path: Path) -> None:
    writer = SnapshotWriter(tmp_path, 8)
    writer.write(_items(10))
    writer.keys += 1  # the end frame will claim 11 keys
    path = writer.finish()
    seq, chunks = load_snapshot(path)
    assert seq == 8
    with pytest.raises(StorageCorrupted, match="end frame says 11 keys, found 10"):
        list(chunks)


def test_snapshot_truncated_at_every_offset_is_rejected(tmp_path: Path) -> None:
    full = _write_snapshot(tmp_path, 77, _items(20)).read_bytes()
    path = tmp_path / "cut" / "snapshot-00000000000000000077.zkv"
    path.parent.mkdir()
    for cut in range(len(full)):
        path.write_bytes(full[:cut])
        with pytest.raises(StorageCorrupted):
            load_snapshot(path)
    path.write_bytes(full)
    assert _load_all(path) == (77, _items(20))


def test_snapshot_flipped_byte_anywhere_is_rejected(tmp_path: Path) -> None:
    full = _write_snapshot(tmp_path, 77, _items(20)).read_bytes()
    path = tmp_path / "flip" / "snapshot-00000000000000000077.zkv"
    path.parent.mkdir()
    for pos in range(len(full)):
        for mask in (0x01, 0x80):
            data = bytearray(full)
            data[pos] ^= mask
            path.write_bytes(bytes(data))
            with pytest.raises(StorageCorrupted):
                _load_all(path)


def test_snapshot_appended_garbage_is_rejected(tmp_path: Path) -> None:
    path = _write_snapshot(tmp_path, 3, _items(4))
    with open(path, "ab") as f:
        f.write(b"\x00\x01")
    with pytest.raises(StorageCorrupted, match="at offset"):
        load_snapshot(path)
