"""Recovery: reads a data folder's history and judges whether it is whole.

- ``load_history`` loads the newest valid snapshot into an empty ``Store`` and replays every
  later record in sequence order. It refuses (``StorageCorrupted``, naming the file and
  offset) damage followed by valid records, a gap, a duplicate or out-of-order sequence
  number (two processes wrote to the folder), or a history shorter than the folder's file
  names prove: every file names a sequence (``snapshot-<S>`` says history reached S,
  ``log-<F>`` that it reached F-1), and recovery must reach the highest of them without a
  gap. A bad snapshot is skipped only when an older one plus the log still get there.
  It changes nothing on disk: a torn tail of the last segment comes back as a ``TornTail``,
  for the caller to cut (with a warning naming the file and offset) once the history is
  known whole.
- ``check_directory`` (``zkv check``) reports on a folder by the same rules, file by file,
  and can repair what a cut can.

The write side (the log, compaction, ``set_aside``) is ``zkv.storage.persistence``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeAlias

from zkv.errors import StorageCorrupted
from zkv.storage.engine import Record, Store
from zkv.storage.log import FRAME_HEADER, LOG_MAGIC, fsync_dir, scan_file, segments
from zkv.storage.records import RecordError, decode_record
from zkv.storage.snapshot import load_snapshot, snapshots

#: Told each record replayed from the log: its sequence number, payload and decoding.
Replayed: TypeAlias = Callable[[int, bytes, Record], None]

__all__ = ["DAMAGED_PREFIX", "Recovery", "TornTail", "check_directory", "load_history"]

log = logging.getLogger(__name__)

#: Subfolders ``damaged-<UTC time>/`` hold data files set aside (never read again).
DAMAGED_PREFIX: Final = "damaged-"


@dataclass(slots=True)
class Recovery:
    """What start-up found on disk."""

    snapshot_seq: int | None = None
    snapshot_keys: int = 0
    records: int = 0
    seq: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn tail of a folder's last log segment, to cut at ``good_end``."""

    path: Path
    good_end: int
    #: The warning to log and report when it is cut.
    message: str

    def cut(self) -> None:
        """Cut the segment at ``good_end`` (and fsync it)."""
        _truncate(self.path, self.good_end)


def load_history(
    directory: Path, store: Store, replayed: Replayed | None = None
) -> tuple[Recovery, TornTail | None]:
    """Load ``directory``'s whole history into the empty ``store``; the torn tail to cut.

    ``replayed(seq, payload, record)`` is told each log record applied after the snapshot,
    in order (a node keeps the last of them: its replication backlog and watch history).

    Raises ``StorageCorrupted`` (with ``path``, ``offset`` and ``last_seq``) when the folder
    cannot give back its whole history. Changes nothing on disk either way: the caller cuts
    the torn tail, if any, once this returned. The report's ``seq`` and ``seconds`` are
    left to the caller.
    """
    report = Recovery()
    skipped = _load_snapshot(directory, store, report)
    cut = _replay(directory, store, report, skipped, replayed)
    _check_evidence(directory, store, skipped)
    return report, cut


def _load_snapshot(directory: Path, store: Store, report: Recovery) -> list[_BadSnapshot]:
    """Load the newest valid snapshot; the newer ones skipped as bad, newest first."""
    skipped: list[_BadSnapshot] = []
    for seq, path in snapshots(directory):
        try:
            snap_seq, chunks = load_snapshot(path)
            for chunk in chunks:
                if isinstance(chunk, dict):
                    store.load_results(chunk.get("results", []))
                else:
                    store.load(chunk)
        except StorageCorrupted as exc:
            store.reset()  # drop what a bad snapshot half-loaded
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
                last_seq=_folder_last_seq(directory),
            )
        store.seq = snap_seq
        report.snapshot_seq = snap_seq
        report.snapshot_keys = store.held
        break
    return skipped


def _replay(
    directory: Path,
    store: Store,
    report: Recovery,
    skipped: list[_BadSnapshot],
    replayed: Replayed | None = None,
) -> TornTail | None:
    """Apply the records after the snapshot; the torn tail to cut, if any (not cut yet)."""
    found = segments(directory)
    sequence = _Sequence(store.seq)
    cut: TornTail | None = None
    for i, segment in enumerate(found):
        path = segment.path
        scan, payloads = scan_file(path, LOG_MAGIC)
        sequence.start_file()
        offset = len(LOG_MAGIC)
        for payload in payloads:
            try:
                seq, record = decode_record(payload)
            except RecordError as exc:
                raise _corrupted(
                    directory,
                    f"{path}: a record with a valid checksum does not decode at offset "
                    f"{offset}: {exc}; refusing to start. Inspect with `zkv check --data "
                    f"{directory}`; `--repair` cuts the log there (losing what follows).",
                    path,
                    offset,
                ) from None
            try:
                apply = sequence.step(seq)
            except _OrderError as exc:
                raise _out_of_order(directory, exc, path, offset, store.seq, skipped) from None
            if apply:
                store.apply_record(record)
                store.seq = seq
                report.records += 1
                if replayed is not None:
                    replayed(seq, payload, record)
            offset += FRAME_HEADER.size + len(payload)
        if scan.clean:
            continue
        if i == len(found) - 1 and scan.torn_tail:
            message = (
                f"cut a torn tail off {path} at offset {scan.good_end} "
                f"({scan.size - scan.good_end} bytes: {scan.problem})"
            )
            cut = TornTail(path, scan.good_end, message)
        else:
            raise _corrupted(
                directory,
                _corruption(path, scan.problem, scan.good_end, scan.valid_after, directory),
                path,
                scan.good_end,
            )
    return cut


def _check_evidence(directory: Path, store: Store, skipped: list[_BadSnapshot]) -> None:
    """Refuse a history shorter than the folder's file names prove."""
    evidence, where = _named_evidence(directory)
    if store.seq >= evidence or where is None:
        return
    reached = store.seq
    missing = f"records {reached + 1}..{evidence} are missing"
    bad = [b for b in skipped if b.seq > reached]
    if bad:
        root = bad[0]
        raise _corrupted(
            directory,
            f"{root.path}: damaged ({root.reason}), and no older snapshot plus log records "
            f"reach its seq {root.seq} (they reach only seq {reached}): {missing}; "
            f"refusing to start with less data. Inspect with `zkv check --data "
            f"{directory}`.",
            root.path,
            root.offset,
        )
    raise _corrupted(
        directory,
        f"{where}: its name says history reached seq {evidence}, but the snapshots and log "
        f"records reach only seq {reached}: {missing}; refusing to start with less data. "
        f"Inspect with `zkv check --data {directory}`.",
        where,
        None,
    )


def _out_of_order(
    directory: Path,
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
        return _corrupted(
            directory,
            f"{root.path}: damaged ({root.reason}), and without it {exc.why} (the "
            f"snapshots and log records reach only seq {reached}, then {path.name} "
            f"continues at offset {offset}); refusing to start with less data. Inspect "
            f"with `zkv check --data {directory}`.",
            root.path,
            root.offset,
        )
    advice = (
        "refusing to start rather than lose them"
        if exc.gap
        else "refusing to start; `--repair` cuts the log there (losing what follows)"
    )
    return _corrupted(
        directory,
        f"{path}: {exc.at(offset)}; {advice}. Inspect with `zkv check --data {directory}`.",
        path,
        offset,
    )


def _corrupted(directory: Path, message: str, path: Path, offset: int | None) -> StorageCorrupted:
    return StorageCorrupted(message, path=path, offset=offset, last_seq=_folder_last_seq(directory))


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
                seq, _record = decode_record(payload)
            except RecordError:
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
    for old in sorted(directory.glob(f"{DAMAGED_PREFIX}*")):
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
                seq, _record = decode_record(payload)
            except RecordError as exc:
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
