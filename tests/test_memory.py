"""Memory limits and eviction in the ``Store`` (each policy's choice, the accounting, records,
replicas and rollback), the ``memory`` config section and ``OutOfMemory`` on the wire.

The process tests (a real cluster: eviction replicated, after a restart, in ``zkv status``)
are in ``test_eviction_cluster.py``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import zkv
from zkv import protocol
from zkv.config import ConfigError, LimitsConfig, parse_config
from zkv.errors import ErrorCode
from zkv.node.core import NodeCore
from zkv.protocol import Op, Request
from zkv.storage.engine import Record, RecordOp, Store
from zkv.storage.eviction import (
    KEY_OVERHEAD_BYTES,
    ORDER_OVERHEAD_BYTES,
    TTL_OVERHEAD_BYTES,
    Policy,
)
from zkv.storage.persistence import Persistence
from zkv.storage.records import decode_record, encode_record

SLOTS = 16384
VALUE = b"v" * 100
KEY_COST = 16 + 100 + KEY_OVERHEAD_BYTES  # a 16-byte key with VALUE, no TTL, no order


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def key(i: int) -> bytes:
    return b"key:%012d" % i


def store(policy: str, keys: int, *, ttl_cost: int = 0, **kwargs: Any) -> Store:
    """A primary store with room for ``keys`` keys of 16 + 100 bytes."""
    order = ORDER_OVERHEAD_BYTES if Policy(policy).ordered else 0
    limit = keys * (KEY_COST + order + ttl_cost)
    return Store(SLOTS, max_bytes=limit, policy=policy, rng=random.Random(7), **kwargs)


def records(s: Store) -> list[Record]:
    seen: list[Record] = []
    s.subscribe(lambda _seq, record: seen.append(record))
    return seen


# ---------------------------------------------------------------- accounting


def test_used_bytes_follows_the_formula() -> None:
    s = Store(SLOTS)
    assert s.used_bytes == 0
    s.put(key(1), VALUE)
    assert s.used_bytes == KEY_COST
    s.put(key(1), VALUE, ttl=10)
    assert s.used_bytes == KEY_COST + TTL_OVERHEAD_BYTES
    s.put(key(1), b"short")
    assert s.used_bytes == 16 + 5 + KEY_OVERHEAD_BYTES
    s.delete(key(1))
    assert s.used_bytes == 0
    lru = Store(SLOTS, policy="allkeys-lru")
    lru.put(key(1), VALUE)
    assert lru.used_bytes == KEY_COST + ORDER_OVERHEAD_BYTES
    lru.clear()
    assert lru.used_bytes == 0
    assert lru.order is not None and not lru.order.marks


# ---------------------------------------------------------------- noeviction


def test_noeviction_refuses_the_write_and_changes_nothing() -> None:
    s = store("noeviction", 10)
    for i in range(10):
        s.put(key(i), VALUE)
    seq, used = s.seq, s.used_bytes
    with pytest.raises(zkv.OutOfMemory, match=r"memory\.max_bytes, policy noeviction"):
        s.put(key(10), VALUE)
    with pytest.raises(zkv.OutOfMemory):
        s.mput([[key(11), VALUE]])
    with pytest.raises(zkv.OutOfMemory):
        s.create(key(12), VALUE)
    with pytest.raises(zkv.OutOfMemory):
        s.cas(key(0), VALUE, VALUE * 2)  # growing a value counts too
    assert (s.seq, s.used_bytes, s.held) == (seq, used, 10)
    assert s.get(key(3)) == VALUE  # reads go on
    s.put(key(3), b"smaller")  # a write that does not grow the data goes through
    assert s.delete(key(4))  # deletes too, and they make room
    s.put(key(10), VALUE)
    assert s.evictions == 0


def test_a_write_larger_than_the_limit_evicts_nothing() -> None:
    s = store("allkeys-lru", 3)
    for i in range(3):
        s.put(key(i), VALUE)
    with pytest.raises(zkv.OutOfMemory):
        s.put(key(9), b"x" * 10_000)
    assert s.held == 3


def test_expired_keys_go_before_any_eviction() -> None:
    clock = Clock()
    s = store("allkeys-random", 10, ttl_cost=TTL_OVERHEAD_BYTES, clock=clock)
    for i in range(10):
        s.put(key(i), VALUE, ttl=5 if i < 3 else None)
    clock.now += 10
    s.put(key(10), VALUE)
    s.put(key(11), VALUE)
    assert s.evictions == 0
    assert all(s.get(key(i)) == VALUE for i in range(3, 12))


# ---------------------------------------------------------------- each policy


def fill_then_write(s: Store, first: int, more: int, **put: Any) -> list[Record]:
    seen = records(s)
    for i in range(first, first + more):
        s.put(key(i), VALUE, **put)
        assert s.used_bytes <= s.max_bytes
    return seen


def test_allkeys_lru_keeps_recently_read_keys() -> None:
    s = store("allkeys-lru", 1000)
    for i in range(1000):
        s.put(key(i), VALUE)
    hot = range(0, 1000, 10)  # the oldest writes, but read since
    for i in hot:
        assert s.get(key(i)) == VALUE
    seen = fill_then_write(s, 1000, 500)
    evicted = [r[1] for r in seen if r[0] == RecordOp.EVICT]
    assert len(evicted) == 500 == s.evictions
    assert all(s.exists(key(i)) for i in hot)
    assert all(s.exists(key(i)) for i in range(1000, 1500))  # just written
    assert s.held == 1000
    # the evicted keys are the least recently used ones, as sampling allows
    assert sum(int(k[4:]) < 600 for k in evicted) > 0.7 * len(evicted)


def test_allkeys_lfu_keeps_often_read_keys() -> None:
    s = store("allkeys-lfu", 1000)
    for i in range(1000):
        s.put(key(i), VALUE)
    hot = range(500, 1000, 5)
    for _ in range(20):
        for i in hot:
            s.get(key(i))
    fill_then_write(s, 1000, 400)
    assert all(s.exists(key(i)) for i in hot)
    assert s.held == 1000


def test_allkeys_random_evicts_and_respects_the_limit() -> None:
    s = store("allkeys-random", 100)
    for i in range(100):
        s.put(key(i), VALUE)
    seen = fill_then_write(s, 100, 50)
    assert s.evictions == 50 == sum(r[0] == RecordOp.EVICT for r in seen)
    assert all(s.exists(key(i)) for i in range(100, 150)) or s.held == 100
    assert s.held == 100


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-lfu", "volatile-random"])
def test_volatile_policies_evict_only_keys_with_a_ttl(policy: str) -> None:
    s = store(policy, 100, ttl_cost=TTL_OVERHEAD_BYTES // 2)
    for i in range(100):
        s.put(key(i), VALUE, ttl=1000 if i % 2 else None)
    for i in range(100, 130):
        s.put(key(i), VALUE)
    assert all(s.exists(key(i)) for i in range(0, 100, 2))  # no TTL: never evicted
    assert s.evictions > 0
    assert s.used_bytes <= s.max_bytes
    # once no key has a TTL, there is nothing left to evict: the write is refused
    refused: zkv.OutOfMemory | None = None
    for i in range(130, 400):
        try:
            s.put(key(i), VALUE)
        except zkv.OutOfMemory as exc:
            refused = exc
            break
    assert refused is not None and "no key left to evict" in str(refused)
    assert all(s.exists(key(i)) for i in range(0, 100, 2))


def test_volatile_lru_keeps_recently_read_keys_with_a_ttl() -> None:
    s = store("volatile-lru", 400, ttl_cost=TTL_OVERHEAD_BYTES)
    for i in range(400):
        s.put(key(i), VALUE, ttl=1000)
    hot = range(0, 400, 8)
    for i in hot:
        s.get(key(i))
    fill_then_write(s, 400, 150, ttl=1000)
    assert all(s.exists(key(i)) for i in hot)


def test_volatile_ttl_evicts_the_soonest_to_expire() -> None:
    s = store("volatile-ttl", 100, ttl_cost=TTL_OVERHEAD_BYTES)
    order = list(range(100))
    random.Random(3).shuffle(order)
    for rank, i in enumerate(order):
        s.put(key(i), VALUE, ttl=100 + rank)
    seen = fill_then_write(s, 100, 10, ttl=10_000)
    evicted = [r[1] for r in seen if r[0] == RecordOp.EVICT]
    assert evicted == [key(i) for i in order[:10]]


def test_the_written_keys_are_never_their_own_victims() -> None:
    s = store("volatile-ttl", 3, ttl_cost=TTL_OVERHEAD_BYTES)
    for i in range(3):
        s.put(key(i), VALUE, ttl=100 + i)
    s.put(key(0), VALUE * 3, ttl=1)  # grows the soonest key: another one must go
    assert s.get(key(0)) == VALUE * 3
    assert not s.exists(key(1))


# ---------------------------------------------------------------- records, replicas, turns


def test_evict_records_replay_and_a_replica_never_evicts_by_itself(tmp_path: Path) -> None:
    primary = store("allkeys-lru", 50)
    disk = Persistence(tmp_path / "n", "no")
    disk.recover(primary)  # the log of every record the primary emits
    seen: list[tuple[int, Record]] = []
    primary.subscribe(lambda seq, record: seen.append((seq, record)))
    for i in range(80):
        primary.put(key(i), VALUE)
    disk.flush()
    disk.close()
    replica = Store(SLOTS, max_bytes=primary.max_bytes // 2, policy="allkeys-lru")
    replica.primary = False  # with a smaller limit still: it only applies what it is sent
    for seq, record in seen:
        assert decode_record(encode_record(seq, record)) == (seq, record)
        replica.replicate(seq, record)
    assert replica.evictions == primary.evictions == 30
    live = sorted(primary.scan(b"", 0, None, 1000)[0])
    assert sorted(replica.scan(b"", 0, None, 1000)[0]) == live
    replica.put(key(999), VALUE)  # a store that is not primary never evicts (promotion does)
    assert replica.evictions == 30

    again = Store(SLOTS)  # the log: an evicted key stays evicted after recovery
    reopened = Persistence(tmp_path / "n", "no")
    reopened.recover(again)
    reopened.close()
    assert (again.held, again.seq) == (50, primary.seq)
    assert sorted(again.scan(b"", 0, None, 1000)[0]) == live


def test_a_rolled_back_turn_brings_evicted_keys_back() -> None:
    s = store("allkeys-random", 10)
    for i in range(10):
        s.put(key(i), VALUE)
    before = sorted(s.scan(b"", 0, None, 100)[0])
    s.begin()
    s.put(key(10), VALUE)
    s.put(key(11), VALUE)
    s.rollback()
    assert sorted(s.scan(b"", 0, None, 100)[0]) == before
    assert s.used_bytes <= s.max_bytes


# ---------------------------------------------------------------- node and wire


def test_out_of_memory_crosses_the_wire_with_its_own_code() -> None:
    assert ErrorCode.OUT_OF_MEMORY == 14
    s = store("noeviction", 1)
    core = NodeCore(s, LimitsConfig(), SLOTS, "n0", "s0")
    core.replica_state = None
    frames = lambda i: protocol.encode_request(  # noqa: E731
        Request(Op.PUT, key(i), [VALUE, None], b"c" * 16, i)
    )
    assert protocol.decode_reply(core.handle(frames(1))[0]) == (1, None)
    with pytest.raises(zkv.OutOfMemory, match="out of memory"):
        protocol.decode_reply(core.handle(frames(2))[0])
    assert s.held == 1


# ---------------------------------------------------------------- config

SHARDS = """
shards:
  s0: [{name: a, publish: 'tcp://127.0.0.1:0', sync: 'tcp://127.0.0.1:0'}]
  s1: [{name: b, publish: 'tcp://127.0.0.1:0', sync: 'tcp://127.0.0.1:0'}]
"""


def test_memory_config_default_and_per_shard_override() -> None:
    plain = parse_config(SHARDS)
    assert plain.memory.of("s0").max_bytes == 0
    assert plain.memory.of("s0").policy is Policy.NOEVICTION
    config = parse_config(
        "memory:\n  max_bytes: 1000000\n  policy: allkeys-lru\n"
        "  shards:\n    s1: {policy: volatile-ttl}\n" + SHARDS
    )
    assert config.memory.of("s0").max_bytes == 1_000_000
    assert config.memory.of("s0").policy is Policy.ALLKEYS_LRU
    assert config.memory.of("s1").max_bytes == 1_000_000  # taken from the default
    assert config.memory.of("s1").policy is Policy.VOLATILE_TTL


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{max_bytes: -1}", r"memory\.max_bytes: must be between 0"),
        ("{max_bytes: 1gb}", r"memory\.max_bytes: must be an integer"),
        ("{policy: lru}", r"memory\.policy: must be one of noeviction, allkeys-lru"),
        ("{maxmemory: 1}", r"memory\.maxmemory: unknown key"),
        ("{shards: {s9: {max_bytes: 1}}}", r"memory\.shards\.s9: no shard named 's9'"),
        ("{shards: {s0: {policy: x}}}", r"memory\.shards\.s0\.policy: must be one of"),
        ("{shards: [s0]}", r"memory\.shards: must map shard names"),
    ],
)
def test_memory_config_errors(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(f"memory: {section}\n" + SHARDS)
