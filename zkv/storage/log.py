"""AppendLog: the node's write-ahead log, as framed records in segment files.

A segment file is ``log-<first seq, 20 digits>.zkv``: the 8-byte magic ``ZKVLOG1\\n`` and
then frames. A frame is ``length u32 | crc32(payload) u32 | payload`` (big-endian); the
payload is opaque here (the engine puts msgpack ``[seq, op, *args]`` in it). Snapshot files
use the same framing (``encode_frame`` / ``read_frames``).

Appends go to an in-memory buffer; ``flush()`` hands the whole buffer to the OS in one
``write`` (and, under ``fsync: always``, one ``fsync``), so a node can log every write of
one loop turn with one system call before it acknowledges any of them (group commit).

Reading stops at the first frame that is cut short or fails its checksum. ``scan_file``
then tells a torn tail (nothing valid after it: a crash mid-write, safe to cut) from
corruption in the middle (a valid frame follows: data would be lost by cutting, so
recovery refuses and ``zkv check --repair`` is the operator's decision).

Standard library only.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

__all__ = [
    "LOG_MAGIC",
    "AppendLog",
    "FileScan",
    "Segment",
    "encode_frame",
    "fsync_dir",
    "read_frames",
    "scan_file",
    "segments",
]

log = logging.getLogger(__name__)

LOG_MAGIC: Final = b"ZKVLOG1\n"
FRAME_HEADER: Final = struct.Struct(">II")
#: No frame is larger than this; a header claiming more is corruption, not a big record.
MAX_FRAME_BYTES: Final = 1 << 31
_PREFIX: Final = "log-"
_SUFFIX: Final = ".zkv"


def encode_frame(payload: bytes) -> bytes:
    """``payload`` with its length and checksum in front."""
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes | memoryview, start: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, payload)`` for each valid frame from ``start``, stopping at the first bad one."""
    view = memoryview(data)
    end = len(view)
    offset = start
    header = FRAME_HEADER
    while offset + header.size <= end:
        length, crc = header.unpack_from(view, offset)
        body = offset + header.size
        if length == 0 or length > end - body:  # no record is empty: zeros are a torn tail
            return
        payload = bytes(view[body : body + length])
        if zlib.crc32(payload) != crc:
            return
        yield offset, payload
        offset = body + length


@dataclass(slots=True)
class FileScan:
    """What a full read of one framed file found."""

    path: Path
    frames: int
    good_end: int  # offset just past the last valid frame
    size: int
    problem: str | None = None  # why reading stopped before the end
    valid_after: int | None = None  # offset of a valid frame after the bad spot, if any

    @property
    def clean(self) -> bool:
        """Every byte of the file is valid frames."""
        return self.problem is None

    @property
    def torn_tail(self) -> bool:
        """Bad bytes at the end with nothing valid after them (a crash mid-write)."""
        return self.problem is not None and self.valid_after is None


def scan_file(path: Path, magic: bytes, data: bytes | None = None) -> tuple[FileScan, list[bytes]]:
    """Read every valid frame of ``path`` and say how the file ends."""
    if data is None:
        data = path.read_bytes()
    size = len(data)
    if not data.startswith(magic):
        if size < len(magic) and magic.startswith(data):  # torn while writing the magic
            return FileScan(path, 0, 0, size, f"file is {size} bytes, cut inside its header"), []
        return FileScan(path, 0, 0, size, "not a zkv file (bad magic)", valid_after=0), []
    payloads = []
    good_end = len(magic)
    for offset, payload in read_frames(data, len(magic)):
        payloads.append(payload)
        good_end = offset + FRAME_HEADER.size + len(payload)
    scan = FileScan(path, len(payloads), good_end, size)
    if good_end < size:
        scan.problem = _why_bad(data, good_end)
        scan.valid_after = _next_valid_frame(data, good_end + 1)
    return scan, payloads


def _why_bad(data: bytes, offset: int) -> str:
    if len(data) - offset < FRAME_HEADER.size:
        return f"record header cut short ({len(data) - offset} of {FRAME_HEADER.size} bytes)"
    length, _crc = FRAME_HEADER.unpack_from(data, offset)
    if length == 0:
        return "empty record (zeros where a record should be)"
    if length > len(data) - offset - FRAME_HEADER.size:
        return f"record of {length} bytes cut short"
    return "record checksum mismatch"


def _next_valid_frame(data: bytes, start: int) -> int | None:
    """The offset of the first valid frame at or after ``start`` (any byte alignment)."""
    end = len(data)
    header = FRAME_HEADER
    for offset in range(start, end - header.size + 1):
        length, crc = header.unpack_from(data, offset)
        body = offset + header.size
        if length == 0 or length > end - body:
            continue
        if zlib.crc32(data[body : body + length]) == crc:
            return offset
    return None


@dataclass(frozen=True, slots=True)
class Segment:
    """One log file and the sequence number of its first record."""

    path: Path
    first_seq: int


def segments(directory: Path) -> list[Segment]:
    """The log segments in ``directory``, oldest first."""
    found = []
    for path in directory.glob(f"{_PREFIX}*{_SUFFIX}"):
        digits = path.name[len(_PREFIX) : -len(_SUFFIX)]
        if digits.isdigit():
            found.append(Segment(path, int(digits)))
    return sorted(found, key=lambda s: s.first_seq)


def segment_path(directory: Path, first_seq: int) -> Path:
    """Where the segment starting at ``first_seq`` lives."""
    return directory / f"{_PREFIX}{first_seq:020d}{_SUFFIX}"


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AppendLog:
    """The segment being appended to, with a write buffer and an fsync policy.

    ``fsync`` is ``always`` (``flush`` fsyncs), ``everysec`` (the owner calls ``sync`` about
    once a second, e.g. from a thread), or ``no`` (the OS decides).
    """

    def __init__(self, directory: Path, fsync: str) -> None:
        self.directory = directory
        self.fsync = fsync
        self._buffer: list[bytes] = []
        self._buffer_seq = 0  # the sequence number of the first buffered record
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        #: Bytes in the current segment, buffered appends included.
        self.segment_bytes = 0
        self.fsyncs = 0
        #: Bytes of the current segment that hold written records (what a failed write is
        #: cut back to), and how many of them an fsync confirmed.
        self.size = 0
        self.synced = 0
        #: Under ``everysec``: ``(first seq, data)`` of each write since the last good fsync,
        #: rewritten into a new segment if an fsync fails (see ``repair``).
        self.unsynced: list[tuple[int, bytes]] = []
        #: An fsync of the current segment failed: on Linux a later fsync may report success
        #: for pages the kernel dropped, so nothing is appended to it again.
        self.untrusted = False
        #: Bumped whenever a new segment starts (the fsync thread checks it).
        self.generation = 0

    def open(self, first_seq: int) -> None:
        """Append to the newest segment, or start one whose first record is ``first_seq``."""
        existing = segments(self.directory)
        if existing:
            self.path = existing[-1].path
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
            self.segment_bytes = self.size = self.synced = self.path.stat().st_size
        else:
            self._start(first_seq)

    def _start(self, first_seq: int, replace: bool = False) -> None:
        self.path = segment_path(self.directory, first_seq)
        self.generation += 1
        self._file = open(self.path, "wb" if replace else "xb", buffering=0)  # noqa: SIM115
        self._file.write(LOG_MAGIC)
        os.fsync(self._file.fileno())
        fsync_dir(self.directory)
        self.segment_bytes = self.size = self.synced = len(LOG_MAGIC)
        self.untrusted = False

    def append(self, payload: bytes, seq: int = 0) -> None:
        """Buffer one record (numbered ``seq``); it reaches the OS at the next ``flush``."""
        if not self._buffer:
            self._buffer_seq = seq
        frame = encode_frame(payload)
        self._buffer.append(frame)
        self.segment_bytes += len(frame)

    @property
    def pending(self) -> bool:
        """Whether appended records wait for ``flush``."""
        return bool(self._buffer)

    def flush(self) -> None:
        """Write every buffered record in one system call; fsync too under ``always``.

        On an ``OSError`` (a full disk, a failing device) the buffered records are dropped,
        the segment is cut back to where this flush began, so no partial or unconfirmed
        record stays in it, and the error is raised. A failed fsync also marks the segment
        untrusted (see ``repair``).
        """
        if not self._buffer:
            return
        first = self._buffer_seq
        data = b"".join(self._buffer)
        self._buffer.clear()
        if self._file is None or self.untrusted:
            self.segment_bytes = self.size
            raise OSError(errno.EIO, "the log needs repair before it takes writes")
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
            if self.fsync == "always":
                try:
                    os.fsync(self._file.fileno())
                except OSError:
                    self.untrusted = True
                    raise
                self.fsyncs += 1
        except OSError:
            self._cut_back()
            raise
        self.size += len(data)
        if self.fsync == "always":
            self.synced = self.size
        elif self.fsync == "everysec":
            self.unsynced.append((first, data))

    def _cut_back(self) -> None:
        """Cut the segment back to its last good record after a failed write."""
        self.segment_bytes = self.size
        if self._file is None:
            return
        try:
            os.ftruncate(self._file.fileno(), self.size)
            self._file.seek(self.size)  # a new segment is not opened for appending
            os.fsync(self._file.fileno())
        except OSError as exc:
            log.error("could not cut %s back to %d bytes: %s", self.path, self.size, exc)
            self.untrusted = True

    @property
    def needs_repair(self) -> bool:
        """Whether ``repair`` must run before the next write."""
        return self._file is None or self.untrusted

    def repair(self, next_seq: int) -> None:
        """Make the log take writes again after a failure; raises ``OSError`` if it cannot yet.

        An untrusted segment (a failed fsync) keeps only the records an fsync confirmed: it
        is cut there, fsynced and closed, and a new segment starts, into which the records
        written since that fsync are written again from memory (under ``everysec``: they were
        acknowledged) and fsynced. So no record is lost or written twice.
        """
        if not self.needs_repair:
            return
        if self._file is not None:
            keep = self.synced if self.fsync == "everysec" else self.size
            os.ftruncate(self._file.fileno(), keep)
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        pending = list(self.unsynced)
        self._start(pending[0][0] if pending else next_seq, replace=True)
        assert self._file is not None
        for _, data in pending:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
            self.size += len(data)
        os.fsync(self._file.fileno())
        self.fsyncs += 1
        self.segment_bytes = self.synced = self.size
        self.unsynced.clear()

    def sync(self) -> None:
        """fsync what was flushed (for ``everysec``, and before a segment is closed)."""
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
            except OSError:
                self.untrusted = True
                raise
            self.fsyncs += 1
            self.synced = self.size
            self.unsynced.clear()

    def fileno(self) -> int | None:
        """The current segment's descriptor (for an fsync thread), or None when closed."""
        return self._file.fileno() if self._file is not None else None

    def rotate(self, first_seq: int) -> None:
        """Flush and fsync the current segment, then start a new one at ``first_seq``."""
        self.flush()
        self.sync()
        self.close()
        self._start(first_seq)

    def close(self) -> None:
        """Flush, fsync (unless ``fsync: no``) and close the current segment."""
        if self._file is None:
            return
        try:
            self.flush()
            if self.fsync != "no":
                self.sync()
        finally:
            self._file.close()
            self._file = None
