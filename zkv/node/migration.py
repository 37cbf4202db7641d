"""SlotMover: one node's share of moving slots between shards while serving, sans-IO.

The broker drives a move with four node ops (``protocol.Op``); this module answers them on
the node's ``Store`` and keeps the marks they leave. No sockets, no clock of its own (the
store's ``clock`` decides what has expired), so tests drive a move by hand.

Source side::

    EXPORT  [slots, pos, max_keys]  -> [copies, next_pos]      pos nil starts the move
    CHANGES [slots, max_keys, final] -> [copies, outcomes, more]

``EXPORT`` with ``pos`` nil starts *tracking* the slots: a store listener marks every key of
theirs that a record changes from then on (*dirty*), so a key changed after its copy left is
sent again by ``CHANGES`` in its current state (``[key, nil, nil]`` once it is gone). The
copy walks a list of each slot's keys taken when the walk reaches the slot; ``pos`` packs
the slot's index in the sorted slot list with an offset in that list (``_SPAN``), so a
chunk the broker asks for again (a lost reply) is the same keys again, in their current
state. ``pos`` must only repeat or move forward: the lists of slots the walk has passed are
freed once the broker asks for a later slot.
``CHANGES`` also returns the write outcomes (RESULT records) of the moving slots, so that a
client's retry of such a write is answered on the target with its first outcome: those the
store still keeps from before the move (the listener files every outcome under the slots
written before it), and those of writes during it.
``final`` marks the slots *leaving* first: the node refuses client requests on them (a
retryable error) while the broker switches the owner. A CLEAR record while slots are
tracked voids the move: the next ``EXPORT`` or ``CHANGES`` of these slots raises
``Unavailable`` until the broker starts the move again (``pos`` nil) or settles it.

Target side::

    IMPORT  [slots, copies, outcomes] -> nil

It marks the slots *importing* (their keys are hidden from COUNT and SCAN until the node
owns them) and applies the copies and outcomes as records (``store.emit``), so the log,
the replicas and a restart see them like any write; copies are ``COPY`` and removals
``DROP`` records (the effect of ``SET`` and ``DEL``), so a change feed
(``zkv.node.watching``) does not report a move as users' changes.

Either side::

    SETTLE  [slots, how, max_keys] -> keys left
        "own"    the target owns the slots now: no longer importing
        "abort"  the source rolls back: stop tracking, serve the slots again
        "drop"   the slots are not ours (source after the switch, target on roll back):
                 stop tracking, mark them *disowned* (refused and hidden), delete a chunk
                 of their keys; the broker repeats until no key is left

Marks live in memory only: a restarted node has none, and an ``EXPORT`` or ``CHANGES`` that
continues a move it no longer tracks raises ``Unavailable`` (the broker restarts or settles
the move).

The mover reads the store's per-slot tables and expiry map directly (``_table``,
``_state``): the walk must not touch LRU/LFU marks or expire keys as ``Store.get`` does,
and must see absolute expiry times, which ``Store.ttl`` does not give.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import Any, Final

from zkv.errors import InvalidRequest, Unavailable
from zkv.protocol import Op
from zkv.slots import slot_of
from zkv.storage.engine import MAX_RESULTS, ONE_KEY_OPS, Record, RecordOp, Store

__all__ = ["SETTLE_HOWS", "SlotMover"]

#: The ways ``settle`` ends a move.
SETTLE_HOWS: Final = frozenset({"own", "abort", "drop"})
#: ``pos`` of ``export`` is ``index * _SPAN + offset``: the slot's index in the sorted slots,
#: and how many of that slot's walk list were passed.
_SPAN: Final = 1 << 32
#: How many listed keys one ``export`` may pass over beyond ``max_keys`` (keys deleted or
#: expired since the list was taken), so a sparse stretch still answers quickly.
_SKIP_FACTOR: Final = 16
_SKIP_EXTRA: Final = 1024
_EMPTY: Final[dict[bytes, bytes]] = {}


class SlotMover:
    """A node's marks and answers for slot moves, on its ``store``.

    It subscribes a listener to ``store`` that keeps each write outcome with the keys it
    wrote (a short entry per write, bounded as the store's outcome table; their slots are
    worked out only when a move starts) and tracks changes to the slots being exported.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._slots = store.slots
        #: Source: slots whose changes are tracked, each with its dirty keys (ordered).
        self._dirty: dict[int, dict[bytes, None]] = {}
        #: Source: outcomes of writes that changed a tracked slot, by slot, in order.
        self._outcomes: dict[int, dict[bytes, bytes]] = {}
        #: Source: each tracked slot's walk list (its keys when the walk reached it).
        self._walks: dict[int, list[bytes]] = {}
        #: Source: tracked slots a CLEAR record voided (their move must start again).
        self._cleared: set[int] = set()
        #: Tracked slots changed since the last RESULT record.
        self._touched: set[int] = set()
        #: The keys written since the last RESULT record; and each write outcome the store
        #: keeps with those keys (``[rid, keys, False]``, or ``[rid, slots, True]`` once a
        #: move worked out their slots), oldest first, bounded as the store's table.
        self._written: list[bytes] = []
        self._recent: deque[list[Any]] = deque()
        self._leaving: set[int] = set()
        self._importing: set[int] = set()
        self._disowned: set[int] = set()
        #: Slots whose client requests get a retryable refusal (leaving or disowned); empty
        #: in the usual case, which the node checks first on every request.
        self.refused_slots: frozenset[int] = frozenset()
        self._hidden: frozenset[int] = frozenset()
        store.subscribe(self._listen)

    # ------------------------------------------------------------------ marks

    def refuses(self, slot: int) -> bool:
        """Whether client requests on ``slot`` must get a retryable refusal here.

        True while the slot is leaving (the final copy is under way) or disowned (another
        shard owns it now).
        """
        return slot in self.refused_slots

    def hidden(self) -> frozenset[int]:
        """Slots whose keys COUNT and SCAN must not count or list here (importing, disowned)."""
        return self._hidden

    def describe(self) -> dict[str, int]:
        """Counts for a status page: tracked and importing slots, dirty keys, and so on."""
        return {
            "tracked": len(self._dirty),
            "dirty": sum(len(keys) for keys in self._dirty.values()),
            "importing": len(self._importing),
            "leaving": len(self._leaving),
            "disowned": len(self._disowned),
        }

    def _marked(self) -> None:
        """Recompute the cached sets after a mark changed."""
        self.refused_slots = frozenset(self._leaving | self._disowned)
        self._hidden = frozenset(self._importing | self._disowned)

    # ------------------------------------------------------------------ dispatch

    def handle(self, op: Op, args: list[Any]) -> Any:
        """Answer one move op with its arguments as ``protocol.ARG_SPECS`` lists them."""
        if op == Op.EXPORT:
            return self.export(args[0], args[1], args[2])
        if op == Op.CHANGES:
            return self.changes(args[0], args[1], args[2])
        if op == Op.IMPORT:
            self.import_(args[0], args[1], args[2])
            return None
        if op == Op.SETTLE:
            return self.settle(args[0], args[1], args[2])
        raise InvalidRequest(
            f"{op!r} is not an op of a slot move (EXPORT, CHANGES, IMPORT, SETTLE)"
        )

    # ------------------------------------------------------------------ source

    def export(self, slots: list[int], pos: int | None, max_keys: int) -> list[Any]:
        """``[copies, next_pos]``: a chunk of the live keys of ``slots``, as ``[key, value,
        expires_at]``, and where the next chunk starts (None when the walk is done).

        ``pos`` None starts a move of these slots: changes to them are tracked from here on
        (any earlier tracking of them is forgotten), so every key changed after its copy is
        reported by ``changes``. ``Unavailable`` when the slots are not tracked (the node
        restarted) or were cleared since the move started: the broker starts it again.
        """
        order = self._check(slots, max_keys)
        if pos is None:
            self._start(order)
            pos = 0
        else:
            self._check_tracked(order)
        index, offset = divmod(pos, _SPAN)
        if index > len(order):
            raise InvalidRequest(f"export position {pos} is past the end of {len(order)} slots")
        for slot in order[:index]:  # the broker asked for a later chunk: it has the earlier
            self._walks.pop(slot, None)
        now = self.store.clock()
        copies: list[list[Any]] = []
        budget = max_keys * _SKIP_FACTOR + _SKIP_EXTRA
        while index < len(order) and len(copies) < max_keys and budget > 0:
            slot = order[index]
            walk = self._walks.get(slot)
            if walk is None:
                walk = self._walks[slot] = list(self._table(slot))
            stop = min(len(walk), offset + max_keys - len(copies), offset + budget)
            for key in walk[offset:stop]:
                state = self._state(key, now)
                if state is not None:
                    copies.append([key, state[0], state[1]])
            budget -= stop - offset
            offset = stop
            if offset >= len(walk):
                index, offset = index + 1, 0
        return [copies, None if index >= len(order) else index * _SPAN + offset]

    def changes(self, slots: list[int], max_keys: int, final: bool) -> list[Any]:
        """``[copies, outcomes, more]``: keys of ``slots`` changed since the last call.

        At most ``max_keys`` dirty keys, each in its current state ``[key, value,
        expires_at]`` or ``[key, None, None]`` once gone, and at most ``max_keys`` write
        outcomes ``[rid, reply]`` that followed a change in these slots; both are forgotten
        as they are returned. ``more`` says whether any remain. ``final`` first marks the
        slots leaving (``refuses`` is true for them from then on). ``Unavailable`` as for
        ``export``.
        """
        order = self._check(slots, max_keys)
        self._check_tracked(order)
        if final:
            self._leaving.update(order)
            self._marked()
        now = self.store.clock()
        copies: list[list[Any]] = []
        outcomes: list[list[bytes]] = []
        for slot in order:
            dirty = self._dirty[slot]
            while dirty and len(copies) < max_keys:
                key, _ = dirty.popitem()  # any order: each key goes in its current state
                state = self._state(key, now)
                copies.append([key, None, None] if state is None else [key, *state])
            results = self._outcomes.get(slot)
            while results and len(outcomes) < max_keys:
                outcomes.append(list(results.popitem()))
        more = any(self._dirty[slot] or self._outcomes.get(slot) for slot in order)
        return [copies, outcomes, more]

    def _start(self, order: list[int]) -> None:
        """Track ``order`` afresh: no dirty keys, walk lists or CLEAR mark; the outcomes the
        store keeps of writes to these slots go along with the move's first changes."""
        self._untrack(order)
        for slot in order:
            self._dirty[slot] = {}
        self._earlier_outcomes(order)

    def _untrack(self, slots: Iterable[int]) -> None:
        for slot in slots:
            self._dirty.pop(slot, None)
            self._outcomes.pop(slot, None)
            self._walks.pop(slot, None)
            self._cleared.discard(slot)
        self._touched.intersection_update(self._dirty)

    def _check_tracked(self, order: list[int]) -> None:
        untracked = [slot for slot in order if slot not in self._dirty]
        if untracked:
            raise Unavailable(
                f"slots {_show(untracked)} are not being moved from this node (it may have "
                "restarted); start the move again"
            )
        if not self._cleared.isdisjoint(order):
            raise Unavailable("the slots were cleared during the move; it starts again")

    def _listen(self, seq: int, record: Record) -> None:
        """Store listener: note which slots each write outcome belongs to (always), and mark
        the keys a record changes in tracked slots dirty (during a move)."""
        op = record[0]
        if op in ONE_KEY_OPS:
            self._mark(record[1])
        elif op == RecordOp.MSET:
            for key, _ in record[1]:
                self._mark(key)
        elif op == RecordOp.RESULT:
            self._remember(record[1], record[2])
        elif op == RecordOp.CLEAR and self._dirty:
            self._cleared.update(self._dirty)
            for slot, dirty in self._dirty.items():
                dirty.clear()
                self._outcomes.pop(slot, None)
                self._walks.pop(slot, None)
            self._touched.clear()

    def _mark(self, key: bytes) -> None:
        self._written.append(key)
        if self._dirty:
            slot = slot_of(key, self._slots)
            dirty = self._dirty.get(slot)
            if dirty is not None:
                dirty[key] = None
                self._touched.add(slot)

    def _remember(self, rid: bytes, reply: bytes) -> None:
        """A write outcome: kept with the keys written since the previous one, so that a
        move of their slots, even one that starts later, takes it along (as many as the
        store keeps, ``MAX_RESULTS``; slots are worked out only when a move starts)."""
        if self._written:
            self._recent.append([rid, tuple(self._written), False])
            if len(self._recent) > MAX_RESULTS:
                self._recent.popleft()
            self._written = []
        touched = self._touched
        if touched:
            for slot in touched:
                self._outcomes.setdefault(slot, {})[rid] = reply
            self._touched = set()

    def _earlier_outcomes(self, order: list[int]) -> None:
        """File the kept outcomes of writes to ``order`` under their slots, to go along."""
        wanted = set(order)
        results = self.store.results
        for entry in self._recent:
            if not entry[2]:  # its keys' slots, worked out once
                entry[1] = frozenset(slot_of(key, self._slots) for key in entry[1])
                entry[2] = True
            hit = entry[1] & wanted
            if hit:
                reply = results.get(entry[0])
                if reply is not None:
                    for slot in hit:
                        self._outcomes.setdefault(slot, {})[entry[0]] = reply

    # ------------------------------------------------------------------ target

    def import_(
        self, slots: list[int], copies: list[list[Any]], outcomes: list[list[bytes]]
    ) -> None:
        """Store copied keys and write outcomes of ``slots`` (moving here) as records.

        Marks the slots importing (and no longer disowned). The node's memory limit holds:
        room is made as for any write, or ``OutOfMemory`` refuses the chunk before any
        change. Each ``[key, value, expires_at]``
        becomes a COPY, unless its expiry has passed (then, like ``[key, None, None]``, a DROP
        if the key is held); each ``[rid, reply]`` a RESULT. ``InvalidRequest``, before any
        change, when a key is not in ``slots``.
        """
        order = self._check(slots, 1)
        wanted = set(order)
        for copy in copies:
            if slot_of(copy[0], self._slots) not in wanted:
                raise InvalidRequest(
                    f"a copied key is in slot {slot_of(copy[0], self._slots)}, not in the "
                    f"slots being imported ({_show(order)})"
                )
        now = self.store.clock()
        kept = [c for c in copies if c[1] is not None and (c[2] is None or c[2] > now)]
        # the node's memory limit holds for moved keys too: room is made (or OutOfMemory
        # refuses the chunk, and the broker rolls the move back) before anything is stored
        growth = sum(self.store.growth(key, value, expires_at) for key, value, expires_at in kept)
        self.store.make_room(growth, [c[0] for c in kept])
        self._importing.update(order)
        self._disowned.difference_update(order)
        self._marked()
        emit = self.store.emit
        for key, value, expires_at in copies:
            if value is not None and (expires_at is None or expires_at > now):
                emit((RecordOp.COPY, key, value, expires_at))
            elif key in self._table(slot_of(key, self._slots)):
                emit((RecordOp.DROP, key))
        for rid, reply in outcomes:
            emit((RecordOp.RESULT, rid, reply))

    # ------------------------------------------------------------------ either

    def settle(self, slots: list[int], how: str, max_keys: int) -> int:
        """End the move of ``slots`` as ``how`` says; the keys of them left to delete.

        ``"own"``: this node (the target) owns the slots now; they are no longer importing.
        ``"abort"``: the source stops tracking them and serves them again. ``"drop"``: they
        are not this node's: stop tracking, no longer leaving, disowned from now on, and up
        to ``max_keys`` of their keys deleted (DEL records); returns how many keys remain
        (the broker repeats until 0; at 0 the slots are no longer importing).
        """
        order = self._check(slots, max_keys)
        if how not in SETTLE_HOWS:
            raise InvalidRequest(f"settle how={how!r}; use 'own', 'abort' or 'drop'")
        if how == "own":
            self._importing.difference_update(order)
            self._disowned.difference_update(order)
            self._marked()
            return 0
        self._untrack(order)
        self._leaving.difference_update(order)
        if how == "abort":
            self._marked()
            return 0
        self._disowned.update(order)
        self._marked()
        budget = max_keys
        emit = self.store.emit
        for slot in order:
            if budget <= 0:
                break
            doomed = list(islice(self._table(slot), budget))
            for key in doomed:
                emit((RecordOp.DROP, key))
            budget -= len(doomed)
        left = sum(len(self._table(slot)) for slot in order)
        if not left:
            self._importing.difference_update(order)
            self._marked()
        return left

    # ------------------------------------------------------------------ helpers

    def _check(self, slots: list[int], max_keys: int) -> list[int]:
        """``slots`` sorted without repeats; ``InvalidRequest`` for a bad slot or limit."""
        if not slots:
            raise InvalidRequest("a slot move needs at least one slot")
        bad = [slot for slot in slots if not 0 <= slot < self._slots]
        if bad:
            raise InvalidRequest(
                f"slots {_show(bad)} are out of range; this cluster has slots 0..{self._slots - 1}"
            )
        if max_keys < 1:
            raise InvalidRequest(f"max_keys is {max_keys}; ask for at least 1")
        return sorted(set(slots))

    def _table(self, slot: int) -> dict[bytes, bytes]:
        """The store's own key -> value table of ``slot`` (empty if it holds none). Read only."""
        return self.store._by_slot.get(slot, _EMPTY)

    def _state(self, key: bytes, now: float) -> tuple[bytes, float | None] | None:
        """``(value, expires_at)`` of ``key`` if it is held and not expired at ``now``."""
        value = self._table(slot_of(key, self._slots)).get(key)
        if value is None:
            return None
        expires_at = self.store._expires.get(key)
        if expires_at is not None and expires_at <= now:
            return None
        return value, expires_at


def _show(slots: list[int]) -> str:
    """A few slot numbers for a message."""
    head = ", ".join(str(slot) for slot in slots[:8])
    return head + (f" (and {len(slots) - 8} more)" if len(slots) > 8 else "")
