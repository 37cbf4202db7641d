"""A client rides through a broker restart by itself."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

import zkv


@pytest.mark.fault
def test_client_keeps_working_across_broker_kill_and_restart(cluster_factory: Any) -> None:
    c = cluster_factory()
    kv = c.client(timeout_s=10.0)
    acked: dict[str, int] = {}
    unknown: list[str] = []  # writes whose reply was lost: outcome unknown
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        try:
            while not stop.is_set() and i < 5000:
                key = f"r{i}"
                try:
                    # resent until answered across the restart, however long that takes
                    kv.put(key, i, timeout=10.0)
                    acked[key] = i
                except zkv.Timeout:
                    unknown.append(key)
                # reads retry across the restart until their timeout
                if acked:
                    probe = next(iter(acked))
                    assert kv.get(probe, timeout=10.0) == acked[probe]
                i += 1
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        c.wait_for(lambda: len(acked) > 10 or errors, "writes before the kill")
        before = len(acked)
        c.procs["broker"].signal(signal.SIGKILL)
        time.sleep(0.5)  # the broker stays down for a while (no check depends on how long)
        c.procs["broker"].start()
        c.procs["broker"].wait_ready()
        c.wait_alive(["s0a", "s1a", "s2a"])  # nodes re-register from their heartbeats
        after_restart = len(acked)
        c.wait_for(lambda: len(acked) >= after_restart + 100 or errors, "writes after it")
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors
    assert before > 10
    assert after_restart >= before
    assert len(acked) >= after_restart + 100  # writes went on after the restart
    assert len(unknown) <= 3, unknown  # only writes in flight at the kill are unknown
    assert kv.mget(list(acked)) == acked  # every acknowledged write reads back
