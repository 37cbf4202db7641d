"""Persistence: makes a node's ``Store`` durable: the write side of its data folder.

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
- ``recover`` brings the folder back after a restart or crash: its history is read and
  judged by ``zkv.storage.recovery`` (which refuses one that is not whole); only then does
  it cut a torn tail (with a warning naming the file and offset) and open the log.
- A full or failing disk: a turn whose records cannot be logged is refused, the storage
  ``state`` says why, and ``check`` makes the log take writes again once it can.
- ``set_aside`` moves a folder's data files into ``damaged-<UTC time>/`` (deleting
  nothing), for a node that will start over and resync instead.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from zkv.errors import StorageError, StorageFull
from zkv.storage.engine import Record, Store
from zkv.storage.log import AppendLog, fsync_dir, segment_path, segments
from zkv.storage.records import encode_record
from zkv.storage.recovery import DAMAGED_PREFIX, Recovery, Replayed, load_history
from zkv.storage.snapshot import SnapshotWriter, snapshots

__all__ = ["COMPACT_RETRY_S", "COMPACT_STEP_KEYS", "RESUME_HEADROOM_BYTES", "Persistence"]

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

    def recover(self, store: Store, replayed: Replayed | None = None) -> Recovery:
        """Load this folder into the empty ``store``, then log what the store emits;
        ``replayed(seq, payload, record)`` is told each log record replayed
        (``load_history``).

        Raises ``StorageCorrupted`` (with ``path``, ``offset`` and ``last_seq``) when the
        folder cannot give back its whole history; then no file was changed and the log
        was not opened, so the caller may ``set_aside()`` the damaged files and call
        ``recover()`` again with a new, empty ``Store`` (or make a new ``Persistence``).
        """
        if self.log.fileno() is not None:
            raise RuntimeError(f"{self.directory}: recover() called on an open log")
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        report, cut = load_history(self.directory, store, replayed)
        # Only now that the history is known to be whole is anything on disk changed.
        if cut is not None:
            log.warning("%s", cut.message)
            report.warnings.append(cut.message)
            cut.cut()
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
        target = self.directory / f"{DAMAGED_PREFIX}{stamp}"
        n = 1
        while True:
            try:
                target.mkdir()
                break
            except FileExistsError:
                n += 1
                target = self.directory / f"{DAMAGED_PREFIX}{stamp}-{n}"
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
        payload = encode_record(seq, record)
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
        flat, self._pos = store.walk(self._walk, self._pos, COMPACT_STEP_KEYS)
        self._writer.write(flat)
        if self._pos >= len(self._walk):
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
