"""The routing state of several brokers, shared through etcd, and this broker's lease.

With a ``coordination`` section, every broker keeps its ``RoutingTable`` in step with one
document in etcd (``zkv.coordination.EtcdState``) and at most one broker, the controller
(``ControllerLease``), makes decisions: it saves each one as a transaction that compares the
document's revision and its own lease, so a deposed controller can never overwrite a newer
decision. ``SharedRouting`` is the table's ``Backing``: ``write`` is that transaction
(``OSError`` when refused, so the decision is not taken), ``read`` the document.

A background thread renews the lease and asks etcd for a newer document every
``POLL_S``; the broker's loop takes a newer one with ``take_update`` and applies it. While
etcd cannot be reached the thread keeps trying, the broker routes with the last document it
saw and, having lost its lease, makes no decision; ``error`` says why.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

from zkv.config import ClusterConfig
from zkv.coordination import ControllerLease, EtcdDriver, EtcdState
from zkv.errors import CoordinationError

__all__ = ["SharedRouting"]

log = logging.getLogger(__name__)

#: How often the background thread renews the lease and asks for a newer document.
POLL_S: Final = 0.1
#: How long a starting broker waits for etcd before it gives up (seconds).
START_WAIT_S: Final = 30.0


class SharedRouting:
    """This broker's view of the shared routing document and of the controller lease."""

    def __init__(self, config: ClusterConfig, name: str) -> None:
        assert config.coordination is not None
        etcd = config.coordination.etcd
        self.name = name
        self.prefix = etcd.prefix
        self.driver = EtcdDriver.from_config(etcd)
        self.state = EtcdState(self.driver, etcd.prefix)
        self.lease = ControllerLease(self.driver, etcd.prefix, name, etcd.lease_ttl_s)
        #: The revision of the document this broker last saw or wrote.
        self.revision = 0
        #: The last coordination error (None: etcd answers).
        self.error: str | None = None
        self._update: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __str__(self) -> str:
        return f"etcd {self.prefix}/routing"

    # ------------------------------------------------------------------ Backing

    def read(self) -> dict[str, Any] | None:
        """The document in etcd (None if there is none yet), waiting up to
        ``START_WAIT_S`` for etcd to answer; ``OSError`` if it never does."""
        deadline = time.monotonic() + START_WAIT_S
        while True:
            try:
                doc, revision = self.state.load()
            except CoordinationError as exc:
                self.error = str(exc)
                if time.monotonic() > deadline:
                    raise OSError(f"etcd did not answer within {START_WAIT_S:g} s: {exc}") from exc
                time.sleep(0.2)
                continue
            with self._lock:
                self.revision = max(self.revision, revision)
            self.error = None
            return doc

    def write(self, document: dict[str, Any]) -> None:
        """Save ``document`` if this broker is the controller and the document it read is
        still the newest; ``OSError`` otherwise (the decision is then not taken)."""
        fence = self.lease.fence()
        if fence is None:
            raise OSError(f"broker {self.name} is not the controller")
        with self._lock:
            expected = self.revision
        try:
            revision = self.state.save(document, expected, fence)
        except CoordinationError as exc:
            self.error = str(exc)
            raise OSError(f"etcd: {exc}") from exc
        if revision is None:
            raise OSError("a newer routing state or controller is in etcd")
        with self._lock:
            self.revision = max(self.revision, revision)

    # ------------------------------------------------------------------ the loop's view

    def is_controller(self) -> bool:
        """Whether this broker holds the lease now (by its own, conservative clock)."""
        return self.lease.is_controller()

    @property
    def controller(self) -> str | None:
        """The name of the controller last seen in etcd."""
        return self.lease.holder

    def take_update(self) -> dict[str, Any] | None:
        """A newer document the thread found since the last call, if any."""
        with self._lock:
            update, self._update = self._update, None
        return update

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Start renewing the lease and watching the document."""
        self._thread = threading.Thread(target=self._run, name="zkv-etcd", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and give the lease up (so another broker takes over at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.lease.stop()
        self.driver.close()

    def _run(self) -> None:
        was_controller = False
        while not self._stop.wait(POLL_S):
            self.lease.tick(time.monotonic())
            controller = self.lease.is_controller()
            if controller != was_controller:
                log.warning(
                    "broker %s %s the controller",
                    self.name,
                    "is now" if controller else "is no longer",
                )
                was_controller = controller
            with self._lock:
                known = self.revision
            try:
                found = self.state.poll(known)
            except CoordinationError as exc:
                if self.error is None:
                    log.error("etcd unreachable: routing with the last state seen: %s", exc)
                self.error = str(exc)
                continue
            if self.error is not None:
                log.info("etcd answers again")
            lease_error = self.lease.last_error
            self.error = None if lease_error is None else str(lease_error)
            if found is None:
                continue
            doc, revision = found
            with self._lock:
                if revision > self.revision:
                    self.revision, self._update = revision, doc
