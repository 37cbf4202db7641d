"""History: which sequence of records a node's data is a prefix of, so that a replica is
sent only the records it missed (a partial resync) when, and only when, that is safe.

Sequence numbers alone cannot tell: after a failover the new primary numbers its records on
from where it was promoted, and a node that was ahead of it (the old primary, fenced, or a
replica that got the old primary's last records) holds *different* records under the same
numbers. So, as Redis's replication ids (PSYNC2), every history gets a random 63-bit id:

- A node that becomes primary (a promotion, or a start as primary after a restart: it may
  have lost records it had not fsynced) starts a **new id** for the records it will write,
  and keeps the ids of the histories its data came from, each with the last sequence number
  it shares with them (``past``: at most ``MAX_PAST`` of them; all of them clamped to the
  primary's own sequence at that moment, since records it lost are not shared any more).
- A replica **adopts** its primary's history (``current`` and ``past``) once it holds a
  prefix of it: after a snapshot, or when the primary accepted its catch-up request. Until
  a snapshot is complete it has no history (id 0), so a crash mid-snapshot never leaves a
  claim its data does not back. It applies records only from a stream that carries the id
  it adopted; a stream with another id (the primary restarted: a new id) sends it back to
  the catch-up check.

The rule (``allows``): a replica that says "I hold history ``h`` up to ``s``" is a prefix of
this node's history, and may be sent only the records after ``s``, if ``h`` is not 0,
``s`` is at most this node's sequence, and either ``h`` is this node's current id, or ``h``
is one of its past ids and ``s`` is at most the last sequence shared with it. Everything
else (an unknown id, a replica ahead of the fork point or of this node) gets a full
snapshot, which replaces the replica's history. This is sound because only one node ever
writes records under an id (the primary that created it), and a node claims an id only for
records it got from that history.

``History`` is a pure value; ``HistoryFile`` keeps a node's in its data folder
(``history.json``, written to a temporary file, fsynced, renamed), so a replica restarted
after a crash can still resync partially.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from zkv.storage.log import fsync_dir

__all__ = ["EMPTY", "FILE_NAME", "MAX_ID", "MAX_PAST", "History", "HistoryFile", "new_id"]

log = logging.getLogger(__name__)

#: Past histories a node remembers (older ones get a full snapshot).
MAX_PAST: Final = 7
#: History ids are 1..MAX_ID (0: no history).
MAX_ID: Final = 2**63 - 1
FILE_NAME: Final = "history.json"


def new_id() -> int:
    """A fresh random history id (never 0)."""
    return secrets.randbelow(MAX_ID) + 1


@dataclass(frozen=True, slots=True)
class History:
    """A node's history id (``current``: 0 for none) and the past histories it shares a
    prefix with, as ``(id, last shared seq)``, oldest first."""

    current: int = 0
    past: tuple[tuple[int, int], ...] = field(default=())

    def promote(self, seq: int, new: int) -> History:
        """The history of a node at ``seq`` that becomes primary and writes under ``new``."""
        past = [(i, min(end, seq)) for i, end in self.past if i != self.current]
        if self.current:
            past.append((self.current, seq))
        return History(new, tuple(past[-MAX_PAST:]))

    def clamp(self, seq: int) -> History:
        """This history for a node whose data stops at ``seq`` (e.g. after a restart that
        lost records it had not fsynced: it no longer shares the ones after ``seq``)."""
        past = tuple((i, min(end, seq)) for i, end in self.past)
        return self if past == self.past else replace(self, past=past)

    def allows(self, history: int, seq: int, my_seq: int) -> bool:
        """Whether a replica holding ``history`` up to ``seq`` is a prefix of this node's
        history at ``my_seq`` (see the module docstring)."""
        if not history or seq > my_seq:
            return False
        if history == self.current:
            return True
        return any(i == history and seq <= end for i, end in self.past)

    def why_not(self, history: int, seq: int, my_seq: int) -> str:
        """Why ``allows`` said no, for the log."""
        if not history:
            return "it has no history id"
        if seq > my_seq:
            return f"it is ahead of this node (at seq {my_seq})"
        for i, end in self.past:
            if i == history:
                return f"its history forked from this one after seq {end}"
        return f"its history {history:x} is not this node's"


EMPTY: Final = History()


class HistoryFile:
    """A node's ``History``, kept in ``history.json`` in its data folder."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self.history = self._load()

    def _load(self) -> History:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            current, past = raw["current"], raw["past"]
            if type(current) is not int or not 0 <= current <= MAX_ID:
                raise ValueError("current")
            entries = tuple((int(i), int(end)) for i, end in past)
            return History(current, entries[-MAX_PAST:])
        except FileNotFoundError:
            return EMPTY
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignored %s (%s): this node resyncs by snapshot", self.path, exc)
            return EMPTY

    def set(self, history: History) -> None:
        """Make ``history`` this node's, durably (a no-op if it already is)."""
        if history == self.history and (history == EMPTY or self.path.exists()):
            return
        tmp = self.path.with_suffix(".json.tmp")
        body = json.dumps({"current": history.current, "past": [list(p) for p in history.past]})
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.history = history
