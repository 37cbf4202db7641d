"""The data folder lock: one live process per data folder.

``lock_folder(directory)`` takes an exclusive, non-blocking ``flock`` on
``<directory>/LOCK`` and writes the holder's PID into that file; the descriptor stays
open until ``FolderLock.release()`` (or the process ends: the kernel drops the lock of a
process that dies, even by SIGKILL, so a crash never leaves a stale lock behind). A
second process (or a second ``lock_folder`` in the same one) gets ``FolderLocked``,
naming the folder and the holder's PID. ``folder_holder(directory)`` tells whether a live
process holds the lock, without keeping it.

The LOCK file itself is never deleted (deleting it while another process waits to open
it would let two processes lock two different files); its content is only meaningful
while the lock is held.

Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from zkv.errors import FolderLocked

__all__ = ["LOCK_NAME", "FolderLock", "folder_holder", "lock_folder"]

log = logging.getLogger(__name__)

#: The lock file's name inside a data folder.
LOCK_NAME: Final = "LOCK"
#: How long to wait for a holder that has the lock but has not written its PID yet.
_PID_WAIT_S: Final = 0.5
#: How long ``lock_folder`` retries a taken lock (``folder_holder`` holds it for an instant).
_RETRY_S: Final = 0.2


class FolderLock:
    """A held lock on a data folder; ``release()`` it, or use it as a context manager."""

    def __init__(self, directory: Path, fd: int) -> None:
        #: The locked data folder.
        self.directory = directory
        #: The lock file, ``<directory>/LOCK``.
        self.path = directory / LOCK_NAME
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (closing the descriptor); safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FolderLock({str(self.directory)!r}, held={self.held})"


def lock_folder(directory: Path) -> FolderLock:
    """Lock ``directory`` (created if missing) for this process; ``FolderLocked`` if taken.

    The holder's PID is written into ``<directory>/LOCK`` once the lock is held.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _flock_briefly(fd)
    except BlockingIOError:
        pid = _read_pid_of_holder(fd)
        os.close(fd)
        raise _locked(directory, pid) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)  # closing drops the lock too
        raise
    log.debug("locked %s (pid %d)", directory, os.getpid())
    return FolderLock(directory, fd)


def folder_holder(directory: Path) -> int | None:
    """The PID of the live process that holds ``directory``'s lock, or None if it is free.

    Tested by trying the lock (without waiting, and letting go at once). A holder that has
    not written its PID yet (it writes it right after locking) is waited for briefly; if
    the PID still cannot be read, the answer is 0 (held, PID unknown).
    """
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # never locked (or no such folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid_of_holder(fd)
            return 0 if pid is None else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _flock_briefly(fd: int) -> None:
    """Take the exclusive lock, retrying for a moment (``folder_holder`` elsewhere may hold
    it for a few microseconds); ``BlockingIOError`` if it stays taken."""
    deadline = time.monotonic() + _RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _read_pid_of_holder(fd: int) -> int | None:
    """The PID in the lock file, waiting briefly for a holder that has just locked it."""
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        if text.isdigit() and int(text) > 0:
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _locked(directory: Path, pid: int | None) -> FolderLocked:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return FolderLocked(
        f"{directory} is in use by another zkv process ({who}); stop it first, "
        "or give each node its own storage.dir/name",
        directory=directory,
        pid=pid,
    )
