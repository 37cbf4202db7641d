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
  refuses to start (``StorageCorrupted``, naming the file and offset) on damage followed by
  valid records, a gap, a duplicate or out-of-order sequence number (two processes wrote
  to the folder), or a history shorter than the folder's file names prove: every file
  names a sequence (``snapshot-<S>`` says history reached S, ``log-<F>`` that it reached
  F-1), and recovery must reach the highest of them without a gap. A bad snapshot is
  skipped only when an older one plus the log still get there.
- ``set_aside`` moves a folder's data files into ``damaged-<UTC time>/`` (deleting
  nothing), for a node that will start over and resync instead.
- ``check_directory`` (``zkv check``) reports on a folder by the same rules, file by file,
  and can repair what a cut can.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack

from zkv.errors import StorageCorrupted, StorageError, StorageFull
from zkv.storage.engine import Record, RecordOp, Store
from zkv.storage.log import (
    FRAME_HEADER,
    LOG_MAGIC,
    AppendLog,
    fsync_dir,
    scan_file,
    segment_path,
    segments,
)
from zkv.storage.snapshot import SnapshotWriter, load_snapshot, snapshots

__all__ = ["COMPACT_STEP_KEYS", "Persistence", "Recovery", "check_directory"]

log = logging.getLogger(__name__)

#: Keys copied into the snapshot per step (a step is a few milliseconds).
COMPACT_STEP_KEYS: Final = 2000
#: Free bytes needed beyond ``min_free_bytes`` before a node takes writes again after one
#: failed for lack of space.
RESUME_HEADROOM_BYTES: Final = 1024 * 1024
#: After a compaction failed to write, wait this long before trying again (seconds).
COMPACT_RETRY_S: Final = 10.0
#: ``set_aside`` moves files whose names match these into ``damaged-<UTC time>/``.
_DATA_PATTERNS: Final = ("snapshot-*.zkv", "log-*.zkv", "*.corrupt", "*.tmp")
_DAMAGED_PREFIX: Final = "damaged-"


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
        min_free_bytes: int = 0,
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
        self._compact_retry_at = 0.0
        #: Whether writes can be logged: ``ok``, ``low`` (under ``min_free_bytes`` free),
        #: ``full`` (ENOSPC, EDQUOT) or ``error`` (another I/O error); see ``check``.
        self.state = "ok"
        self.state_error = ""
        self.min_free_bytes = min_free_bytes
        #: Free bytes on the folder's volume at the last ``check`` (-1: not known yet).
        self.free_bytes = -1
        self._sync_error: OSError | None = None  # from the fsync thread

    # ------------------------------------------------------------------ recovery

    def recover(self, store: Store) -> Recovery:
        """Load this folder into the empty ``store``, then log what the store emits.

        Raises ``StorageCorrupted`` (with ``path``, ``offset`` and ``last_seq``) when the
        folder cannot give back its whole history; then no file was changed and the log
        was not opened, so the caller may ``set_aside()`` the damaged files and call
        ``recover()`` again with a new, empty ``Store`` (or make a new ``Persistence``).
        """
        if self.log.fileno() is not None:
            raise RuntimeError(f"{self.directory}: recover() called on an open log")
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        report = Recovery()
        skipped = self._load_snapshot(store, report)
        cut = self._replay(store, report, skipped)
        self._check_evidence(store, skipped)
        # Only now that the history is known to be whole is anything on disk changed.
        if cut is not None:
            path, good_end, message = cut
            log.warning("%s", message)
            report.warnings.append(message)
            _truncate(path, good_end)
        for stale in self.directory.glob("*.tmp"):
            stale.unlink()
        report.seq = store.seq
        report.seconds = time.perf_counter() - started
        try:
            self.log.open(store.seq + 1)
        except OSError as exc:  # no room even for a new segment: serve reads, retry later
            self._failed(exc)
        self._count_older_bytes()
        store.subscribe(self._on_record)
        if self.fsync == "everysec":
            self._syncer = threading.Thread(
                target=self._sync_every_second, daemon=True, name="zkv-fsync"
            )
            self._syncer.start()
        return report

    def _load_snapshot(self, store: Store, report: Recovery) -> list[_BadSnapshot]:
        """Load the newest valid snapshot; the newer ones skipped as bad, newest first."""
        skipped: list[_BadSnapshot] = []
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
                bad = _BadSnapshot(seq, path, _reason(exc, path), _offset_of(exc))
                skipped.append(bad)
                message = f"skipped snapshot {path}: {bad.reason}"
                log.warning("%s", message)
                report.warnings.append(message)
                continue
            if snap_seq != seq:
                raise StorageCorrupted(
                    f"{path}: named for seq {seq} but holds seq {snap_seq}",
                    path=path,
                    last_seq=_folder_last_seq(self.directory),
                )
            store.seq = snap_seq
            report.snapshot_seq = snap_seq
            report.snapshot_keys = store.held
            break
        return skipped

    def _replay(
        self, store: Store, report: Recovery, skipped: list[_BadSnapshot]
    ) -> tuple[Path, int, str] | None:
        """Apply the records after the snapshot; the torn tail to cut, if any (not cut yet)."""
        found = segments(self.directory)
        sequence = _Sequence(store.seq)
        cut: tuple[Path, int, str] | None = None
        for i, segment in enumerate(found):
            path = segment.path
            scan, payloads = scan_file(path, LOG_MAGIC)
            sequence.start_file()
            offset = len(LOG_MAGIC)
            for payload in payloads:
                try:
                    seq, record = _decode(payload)
                except Exception as exc:
                    raise self._corrupted(
                        f"{path}: a record with a valid checksum does not decode at offset "
                        f"{offset}: {exc}; refusing to start. Inspect with `zkv check --data "
                        f"{self.directory}`; `--repair` cuts the log there (losing what follows).",
                        path,
                        offset,
                    ) from None
                try:
                    apply = sequence.step(seq)
                except _OrderError as exc:
                    raise self._out_of_order(exc, path, offset, store.seq, skipped) from None
                if apply:
                    store.apply_record(tuple(record))
                    store.seq = seq
                    report.records += 1
                offset += FRAME_HEADER.size + len(payload)
            if scan.clean:
                continue
            if i == len(found) - 1 and scan.torn_tail:
                message = (
                    f"cut a torn tail off {path} at offset {scan.good_end} "
                    f"({scan.size - scan.good_end} bytes: {scan.problem})"
                )
                cut = (path, scan.good_end, message)
            else:
                raise self._corrupted(
                    _corruption(
                        path, scan.problem, scan.good_end, scan.valid_after, self.directory
                    ),
                    path,
                    scan.good_end,
                )
        return cut

    def _check_evidence(self, store: Store, skipped: list[_BadSnapshot]) -> None:
        """Refuse a history shorter than the folder's file names prove."""
        evidence, where = _named_evidence(self.directory)
        if store.seq >= evidence or where is None:
            return
        reached = store.seq
        missing = f"records {reached + 1}..{evidence} are missing"
        bad = [b for b in skipped if b.seq > reached]
        if bad:
            root = bad[0]
            raise self._corrupted(
                f"{root.path}: damaged ({root.reason}), and no older snapshot plus log records "
                f"reach its seq {root.seq} (they reach only seq {reached}): {missing}; "
                f"refusing to start with less data. Inspect with `zkv check --data "
                f"{self.directory}`.",
                root.path,
                root.offset,
            )
        raise self._corrupted(
            f"{where}: its name says history reached seq {evidence}, but the snapshots and log "
            f"records reach only seq {reached}: {missing}; refusing to start with less data. "
            f"Inspect with `zkv check --data {self.directory}`.",
            where,
            None,
        )

    def _out_of_order(
        self,
        exc: _OrderError,
        path: Path,
        offset: int,
        reached: int,
        skipped: list[_BadSnapshot],
    ) -> StorageCorrupted:
        """The error for a record that does not continue the history."""
        bad = [b for b in skipped if b.seq > reached] if exc.gap else []
        if bad:  # the records are missing because the snapshot holding them is damaged
            root = bad[0]
            return self._corrupted(
                f"{root.path}: damaged ({root.reason}), and without it {exc.why} (the "
                f"snapshots and log records reach only seq {reached}, then {path.name} "
                f"continues at offset {offset}); refusing to start with less data. Inspect "
                f"with `zkv check --data {self.directory}`.",
                root.path,
                root.offset,
            )
        advice = (
            "refusing to start rather than lose them"
            if exc.gap
            else "refusing to start; `--repair` cuts the log there (losing what follows)"
        )
        return self._corrupted(
            f"{path}: {exc.at(offset)}; {advice}. Inspect with "
            f"`zkv check --data {self.directory}`.",
            path,
            offset,
        )

    def _corrupted(self, message: str, path: Path, offset: int | None) -> StorageCorrupted:
        return StorageCorrupted(
            message, path=path, offset=offset, last_seq=_folder_last_seq(self.directory)
        )

    # ------------------------------------------------------------------ damaged data

    def set_aside(self, reason: str) -> Path:
        """Move this folder's data files into a new ``damaged-<UTC time>/`` subfolder.

        For a node that will start over without its damaged data (and resync from its
        shard; deciding that is the node's business). Moves every snapshot, log segment,
        ``*.corrupt`` and ``*.tmp`` file of the folder's top level, but not ``LOCK`` nor
        earlier ``damaged-*`` folders; deletes nothing; writes ``README.txt`` with
        ``reason`` there; fsyncs both folders; logs one line; returns the subfolder.

        Call it while the log is closed: after a failed ``recover()`` (then ``recover()``
        again with a new, empty ``Store``, which starts empty), or after ``close()`` (then
        recover with a new ``Persistence``).
        """
        if self.log.fileno() is not None:
            raise RuntimeError(f"{self.directory}: set_aside() needs the log closed")
        now = time.gmtime()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", now)
        target = self.directory / f"{_DAMAGED_PREFIX}{stamp}"
        n = 1
        while True:
            try:
                target.mkdir()
                break
            except FileExistsError:
                n += 1
                target = self.directory / f"{_DAMAGED_PREFIX}{stamp}-{n}"
        moved: list[tuple[str, int]] = []
        names = sorted({p.name for pattern in _DATA_PATTERNS for p in self.directory.glob(pattern)})
        for name in names:
            source = self.directory / name
            if not source.is_file():
                continue
            size = source.stat().st_size
            os.rename(source, target / name)
            moved.append((name, size))
        listing = "".join(f"  {name}  ({size} bytes)\n" for name, size in moved) or "  (none)\n"
        readme = (
            "zkv moved these files here instead of deleting them.\n\n"
            f"reason: {reason}\n"
            f"when: {time.strftime('%Y-%m-%d %H:%M:%S UTC', now)}\n"
            f"by: pid {os.getpid()}\n"
            f"from: {self.directory.resolve()}\n"
            f"files:\n{listing}\n"
            "The node started over without them. zkv never reads this folder again: inspect\n"
            "it with `zkv check --data <this folder>`, and delete it when no longer needed.\n"
        )
        with open(target / "README.txt", "w", encoding="utf-8") as f:
            f.write(readme)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(target)
        fsync_dir(self.directory)
        log.warning("moved damaged data aside to %s: %s", target, " ".join(reason.split()))
        return target

    def _count_older_bytes(self) -> None:
        current = self.log.path
        self._older_bytes = sum(
            s.path.stat().st_size for s in segments(self.directory) if s.path != current
        )

    # ------------------------------------------------------------------ logging

    def _on_record(self, seq: int, record: Record) -> None:
        self._since_snapshot += 1
        payload = msgpack.packb((seq, *record), use_bin_type=True)
        self.log.append(payload, seq)
        if self.tap is not None:
            self.tap(seq, payload)

    def flush(self) -> None:
        """Hand this turn's records to the OS (and the disk under ``always``).

        Raises ``StorageFull`` or ``StorageError`` if they could not be logged: none of them
        is then on disk (the log cut back its partial write), the caller undoes them in
        memory (``Store.rollback``) and acknowledges none, and ``writable`` is False until
        ``check`` finds the log can take writes again.
        """
        if not self.log.pending:
            return
        try:
            with self._lock:
                self.log.flush()
        except OSError as exc:
            self._failed(exc)
            raise self.refusal() from exc

    # ------------------------------------------------------------------ storage state

    @property
    def writable(self) -> bool:
        """Whether writes may be applied (their records can be logged)."""
        return self.state == "ok"

    def refusal(self) -> StorageError:
        """The error that answers a write while the node cannot log it."""
        where = f"node data folder {self.directory}"
        if self.state == "low":
            return StorageFull(
                f"{where} has {self.free_bytes} bytes free, under storage.min_free_bytes "
                f"({self.min_free_bytes}); writes are refused until space is freed"
            )
        if self.state == "full":
            return StorageFull(
                f"{where}: {self.state_error}; writes are refused until space is freed"
            )
        return StorageError(
            f"{where}: {self.state_error}; writes are refused until the log can be written"
        )

    def _failed(self, exc: OSError) -> None:
        state = "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "error"
        text = f"[Errno {exc.errno}] {exc.strerror or exc}"
        if (state, text) != (self.state, self.state_error):
            log.error(
                "cannot write the log in %s: %s; refusing writes, serving reads, retrying",
                self.directory,
                text,
            )
        self.state, self.state_error = state, text

    def check(self, next_seq: int) -> str:
        """Refresh the free space and the storage state (call about once a second).

        Below ``min_free_bytes`` a writable node becomes ``low``. A node that is not
        writable tries to make the log take writes again (``AppendLog.repair``) once there
        is room, and becomes ``ok`` if that works. Returns the state.
        """
        try:
            stat = os.statvfs(self.directory)
            self.free_bytes = stat.f_bavail * stat.f_frsize
        except OSError as exc:
            self._failed(exc)
            return self.state
        with self._lock:
            sync_error, self._sync_error = self._sync_error, None
        if sync_error is not None:
            self._failed(sync_error)
        # after a failed write, wait for some headroom too, so as not to fail again at once
        headroom = RESUME_HEADROOM_BYTES if self.state in ("full", "error") else 0
        room = self.free_bytes >= self.min_free_bytes + headroom
        if self.state == "ok":
            if not room:
                self.state = "low"
                log.warning(
                    "only %d bytes free in %s, under storage.min_free_bytes (%d): refusing "
                    "writes, serving reads",
                    self.free_bytes,
                    self.directory,
                    self.min_free_bytes,
                )
            return self.state
        if not room:
            return self.state
        try:
            with self._lock:
                self.log.repair(next_seq)
        except OSError as exc:
            self._failed(exc)
            return self.state
        log.info(
            "the log in %s takes writes again (%d bytes free); was %s: %s",
            self.directory,
            self.free_bytes,
            self.state,
            self.state_error or "under storage.min_free_bytes",
        )
        self.state, self.state_error = "ok", ""
        return self.state

    @property
    def log_bytes(self) -> int:
        """Bytes of log not yet covered by a snapshot."""
        return self._older_bytes + self.log.segment_bytes

    def _sync_every_second(self) -> None:
        """The ``everysec`` thread: fsync a duplicate of the log's descriptor once a second.

        The lock is held only to read and update the log's bookkeeping, not during the
        fsync, so the loop's writes never wait for the disk. A failed fsync marks the
        segment untrusted; the loop's next ``check`` refuses writes and rewrites the records
        it had not confirmed into a new segment (``AppendLog.repair``).
        """
        while not self._closed.wait(1.0):
            with self._lock:
                current = self.log
                fd = current.fileno()
                if fd is None or current.untrusted or not current.unsynced:
                    continue
                generation, size, count = current.generation, current.size, len(current.unsynced)
                dup = os.dup(fd)
            error: OSError | None = None
            try:
                os.fsync(dup)
            except OSError as exc:
                error = exc
            finally:
                os.close(dup)
            with self._lock:
                if current.generation != generation:
                    continue  # the segment was replaced meanwhile
                if error is None:
                    current.fsyncs += 1
                    current.synced = max(current.synced, size)
                    del current.unsynced[:count]
                else:
                    current.untrusted = True
                    self._sync_error = error
                    log.error("fsync of %s failed: %s", current.path, error)

    # ------------------------------------------------------------------ compaction

    @property
    def compacting(self) -> bool:
        """Whether a snapshot is being written."""
        return self._writer is not None or self._finisher is not None

    def maybe_compact(self, store: Store) -> None:
        """Start, advance or complete a compaction; call once per loop turn.

        A compaction that fails to write (a full disk) is abandoned, the log kept, and tried
        again ``COMPACT_RETRY_S`` later.
        """
        try:
            self._compact_turn(store)
        except OSError as exc:
            if self._writer is not None:
                self._writer.abort()
                self._writer = None
            self._compact_retry_at = time.monotonic() + COMPACT_RETRY_S
            log.error(
                "compaction failed, the log is kept; retrying in %g s: %s", COMPACT_RETRY_S, exc
            )

    def _compact_turn(self, store: Store) -> None:
        if self._writer is not None:
            self._step(store)
        elif self._finisher is not None:
            if not self._finisher.is_alive():
                self._complete()
        elif (
            self._since_snapshot
            and self.writable
            and self.log_bytes > max(self.compact_min_bytes, self.compact_ratio * store.data_bytes)
            and time.monotonic() >= self._compact_retry_at
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
        temporary name, the old log segments go (with any snapshot newer than the new one,
        which recovery would otherwise prefer), then the rename makes it visible and a new
        segment starts at its sequence + 1. A crash before the rename leaves an old snapshot
        or nothing (an older but consistent state, resynced again at start).
        """
        self._drop_compaction()

        def drop_old() -> None:
            with self._lock:
                self.log.close()
            for segment in segments(self.directory):
                segment.path.unlink()
            for seq, path in snapshots(self.directory):
                if seq > writer.seq:  # else recovery would take it over the new one
                    path.unlink()

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


@dataclass(frozen=True, slots=True)
class _BadSnapshot:
    """A snapshot recovery skipped because it does not load."""

    seq: int
    path: Path
    reason: str
    offset: int | None


class _OrderError(Exception):
    """A record's sequence number does not continue the history.

    ``what`` and ``why`` go around the record's offset: ``f"{what} at offset N: {why}"``;
    ``gap``: records are missing (rather than repeated or reordered).
    """

    def __init__(self, what: str, why: str, *, gap: bool) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why
        self.gap = gap

    def at(self, offset: int) -> str:
        """The finding, with the record's offset."""
        return f"{self.what} at offset {offset}: {self.why}"


class _Sequence:
    """Follows a folder's records in file order and says which ones continue its history.

    ``reached`` starts at the loaded snapshot's sequence. A record at or below it is
    skipped (the snapshot holds it); the next must be exactly ``reached + 1`` (else records
    are missing: a gap). Every record must also come after the one before it in the files
    (else it is a duplicate or out of order: two processes appended to the folder), and
    within one file exactly one after it.
    """

    def __init__(self, base: int) -> None:
        self.reached = base
        self.last: int | None = None
        self._new_file = True

    def start_file(self) -> None:
        """The next record is the first of a segment."""
        self._new_file = True

    def step(self, seq: int) -> bool:
        """Whether to apply the record ``seq`` (False: the snapshot has it); ``_OrderError``."""
        last = self.last
        if last is not None and seq <= last:
            raise _OrderError(
                f"sequence number {seq} follows {last}",
                "a duplicate or out of order (did two processes append to this folder?)",
                gap=False,
            )
        if last is not None and not self._new_file and seq != last + 1:
            raise _OrderError(
                f"sequence number {seq} follows {last} in the same file",
                f"records {last + 1}..{seq - 1} are missing",
                gap=False,
            )
        if seq > self.reached + 1:
            raise _OrderError(
                f"record {seq} follows {self.reached}",
                f"records {self.reached + 1}..{seq - 1} are missing",
                gap=True,
            )
        apply = seq > self.reached
        self.accept(seq)
        return apply

    def accept(self, seq: int) -> None:
        """Take ``seq`` as the latest record (after a gap was reported, to read on)."""
        self.last = seq
        self._new_file = False
        self.reached = max(self.reached, seq)


def _decode(payload: bytes) -> tuple[int, list[Any]]:
    """A log record's sequence number and ``[op, *args]``; raises if it does not decode."""
    seq, *record = msgpack.unpackb(payload, raw=False, use_list=True)
    if type(seq) is not int:
        raise ValueError(f"its sequence number is {seq!r}")
    return seq, record


def _reason(exc: StorageCorrupted, path: Path) -> str:
    """``exc``'s message without the leading file name."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _offset_of(exc: StorageCorrupted) -> int | None:
    if exc.offset is not None:
        return exc.offset
    found = re.search(r"at offset (\d+)", str(exc))
    return int(found.group(1)) if found else None


def _named_evidence(directory: Path) -> tuple[int, Path | None]:
    """The highest sequence number a data file's name proves existed, and that file.

    ``snapshot-<S>`` proves S; ``log-<F>`` proves F - 1 (it continues from there).
    """
    best, where = 0, None
    for seq, path in snapshots(directory):
        if seq > best:
            best, where = seq, path
    for segment in segments(directory):
        if segment.first_seq - 1 > best:
            best, where = segment.first_seq - 1, segment.path
    return best, where


def _folder_last_seq(directory: Path) -> int:
    """The highest sequence number ``directory`` shows evidence of (names and valid records)."""
    best, _ = _named_evidence(directory)
    for segment in segments(directory):
        try:
            _, payloads = scan_file(segment.path, LOG_MAGIC)
        except OSError:
            continue
        for payload in payloads:
            try:
                seq, _record = _decode(payload)
            except Exception:
                continue
            best = max(best, seq)
    return best


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt`` (kept for inspection, never read again).

    An earlier ``<name>.corrupt`` is kept too: this one becomes ``<name>.<n>.corrupt``.
    """
    aside = path.with_name(path.name + ".corrupt")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{n}.corrupt")
    path.rename(aside)
    fsync_dir(path.parent)
    return aside


def check_directory(directory: Path, repair: bool = False) -> tuple[bool, list[str]]:
    """Report on a node's data folder; with ``repair``, cut the log at its first bad record.

    Returns whether the folder is (now) fit to start from, and one line per finding. Every
    snapshot must load; every log record must have a valid checksum and decode; sequence
    numbers must run on without a duplicate, a reordering, or (after the newest valid
    snapshot) a gap; and the history must reach the highest sequence a file name proves
    (the rules of recovery). A torn tail of the last segment is fine: recovery cuts it.

    ``repair`` renames a bad snapshot ``<name>.corrupt``, cuts a segment at its first bad,
    undecodable or misordered record, and renames the later segments ``<name>.corrupt``
    (their records are lost). Missing records (a gap, a history that stops short) cannot
    be repaired by cutting: the folder stays unfit.
    """
    if not directory.is_dir():
        return False, [f"{directory}: no such folder"]
    lines: list[str] = []
    problems = 0  # findings that make the folder unfit, not repaired
    for old in sorted(directory.glob(f"{_DAMAGED_PREFIX}*")):
        if old.is_dir():
            lines.append(f"{old.name}/: files set aside earlier (not checked)")
    base: int | None = None
    for seq, path in snapshots(directory):
        try:
            snap_seq, chunks = load_snapshot(path)
            keys = sum(len(flat) // 3 for flat in chunks if isinstance(flat, list))
            if snap_seq != seq:
                raise StorageCorrupted(f"{path}: named for seq {seq} but holds seq {snap_seq}")
        except StorageCorrupted as exc:
            lines.append(f"{path.name}: BAD: {_reason(exc, path)}")
            if repair:
                aside = _move_aside(path)
                lines.append(f"  repaired: moved {path.name} aside to {aside.name}")
            else:
                problems += 1
            continue
        lines.append(f"{path.name}: snapshot as of seq {seq}, {keys} keys: ok")
        if base is None:
            base = seq
    sequence = _Sequence(base or 0)
    found = segments(directory)
    stopped = False
    for i, segment in enumerate(found):
        name = segment.path.name
        scan, payloads = scan_file(segment.path, LOG_MAGIC)
        sequence.start_file()
        seqs: list[int] = []
        bad_at: int | None = None
        bad = ""
        offset = len(LOG_MAGIC)
        for payload in payloads:
            try:
                seq, _record = _decode(payload)
            except Exception as exc:
                bad_at = offset
                bad = f"a record with a valid checksum does not decode at offset {offset}: {exc}"
                break
            try:
                sequence.step(seq)
            except _OrderError as exc:
                if not exc.gap:
                    bad_at, bad = offset, exc.at(offset)
                    break
                problems += 1
                lines.append(f"{name}: GAP: {exc.at(offset)}")
                sequence.accept(seq)  # read on, to report the rest too
            seqs.append(seq)
            offset += FRAME_HEADER.size + len(payload)
        span = f"records {seqs[0]}..{seqs[-1]}" if seqs else "no records"
        if bad_at is not None:
            kind = "CORRUPT"
            where = bad
        elif not scan.clean:
            bad_at = scan.good_end
            kind = "torn tail" if scan.torn_tail and i == len(found) - 1 else "CORRUPT"
            where = f"{scan.problem} at offset {scan.good_end}" + (
                f"; valid records follow at offset {scan.valid_after}"
                if scan.valid_after is not None
                else ""
            )
        else:
            lines.append(f"{name}: {len(seqs)} records ({span}): ok")
            continue
        lines.append(f"{name}: {len(seqs)} good records ({span}), then {kind}: {where}")
        if repair:
            _truncate(segment.path, bad_at)
            lines.append(
                f"  repaired: cut {name} at offset {bad_at} ({scan.size - bad_at} bytes dropped)"
            )
            for later in found[i + 1 :]:
                aside = _move_aside(later.path)
                lines.append(f"  repaired: moved {later.path.name} aside to {aside.name}")
            break
        if kind == "CORRUPT":
            problems += 1
            stopped = True  # what follows cannot be judged
            break
    if not stopped:
        # After repairs, the files moved aside no longer count.
        evidence, proof = _named_evidence(directory)
        if proof is not None and sequence.reached < evidence:
            problems += 1
            lines.append(
                f"{proof.name}: HISTORY SHORT: its name says history reached seq {evidence}, "
                f"but the valid snapshots and log records reach only seq {sequence.reached} "
                f"(records {sequence.reached + 1}..{evidence} are missing)"
            )
    return problems == 0, lines
