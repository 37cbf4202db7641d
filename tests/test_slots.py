"""Unit tests for zkv.slots: routing keys, CRC16 slots and the slot map."""

from __future__ import annotations

import binascii
import random

import pytest

from zkv.slots import SlotMap, routing_key, slot_of

# --------------------------------------------------------------------------- routing_key


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"plain", b"plain"),
        (b"", b""),
        (b"{user1000}.following", b"user1000"),
        (b"{user1000}.followers", b"user1000"),
        (b"prefix{tag}suffix", b"tag"),
        (b"foo{bar}{zap}", b"bar"),  # the first {tag} wins
        (b"foo{}{bar}", b"foo{}{bar}"),  # an empty first {} means the whole key
        (b"{}", b"{}"),
        (b"{}x", b"{}x"),
        (b"foo{{bar}}zap", b"{bar"),  # first { and the next }
        (b"foo{bar", b"foo{bar"),  # no closing brace
        (b"foo}bar{", b"foo}bar{"),  # } before { does not count
        (b"a}{b}", b"b"),
        (b"{a}", b"a"),
        (b"{", b"{"),
        (b"}", b"}"),
        (b"x{\xff\x00}y", b"\xff\x00"),
    ],
)
def test_routing_key(key: bytes, expected: bytes) -> None:
    assert routing_key(key) == expected


# --------------------------------------------------------------------------- slot_of


def test_crc16_check_value() -> None:
    # CRC-16/XMODEM check value, as in the Redis Cluster specification
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3
    assert slot_of(b"123456789", 16384) == 0x31C3 % 16384
    assert slot_of(b"123456789", 65536) == 0x31C3


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        # values documented for Redis CLUSTER KEYSLOT
        (b"foo", 12182),
        (b"somekey", 11058),
        (b"foo{hash_tag}", 2515),
        (b"hash_tag", 2515),
    ],
)
def test_slot_matches_redis_cluster(key: bytes, slot: int) -> None:
    assert slot_of(key, 16384) == slot


def test_hash_tags_share_a_slot() -> None:
    a = slot_of(b"{user1000}.following", 16384)
    b = slot_of(b"{user1000}.followers", 16384)
    assert a == b == slot_of(b"user1000", 16384)
    assert slot_of(b"{user1001}.following", 16384) != a


def test_slot_of_equals_crc_hqx_mod_slots() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(0, 20))
        slots = rng.choice([1, 2, 3, 16, 1000, 16384, 65536])
        got = slot_of(key, slots)
        assert got == binascii.crc_hqx(routing_key(key), 0) % slots
        assert 0 <= got < slots


def test_slot_of_one_slot() -> None:
    assert {slot_of(bytes([i]), 1) for i in range(256)} == {0}


# --------------------------------------------------------------------------- SlotMap


@pytest.mark.parametrize(
    ("shards", "slots"),
    [
        (["a"], 1),
        (["a"], 16384),
        (["a", "b"], 16384),
        (["a", "b", "c"], 16384),
        (["s1", "s2", "s3", "s4", "s5", "s6", "s7"], 16384),
        (["a", "b", "c"], 10),
        (["a", "b", "c"], 3),
        (["x", "y"], 65536),
    ],
)
def test_even_covers_every_slot_in_contiguous_nearly_equal_runs(
    shards: list[str], slots: int
) -> None:
    m = SlotMap.even(shards, slots)
    assert m.slots == slots
    owners = [m.owner(s) for s in range(slots)]
    assert set(owners) == set(shards)
    # every slot owned exactly once
    assert sorted(s for shard in shards for s in m.slots_of(shard)) == list(range(slots))
    sizes = []
    expected_first = 0
    for shard in shards:
        runs = m.ranges_of(shard)
        assert len(runs) == 1, (shard, runs)  # one contiguous run per shard
        first, last = runs[0]
        assert first == expected_first  # in the order the shards were given
        expected_first = last + 1
        sizes.append(last - first + 1)
    assert expected_first == slots
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == slots


def test_even_two_shards_exact_split() -> None:
    m = SlotMap.even(["a", "b"], 16384)
    assert m.ranges_of("a") == [(0, 8191)]
    assert m.ranges_of("b") == [(8192, 16383)]
    assert m.owner(0) == "a"
    assert m.owner(8191) == "a"
    assert m.owner(8192) == "b"
    assert m.owner(16383) == "b"


def test_even_three_shards_ten_slots() -> None:
    m = SlotMap.even(["a", "b", "c"], 10)
    assert [m.owner(s) for s in range(10)] == list("aaaabbbccc")
    assert m.slots_of("b") == [4, 5, 6]


def test_even_rejects_no_shards() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        SlotMap.even([], 16)


def test_slot_map_rejects_no_slots() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        SlotMap([])


def test_shards_in_order_of_first_slot() -> None:
    m = SlotMap(["b", "b", "a", "c", "a", "b"])
    assert m.shards() == ["b", "a", "c"]
    assert SlotMap.even(["z", "y", "x"], 30).shards() == ["z", "y", "x"]


def test_ranges_of_with_gaps() -> None:
    m = SlotMap(["a", "a", "b", "a", "c", "c", "a"])
    assert m.ranges_of("a") == [(0, 1), (3, 3), (6, 6)]
    assert m.ranges_of("b") == [(2, 2)]
    assert m.ranges_of("c") == [(4, 5)]
    assert m.ranges_of("missing") == []
    assert m.slots_of("a") == [0, 1, 3, 6]
    assert m.slots_of("missing") == []


def test_shard_of_uses_slot_of() -> None:
    m = SlotMap.even(["a", "b", "c", "d"], 16384)
    rng = random.Random(3)
    for _ in range(500):
        key = rng.randbytes(rng.randrange(1, 12))
        assert m.shard_of(key) == m.owner(slot_of(key, 16384))
    # foo is slot 12182, in the third quarter of 16384 slots (8192..12287)
    assert m.shard_of(b"foo") == "c"
    assert m.shard_of(b"{foo}bar") == "c"


def test_group_positions() -> None:
    m = SlotMap.even(["a", "b", "c", "d"], 16384)
    keys = [b"foo", b"bar", b"{foo}x", b"somekey", b"hello", b"{foo}y", b"123456789"]
    groups = m.group(keys)
    # every position appears once, ascending within its group, under its key's shard
    assert sorted(i for positions in groups.values() for i in positions) == list(range(len(keys)))
    for shard, positions in groups.items():
        assert positions == sorted(positions)
        assert positions
        for i in positions:
            assert m.shard_of(keys[i]) == shard
    assert {0, 2, 5} <= set(groups[m.shard_of(b"foo")])
    # quarters of 16384: a 0..4095, b 4096..8191, c 8192..12287, d 12288..16383;
    # foo=12182 -> c, bar=5061 -> b, somekey=11058 -> c, hello=866 -> a, 123456789=12739 -> d
    assert groups == {"c": [0, 2, 3, 5], "b": [1], "a": [4], "d": [6]}


def test_group_empty_and_generator() -> None:
    m = SlotMap.even(["a", "b"], 16)
    assert m.group([]) == {}
    keys = [bytes([i]) for i in range(40)]
    assert m.group(iter(keys)) == m.group(keys)


def test_group_single_shard() -> None:
    m = SlotMap.even(["only"], 16384)
    assert m.group([b"x", b"y", b"z"]) == {"only": [0, 1, 2]}


def test_slot_counts_and_runs_come_from_one_cached_walk() -> None:
    m = SlotMap(["a", "a", "b", "a", "c", "c", "a"])
    assert [m.count_of(s) for s in ("a", "b", "c", "missing")] == [4, 1, 2, 0]
    runs = m.ranges_of("a")
    runs.append((99, 99))  # a copy: the cache cannot be changed from outside
    assert m.ranges_of("a") == [(0, 1), (3, 3), (6, 6)]
