"""SlotMover: a node's share of slot moves, driven by hand on real Stores (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from zkv.errors import InvalidRequest, OutOfMemory, Unavailable
from zkv.node.migration import SlotMover
from zkv.protocol import Op
from zkv.slots import slot_of
from zkv.storage.engine import Record, RecordOp, Store

SLOTS = 16
MOVED = [3, 5]
NOW = 1_000_000.0


class Clock:
    """Wall-clock seconds the test steps by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def keys_in(slot: int, count: int, prefix: bytes = b"k") -> list[bytes]:
    """``count`` distinct keys that hash to ``slot``."""
    found: list[bytes] = []
    i = 0
    while len(found) < count:
        key = prefix + b"%d" % i
        if slot_of(key, SLOTS) == slot:
            found.append(key)
        i += 1
    return found


def held(store: Store, slots: list[int] | None = None) -> dict[bytes, tuple[bytes, Any]]:
    """Live ``key -> (value, expires_at)`` of ``slots`` (all slots if None)."""
    now = store.clock()
    state: dict[bytes, tuple[bytes, Any]] = {}
    for slot in range(SLOTS) if slots is None else slots:
        flat = store.slot_items(slot)
        for i in range(0, len(flat), 3):
            key, value, expires_at = flat[i : i + 3]
            if expires_at is None or expires_at > now:
                state[key] = (value, expires_at)
    return state


def recorder(store: Store) -> list[Record]:
    """The records ``store`` emits from now on."""
    records: list[Record] = []
    store.subscribe(lambda seq, record: records.append(record))
    return records


def pair(clock: Clock | None = None) -> tuple[Store, SlotMover, Store, SlotMover]:
    """A source with 6 keys in each slot (a TTL on every third one) and an empty target."""
    clock = clock or Clock()
    source, target = Store(SLOTS, clock), Store(SLOTS, clock)
    for slot in range(SLOTS):
        for n, key in enumerate(keys_in(slot, 6)):
            source.put(key, b"v-" + key, ttl=100.0 if n % 3 == 0 else None)
    return source, SlotMover(source), target, SlotMover(target)


def copy_all(src: SlotMover, dst: SlotMover, slots: list[int], max_keys: int) -> int:
    """Export ``slots`` chunk by chunk into the target; the number of chunks."""
    pos: int | None = None
    chunks = 0
    while True:
        copies, pos = src.export(slots, pos, max_keys)
        assert len(copies) <= max_keys
        dst.import_(slots, copies, [])
        chunks += 1
        if pos is None:
            return chunks


def drain(src: SlotMover, dst: SlotMover, slots: list[int], max_keys: int, final: bool) -> None:
    """Run ``changes`` into the target until nothing is dirty."""
    more = True
    while more:
        copies, outcomes, more = src.changes(slots, max_keys, final)
        assert len(copies) <= max_keys
        assert len(outcomes) <= max_keys
        dst.import_(slots, copies, outcomes)


def test_export_copies_live_keys_of_the_slots_in_chunks() -> None:
    clock = Clock()
    source, src, target, dst = pair(clock)
    doomed = keys_in(3, 7)[6]
    source.put(doomed, b"short", ttl=1.0)
    clock.now += 2.0  # expired, not yet swept: not copied

    assert copy_all(src, dst, MOVED, max_keys=4) >= 3

    assert held(target) == held(source, MOVED)
    assert doomed not in held(target)
    assert len(target) == 12


def test_expired_keys_are_not_copied_and_are_reported_gone() -> None:
    clock = Clock()
    source, src, _, _ = pair(clock)
    doomed = keys_in(3, 7)[6]
    source.put(doomed, b"short", ttl=1.0)
    clock.now += 2.0  # expired, not yet swept
    copies, pos = src.export(MOVED, None, 100)
    assert pos is None
    assert len(copies) == 12
    assert doomed not in {key for key, _, _ in copies}
    assert {key: (value, t) for key, value, t in copies} == held(source, MOVED)
    source.emit((RecordOp.EXPIRE_AT, doomed, NOW + 1.5))  # a change while it is expired
    assert src.changes(MOVED, 10, final=False) == [[[doomed, None, None]], [], False]


def test_export_of_a_chunk_asked_for_again_is_the_same_keys() -> None:
    _, src, _, _ = pair()
    first, pos = src.export(MOVED, None, 4)
    again, pos_again = src.export(MOVED, 0, 4)
    assert again == first
    assert pos_again == pos
    second, _ = src.export(MOVED, pos, 4)
    assert {c[0] for c in second}.isdisjoint(c[0] for c in first)


def test_changes_during_the_copy_reach_the_target() -> None:
    clock = Clock()
    source, src, target, dst = pair(clock)
    k3, k5 = keys_in(3, 6), keys_in(5, 6)
    new3, new5 = keys_in(3, 9)[6:], keys_in(5, 9)[6:]
    other = keys_in(7, 1)[0]

    copies, pos = src.export(MOVED, None, 5)
    dst.import_(MOVED, copies, [])
    source.put(k3[0], b"changed after its copy")
    source.delete(k3[1])
    source.expire(k5[2], 50.0)  # EXPIRE_AT with a new absolute time
    source.mput([[new3[0], b"m1"], [new5[0], b"m2"], [other, b"m3"]], ttl=30.0)
    copies, pos = src.export(MOVED, pos, 5)
    dst.import_(MOVED, copies, [])
    source.put(new3[1], b"short", ttl=5.0)
    source.cas(k5[4], b"v-" + k5[4], b"swapped")
    clock.now += 10.0
    assert source.sweep() == 1  # new3[1] expired: a DEL record
    source.put(new5[1], b"late")
    source.delete(new5[1])
    while pos is not None:
        copies, pos = src.export(MOVED, pos, 5)
        dst.import_(MOVED, copies, [])

    assert src.describe()["dirty"] > 0
    drain(src, dst, MOVED, max_keys=2, final=False)
    assert src.describe()["dirty"] == 0
    source.put(k5[5], b"during the final pass")
    drain(src, dst, MOVED, max_keys=2, final=True)

    assert held(target) == held(source, MOVED)
    assert held(target)[k5[2]] == (b"v-" + k5[2], NOW + 50.0)
    assert held(target)[new3[0]] == (b"m1", NOW + 30.0)
    assert k3[1] not in held(target)
    assert other not in held(target)


def test_an_evicted_key_is_reported_gone() -> None:
    clock = Clock()
    source = Store(SLOTS, clock, max_bytes=1, policy="volatile-ttl")
    source.max_bytes = 0  # fill without a limit, then set one
    victim, keep = keys_in(3, 2)
    source.put(victim, b"x", ttl=10.0)
    source.put(keep, b"y")
    target = Store(SLOTS, clock)
    src, dst = SlotMover(source), SlotMover(target)
    copy_all(src, dst, MOVED, 10)
    assert victim in held(target)

    source.max_bytes = source.used_bytes
    source.put(keys_in(9, 1)[0], b"needs room")  # evicts the key with the soonest TTL
    assert source.evictions == 1
    copies, _, more = src.changes(MOVED, 10, final=True)
    assert copies == [[victim, None, None]]
    assert not more
    dst.import_(MOVED, copies, [])
    assert held(target) == held(source, MOVED) == {keep: (b"y", None)}


def test_write_outcomes_in_moving_slots_reach_the_target() -> None:
    source, src, target, dst = pair()
    records = recorder(target)
    copy_all(src, dst, MOVED, 100)
    key3, key9 = keys_in(3, 1)[0], keys_in(9, 1)[0]
    source.put(key3, b"new")
    source.emit((RecordOp.RESULT, b"rid-moving", b"reply-1"))
    source.put(key9, b"elsewhere")
    source.emit((RecordOp.RESULT, b"rid-other", b"reply-2"))
    source.emit((RecordOp.RESULT, b"rid-nothing", b"reply-3"))  # no change since the last

    copies, outcomes, more = src.changes(MOVED, 100, final=False)
    assert outcomes == [[b"rid-moving", b"reply-1"]]
    assert copies == [[key3, b"new", None]]
    assert not more
    dst.import_(MOVED, copies, outcomes)
    assert target.results[b"rid-moving"] == b"reply-1"
    assert b"rid-other" not in target.results
    assert (RecordOp.RESULT, b"rid-moving", b"reply-1") in records


def test_outcomes_of_writes_made_before_the_move_go_along_too() -> None:
    source, src, target, dst = pair()
    key3, key9 = keys_in(3, 1)[0], keys_in(9, 1)[0]
    source.put(key3, b"before")  # written and answered before anyone thought of a move
    source.emit((RecordOp.RESULT, b"rid-early", b"reply-early"))
    source.put(key9, b"elsewhere")
    source.emit((RecordOp.RESULT, b"rid-elsewhere", b"reply-9"))
    copy_all(src, dst, MOVED, 100)
    copies, outcomes, more = src.changes(MOVED, 100, final=False)
    assert outcomes == [[b"rid-early", b"reply-early"]] and not more
    dst.import_(MOVED, copies, outcomes)
    assert target.results[b"rid-early"] == b"reply-early"  # a retry there gets this answer
    assert b"rid-elsewhere" not in target.results


def test_final_marks_the_slots_leaving_until_settled() -> None:
    source, src, _, _ = pair()
    src.export(MOVED, None, 100)
    src.changes(MOVED, 100, final=False)
    assert not src.refuses(3)
    src.changes(MOVED, 100, final=True)
    assert src.refuses(3)
    assert src.refuses(5)
    assert not src.refuses(4)
    assert src.describe()["leaving"] == 2
    assert src.settle(MOVED, "abort", 100) == 0
    assert not src.refuses(3)
    assert src.describe() == {
        "tracked": 0,
        "dirty": 0,
        "importing": 0,
        "leaving": 0,
        "disowned": 0,
    }
    assert len(source) == SLOTS * 6  # an abort deletes nothing


def test_drop_deletes_the_slots_keys_in_chunks() -> None:
    source, src, _, _ = pair()
    records = recorder(source)
    src.export(MOVED, None, 100)
    src.changes(MOVED, 100, final=True)
    before = held(source, [0, 1, 2, 4, 6, 15])

    left = [src.settle(MOVED, "drop", 5) for _ in range(3)]

    assert left == [7, 2, 0]
    assert held(source, MOVED) == {}
    assert held(source, [0, 1, 2, 4, 6, 15]) == before
    assert all(r[0] == RecordOp.DROP for r in records)
    assert len(records) == 12
    assert src.refuses(3)  # disowned: no longer leaving, still refused
    assert src.hidden() == frozenset(MOVED)
    assert src.describe()["tracked"] == 0
    assert src.describe()["leaving"] == 0
    with pytest.raises(Unavailable):
        src.changes(MOVED, 10, final=False)


def test_import_hides_the_slots_until_owned() -> None:
    _, src, target, dst = pair()
    copies, _ = src.export(MOVED, None, 3)
    dst.import_(MOVED, copies, [])
    assert dst.hidden() == frozenset(MOVED)
    assert not dst.refuses(3)
    assert dst.describe()["importing"] == 2
    assert dst.settle(MOVED, "own", 10) == 0
    assert dst.hidden() == frozenset()
    assert len(target) == 3


def test_a_target_rolled_back_drops_what_it_imported() -> None:
    _, src, target, dst = pair()
    copy_all(src, dst, MOVED, 100)
    assert dst.settle(MOVED, "drop", 8) == 4
    assert dst.hidden() == frozenset(MOVED)  # importing and disowned
    assert dst.settle(MOVED, "drop", 8) == 0
    assert dst.describe()["importing"] == 0
    assert dst.hidden() == frozenset(MOVED)  # still disowned
    assert len(target) == 0
    dst.import_(MOVED, [], [])  # moving here again: no longer disowned
    assert not dst.refuses(3)
    assert dst.describe()["disowned"] == 0


def test_a_clear_during_the_move_makes_it_start_again() -> None:
    source, src, target, dst = pair()
    copies, pos = src.export(MOVED, None, 4)
    dst.import_(MOVED, copies, [])
    source.clear()
    with pytest.raises(Unavailable, match="cleared during the move"):
        src.export(MOVED, pos, 4)
    with pytest.raises(Unavailable, match="cleared during the move"):
        src.changes(MOVED, 4, final=False)

    assert dst.settle(MOVED, "drop", 100) == 0
    source.put(keys_in(3, 1)[0], b"after the clear")
    copy_all(src, dst, MOVED, 4)  # pos None: the move starts again
    drain(src, dst, MOVED, 4, final=True)
    assert held(target) == held(source) == {keys_in(3, 1)[0]: (b"after the clear", None)}


def test_a_move_this_node_does_not_track_is_unavailable() -> None:
    _, src, _, _ = pair()
    with pytest.raises(Unavailable, match="not being moved"):
        src.export(MOVED, 4, 10)  # as after a restart: the marks are gone
    with pytest.raises(Unavailable, match="not being moved"):
        src.changes(MOVED, 10, final=True)
    assert not src.refuses(3)


def test_a_restarted_export_forgets_earlier_changes() -> None:
    source, src, _, _ = pair()
    src.export(MOVED, None, 100)
    source.put(keys_in(3, 1)[0], b"changed")
    assert src.describe()["dirty"] == 1
    src.export(MOVED, None, 100)
    assert src.describe()["dirty"] == 0
    assert src.changes(MOVED, 10, final=False) == [[], [], False]


def test_import_of_an_expired_copy_deletes_the_held_key() -> None:
    clock = Clock()
    target = Store(SLOTS, clock)
    dst = SlotMover(target)
    held_key, absent = keys_in(3, 2)
    target.put(held_key, b"old")
    records = recorder(target)
    dst.import_(
        [3],
        [[held_key, b"new", NOW - 1.0], [absent, b"new", NOW - 1.0], [absent, None, None]],
        [],
    )
    assert records == [(RecordOp.DROP, held_key)]
    assert held(target) == {}


def test_import_records_replay_to_the_same_state() -> None:
    clock = Clock()
    source, src, target, dst = pair(clock)
    records = recorder(target)
    copies, pos = src.export(MOVED, None, 4)
    dst.import_(MOVED, copies, [])
    source.delete(copies[0][0])
    source.put(copies[1][0], b"again", ttl=7.0)
    source.emit((RecordOp.RESULT, b"rid", b"ok"))
    while pos is not None:
        copies, pos = src.export(MOVED, pos, 4)
        dst.import_(MOVED, copies, [])
    drain(src, dst, MOVED, 3, final=True)

    replica = Store(SLOTS, clock)
    for record in records:
        replica.apply_record(record)
    assert held(replica) == held(target) == held(source, MOVED)
    assert replica.results == target.results
    assert target.results[b"rid"] == b"ok"


def test_handle_dispatches_the_move_ops() -> None:
    source, src, target, dst = pair()
    copies, pos = src.handle(Op.EXPORT, [MOVED, None, 100])
    assert pos is None
    assert dst.handle(Op.IMPORT, [MOVED, copies, []]) is None
    source.put(keys_in(5, 1)[0], b"x")
    copies, outcomes, more = src.handle(Op.CHANGES, [MOVED, 100, True])
    assert not more
    dst.handle(Op.IMPORT, [MOVED, copies, outcomes])
    assert held(target) == held(source, MOVED)
    assert dst.handle(Op.SETTLE, [MOVED, "own", 100]) == 0
    assert src.handle(Op.SETTLE, [MOVED, "drop", 100]) == 0
    with pytest.raises(InvalidRequest):
        src.handle(Op.GET, [])


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (Op.EXPORT, [[3, SLOTS], None, 10]),
        (Op.CHANGES, [[99], 10, False]),
        (Op.IMPORT, [[SLOTS], [], []]),
        (Op.SETTLE, [[SLOTS + 1], "own", 10]),
        (Op.SETTLE, [[3], "keep", 10]),
        (Op.EXPORT, [[3], None, 0]),
        (Op.EXPORT, [[], None, 10]),
    ],
)
def test_bad_arguments_are_invalid_requests(op: Op, args: list[Any]) -> None:
    _, src, _, _ = pair()
    with pytest.raises(InvalidRequest):
        src.handle(op, args)
    assert src.describe()["tracked"] == 0


def test_import_refuses_keys_of_other_slots_before_changing_anything() -> None:
    target = Store(SLOTS, Clock())
    dst = SlotMover(target)
    good, bad = keys_in(3, 1)[0], keys_in(4, 1)[0]
    with pytest.raises(InvalidRequest, match="slot 4"):
        dst.import_([3], [[good, b"v", None], [bad, b"v", None]], [])
    assert len(target) == 0
    assert dst.hidden() == frozenset()


def test_nothing_tracked_after_the_move_ends() -> None:
    source, src, _, _ = pair()
    src.export(MOVED, None, 100)
    src.settle(MOVED, "abort", 10)
    source.put(keys_in(3, 1)[0], b"after")
    source.emit((RecordOp.RESULT, b"rid", b"ok"))
    assert src.describe()["dirty"] == 0
    with pytest.raises(Unavailable):
        src.changes(MOVED, 10, final=False)


def test_an_import_past_the_targets_memory_limit_is_refused_whole() -> None:
    source, src, _, _ = pair()
    target = Store(SLOTS, source.clock, max_bytes=600, policy="noeviction")
    dst = SlotMover(target)
    copies, _ = src.export(MOVED, None, 100)
    with pytest.raises(OutOfMemory):
        dst.import_(MOVED, copies, [])
    assert len(target) == 0 and dst.hidden() == frozenset()  # nothing stored, nothing marked
    roomy = Store(SLOTS, source.clock, max_bytes=600, policy="allkeys-lru")
    SlotMover(roomy).import_(MOVED, copies[:2], [])
    assert 0 < roomy.used_bytes <= 600
