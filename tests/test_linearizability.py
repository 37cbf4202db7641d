"""The history checker itself (tests/linearizability.py), on histories made by hand."""

from __future__ import annotations

import math

from linearizability import Op, check, linearizable


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


def test_the_bounded_search_answers_or_says_it_could_not() -> None:
    writes = [Op(0, 100, "write", i) for i in range(12)]  # all concurrent
    stale = [*writes, Op(101, 102, "read", result=3), Op(103, 104, "read", result=4)]
    assert check(stale, max_states=50) is None  # too many orders to rule out in 50 states
    assert check(stale) is False
    sequential = [Op(2 * i, 2 * i + 1, "write", i) for i in range(500)]
    assert check([*sequential, Op(1000, 1001, "read", result=499)], max_states=2000) is True


def test_reads_of_unknown_outcome_constrain_nothing() -> None:
    history = [Op(0, 1, "write", 1), Op(2, math.inf, "read", result=None)]
    assert check([*history, Op(3, 4, "read", result=1)]) is True
