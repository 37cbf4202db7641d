"""What ``zkv up`` knows about its children, shared through a small JSON file.

The launcher (``zkv.launcher``) writes ``<storage.dir>/launcher.json`` each time one of its
children starts, exits, is scheduled for a restart or is given up on; the broker reads it
for its STATUS reply, so a node the launcher gave up on shows as ``failed`` with its last
error line instead of just "not alive". The file::

    {"pid": <launcher pid>,
     "processes": {"s0a": {"state": "running" | "restarting" | "failed",
                           "pid": int | null, "restarts": int, "exit_status": int | null,
                           "error": str | null, "since": <unix time>}, ...}}

It is written atomically (a temporary file, then ``os.replace``) and removed when the
launcher stops. A reader ignores it when the launcher's pid is not alive (a launcher that
was killed leaves a stale file behind). Stdlib only, so importing this module costs the
broker nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeGuard

__all__ = [
    "LAUNCHER_FILE",
    "STATES",
    "ProcessState",
    "launcher_pid",
    "launcher_state_path",
    "read_launcher_state",
    "remove_launcher_state",
    "write_launcher_state",
]

log = logging.getLogger(__name__)

#: The file's name, in ``storage.dir``.
LAUNCHER_FILE: Final = "launcher.json"
#: Every value of ``ProcessState.state``.
STATES: Final = ("running", "restarting", "failed")


@dataclass(frozen=True, slots=True)
class ProcessState:
    """One child of the launcher, as last recorded.

    ``state`` is ``running`` (started; ``pid`` is its process), ``restarting`` (it exited
    and a restart is scheduled) or ``failed`` (it exited too often and the launcher gave up
    on it). ``restarts`` counts the restarts so far, ``exit_status`` is the status of its
    last exit (negative: killed by that signal; None if it has not exited), ``error`` the
    last error line it wrote on stderr before exiting, and ``since`` the Unix time of the
    change to ``state``.
    """

    name: str
    state: str
    pid: int | None
    restarts: int
    exit_status: int | None
    error: str | None
    since: float

    def to_json(self) -> dict[str, Any]:
        """The entry of this process in the file (its name is the key, not a field)."""
        data = asdict(self)
        del data["name"]
        return data


def launcher_state_path(storage_dir: Path) -> Path:
    """Where the launcher of a cluster whose ``storage.dir`` is ``storage_dir`` records state."""
    return Path(storage_dir) / LAUNCHER_FILE


def write_launcher_state(
    storage_dir: Path, processes: Mapping[str, ProcessState], pid: int | None = None
) -> None:
    """Atomically replace the file with ``processes``, recorded by launcher ``pid``.

    ``pid`` defaults to this process. Raises ``OSError`` if the folder is not writable.
    """
    path = launcher_state_path(storage_dir)
    data = {
        "pid": os.getpid() if pid is None else pid,
        "processes": {name: state.to_json() for name, state in processes.items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{LAUNCHER_FILE}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_launcher_state(storage_dir: Path) -> None:
    """Remove the file (nothing happens if it is not there)."""
    with contextlib.suppress(FileNotFoundError):
        launcher_state_path(storage_dir).unlink()


def launcher_pid(storage_dir: Path) -> int | None:
    """The pid of the live ``zkv up`` that runs the cluster of ``storage_dir``, if any."""
    try:
        raw = json.loads(launcher_state_path(storage_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = raw.get("pid") if isinstance(raw, dict) else None
    return pid if _is_int(pid) and _alive(pid) else None


def read_launcher_state(storage_dir: Path) -> dict[str, ProcessState]:
    """Each child's last recorded state, by name; ``{}`` if there is no live launcher.

    Never raises: a missing, unreadable or malformed file, or one whose launcher pid is not
    a live process, reads as ``{}``. An entry with a missing or mistyped field is left out;
    unknown fields are ignored.
    """
    try:
        raw = json.loads(launcher_state_path(storage_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("ignoring %s: %s", launcher_state_path(storage_dir), exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    pid, processes = raw.get("pid"), raw.get("processes")
    if not _is_int(pid) or not isinstance(processes, dict) or not _alive(pid):
        return {}
    states = {}
    for name, entry in processes.items():
        state = _entry(name, entry)
        if state is not None:
            states[name] = state
    return states


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) or kill(-n) would probe a whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, OverflowError):
        return False
    return True


def _entry(name: Any, entry: Any) -> ProcessState | None:
    if not isinstance(name, str) or not isinstance(entry, dict):
        return None
    state, pid, restarts = entry.get("state"), entry.get("pid"), entry.get("restarts")
    exit_status, error, since = entry.get("exit_status"), entry.get("error"), entry.get("since")
    if (
        state not in STATES
        or not (pid is None or _is_int(pid))
        or not _is_int(restarts)
        or not (exit_status is None or _is_int(exit_status))
        or not (error is None or isinstance(error, str))
        or isinstance(since, bool)
        or not isinstance(since, int | float)
    ):
        return None
    return ProcessState(
        name=name,
        state=state,
        pid=pid,
        restarts=restarts,
        exit_status=exit_status,
        error=error,
        since=float(since),
    )
