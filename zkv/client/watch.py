"""Watching: change feeds by key prefix, resumable from a cursor; the client's side, sans-IO.

``Client.watch`` and ``AsyncClient.watch`` drive one ``WatchCore`` with a socket of their
own: the core keeps one WATCH request outstanding per shard (a long poll the shard's primary
answers when it has events, or after ``wait``), turns the replies into ``WatchEvent`` and
``Resync`` events, and keeps the ``Cursor``: per shard, the epoch and the position (record
sequence number and the events of that record already delivered) of the last event handed
out. Each event carries the cursor *after* it: a watcher that stores ``ev.cursor`` with
its own effects, and later passes it to ``watch(cursor=...)``, gets every event after that
one and none before it, from any client, after a broker restart or a failover.

Guarantees (see the README's "Watch" section and ``zkv.node.watching``):

- per shard, events come in the order the shard applied them; shards are independent.
- only records every in-sync replica acknowledged are delivered, so a failover never takes
  one back, and the new primary continues the same numbering.
- a shard whose kept history no longer reaches the cursor answers ``Resync``; with
  ``snapshot=True`` the current matching keys follow as ``state`` events, then the feed
  goes on (the ZeroMQ guide's Clone pattern).
- a slot move produces no events: each user change is reported once, by the shard that
  applied it (the source before the switch, the target after).

No sockets here: ``requests``, ``on_reply`` and ``expire`` take the caller's clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from zkv import protocol
from zkv.client._core import ClientCore, Key, key_bytes, key_out
from zkv.errors import InvalidRequest, RemoteProtocolError, Unavailable
from zkv.protocol import Consistency, Op, Request

__all__ = ["Cursor", "Resync", "WatchCore", "WatchEvent", "WatchSend"]

#: How long one WATCH waits on its node for events (seconds) by default.
DEFAULT_WAIT_S: Final = 5.0
#: Events one reply carries at most by default.
DEFAULT_MAX_EVENTS: Final = 1000
#: Time a reply may take beyond the wait before the request is sent again (seconds).
REPLY_MARGIN_S: Final = 3.0
BACKOFF_FIRST_S: Final = 0.05
BACKOFF_MAX_S: Final = 1.0
#: The shard list is read again at most this often while some shard is unavailable.
REFRESH_S: Final = 2.0

_POSITION = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})@(\d+):(\d+)(?:\+(\d+))?")


class Cursor(Mapping[str, tuple[int, int, int]]):
    """Where a watcher is, per shard: ``(epoch, seq, skip)``: every event of the shard's
    records before ``seq`` was delivered, and the first ``skip`` events of record ``seq``.

    Immutable; ``str(cursor)`` (or ``encode()``) is a compact text form for HTTP and the
    CLI (``s0@3:1200,s1@2:980+1``), read back by ``Cursor.decode``.
    """

    __slots__ = ("_positions",)

    def __init__(self, positions: Mapping[str, tuple[int, int, int]] | None = None) -> None:
        self._positions: dict[str, tuple[int, int, int]] = dict(positions or {})

    def __getitem__(self, shard: str) -> tuple[int, int, int]:
        return self._positions[shard]

    def __iter__(self) -> Iterator[str]:
        return iter(self._positions)

    def __len__(self) -> int:
        return len(self._positions)

    def __repr__(self) -> str:
        return f"Cursor({self.encode()!r})"

    def __str__(self) -> str:
        return self.encode()

    def encode(self) -> str:
        """The text form: ``shard@epoch:seq[+skip]``, comma-separated."""
        return ",".join(
            f"{shard}@{epoch}:{seq}" + (f"+{skip}" if skip else "")
            for shard, (epoch, seq, skip) in sorted(self._positions.items())
        )

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A cursor from its text form; ``InvalidRequest`` if it is not one."""
        positions: dict[str, tuple[int, int, int]] = {}
        for part in filter(None, text.strip().split(",")):
            match = _POSITION.fullmatch(part.strip())
            if match is None:
                raise InvalidRequest(
                    f"not a watch cursor: {text[:100]!r} (expected shard@epoch:seq[+skip],...)"
                )
            shard, epoch, seq, skip = match.groups()
            positions[shard] = (int(epoch), int(seq), int(skip or 0))
        return cls(positions)

    def with_position(self, shard: str, position: tuple[int, int, int]) -> Cursor:
        """A copy with ``shard`` at ``position``."""
        copy = Cursor(self._positions)
        copy._positions[shard] = position
        return copy


EventKind = Literal["put", "delete", "expire", "evict", "ttl", "clear", "state"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: ``kind`` is ``put`` (``value`` set), ``delete``, ``expire`` (its TTL ran
    out), ``evict`` (removed under ``memory.max_bytes``), ``ttl`` (``expires_at`` changed;
    None: no TTL now), ``clear`` (every key of the shard; ``key`` is ``""``), or ``state``
    (a key's current value, in the snapshot that follows a ``Resync`` asked with
    ``snapshot=True``). ``value`` is None unless ``put``/``state`` with ``values=True``.
    ``expires_at`` is wall-clock seconds (``time.time``) or None."""

    kind: EventKind
    key: Key
    value: Any
    expires_at: float | None
    shard: str
    seq: int
    epoch: int
    cursor: Cursor = field(repr=False)


@dataclass(frozen=True, slots=True)
class Resync:
    """The feed of ``shard`` could not continue from the cursor: its kept history no longer
    reaches back to it (``reason`` says which), the watcher read too slowly, or the cursor
    is past what the shard's primary holds. Events in between are lost to this watcher:
    with ``snapshot=True`` the current matching keys of the shard follow as ``state``
    events; then the feed goes on from ``cursor``."""

    shard: str
    reason: str
    snapshot: bool
    cursor: Cursor = field(repr=False)
    kind: Literal["resync"] = "resync"


@dataclass(frozen=True, slots=True)
class WatchSend:
    """A WATCH to send: ``frames``, answered by the reply with sequence ``seq``."""

    shard: str
    seq: int
    frames: list[bytes]


@dataclass(slots=True)
class _Shard:
    name: str
    position: tuple[int, int, int] | None  # None: from now on
    outstanding: int = 0  # request seq waiting for a reply (0: none)
    deadline: float = 0.0
    retry_at: float = 0.0
    backoff: float = BACKOFF_FIRST_S
    page: list[Any] | None = None  # a snapshot page to ask for next
    resume: tuple[int, int, int] | None = None  # where the feed goes on after the snapshot


class WatchCore:
    """One watcher's requests, replies and cursor (see the module docstring)."""

    def __init__(
        self,
        prefix: Key = "",
        cursor: Cursor | str | None = None,
        *,
        values: bool = True,
        snapshot: bool = False,
        wait_s: float = DEFAULT_WAIT_S,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if not 0 < max_events <= protocol.MAX_PAGE:
            raise InvalidRequest(f"max_events must be in 1..{protocol.MAX_PAGE}")
        if not 0 <= wait_s <= protocol.MAX_WATCH_WAIT_MS / 1000:
            raise InvalidRequest("wait must be between 0 and 60 seconds")
        self.prefix = key_bytes(prefix)
        #: The prefixes asked for (a gateway narrows them to its token's grant).
        self.prefixes: list[bytes] = [self.prefix]
        self.values = values
        self.snapshot = snapshot
        self.wait_s = wait_s
        self.max_events = max_events
        self.cursor = Cursor.decode(cursor) if isinstance(cursor, str) else cursor or Cursor()
        self.client_id = protocol.new_client_id()
        self._seq = 0
        self._shards: dict[str, _Shard] = {}
        self._by_seq: dict[int, _Shard] = {}
        self._refresh_at = math.inf

    # ------------------------------------------------------------------ shards

    def set_shards(self, names: Iterable[str], now: float) -> None:
        """The cluster's shards: watch each; a shard of the cursor that is gone is kept in
        the cursor but no longer asked."""
        wanted = list(names)
        for name in wanted:
            if name not in self._shards:
                self._shards[name] = _Shard(name, self.cursor.get(name))
        for name in [n for n in self._shards if n not in wanted]:
            gone = self._shards.pop(name)
            self._by_seq.pop(gone.outstanding, None)
        self._refresh_at = math.inf

    def started(self) -> bool:
        """Whether every shard has a position (a watch "from now" knows where now is)."""
        return all(shard.position is not None for shard in self._shards.values())

    def refresh_due(self, now: float) -> bool:
        """Whether the driver should read the shard list again (a shard is unavailable)."""
        return now >= self._refresh_at

    # ------------------------------------------------------------------ requests

    def requests(self, now: float) -> list[WatchSend]:
        """The WATCH requests to send now: one per shard with none outstanding."""
        out = []
        for shard in self._shards.values():
            if shard.outstanding or now < shard.retry_at:
                continue
            out.append(self._request(shard, now))
        return out

    def not_sent(self, send: WatchSend, now: float) -> None:
        """``send`` could not be sent (no broker connection): try again after a pause."""
        shard = self._by_seq.pop(send.seq, None)
        if shard is not None:
            shard.outstanding = 0
            self._back_off(shard, now)

    def _request(self, shard: _Shard, now: float) -> WatchSend:
        self._seq += 1
        page = shard.page
        wait_s = 0.0 if page is not None or shard.position is None else self.wait_s
        position = shard.resume if page is not None else shard.position
        args = [
            shard.name,
            None if position is None else list(position),
            self.prefixes,
            self.max_events,
            int(wait_s * 1000),
            self.values,
            page,
        ]
        timeout_s = wait_s + REPLY_MARGIN_S
        request = Request(
            Op.WATCH,
            b"",
            args,
            client_id=self.client_id,
            seq=self._seq,
            consistency=Consistency.STRONG,
            timeout_ms=math.ceil(timeout_s * 1000),
        )
        shard.outstanding, shard.deadline = self._seq, now + timeout_s
        self._by_seq[self._seq] = shard
        return WatchSend(shard.name, self._seq, protocol.encode_request(request))

    def next_wake(self, now: float) -> float:
        """When the driver must look again even if no reply arrives."""
        times = [self._refresh_at]
        for shard in self._shards.values():
            times.append(shard.deadline if shard.outstanding else shard.retry_at)
        return max(now, min(times, default=now + self.wait_s))

    def expire(self, now: float) -> None:
        """Forget requests past their deadline (a lost reply, a dead broker or node): the
        shard's WATCH is sent again (a read: asking again is harmless)."""
        for shard in self._shards.values():
            if shard.outstanding and now >= shard.deadline:
                self._by_seq.pop(shard.outstanding, None)
                shard.outstanding = 0

    # ------------------------------------------------------------------ replies

    def on_reply(self, frames: list[bytes], now: float) -> list[WatchEvent | Resync]:
        """The events a reply carries (none for a late or unknown reply); raises the error
        of a reply that is not ``Unavailable`` (e.g. ``PermissionDenied``)."""
        seq = ClientCore.reply_seq(frames)
        shard = self._by_seq.pop(seq, None) if seq is not None else None
        if shard is None or shard.outstanding != seq:
            return []
        shard.outstanding = 0
        try:
            _seq, result = protocol.decode_reply(frames)
        except Unavailable:
            self._back_off(shard, now)
            return []
        shard.backoff = BACKOFF_FIRST_S
        if not (type(result) is list and len(result) >= 5 and type(result[4]) is list):
            raise RemoteProtocolError("malformed WATCH reply")
        status, epoch, next_seq, next_skip, items = result[:5]
        if status == "ok":
            return self._events(shard, epoch, items, (epoch, next_seq, next_skip))
        if status == "resync":
            resume = (epoch, next_seq, 0)
            if self.snapshot:
                shard.page, shard.resume = [0, None], resume
                position = shard.position or resume
            else:
                shard.position = position = resume
            self.cursor = self.cursor.with_position(shard.name, position)
            reason = str(result[5]) if len(result) > 5 else "resync"
            return [Resync(shard.name, reason, self.snapshot, self.cursor)]
        if status == "page":
            return self._state(shard, items, result[5] if len(result) > 5 else None)
        raise RemoteProtocolError(f"WATCH reply of unknown status {status!r}")

    def _back_off(self, shard: _Shard, now: float) -> None:
        shard.retry_at = now + shard.backoff
        shard.backoff = min(shard.backoff * 2, BACKOFF_MAX_S)
        self._refresh_at = min(self._refresh_at, now + REFRESH_S)

    def _events(
        self, shard: _Shard, epoch: int, items: list[Any], after: tuple[int, int, int]
    ) -> list[WatchEvent | Resync]:
        events: list[WatchEvent | Resync] = []
        cursor = self.cursor
        for item in items:
            seq, index, kind, key, value, expires_at = item
            cursor = cursor.with_position(shard.name, (epoch, seq, index + 1))
            events.append(
                WatchEvent(
                    kind,
                    key_out(key),
                    None if value is None else protocol.unpack_value(value),
                    expires_at,
                    shard.name,
                    seq,
                    epoch,
                    cursor,
                )
            )
        shard.position = after
        self.cursor = cursor.with_position(shard.name, after)
        return events

    def _state(
        self, shard: _Shard, items: list[Any], next_page: list[Any] | None
    ) -> list[WatchEvent | Resync]:
        resume = shard.resume or (0, 1, 0)
        if next_page is None:  # the snapshot is complete: the feed goes on from ``resume``
            shard.page, shard.resume, shard.position = None, None, resume
            self.cursor = self.cursor.with_position(shard.name, resume)
        else:
            shard.page = next_page
        cursor = self.cursor
        return [
            WatchEvent(
                "state",
                key_out(key),
                None if value is None or not self.values else protocol.unpack_value(value),
                expires_at,
                shard.name,
                resume[1] - 1,
                resume[0],
                cursor,
            )
            for key, value, expires_at in items
        ]
