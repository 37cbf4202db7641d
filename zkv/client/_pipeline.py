"""Pipelines: queue single-key operations, send them as one request per shard, get results.

::

    with kv.pipeline() as p:
        p.put("a", 1).get("a").delete("b")
        results = p.execute()          # [None, 1, False]: in order

``execute`` sends the queue as one BATCH request; the broker splits it into one message per
shard, each shard runs its operations in order, and the results come back in the order
queued. An operation that failed holds its exception instance in the results (nothing is
raised for it). Leaving the ``with`` block without ``execute()`` discards the queue. The
whole batch is one request id, so a retry of it (after a lost reply or a failover) is
answered with its first outcome, as for any write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from zkv.client._core import (
    Call,
    ClientCore,
    Key,
    Operation,
    cas_op,
    create_op,
    delete_op,
    exists_op,
    expire_op,
    get_op,
    put_op,
    ttl_op,
)

__all__ = ["AsyncPipeline", "Pipeline"]


class _Queue:
    """The queueing half shared by both pipelines; each method returns the pipeline."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._ops: list[Operation] = []

    def __len__(self) -> int:
        return len(self._ops)

    def _add(self, operation: Operation) -> Self:
        self._ops.append(operation)
        return self

    def get(self, key: Key, default: Any = None) -> Self:
        """Queue ``get``."""
        return self._add(get_op(key, default))

    def put(self, key: Key, value: Any, ttl: float | None = None) -> Self:
        """Queue ``put``."""
        return self._add(put_op(key, value, ttl))

    def create(self, key: Key, value: Any, ttl: float | None = None) -> Self:
        """Queue ``create`` (its result is a ``KeyExists`` instance if the key is present)."""
        return self._add(create_op(key, value, ttl))

    def delete(self, key: Key) -> Self:
        """Queue ``delete``."""
        return self._add(delete_op(key))

    def exists(self, key: Key) -> Self:
        """Queue ``exists``."""
        return self._add(exists_op(key))

    def cas(self, key: Key, expected: Any, new: Any) -> Self:
        """Queue ``cas``."""
        return self._add(cas_op(key, expected, new))

    def expire(self, key: Key, seconds: float) -> Self:
        """Queue ``expire``."""
        return self._add(expire_op(key, seconds))

    def ttl(self, key: Key) -> Self:
        """Queue ``ttl``."""
        return self._add(ttl_op(key))

    def reset(self) -> None:
        """Discard the queued operations."""
        self._ops = []

    def _take(self, **kw: Any) -> Call:
        ops, self._ops = self._ops, []
        return self._core.batch(ops, **kw)


class Pipeline(_Queue):
    """A pipeline of a ``Client``: ``execute()`` returns the results."""

    def __init__(self, core: ClientCore, run: Callable[[Call], Any]) -> None:
        super().__init__(core)
        self._run = run

    def execute(self, *, timeout: float | None = None, consistency: str | None = None) -> list[Any]:
        """Send the queue (one message per shard) and return the results in order."""
        result: list[Any] = self._run(self._take(timeout=timeout, consistency=consistency))
        return result

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.reset()


class AsyncPipeline(_Queue):
    """A pipeline of an ``AsyncClient``: ``await execute()`` returns the results."""

    def __init__(self, core: ClientCore, run: Callable[[Call], Awaitable[Any]]) -> None:
        super().__init__(core)
        self._run = run

    async def execute(
        self, *, timeout: float | None = None, consistency: str | None = None
    ) -> list[Any]:
        """Send the queue (one message per shard) and return the results in order."""
        result: list[Any] = await self._run(self._take(timeout=timeout, consistency=consistency))
        return result

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.reset()
