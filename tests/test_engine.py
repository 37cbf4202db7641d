"""Unit tests for zkv.storage.engine.Store, with a hand-driven clock."""

from __future__ import annotations

import random

import pytest

from zkv.errors import KeyNotFound
from zkv.slots import slot_of
from zkv.storage.engine import SCAN_BUDGET_FACTOR, Record, RecordOp, Store

SLOTS = 64


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Store:
    return Store(SLOTS, clock=clock)


def _recorder(store: Store) -> list[tuple[int, Record]]:
    seen: list[tuple[int, Record]] = []
    store.subscribe(lambda seq, record: seen.append((seq, record)))
    return seen


def _scan_all(store: Store, prefix: bytes = b"", limit: int = 3) -> list[bytes]:
    keys: list[bytes] = []
    slot, after = 0, None
    for _ in range(100_000):
        page, cursor = store.scan(prefix, slot, after, limit)
        assert len(page) <= limit
        keys.extend(page)
        if cursor is None:
            return keys
        slot, after = cursor
    raise AssertionError("scan never finished")


# --------------------------------------------------------------------------- basics


def test_put_get_delete(store: Store) -> None:
    assert store.get(b"k") is None
    store.put(b"k", b"v1")
    assert store.get(b"k") == b"v1"
    store.put(b"k", b"v2")
    assert store.get(b"k") == b"v2"
    assert len(store) == 1
    assert store.delete(b"k") is True
    assert store.get(b"k") is None
    assert store.delete(b"k") is False
    assert len(store) == 0


def test_empty_value_is_a_value(store: Store) -> None:
    store.put(b"k", b"")
    assert store.get(b"k") == b""
    assert store.exists(b"k") is True
    assert store.create(b"k", b"x") is False
    assert store.cas(b"k", b"", b"full") is True
    assert store.get(b"k") == b"full"
    store.put(b"k", b"")
    assert store.delete(b"k") is True
    assert store.exists(b"k") is False


def test_create(store: Store) -> None:
    assert store.create(b"k", b"first") is True
    assert store.create(b"k", b"second") is False
    assert store.get(b"k") == b"first"


def test_exists(store: Store) -> None:
    assert store.exists(b"k") is False
    store.put(b"k", b"v")
    assert store.exists(b"k") is True


def test_cas(store: Store) -> None:
    assert store.cas(b"missing", b"", b"x") is False  # a missing key matches nothing
    assert store.get(b"missing") is None
    store.put(b"k", b"a")
    assert store.cas(b"k", b"b", b"c") is False
    assert store.get(b"k") == b"a"
    assert store.cas(b"k", b"a", b"c") is True
    assert store.get(b"k") == b"c"


def test_cas_keeps_ttl(store: Store, clock: FakeClock) -> None:
    store.put(b"k", b"a", ttl=10)
    clock.advance(4)
    assert store.cas(b"k", b"a", b"b") is True
    assert store.ttl(b"k") == pytest.approx(6)
    clock.advance(5.9)
    assert store.get(b"k") == b"b"
    clock.advance(0.2)
    assert store.get(b"k") is None


def test_put_without_ttl_removes_ttl(store: Store, clock: FakeClock) -> None:
    store.put(b"k", b"a", ttl=5)
    assert store.ttl(b"k") == pytest.approx(5)
    store.put(b"k", b"b")
    assert store.ttl(b"k") is None
    clock.advance(100)
    assert store.get(b"k") == b"b"
    assert store.sweep() == 0  # the stale heap entry is skipped
    assert store.get(b"k") == b"b"


def test_expire(store: Store, clock: FakeClock) -> None:
    assert store.expire(b"missing", 10) is False
    store.put(b"k", b"v")
    assert store.expire(b"k", 10) is True
    assert store.ttl(b"k") == pytest.approx(10)
    clock.advance(3)
    assert store.ttl(b"k") == pytest.approx(7)
    assert store.expire(b"k", 100) is True  # extending leaves a stale heap entry
    clock.advance(20)
    assert store.sweep() == 0
    assert store.get(b"k") == b"v"
    assert store.ttl(b"k") == pytest.approx(80)


@pytest.mark.parametrize("seconds", [0, -1, -0.5])
def test_expire_non_positive_deletes(store: Store, seconds: float) -> None:
    store.put(b"k", b"v")
    seen = _recorder(store)
    assert store.expire(b"k", seconds) is True
    assert store.get(b"k") is None
    assert store.exists(b"k") is False
    assert store.held == 0
    assert seen == [(store.seq, (RecordOp.DEL, b"k"))]


def test_ttl(store: Store, clock: FakeClock) -> None:
    with pytest.raises(KeyNotFound) as info:
        store.ttl(b"missing")
    assert info.value.key == b"missing"
    assert "missing" in str(info.value)
    store.put(b"k", b"v")
    assert store.ttl(b"k") is None
    store.put(b"t", b"v", ttl=2.5)
    assert store.ttl(b"t") == pytest.approx(2.5)
    clock.advance(2.5)
    with pytest.raises(KeyNotFound):
        store.ttl(b"t")


def test_mget(store: Store) -> None:
    store.put(b"a", b"1")
    store.put(b"c", b"3")
    assert store.mget([b"a", b"b", b"c", b"a"]) == [b"1", None, b"3", b"1"]
    assert store.mget([]) == []
    assert store.mget(iter([b"c"])) == [b"3"]


def test_mput(store: Store, clock: FakeClock) -> None:
    seen = _recorder(store)
    store.mput([[b"a", b"1"], [b"b", b"2"]], ttl=5)
    assert store.get(b"a") == b"1"
    assert store.get(b"b") == b"2"
    assert store.ttl(b"a") == pytest.approx(5)
    assert len(seen) == 1  # one record for the whole batch
    assert seen[0][1][0] == RecordOp.MSET
    store.mput([])  # nothing to do, no record
    assert len(seen) == 1
    store.mput([[b"a", b"x"]])
    assert store.ttl(b"a") is None
    clock.advance(5)
    assert store.mget([b"a", b"b"]) == [b"x", None]


def test_clear_and_len(store: Store, clock: FakeClock) -> None:
    for i in range(50):
        store.put(b"k%d" % i, b"v", ttl=10 if i % 2 else None)
    assert len(store) == 50
    assert store.held == 50
    store.clear()
    assert len(store) == 0
    assert store.held == 0
    assert store.get(b"k1") is None
    assert store.next_expiry() is None
    assert _scan_all(store) == []
    clock.advance(20)
    assert store.sweep() == 0
    store.put(b"k1", b"again")
    assert len(store) == 1


def test_len_counts_distinct_keys(store: Store) -> None:
    store.put(b"a", b"1")
    store.put(b"a", b"2")
    store.put(b"b", b"1")
    store.delete(b"zzz")
    assert len(store) == 2


# --------------------------------------------------------------------------- expiry


def test_lazy_expiry_on_every_read_path(clock: FakeClock) -> None:
    reads = {
        "get": lambda s: s.get(b"k") is None,
        "exists": lambda s: s.exists(b"k") is False,
        "mget": lambda s: s.mget([b"k"]) == [None],
        "create": lambda s: s.create(b"k", b"new") is True and s.get(b"k") == b"new",
        "delete": lambda s: s.delete(b"k") is False,
        "cas": lambda s: s.cas(b"k", b"v", b"w") is False,
        "expire": lambda s: s.expire(b"k", 10) is False,
        "len": lambda s: len(s) == 0,
        "scan": lambda s: s.scan(b"", 0, None, 10)[0] == [],
    }
    for name, check in reads.items():
        store = Store(SLOTS, clock=clock)
        store.put(b"k", b"v", ttl=1)
        assert store.get(b"k") == b"v", name
        clock.advance(1)  # expiry is inclusive: at expires_at the key is gone
        assert check(store), name
        if name != "scan":  # scan hides, it does not delete
            assert store.held == (1 if name == "create" else 0), name
    store = Store(SLOTS, clock=clock)
    store.put(b"k", b"v", ttl=1)
    clock.advance(1)
    with pytest.raises(KeyNotFound):
        store.ttl(b"k")
    assert store.held == 0


def test_lazy_expiry_emits_del(store: Store, clock: FakeClock) -> None:
    store.put(b"k", b"v", ttl=1)
    seen = _recorder(store)
    clock.advance(0.999)
    assert store.get(b"k") == b"v"
    assert seen == []
    clock.advance(0.001)
    assert store.get(b"k") is None
    assert seen == [(store.seq, (RecordOp.EXPIRED, b"k"))]
    assert store.get(b"k") is None
    assert len(seen) == 1  # already gone, no second record


def test_sweep(store: Store, clock: FakeClock) -> None:
    for i in range(10):
        store.put(b"short%d" % i, b"v", ttl=1 + i)
    store.put(b"forever", b"v")
    seen = _recorder(store)
    assert store.next_expiry() == pytest.approx(clock.now + 1)
    assert store.sweep() == 0
    clock.advance(3)  # short0..short2 are due
    assert store.sweep() == 3
    assert [r for _, r in seen] == [(RecordOp.EXPIRED, b"short%d" % i) for i in range(3)]
    assert store.held == 8
    assert store.sweep() == 0
    clock.advance(100)
    assert store.sweep(limit=4) == 4
    assert store.held == 4
    assert store.sweep(limit=4) == 3
    assert store.held == 1
    assert store.get(b"forever") == b"v"
    assert store.next_expiry() is None
    assert [s for s, _ in seen] == list(range(seen[0][0], seen[0][0] + 10))


def test_sweep_unlimited(store: Store, clock: FakeClock) -> None:
    for i in range(3000):
        store.put(b"k%d" % i, b"v", ttl=1)
    clock.advance(2)
    assert store.sweep() == 2000  # SWEEP_BATCH by default
    assert store.sweep(limit=None) == 1000
    assert store.held == 0


def test_heap_compaction_keeps_sweep_correct(store: Store, clock: FakeClock) -> None:
    store.put(b"k", b"v", ttl=1)
    store.put(b"other", b"v", ttl=5000)
    for i in range(3000):  # each re-expiry pushes a heap entry; the heap gets compacted
        assert store.expire(b"k", 10 + i) is True
    clock.advance(100)
    assert store.sweep(limit=None) == 0
    assert store.get(b"k") == b"v"
    clock.advance(3000)
    assert store.sweep(limit=None) == 1
    assert store.get(b"k") is None
    assert store.get(b"other") == b"v"


def test_replica_hides_expired_keys_but_keeps_them(store: Store, clock: FakeClock) -> None:
    store.primary = False
    store.put(b"t", b"v", ttl=1)
    store.put(b"p", b"v")
    seen = _recorder(store)
    clock.advance(5)
    assert store.get(b"t") is None
    assert store.exists(b"t") is False
    assert store.mget([b"t", b"p"]) == [None, b"v"]
    with pytest.raises(KeyNotFound):
        store.ttl(b"t")
    assert len(store) == 1
    assert store.held == 2  # still in memory
    assert store.sweep() == 0
    assert store.sweep(limit=None) == 0
    assert store.held == 2
    assert store.scan(b"", 0, None, 10) == ([b"p"], None)
    assert seen == []  # a replica emits nothing of its own
    # once promoted, it deletes them
    store.primary = True
    assert store.sweep() == 1
    assert seen == [(store.seq, (RecordOp.EXPIRED, b"t"))]
    assert store.held == 1


def test_replica_applies_del_it_is_sent(clock: FakeClock) -> None:
    primary = Store(SLOTS, clock=clock)
    replica = Store(SLOTS, clock=clock)
    replica.primary = False
    primary.subscribe(lambda _seq, record: replica.apply_record(record))
    primary.put(b"k", b"v", ttl=1)
    assert replica.get(b"k") == b"v"
    clock.advance(1)
    assert replica.get(b"k") is None
    assert replica.held == 1
    assert primary.sweep() == 1
    assert replica.held == 0


# --------------------------------------------------------------------------- scan


def _fill(store: Store, n: int) -> set[bytes]:
    keys = {b"user:%d" % i for i in range(n)} | {b"item:%d" % i for i in range(n // 2)}
    for key in keys:
        store.put(key, b"v")
    return keys


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 1000])
def test_scan_returns_every_key_once(store: Store, limit: int) -> None:
    keys = _fill(store, 200)
    got = _scan_all(store, limit=limit)
    assert len(got) == len(keys)
    assert set(got) == keys


def test_scan_pages_in_slot_then_key_order(store: Store) -> None:
    keys = _fill(store, 60)
    got = _scan_all(store, limit=4)
    assert got == sorted(keys, key=lambda k: (slot_of(k, SLOTS), k))


def test_scan_prefix(store: Store) -> None:
    keys = _fill(store, 100)
    assert set(_scan_all(store, prefix=b"item:", limit=3)) == {
        k for k in keys if k.startswith(b"item:")
    }
    assert len(_scan_all(store, prefix=b"item:", limit=3)) == 50
    assert _scan_all(store, prefix=b"user:1", limit=5) == sorted(
        (k for k in keys if k.startswith(b"user:1")), key=lambda k: (slot_of(k, SLOTS), k)
    )
    assert _scan_all(store, prefix=b"nothing") == []
    assert set(_scan_all(store, prefix=b"")) == keys


def test_scan_hides_expired_keys(store: Store, clock: FakeClock) -> None:
    live = {b"live%d" % i for i in range(30)}
    for key in live:
        store.put(key, b"v")
    for i in range(30):
        store.put(b"dead%d" % i, b"v", ttl=1)
    clock.advance(1)
    assert set(_scan_all(store, limit=4)) == live
    assert len(_scan_all(store, limit=4)) == 30
    assert store.held == 60  # scan does not delete


def test_scan_cursor(store: Store) -> None:
    assert store.scan(b"", 0, None, 5) == ([], None)
    store.put(b"a", b"1")
    assert store.scan(b"", 0, None, 5) == ([b"a"], None)
    page, cursor = store.scan(b"", 0, None, 1)
    assert page == [b"a"]
    assert cursor == (slot_of(b"a", SLOTS), b"a")
    assert store.scan(b"", cursor[0], cursor[1], 1) == ([], None)
    # starting past the key's slot finds nothing
    assert store.scan(b"", slot_of(b"a", SLOTS) + 1, None, 5) == ([], None)


def test_scan_sparse_prefix(store: Store) -> None:
    for i in range(3000):
        store.put(b"x%d" % i, b"v")
    store.put(b"zz-wanted", b"v")
    assert _scan_all(store, prefix=b"zz", limit=1) == [b"zz-wanted"]
    assert _scan_all(store, prefix=b"zz-wanted-not", limit=1) == []


def test_scan_budget_bounds_a_page_of_expired_keys(store: Store, clock: FakeClock) -> None:
    limit = 1
    budget = limit * SCAN_BUDGET_FACTOR + 1024
    for i in range(budget + 500):
        store.put(b"dead%d" % i, b"v", ttl=1)
    clock.advance(1)
    page, cursor = store.scan(b"", 0, None, limit)
    # the page gave up after examining `budget` expired keys: empty, but not the end
    assert page == []
    assert cursor is not None
    store.put(b"alive", b"v")
    assert _scan_all(store, limit=limit) == [b"alive"]


# --------------------------------------------------------------------------- records


def test_listeners_and_replay(clock: FakeClock) -> None:
    store = Store(SLOTS, clock=clock)
    seen = _recorder(store)
    other: list[int] = []
    store.subscribe(lambda seq, _record: other.append(seq))
    rng = random.Random(99)
    keys = [b"k%d" % i for i in range(40)] + [b"{tag}a", b"{tag}b"]
    for step in range(2000):
        key = rng.choice(keys)
        action = rng.randrange(12)
        if step in (700, 1400):
            store.clear()
        elif action == 0:
            store.put(key, b"v%d" % step)
        elif action == 1:
            store.put(key, b"t%d" % step, ttl=rng.choice([0.5, 1, 3, 10]))
        elif action == 2:
            store.create(key, b"c%d" % step, ttl=rng.choice([None, 2]))
        elif action == 3:
            store.delete(key)
        elif action == 4:
            store.cas(key, store.get(key) or b"", b"cas%d" % step)
        elif action == 5:
            store.expire(key, rng.choice([-1, 0, 1, 5]))
        elif action == 6:
            store.mput(
                [[rng.choice(keys), b"m%d" % step] for _ in range(3)], ttl=rng.choice([None, 4])
            )
        elif action == 7:
            store.get(key)
        elif action == 8:
            store.sweep(limit=rng.choice([1, 5, None]))
        elif action == 9:
            clock.advance(rng.random())
        else:
            store.mget(keys[:5])
    assert seen, "no records"
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))
    assert other == [s for s, _ in seen]
    assert store.seq == len(seen)
    ops = {r[0] for _, r in seen}
    # RESULT comes from the node, not the Store; EVICT only under a limit (test_memory.py)
    # COPY and DROP come from slot moves (test_migration_node.py)
    assert ops == set(RecordOp) - {RecordOp.RESULT, RecordOp.EVICT, RecordOp.COPY, RecordOp.DROP}

    replica = Store(SLOTS, clock=clock)
    for _, record in seen:
        replica.apply_record(record)
    assert replica.seq == 0  # apply_record does not count
    assert replica.held == store.held
    for key in keys:
        assert replica.get(key) == store.get(key), key
        if store.exists(key):
            assert replica.ttl(key) == store.ttl(key), key
    assert len(replica) == len(store)
    assert _scan_all(replica) == _scan_all(store)
    # and advancing time expires the same keys in both
    clock.advance(100)
    assert replica.mget(keys) == store.mget(keys)


def test_records_carry_absolute_times(store: Store, clock: FakeClock) -> None:
    seen = _recorder(store)
    store.put(b"k", b"v", ttl=5)
    store.expire(b"k", 7)
    store.put(b"n", b"v")
    store.mput([[b"a", b"1"]], ttl=2)
    store.delete(b"n")
    store.clear()
    assert [r for _, r in seen] == [
        (RecordOp.SET, b"k", b"v", clock.now + 5),
        (RecordOp.EXPIRE_AT, b"k", clock.now + 7),
        (RecordOp.SET, b"n", b"v", None),
        (RecordOp.MSET, [[b"a", b"1"]], clock.now + 2),
        (RecordOp.DEL, b"n"),
        (RecordOp.CLEAR,),
    ]
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]


def test_failed_conditional_writes_emit_nothing(store: Store) -> None:
    store.put(b"k", b"v")
    seen = _recorder(store)
    assert store.create(b"k", b"x") is False
    assert store.cas(b"k", b"nope", b"x") is False
    assert store.delete(b"missing") is False
    assert store.expire(b"missing", 5) is False
    assert seen == []
    assert store.seq == 1


def test_apply_record_unknown_op(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown record op"):
        store.apply_record((99, b"k"))


def test_apply_del_of_missing_key_is_harmless(store: Store) -> None:
    store.apply_record((RecordOp.DEL, b"missing"))
    assert store.held == 0
    store.apply_record((RecordOp.EXPIRE_AT, b"k", None))
    assert store.held == 0


def test_rollback_undoes_a_turn_of_every_kind_of_change(clock: FakeClock) -> None:
    store = Store(16384, clock=clock)
    store.put(b"a", b"1")
    store.put(b"b", b"2", ttl=100)
    store.emit((RecordOp.RESULT, b"rid-old", b"old"))
    before = (
        {k: store.get(k) for k in (b"a", b"b", b"c")},
        store.ttl(b"b"),
        store.seq,
        len(store),
        store.data_bytes,
        dict(store.results),
    )
    store.begin()
    store.put(b"a", b"changed")
    store.delete(b"b")
    store.put(b"c", b"new", ttl=5)
    store.mput([[b"a", b"m"], [b"d", b"m"]])
    store.emit((RecordOp.RESULT, b"rid-new", b"x"))
    store.emit((RecordOp.RESULT, b"rid-old", b"overwritten"))
    store.clear()
    store.put(b"e", b"after clear")
    store.rollback()
    after = (
        {k: store.get(k) for k in (b"a", b"b", b"c")},
        store.ttl(b"b"),
        store.seq,
        len(store),
        store.data_bytes,
        dict(store.results),
    )
    assert after == before  # the TTL too: the clock stood still
    assert store.get(b"d") is None and store.get(b"e") is None
    store.begin()
    store.put(b"z", b"kept")
    store.commit()
    store.rollback()  # nothing open: nothing undone
    assert store.get(b"z") == b"kept"


def test_reset_forgets_keys_and_write_outcomes_but_clear_keeps_outcomes() -> None:
    store = Store(16384)
    store.put(b"a", b"1", ttl=100)
    store.emit((RecordOp.RESULT, b"rid", b"body"))
    store.clear()
    assert len(store) == 0 and store.results.get(b"rid") == b"body"  # retries stay once-only
    store.put(b"b", b"2")
    store.reset()
    assert len(store) == 0 and store.data_bytes == 0 and not store.results
