"""The data folder lock, across real processes: one live process per folder.

Holders are tiny ``python -c`` processes that lock a folder and sleep until killed; every
subprocess has a timeout and is killed by PID in ``finally``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zkv.cli import _serve
from zkv.errors import FolderLocked, ZkvError
from zkv.storage.lock import LOCK_NAME, FolderLock, folder_holder, lock_folder

TIMEOUT_S = 30.0  # a bound on waits for real processes, generous: none takes it
HOLDER = (
    "import sys, time; from pathlib import Path; from zkv.storage.lock import lock_folder; "
    "held = lock_folder(Path(sys.argv[1])); time.sleep(60)"
)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=TIMEOUT_S)
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A folder locked by another live process (killed by PID at the end)."""
    directory = tmp_path / "data" / "s0a"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while folder_holder(directory) != proc.pid:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the holder never locked the folder"
            time.sleep(0.02)
        yield directory, proc
    finally:
        _kill(proc)


def _zkv(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m zkv ARGS`` (killed if it outlives the timeout)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zkv", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --------------------------------------------------------------------------- in one process


def test_lock_creates_the_folder_and_writes_the_pid(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    assert folder_holder(directory) is None  # no folder, no holder
    with lock_folder(directory) as lock:
        assert isinstance(lock, FolderLock) and lock.held
        assert (directory / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert folder_holder(directory) == os.getpid()
    assert not lock.held
    assert folder_holder(directory) is None
    lock.release()  # twice is fine


def test_second_lock_is_refused_until_released(tmp_path: Path) -> None:
    first = lock_folder(tmp_path)
    try:
        with pytest.raises(FolderLocked) as info:
            lock_folder(tmp_path)
        err = info.value
        assert isinstance(err, ZkvError)
        assert err.pid == os.getpid() and err.directory == tmp_path
        assert str(err) == (
            f"{tmp_path} is in use by another zkv process (pid {os.getpid()}); stop it first, "
            "or give each node its own storage.dir/name"
        )
    finally:
        first.release()
    with lock_folder(tmp_path):
        pass


def test_a_stale_pid_in_a_free_lock_file_does_not_matter(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("999999999\n")  # a holder that died
    assert folder_holder(tmp_path) is None
    with lock_folder(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_serve_maps_folder_locked_to_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run() -> None:
        with lock_folder(tmp_path):
            lock_folder(tmp_path)

    assert _serve(run, "node s0a") == 2
    err = capsys.readouterr().err
    assert err == (
        f"zkv: node s0a cannot start: {tmp_path} is in use by another zkv process "
        f"(pid {os.getpid()}); stop it first, or give each node its own storage.dir/name\n"
    )


# --------------------------------------------------------------------------- across processes


def test_another_process_holds_the_lock_until_it_is_killed(
    holder: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    directory, proc = holder
    assert (directory / LOCK_NAME).read_text().strip() == str(proc.pid)
    with pytest.raises(FolderLocked) as info:
        lock_folder(directory)
    assert info.value.pid == proc.pid
    assert f"{directory} is in use by another zkv process (pid {proc.pid})" in str(info.value)

    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the kernel drops the lock
    proc.wait(timeout=TIMEOUT_S)
    assert folder_holder(directory) is None
    with lock_folder(directory) as lock:
        assert lock.held and folder_holder(directory) == os.getpid()


def test_check_repair_refuses_a_held_folder(
    holder: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    directory, proc = holder
    done = _zkv("check", "--data", str(directory), "--repair")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert str(directory) in done.stderr and f"pid {proc.pid}" in done.stderr
    assert done.stderr.startswith(f"zkv: cannot repair {directory}: ")

    done = _zkv("check", "--data", str(directory))  # reading is allowed, with a note
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1 and f"pid {proc.pid}" in done.stderr
    assert "may be stale" in done.stderr


def test_check_repair_takes_and_releases_the_lock(tmp_path: Path) -> None:
    directory = tmp_path / "s0a"
    directory.mkdir()
    done = _zkv("check", "--data", str(directory), "--repair")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert (directory / LOCK_NAME).read_text().strip().isdigit()  # it held the lock
    assert folder_holder(directory) is None  # and let go


def test_check_of_a_missing_folder_exits_2(tmp_path: Path) -> None:
    done = _zkv("check", "--data", str(tmp_path / "nosuch"))
    assert done.returncode == 2
    assert done.stderr == f"zkv: {tmp_path / 'nosuch'}: no such folder\n"
    assert not (tmp_path / "nosuch").exists()
