"""A linearizability checker for histories of one register: reads, writes and
compare-and-swaps, each with its call and return times (Wing and Gong's search, with the
visited states remembered, as Lowe's and Knossos's checkers do).

An operation whose outcome is unknown (it failed or timed out: it may or may not have taken
effect) has no return time: it may take effect at any point after its call, or never.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Op:
    """One operation on the register: ``kind`` is read, write or cas."""

    call: float
    ret: float  # math.inf: the outcome is unknown
    kind: str
    arg: Any = None  # write: the value; cas: (expected, new)
    result: Any = None  # read: the value seen; cas: whether it swapped
    client: int = field(default=0, compare=False)

    @property
    def known(self) -> bool:
        return self.ret != math.inf


def _step(state: Any, op: Op) -> tuple[bool, Any]:
    """Whether ``op`` can take effect on ``state`` with the result it had, and the state
    after it. An op of unknown outcome takes whatever result the state gives."""
    if op.kind == "read":
        return (not op.known or op.result == state), state
    if op.kind == "write":
        return True, op.arg
    expected, new = op.arg
    swapped = state == expected
    if op.known and op.result != swapped:
        return False, state
    return True, new if swapped else state


def linearizable(history: list[Op], initial: Any = None) -> bool:
    """Whether some order of the operations, each taking effect between its call and its
    return, explains every result (ops of unknown outcome may also never take effect)."""
    found = check(history, initial, max_states=None)
    assert found is not None
    return found


def check(
    history: list[Op], initial: Any = None, *, max_states: int | None = 1_000_000
) -> bool | None:
    """``linearizable``, with the search bounded as Knossos bounds it: None when it visited
    ``max_states`` states without an answer (a history too large or too concurrent to
    decide; a linearizable one is usually found within a few times its length).

    Reads of unknown outcome are left out (they change nothing and show nothing). The
    search tries known operations before those of unknown outcome, earliest call first.
    """
    ops = sorted((o for o in history if o.known or o.kind != "read"), key=lambda o: (o.call, o.ret))
    must = frozenset(i for i, o in enumerate(ops) if o.known)
    # candidates in the order they are pushed: tried last first (a stack)
    order = [i for i, o in enumerate(ops) if not o.known]
    order += [i for i, o in reversed(list(enumerate(ops))) if o.known]
    seen: set[tuple[frozenset[int], Any]] = set()
    stack: list[tuple[frozenset[int], Any]] = [(frozenset(), initial)]
    while stack:
        done, state = stack.pop()
        if must <= done:
            return True
        key = (done, _hashable(state))
        if key in seen:
            continue
        seen.add(key)
        if max_states is not None and len(seen) > max_states:
            return None
        # the next op must have been called before every pending known op returned
        horizon = min((ops[i].ret for i in must - done), default=math.inf)
        for i in order:
            op = ops[i]
            if i in done or op.call > horizon:
                continue
            ok, after = _step(state, op)
            if ok:
                stack.append((done | {i}, after))
    return False


def _hashable(value: Any) -> Any:
    return repr(value)
