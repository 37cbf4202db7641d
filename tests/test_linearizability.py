"""The history checker itself (tests/linearizability.py), on histories made by hand."""

from __future__ import annotations

import math

from linearizability import Op, linearizable


def test_sequential_histories() -> None:
    ok = [Op(0, 1, "write", 1), Op(2, 3, "read", result=1), Op(4, 5, "cas", (1, 2), True)]
    assert linearizable([*ok, Op(6, 7, "read", result=2)])
    assert not linearizable([*ok, Op(6, 7, "read", result=1)])  # a stale read
    assert not linearizable([Op(0, 1, "write", 1), Op(2, 3, "cas", (5, 6), True)])


def test_concurrent_operations_may_take_either_order() -> None:
    both = [Op(0, 10, "write", 1), Op(1, 9, "write", 2)]
    assert linearizable([*both, Op(11, 12, "read", result=1)])
    assert linearizable([*both, Op(11, 12, "read", result=2)])
    assert not linearizable([*both, Op(11, 12, "read", result=3)])
    # a read that returned before a write was called cannot see it
    assert not linearizable([Op(0, 1, "read", result=7), Op(2, 3, "write", 7)])


def test_an_operation_of_unknown_outcome_may_or_may_not_take_effect() -> None:
    lost = Op(0, math.inf, "write", 9)
    assert linearizable([lost, Op(5, 6, "read", result=None)])
    assert linearizable([lost, Op(5, 6, "read", result=9)])
    # once seen, it cannot be unseen
    assert not linearizable([lost, Op(5, 6, "read", result=9), Op(7, 8, "read", result=None)])
