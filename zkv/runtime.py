"""Process plumbing shared by the broker and node processes.

Owns: the log line format (one line per event, carrying the process name), a throttle for
warnings a hostile peer could trigger at will, the bounded receive of one multipart message,
the ready file a process writes once it serves (its pid and the endpoints it actually
bound, so tests and the launcher can use port 0 without races), and turning SIGTERM/SIGINT
into a clean stop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq

__all__ = [
    "MAX_FRAMES",
    "Throttle",
    "bind_endpoint",
    "configure_logging",
    "on_reload_signal",
    "on_stop_signals",
    "read_ready_file",
    "recv_frames",
    "recv_frames_with_user",
    "write_ready_file",
]

#: No zkv message has more frames than this; longer ones are read to the end and dropped.
MAX_FRAMES: Final = 8


def recv_frames(sock: zmq.Socket[bytes], max_frames: int = MAX_FRAMES) -> list[bytes] | None:
    """One message without blocking (``zmq.Again`` if none), or None if it had too many frames.

    Frames past ``max_frames`` are received and dropped one by one, so a peer cannot make
    us hold a message of a million frames.
    """
    frames = [sock.recv(zmq.NOBLOCK)]
    while sock.getsockopt(zmq.RCVMORE):
        frame = sock.recv()
        if len(frames) <= max_frames:
            frames.append(frame)
    return frames if len(frames) <= max_frames else None


def recv_frames_with_user(
    sock: zmq.Socket[bytes], max_frames: int = MAX_FRAMES
) -> tuple[list[bytes] | None, str]:
    """``recv_frames``, plus the ``User-Id`` the ZAP authenticator gave the sender's
    connection (its key's name; only on a socket with CURVE and ZAP)."""
    first = sock.recv(zmq.NOBLOCK, copy=False)
    user = first.get("User-Id")
    frames = [first.bytes]
    while sock.getsockopt(zmq.RCVMORE):
        frame = sock.recv()
        if len(frames) <= max_frames:
            frames.append(frame)
    return (frames if len(frames) <= max_frames else None), str(user)


class Throttle:
    """Lets at most ``burst`` warnings through per ``period_s``, then counts the rest.

    For warnings a peer can cause at will (malformed frames): the log stays readable and
    cannot be flooded, and the suppressed count is reported when the next period opens.
    """

    def __init__(self, logger: logging.Logger, burst: int = 10, period_s: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._window_start = -period_s
        self._count = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        """Log ``message`` as a warning unless this period's budget is spent."""
        now = time.monotonic()
        if now - self._window_start >= self.period_s:
            if self._suppressed:
                self.logger.warning("suppressed %d similar warnings", self._suppressed)
            self._window_start, self._count, self._suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.warning(message, *args)
        else:
            self._suppressed += 1


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


def on_reload_signal(reload: Callable[[], None]) -> None:
    """Call ``reload`` on SIGHUP (only from the main thread); it should only set a flag."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("received SIGHUP, reloading the config file")
        reload()

    signal.signal(signal.SIGHUP, handler)
