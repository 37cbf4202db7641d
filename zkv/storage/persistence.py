"""Persistence: makes a node's ``Store`` durable, and brings it back after a restart or crash.

- Every record the store emits is appended to the log as msgpack ``[seq, op, *args]``; the
  node calls ``flush()`` once per loop turn, before it sends any reply of that turn, so no
  write is acknowledged before its record reached the OS (and, under ``fsync: always``, the
  disk: one fsync per turn, i.e. group commit). Under ``everysec`` a thread fsyncs once a
  second, so a machine crash loses at most about a second of acknowledged writes; a crash of
  the process alone loses nothing. Under ``no`` the OS decides when data reaches the disk.
- Compaction: once the log outgrows ``compact_ratio`` x the live data (and
  ``compact_min_bytes``), the log is rotated at sequence S and a snapshot as of S is written
  in steps of ``COMPACT_STEP_KEYS`` keys between requests; once the snapshot is durable the
  log segments it covers are deleted. The longest step is kept in ``max_stall_s``.
- Recovery loads the newest valid snapshot, replays every later record in sequence order,
  cuts a torn tail off the last segment (with a warning naming the file and offset), and
  refuses to start (``StorageCorrupted``) on damage followed by valid records, or a gap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack

from zkv.errors import StorageCorrupted
from zkv.storage.engine import Record, RecordOp, Store
from zkv.storage.log import LOG_MAGIC, AppendLog, scan_file, segment_path, segments
from zkv.storage.snapshot import SnapshotWriter, load_snapshot, snapshots

__all__ = ["COMPACT_STEP_KEYS", "Persistence", "Recovery", "check_directory"]

log = logging.getLogger(__name__)

#: Keys copied into the snapshot per step (a step is a few milliseconds).
COMPACT_STEP_KEYS: Final = 2000


@dataclass(slots=True)
class Recovery:
    """What start-up found on disk."""

    snapshot_seq: int | None = None
    snapshot_keys: int = 0
    records: int = 0
    seq: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class Persistence:
    """The log, snapshots and compaction of one node's data folder."""

    def __init__(
        self,
        directory: Path,
        fsync: str,
        *,
        compact_ratio: float = 2.0,
        compact_min_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.log = AppendLog(directory, fsync)
        #: Called with each record's sequence number and payload as it is logged (a primary
        #: publishes them to its replicas).
        self.tap: Callable[[int, bytes], None] | None = None
        self.max_stall_s = 0.0
        self.compactions = 0
        self._older_bytes = 0  # log segments before the current one
        self._since_snapshot = 0  # records logged since the last snapshot began
        self._lock = threading.Lock()  # the log's descriptor, shared with the fsync thread
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        self._writer: SnapshotWriter | None = None
        self._walk: list[int] = []
        self._pos = 0
        self._finisher: threading.Thread | None = None
        self._finish_error: BaseException | None = None
        self._finished: SnapshotWriter | None = None
        self._compact_started = 0.0

    # ------------------------------------------------------------------ recovery

    def recover(self, store: Store) -> Recovery:
        """Load this folder into the empty ``store``, then log what the store emits."""
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.tmp"):
            stale.unlink()
        report = Recovery()
        self._load_snapshot(store, report)
        self._replay(store, report)
        report.seq = store.seq
        report.seconds = time.perf_counter() - started
        self.log.open(store.seq + 1)
        self._count_older_bytes()
        store.subscribe(self._on_record)
        if self.fsync == "everysec":
            self._syncer = threading.Thread(
                target=self._sync_every_second, daemon=True, name="zkv-fsync"
            )
            self._syncer.start()
        return report

    def _load_snapshot(self, store: Store, report: Recovery) -> None:
        for seq, path in snapshots(self.directory):
            try:
                snap_seq, chunks = load_snapshot(path)
                for chunk in chunks:
                    if isinstance(chunk, dict):
                        store.load_results(chunk.get("results", []))
                    else:
                        store.load(chunk)
            except StorageCorrupted as exc:
                store.apply_record((RecordOp.CLEAR,))  # drop what a bad snapshot half-loaded
                message = f"skipped snapshot {path.name}: {exc}"
                log.warning("%s", message)
                report.warnings.append(message)
                continue
            if snap_seq != seq:
                raise StorageCorrupted(f"{path}: named for seq {seq} but holds seq {snap_seq}")
            store.seq = snap_seq
            report.snapshot_seq = snap_seq
            report.snapshot_keys = store.held
            return

    def _replay(self, store: Store, report: Recovery) -> None:
        found = segments(self.directory)
        for i, segment in enumerate(found):
            scan, payloads = scan_file(segment.path, LOG_MAGIC)
            if not scan.clean:
                if i == len(found) - 1 and scan.torn_tail:
                    message = (
                        f"cut a torn tail off {segment.path} at offset {scan.good_end} "
                        f"({scan.size - scan.good_end} bytes: {scan.problem})"
                    )
                    log.warning("%s", message)
                    report.warnings.append(message)
                    _truncate(segment.path, scan.good_end)
                else:
                    raise StorageCorrupted(
                        _corruption(
                            scan.path, scan.problem, scan.good_end, scan.valid_after, self.directory
                        )
                    )
            for payload in payloads:
                try:
                    seq, *record = msgpack.unpackb(payload, raw=False, use_list=True)
                except Exception as exc:
                    raise StorageCorrupted(
                        f"{segment.path}: a record with a valid checksum does not decode: {exc}"
                    ) from None
                if seq <= store.seq:
                    continue  # already in the snapshot
                if seq != store.seq + 1:
                    raise StorageCorrupted(
                        f"{segment.path}: record {seq} follows {store.seq}: records "
                        f"{store.seq + 1}..{seq - 1} are missing"
                    )
                store.apply_record(tuple(record))
                store.seq = seq
                report.records += 1

    def _count_older_bytes(self) -> None:
        current = self.log.path
        self._older_bytes = sum(
            s.path.stat().st_size for s in segments(self.directory) if s.path != current
        )

    # ------------------------------------------------------------------ logging

    def _on_record(self, seq: int, record: Record) -> None:
        self._since_snapshot += 1
        payload = msgpack.packb((seq, *record), use_bin_type=True)
        self.log.append(payload)
        if self.tap is not None:
            self.tap(seq, payload)

    def flush(self) -> None:
        """Hand this turn's records to the OS (and the disk under ``always``)."""
        self.log.flush()

    @property
    def log_bytes(self) -> int:
        """Bytes of log not yet covered by a snapshot."""
        return self._older_bytes + self.log.segment_bytes

    def _sync_every_second(self) -> None:
        while not self._closed.wait(1.0):
            with self._lock:
                fd = self.log.fileno()
                if fd is not None:
                    try:
                        os.fsync(fd)
                        self.log.fsyncs += 1
                    except OSError as exc:
                        log.error("fsync of %s failed: %s", self.log.path, exc)

    # ------------------------------------------------------------------ compaction

    @property
    def compacting(self) -> bool:
        """Whether a snapshot is being written."""
        return self._writer is not None or self._finisher is not None

    def maybe_compact(self, store: Store) -> None:
        """Start, advance or complete a compaction; call once per loop turn."""
        if self._writer is not None:
            self._step(store)
        elif self._finisher is not None:
            if not self._finisher.is_alive():
                self._complete()
        elif self._since_snapshot and self.log_bytes > max(
            self.compact_min_bytes, self.compact_ratio * store.data_bytes
        ):
            self.start_compaction(store)

    def start_compaction(self, store: Store) -> None:
        """Rotate the log at the store's sequence and begin a snapshot as of it."""
        if self.compacting:
            return
        seq = store.seq
        self.flush()
        if self.log.path != segment_path(self.directory, seq + 1):  # else nothing new to cut
            with self._lock:
                self.log.rotate(seq + 1)
        self._since_snapshot = 0
        self._count_older_bytes()
        self._writer = SnapshotWriter(self.directory, seq)
        self._walk = store.slot_numbers()
        self._pos = 0
        self._compact_started = time.monotonic()
        log.info(
            "compaction: snapshot as of seq %d started (%d keys, log %.1f MB)",
            seq,
            store.held,
            self._older_bytes / 1e6,
        )

    def _step(self, store: Store) -> None:
        assert self._writer is not None
        started = time.perf_counter()
        flat: list[Any] = []
        walk = self._walk
        while self._pos < len(walk) and len(flat) < COMPACT_STEP_KEYS * 3:
            flat += store.slot_items(walk[self._pos])
            self._pos += 1
        self._writer.write(flat)
        if self._pos >= len(walk):
            self._writer.write_results(store.result_items())
            writer, self._writer = self._writer, None
            self._finisher = threading.Thread(
                target=self._finish, args=(writer,), name="zkv-snapshot", daemon=True
            )
            self._finisher.start()
        self.max_stall_s = max(self.max_stall_s, time.perf_counter() - started)

    def _finish(self, writer: SnapshotWriter) -> None:
        try:
            writer.finish()
            self._finished = writer
        except BaseException as exc:  # reported by _complete in the loop's thread
            self._finish_error = exc
            writer.abort()

    def _complete(self) -> None:
        self._finisher = None
        if self._finish_error is not None:
            exc, self._finish_error = self._finish_error, None
            log.error("compaction failed, the log is kept: %s", exc)
            return
        writer = self._finished
        assert writer is not None
        current = self.log.path
        for segment in segments(self.directory):
            if segment.first_seq <= writer.seq and segment.path != current:
                segment.path.unlink()
        for seq, path in snapshots(self.directory):
            if seq < writer.seq:
                path.unlink()
        self._count_older_bytes()
        self.compactions += 1
        log.info(
            "compaction: snapshot of %d keys as of seq %d (%.1f MB) in %.2f s; "
            "longest stall %.1f ms",
            writer.keys,
            writer.seq,
            writer.bytes / 1e6,
            time.monotonic() - self._compact_started,
            self.max_stall_s * 1000,
        )

    # ------------------------------------------------------------------ resync

    def _drop_compaction(self) -> None:
        """Abandon a snapshot being walked, or wait for one being finished."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        if self._finisher is not None:
            self._finisher.join()
            self._complete()

    def adopt(self, writer: SnapshotWriter) -> None:
        """Replace everything on disk with the snapshot ``writer`` holds (a replica's resync).

        Order matters for a crash at any point: the new snapshot is made durable under its
        temporary name, the old log segments go, then the rename makes it visible and a new
        segment starts at its sequence + 1. A crash before the rename leaves the old snapshot
        (an older but consistent state, resynced again at start).
        """
        self._drop_compaction()

        def drop_old() -> None:
            with self._lock:
                self.log.close()
            for segment in segments(self.directory):
                segment.path.unlink()

        writer.finish(before_rename=drop_old)
        for seq, path in snapshots(self.directory):
            if seq != writer.seq:
                path.unlink()
        with self._lock:
            self.log.open(writer.seq + 1)
        self._older_bytes = 0

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Finish or drop a compaction, flush, fsync and close the log."""
        self._closed.set()
        self._drop_compaction()
        with self._lock:
            self.log.close()
        if self._syncer is not None:
            self._syncer.join(2)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        if size < len(LOG_MAGIC):  # cut inside the header: rewrite it
            f.seek(0)
            f.write(LOG_MAGIC)
            size = len(LOG_MAGIC)
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _corruption(
    path: Path, problem: str | None, offset: int, valid_after: int | None, directory: Path
) -> str:
    after = (
        f", and valid records follow at offset {valid_after}"
        if valid_after is not None
        else " in a log segment that is not the last"
    )
    return (
        f"{path}: {problem} at offset {offset}{after}; refusing to start rather than "
        f"lose them. Inspect with `zkv check --data {directory}`; "
        "`--repair` cuts the log there (losing what follows)."
    )


def check_directory(directory: Path, repair: bool = False) -> tuple[bool, list[str]]:
    """Report on a node's data folder; with ``repair``, cut the log at its first bad record.

    Returns whether the folder is (now) fit to start from, and one line per finding.
    """
    lines: list[str] = []
    ok = True
    if not directory.is_dir():
        return False, [f"{directory}: no such folder"]
    expected = 0  # the newest sequence number accounted for so far
    for seq, path in snapshots(directory):
        try:
            _, chunks = load_snapshot(path)
            keys = sum(len(flat) // 3 for flat in chunks if isinstance(flat, list))
            lines.append(f"{path.name}: snapshot as of seq {seq}, {keys} keys: ok")
            expected = max(expected, seq)
        except StorageCorrupted as exc:
            lines.append(f"{path.name}: BAD: {exc}")
    found = segments(directory)
    for i, segment in enumerate(found):
        scan, payloads = scan_file(segment.path, LOG_MAGIC)
        try:
            seqs = [msgpack.unpackb(p)[0] for p in payloads[:1] + payloads[-1:]]
        except Exception as exc:  # a valid checksum over a payload that does not decode
            lines.append(f"{segment.path.name}: CORRUPT: a record does not decode: {exc}")
            return False, lines
        span = f"records {seqs[0]}..{seqs[-1]}" if seqs else "no records"
        if seqs and seqs[0] > expected + 1:
            ok = False
            lines.append(
                f"{segment.path.name}: GAP: records {expected + 1}..{seqs[0] - 1} are missing"
            )
        if seqs:
            expected = max(expected, seqs[-1])
        if scan.clean:
            lines.append(f"{segment.path.name}: {scan.frames} records ({span}): ok")
            continue
        last = i == len(found) - 1
        kind = "torn tail" if scan.torn_tail and last else "CORRUPT"
        if kind == "CORRUPT":
            ok = False
        lines.append(
            f"{segment.path.name}: {scan.frames} good records ({span}), then {kind}: "
            f"{scan.problem} at offset {scan.good_end}"
            + (
                f"; valid records follow at offset {scan.valid_after}"
                if scan.valid_after is not None
                else ""
            )
        )
        if repair:
            _truncate(segment.path, scan.good_end)
            lines.append(
                f"  repaired: cut {segment.path.name} at offset {scan.good_end} "
                f"({scan.size - scan.good_end} bytes dropped)"
            )
            for later in found[i + 1 :]:
                aside = later.path.with_name(later.path.name + ".corrupt")
                later.path.rename(aside)
                lines.append(f"  repaired: moved {later.path.name} aside to {aside.name}")
            ok = True
            break
        if kind == "CORRUPT":
            break
    return ok, lines
