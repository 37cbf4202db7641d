"""The requests of each client the broker forwarded and has not answered yet.

A client may hold at most ``limit`` of them (``limits.max_inflight_per_client``); past it
the broker refuses a new request at once (``TooManyRequests``). A request is known by its
client's identity and its sequence number; it is forgotten when the broker answers it or
when its deadline passes (a node that died never answers), so nothing leaks. Each
operation costs O(log n) at most (the deadlines' heap, rebuilt when answered requests
leave it more than half stale), and the memory held is bounded by the requests pending.
"""

from __future__ import annotations

import heapq
import logging

__all__ = ["Inflight"]

log = logging.getLogger(__name__)


class Inflight:
    """Counts, per client identity, the requests forwarded and not yet answered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[bytes, int] = {}
        self._pending: dict[tuple[bytes, int], float] = {}
        self._deadlines: list[tuple[float, bytes, int]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def acquire(self, client: bytes, seq: int, deadline: float) -> bool:
        """Note request ``seq`` of ``client``; False (nothing noted) if the client is at
        its limit. A resend of a request still pending counts once."""
        key = (client, seq)
        if key in self._pending:
            return True
        count = self.counts.get(client, 0)
        if count >= self.limit:
            return False
        self.counts[client] = count + 1
        self._pending[key] = deadline
        heapq.heappush(self._deadlines, (deadline, client, seq))
        return True

    def release(self, client: bytes, seq: int) -> None:
        """Forget request ``seq`` of ``client`` (answered); nothing if it was not pending."""
        if self._pending.pop((client, seq), None) is not None:
            self._drop(client)
            if len(self._deadlines) > 2 * len(self._pending) + 1024:
                # answered requests leave their deadlines behind: rebuild (amortized O(1))
                self._deadlines = [(d, c, s) for (c, s), d in self._pending.items()]
                heapq.heapify(self._deadlines)

    def expire(self, now: float) -> int:
        """Forget the requests whose deadline passed; how many were forgotten."""
        expired = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, client, seq = heapq.heappop(self._deadlines)
            if self._pending.get((client, seq)) == deadline:
                del self._pending[(client, seq)]
                self._drop(client)
                expired += 1
        if not self._pending and self._deadlines:
            self._deadlines.clear()  # only stale entries of answered requests are left
        return expired

    def _drop(self, client: bytes) -> None:
        count = self.counts[client] - 1
        if count:
            self.counts[client] = count
        else:
            del self.counts[client]
