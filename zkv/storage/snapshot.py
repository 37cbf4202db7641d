"""Snapshots: a node's whole key space in one file, written in steps, then renamed.

``snapshot-<seq, 20 digits>.zkv`` holds the 8-byte magic ``ZKVSNAP1``, then frames (the
framing of ``log.py``): a header ``{"seq": S}``, data chunks (each a flat msgpack array
``[key, value, expires_at or nil, key, value, ...]``), and an end frame
``{"end": true, "keys": N}``. A file without its end frame, with a bad frame, or whose count
disagrees, is not a snapshot.

The writer takes chunks as the node walks its slots between requests, so a snapshot never
stalls the node for long; it writes to ``<name>.tmp``, fsyncs, renames, and fsyncs the
folder, so a crash leaves either the old state or the complete new file. A snapshot taken
while writes go on is *fuzzy* (each key as of some moment during the walk); replaying every
log record after ``S`` over it yields the exact state, because every record sets a key's
whole state (see ``engine.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import msgpack

from zkv.errors import StorageCorrupted
from zkv.storage.log import encode_frame, fsync_dir, scan_file

__all__ = ["SNAPSHOT_MAGIC", "SnapshotWriter", "load_snapshot", "snapshots"]

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC: Final = b"ZKVSNAP1"
_PREFIX: Final = "snapshot-"
_SUFFIX: Final = ".zkv"


def snapshot_path(directory: Path, seq: int) -> Path:
    """Where the snapshot as of ``seq`` lives."""
    return directory / f"{_PREFIX}{seq:020d}{_SUFFIX}"


def snapshots(directory: Path) -> list[tuple[int, Path]]:
    """``(seq, path)`` of each snapshot file in ``directory``, newest first."""
    found = []
    for path in directory.glob(f"{_PREFIX}*{_SUFFIX}"):
        digits = path.name[len(_PREFIX) : -len(_SUFFIX)]
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found, reverse=True)


class SnapshotWriter:
    """Writes one snapshot in chunks; ``finish`` makes it durable and visible."""

    def __init__(self, directory: Path, seq: int) -> None:
        self.seq = seq
        self.path = snapshot_path(directory, seq)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.keys = 0
        self.bytes = 0
        self._file: BinaryIO = open(self.tmp, "wb")  # noqa: SIM115 - closed by finish/abort
        self._write(SNAPSHOT_MAGIC)
        self._write(encode_frame(msgpack.packb({"seq": seq})))

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes += len(data)

    def write(self, flat: list[Any]) -> None:
        """Add a chunk: ``[key, value, expires_at, key, value, expires_at, ...]``."""
        if flat:
            self.keys += len(flat) // 3
            self._write(encode_frame(msgpack.packb(flat, use_bin_type=True)))

    def write_results(self, pairs: list[list[bytes]]) -> None:
        """Add the remembered write outcomes (``[request id, reply body]`` pairs)."""
        self._write(encode_frame(msgpack.packb({"results": pairs}, use_bin_type=True)))

    def finish(self, before_rename: Callable[[], None] | None = None) -> Path:
        """Write the end frame, fsync, rename into place; the final path.

        ``before_rename`` runs once the file is durable under its temporary name. Safe to
        run in a thread of its own (it touches only this writer's file).
        """
        self._write(encode_frame(msgpack.packb({"end": True, "keys": self.keys})))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if before_rename is not None:
            before_rename()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def load_snapshot(path: Path) -> tuple[int, Iterator[list[Any] | dict[str, Any]]]:
    """The snapshot's sequence number and its chunks; ``StorageCorrupted`` if invalid.

    A chunk is a flat ``[key, value, expires_at, ...]`` list, or ``{"results": pairs}``
    with the write outcomes kept for exactly-once retries.

    The whole file is checked before the first chunk is returned, so a caller never applies
    half of a bad snapshot.
    """
    scan, payloads = scan_file(path, SNAPSHOT_MAGIC)
    where = f"{path}"
    if not scan.clean:
        raise StorageCorrupted(f"{where}: {scan.problem} at offset {scan.good_end}")
    if len(payloads) < 2:
        raise StorageCorrupted(f"{where}: no header or end frame")
    try:
        header = msgpack.unpackb(payloads[0])
        end = msgpack.unpackb(payloads[-1])
        seq = header["seq"]
        count = end["keys"]
        if end.get("end") is not True or type(seq) is not int or type(count) is not int:
            raise ValueError("bad header or end frame")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise StorageCorrupted(f"{where}: {exc}") from None
    chunks = payloads[1:-1]

    def decode() -> Iterator[list[Any] | dict[str, Any]]:
        seen = 0
        for chunk in chunks:
            flat = msgpack.unpackb(chunk, raw=False, use_list=True)
            if isinstance(flat, list):
                seen += len(flat) // 3
            yield flat
        if seen != count:
            raise StorageCorrupted(f"{where}: end frame says {count} keys, found {seen}")

    return seq, decode()
