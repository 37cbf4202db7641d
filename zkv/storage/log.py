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
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        #: Bytes in the current segment, buffered appends included.
        self.segment_bytes = 0
        self.fsyncs = 0

    def open(self, first_seq: int) -> None:
        """Append to the newest segment, or start one whose first record is ``first_seq``."""
        existing = segments(self.directory)
        if existing:
            self.path = existing[-1].path
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
            self.segment_bytes = self.path.stat().st_size
        else:
            self._start(first_seq)

    def _start(self, first_seq: int) -> None:
        self.path = segment_path(self.directory, first_seq)
        self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - kept open
        self._file.write(LOG_MAGIC)
        os.fsync(self._file.fileno())
        fsync_dir(self.directory)
        self.segment_bytes = len(LOG_MAGIC)

    def append(self, payload: bytes) -> None:
        """Buffer one record; it reaches the OS at the next ``flush``."""
        frame = encode_frame(payload)
        self._buffer.append(frame)
        self.segment_bytes += len(frame)

    @property
    def pending(self) -> bool:
        """Whether appended records wait for ``flush``."""
        return bool(self._buffer)

    def flush(self) -> None:
        """Write every buffered record in one system call; fsync too under ``always``."""
        if not self._buffer:
            return
        assert self._file is not None, "log is not open"
        data = b"".join(self._buffer)
        self._buffer.clear()
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written or 0 :]
        if self.fsync == "always":
            os.fsync(self._file.fileno())
            self.fsyncs += 1

    def sync(self) -> None:
        """fsync what was flushed (for ``everysec``)."""
        if self._file is not None:
            os.fsync(self._file.fileno())
            self.fsyncs += 1

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
        self.flush()
        if self.fsync != "no":
            self.sync()
        self._file.close()
        self._file = None
