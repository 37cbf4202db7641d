"""Process plumbing shared by the broker and node processes.

Owns: the log line format (one line per event, carrying the process name), the ready file
a process writes once it serves (its pid and the endpoints it actually bound, so tests and
the launcher can use port 0 without races), and turning SIGTERM/SIGINT into a clean stop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "bind_endpoint",
    "configure_logging",
    "on_stop_signals",
    "read_ready_file",
    "write_ready_file",
]


def configure_logging(process: str, level: str = "INFO") -> None:
    """Log one line per event to stderr, each naming ``process`` (the node or 'broker')."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Atomically write ``info`` (plus this pid) as JSON to ``path``."""
    data = {"pid": os.getpid(), **info}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def read_ready_file(path: Path) -> dict[str, Any] | None:
    """The JSON a process wrote with ``write_ready_file``, or None if not there yet."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data


def bind_endpoint(endpoint: str) -> str:
    """The endpoint to pass to ``bind``: port 0 means "any free port" (ZeroMQ spells it ``*``)."""
    if endpoint.endswith(":0"):
        return endpoint[:-2] + ":*"
    return endpoint


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT (only from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("received %s, stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
