"""Process plumbing shared by the broker and node processes.

Owns: the log line format (one line per event, carrying the process name), a throttle for
warnings a hostile peer could trigger at will, the bounded receive of one multipart message,
the ready file a process writes once it serves (its pid and the endpoints it actually
bound, so tests and the launcher can use port 0 without races), and turning SIGTERM/SIGINT
into a clean stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import zmq

__all__ = [
    "MAX_FRAMES",
    "Throttle",
    "Waiter",
    "bind_endpoint",
    "configure_logging",
    "drain",
    "on_reload_signal",
    "on_stop_signals",
    "read_ready_file",
    "recv_frames",
    "recv_frames_with_user",
    "send_frames",
    "write_ready_file",
]

_NOBLOCK: Final = int(zmq.NOBLOCK)  # plain ints: an enum's operators cost per frame
_NOBLOCK_MORE: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE: Final = int(zmq.RCVMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_FD: Final = int(zmq.FD)
#: No zkv message has more frames than this; longer ones are read to the end and dropped.
MAX_FRAMES: Final = 8


def recv_frames(sock: zmq.Socket[bytes], max_frames: int = MAX_FRAMES) -> list[bytes] | None:
    """One message without blocking (``zmq.Again`` if none), or None if it had too many frames.

    Frames past ``max_frames`` are received and dropped one by one, so a peer cannot make
    us hold a message of a million frames.
    """
    frames = [sock.recv(_NOBLOCK)]
    while sock.get(_RCVMORE):
        frame = sock.recv()
        if len(frames) <= max_frames:
            frames.append(frame)
    return frames if len(frames) <= max_frames else None


def send_frames(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Send ``frames`` as one message without blocking (``zmq.Again`` when it cannot go):
    ``send_multipart`` with plain-int flags and no per-frame type checks (every frame here is
    ``bytes``). Once the first frame is queued ZeroMQ takes the rest of the message."""
    send = sock.send
    for frame in frames[:-1]:
        send(frame, _NOBLOCK_MORE)
    send(frames[-1], _NOBLOCK)


def drain(
    sock: zmq.Socket[bytes], max_messages: int, max_frames: int = MAX_FRAMES
) -> Iterator[list[bytes] | None]:
    """Up to ``max_messages`` messages waiting on ``sock`` (each as ``recv_frames`` gives
    it: None for one with too many frames), read until ``zmq.Again``: a socket read until
    then signals its ``ZMQ_FD`` at its next message (see ``Waiter``)."""
    for _ in range(max_messages):
        try:
            frames = recv_frames(sock, max_frames)
        except zmq.Again:
            return
        yield frames


class Waiter:
    """Waits for messages on some ZeroMQ sockets with one ``poll(2)`` per wait.

    ``zmq.Poller`` asks every socket for its ``ZMQ_EVENTS`` before and after its poll, and
    each question processes that socket's command mailbox with syscalls of its own (a
    poll and a getpid): a dozen syscalls per wake-up of a broker, measured with strace.
    Here a wait polls the sockets' ``ZMQ_FD``s only. A socket's FD signals when its mailbox
    gets a command, and a message arriving on a pipe its reader found empty is one; so a
    socket drained until ``zmq.Again`` (``drain``) wakes the wait at its next message.

    Two things break that, and the driver reports them with ``check(sock)``: a send may
    process the mailbox and consume a signal meant for a reader, and a drain that stopped at
    its bound leaves messages no signal announces. The next wait first asks those sockets'
    ``ZMQ_EVENTS`` and returns the readable ones without blocking. A wait that times out
    returns every socket, a safety net that costs one drain each per timer.
    """

    def __init__(self, sockets: Iterable[zmq.Socket[bytes]]) -> None:
        self._poll = select.poll()
        self._by_fd: dict[int, zmq.Socket[bytes]] = {}
        for sock in sockets:
            fd = int(sock.get(_FD))
            self._poll.register(fd, select.POLLIN)
            self._by_fd[fd] = sock
        self._check: set[zmq.Socket[bytes]] = set(self._by_fd.values())
        # ``wake()`` ends a wait at once: a signal handler's flag is seen without waiting
        # for the timeout (Python retries an interrupted poll, PEP 475)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poll.register(self._wake_r, select.POLLIN)

    def wake(self) -> None:
        """End the current or next wait now (from a signal handler or another thread)."""
        fd = self._wake_w
        if fd < 0:  # closed: its number may belong to another file by now
            return
        with contextlib.suppress(OSError):  # full: a wake is pending already
            os.write(fd, b"w")

    def close(self) -> None:
        """Release the wake-up pipe (the sockets are the caller's); ``wake()`` does nothing
        from then on."""
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def check(self, sock: zmq.Socket[bytes]) -> None:
        """Ask ``sock``'s ``ZMQ_EVENTS`` before the next wait: it was sent on, or a drain of it
        stopped before ``zmq.Again``."""
        self._check.add(sock)

    def wait(self, timeout_ms: int) -> list[zmq.Socket[bytes]]:
        """The sockets that may have messages, waiting up to ``timeout_ms`` (-1: no bound)
        for one; all of them when the wait times out."""
        if self._check:
            ready = [sock for sock in self._check if int(sock.get(_EVENTS)) & _POLLIN]
            self._check.clear()
            if ready:
                return ready
        events = self._poll.poll(timeout_ms)
        if not events:
            return list(self._by_fd.values())
        by_fd = self._by_fd
        ready = []
        for fd, _ in events:
            sock = by_fd.get(fd)
            if sock is not None:
                ready.append(sock)
            else:  # the wake-up pipe
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
        return ready


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
