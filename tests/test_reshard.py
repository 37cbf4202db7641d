"""The reshard state machine (zkv.broker.reshard): plans and phases, with a fake clock and
scripted answers (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from zkv.broker.reshard import (
    CHUNK_KEYS,
    COPY_KEYS_PER_S,
    MAX_HOLD_S,
    SLOTS_PER_MOVE,
    Begin,
    Commit,
    End,
    Hold,
    Release,
    Reshard,
    Step,
    plan,
)
from zkv.errors import InvalidRequest, Timeout
from zkv.protocol import Op
from zkv.slots import SlotMap


def owners(moves: list[Any], slot_map: SlotMap) -> dict[str, int]:
    counts = {s: slot_map.count_of(s) for s in slot_map.shards()}
    for move in moves:
        counts[move.source] -= len(move.slots)
        counts[move.target] = counts.get(move.target, 0) + len(move.slots)
    return counts


def test_rebalance_onto_a_new_shard_moves_an_even_share_to_it() -> None:
    slot_map = SlotMap.even(["s0", "s1", "s2"], 16384)
    moves = plan(slot_map, ["s0", "s1", "s2", "s3"])
    counts = owners(moves, slot_map)
    assert counts == {"s0": 4096, "s1": 4096, "s2": 4096, "s3": 4096}
    assert all(m.target == "s3" for m in moves)
    assert all(len(m.slots) <= SLOTS_PER_MOVE for m in moves)
    moved = [s for m in moves for s in m.slots]
    assert len(moved) == len(set(moved)) == 3 * (5461 - 4096) + 1  # each slot moves once


def test_rebalance_off_a_shard_leaving_it_empty_and_others_within_one() -> None:
    slot_map = SlotMap.even(["s0", "s1", "s2", "s3"], 16384)
    # a shard that owns nothing is not in the map's shards: take s3 out of the config list
    with pytest.raises(InvalidRequest, match="s3 owns slots but is not in the config"):
        plan(slot_map, ["s0", "s1", "s2"])
    small = SlotMap(["s0"] * 10 + ["s1"] * 2)
    counts = owners(plan(small, ["s0", "s1", "s2"]), small)
    assert sorted(counts.values()) == [4, 4, 4]


def test_an_explicit_move_and_its_errors() -> None:
    slot_map = SlotMap.even(["s0", "s1"], 100)
    [move] = plan(slot_map, ["s0", "s1"], "s0", "s1", 5)
    assert move.slots == (45, 46, 47, 48, 49) and (move.source, move.target) == ("s0", "s1")
    for bad, message in [
        (("s0", "s0", 1), "the same shard"),
        (("s0", "s1", 51), "owns 50 slots"),
        (("s0", "s9", 1), "no shard 's9'"),
        (("s0", None, 1), "give from, to and count; or from alone"),
        ((None, "s1", None), "give from, to and count; or from alone"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            plan(slot_map, ["s0", "s1"], *bad)
    assert plan(slot_map, ["s0", "s1"]) == []  # already even


def test_draining_a_shard_spreads_its_slots_over_the_others() -> None:
    slot_map = SlotMap.even(["s0", "s1", "s2"], 16384)
    moves = plan(slot_map, ["s0", "s1", "s2"], "s2")
    counts = owners(moves, slot_map)
    assert counts == {"s0": 8192, "s1": 8192, "s2": 0}
    assert {m.source for m in moves} == {"s2"}
    with pytest.raises(InvalidRequest, match="only shard"):
        plan(SlotMap.even(["s0"], 16384), ["s0"], "s0")


class Shards:
    """Two fake shard primaries answering a reshard's steps from dicts (slot -> keys)."""

    def __init__(self, source: dict[bytes, bytes]) -> None:
        self.source = dict(source)
        self.target: dict[bytes, bytes] = {}
        self.dirty: set[bytes] = set()
        self.leaving = False
        self.owned = False
        self.log: list[Op] = []

    def answer(self, step: Step) -> Any:
        self.log.append(step.op)
        if step.op is Op.EXPORT:
            keys = sorted(self.source)
            pos = step.args[1] or 0
            chunk = keys[pos : pos + step.args[2]]
            end = pos + len(chunk)
            return [[[k, self.source[k], None] for k in chunk], end if end < len(keys) else None]
        if step.op is Op.CHANGES:
            if step.args[2]:
                self.leaving = True
            keys, self.dirty = sorted(self.dirty), set()
            return [[[k, self.source.get(k), None] for k in keys], [], False]
        if step.op is Op.IMPORT:
            for key, value, _ in step.args[1]:
                if value is None:
                    self.target.pop(key, None)
                else:
                    self.target[key] = value
            return None
        if step.op is Op.SETTLE:
            how = step.args[1]
            if how == "own":
                self.owned = True
                return 0
            if how == "abort":
                self.leaving = False
                return 0
            victim = self.source if step.shard == "s0" else self.target
            for key in sorted(victim)[: step.args[2]]:
                del victim[key]
            return len(victim)
        raise AssertionError(step)

    def write(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.source.pop(key, None)
        else:
            self.source[key] = value
        self.dirty.add(key)


def drive(reshard: Reshard, shards: Shards, now: float = 0.0, during: Any = None) -> list[Any]:
    """Run the reshard to its end; ``during(step)`` may change the source between steps."""
    events: list[Any] = []
    for _ in range(10_000):
        step, evs = reshard.step(now)
        events += evs
        for event in evs:
            if isinstance(event, Commit):
                events += reshard.committed(True, now)
        if step is None:
            if reshard.done:
                return events
            now += 1.0
            continue
        if during is not None:
            during(step)
        events += reshard.answered(reshard.step_id, shards.answer(step), now)
    raise AssertionError("the reshard never ended")


def test_a_move_copies_catches_up_holds_switches_and_drops() -> None:
    keys = {b"k%04d" % i: b"v%d" % i for i in range(2500)}
    shards = Shards(keys)
    [move] = plan(SlotMap(["s0", "s1"]), ["s0", "s1"], "s0", "s1", 1)
    reshard = Reshard([move])
    writes = iter(range(10**6))

    def during(step: Step) -> None:
        if step.op in (Op.EXPORT, Op.CHANGES) and not shards.leaving:
            n = next(writes)
            shards.write(b"k%04d" % (n % 2500), b"new%d" % n)  # changed after its copy
            shards.write(b"extra%d" % n, b"x")
            if n % 3 == 0:
                shards.write(b"k%04d" % ((n * 7) % 2500), None)  # deleted

    events = drive(reshard, shards, during=during)
    assert [type(e) for e in events] == [Begin, Hold, Commit, Release, End]
    assert shards.leaving and shards.owned
    assert shards.source == {}  # dropped in chunks once the target owned the slots
    assert reshard.slots_done == 1 and reshard.failed is None
    assert shards.log.count(Op.EXPORT) == 3  # 2500 keys in chunks of CHUNK_KEYS
    assert CHUNK_KEYS == 1000


def test_the_target_ends_with_exactly_the_sources_keys() -> None:
    shards = Shards({b"a": b"1", b"b": b"2"})
    final_source: dict[bytes, bytes] = {}

    def during(step: Step) -> None:
        if step.op is Op.CHANGES and step.args[2]:  # the final round: the last writes land
            shards.write(b"c", b"3")
            shards.write(b"a", None)
            final_source.update(shards.source)
        elif step.op is Op.EXPORT:
            shards.write(b"b", b"22")

    [move] = plan(SlotMap(["s0", "s1"]), ["s0", "s1"], "s0", "s1", 1)
    drive(Reshard([move]), shards, during=during)
    assert shards.target == final_source == {b"b": b"22", b"c": b"3"}


def test_a_failure_before_the_commit_rolls_back_and_starts_again() -> None:
    shards = Shards({b"a": b"1"})
    [move] = plan(SlotMap(["s0", "s1"]), ["s0", "s1"], "s0", "s1", 1)
    reshard = Reshard([move])
    step, _ = reshard.step(0.0)
    assert step is not None and step.op is Op.EXPORT
    assert reshard.step(0.0) == (None, [])  # one step at a time
    assert reshard.answered(reshard.step_id, Timeout("no answer"), 0.0) == []
    step, _ = reshard.step(0.0)
    assert step is None  # after a pause
    step, _ = reshard.step(1.0)
    assert step is not None and (step.shard, step.op, step.args[1]) == ("s0", Op.SETTLE, "abort")
    reshard.answered(reshard.step_id, 0, 1.0)
    step, _ = reshard.step(1.0)
    assert step is not None and (step.shard, step.op, step.args[1]) == ("s1", Op.SETTLE, "drop")
    reshard.answered(reshard.step_id, 0, 1.0)
    assert reshard.current is not None and reshard.current.attempts == 1
    drive(reshard, shards, now=1.0)
    assert shards.target == {b"a": b"1"} and reshard.slots_done == 1


def test_a_final_switch_that_holds_too_long_is_rolled_back_and_releases() -> None:
    shards = Shards({b"a": b"1"})
    [move] = plan(SlotMap(["s0", "s1"]), ["s0", "s1"], "s0", "s1", 1)
    reshard = Reshard([move])
    now = 0.0
    while True:
        now = max(now, reshard.wake_at())  # copies are paced
        step, events = reshard.step(now)
        assert step is not None
        if any(isinstance(e, Hold) for e in events):
            break  # the hold comes with the final round's first step
        reshard.answered(reshard.step_id, shards.answer(step), now)
    assert step.op is Op.CHANGES and step.args[2] is True
    stale = reshard.step_id
    assert reshard.expire(now + MAX_HOLD_S - 0.1) == []
    assert reshard.expire(now + MAX_HOLD_S) == [Release(move.slots)]
    assert reshard.answered(stale, shards.answer(step), now) == []  # late: ignored
    assert reshard.current is not None and reshard.current.phase == "abort-source"


def test_copies_are_paced_and_the_final_round_is_not() -> None:
    shards = Shards({b"k%04d" % i: b"v" for i in range(2500)})
    [move] = plan(SlotMap(["s0", "s1"]), ["s0", "s1"], "s0", "s1", 1)
    reshard = Reshard([move])
    step, _ = reshard.step(0.0)
    assert step is not None and step.op is Op.EXPORT
    reshard.answered(reshard.step_id, shards.answer(step), 0.0)
    step, _ = reshard.step(0.0)
    assert step is not None and step.op is Op.IMPORT
    reshard.answered(reshard.step_id, shards.answer(step), 0.0)  # 1000 keys stored
    assert reshard.wake_at() == pytest.approx(CHUNK_KEYS / COPY_KEYS_PER_S)
    assert reshard.step(0.01) == (None, [])
    step, _ = reshard.step(reshard.wake_at())
    assert step is not None and step.op is Op.EXPORT


def test_a_reshard_gives_up_after_repeated_failures() -> None:
    [move] = plan(SlotMap(["s0", "s1"]), ["s0", "s1"], "s0", "s1", 1)
    reshard = Reshard([move, *plan(SlotMap(["s0", "s1"]), ["s0", "s1"], "s0", "s1", 1)])
    now = 0.0
    for _ in range(100):
        step, _ = reshard.step(now)
        now += 1.0
        if step is None:
            if reshard.done:
                break
            continue
        answer = Timeout("down") if step.op is Op.EXPORT else 0
        reshard.answered(reshard.step_id, answer, now)
    assert reshard.done and reshard.failed is not None and "failed 3 times" in reshard.failed
    assert reshard.slots_done == 0


def test_after_a_broker_restart_the_saved_reshard_goes_on() -> None:
    # committed: the target is told it owns the slots, the source drops its copy
    shards = Shards({b"a": b"1"})
    shards.target = {b"a": b"1"}
    events = drive(Reshard.resume([7], "s0", "s1", committed=True), shards)
    assert shards.owned and shards.source == {} and events == [End()]
    # not committed: rolled back (the target's partial copy dropped, the source serves the
    # slots again), then done again from the start, then the queued moves
    shards = Shards({b"a": b"1"})
    shards.target, shards.leaving = {b"partial": b"x"}, True
    reshard = Reshard.resume([7], "s0", "s1", False, [([8, 9], "s0", "s1"), ([], "s0", "s1")])
    events = drive(reshard, shards)
    assert shards.target == {b"a": b"1"} and shards.source == {}
    assert reshard.done and reshard.slots_done == 3 and reshard.slots_total == 3
    assert [type(e) for e in events].count(Commit) == 2
