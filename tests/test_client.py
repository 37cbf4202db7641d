"""Every client operation and error against a real 3-shard cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import MutableMapping

import pytest
from conftest import Cluster, free_port, ttl_left

import zkv
from zkv.slots import SlotMap, slot_of


def test_put_get_roundtrip_of_msgpack_values(kv: zkv.Client, ns: str) -> None:
    values = {
        "int": 42,
        "neg": -(2**63),
        "float": 1.5,
        "str": "héllo",
        "bytes": b"\x00\xff",
        "none": None,
        "bool": True,
        "list": [1, "a", [2.5]],
        "dict": {"a": {"b": [1]}},
        "intkeys": {1: "one"},
        "empty": "",
    }
    for name, value in values.items():
        kv.put(ns + name, value)
    for name, value in values.items():
        assert kv.get(ns + name) == value
        assert kv[ns + name] == value
    kv.put(ns + "tuple", (1, 2))
    assert kv.get(ns + "tuple") == [1, 2]


def test_none_value_is_distinct_from_missing(kv: zkv.Client, ns: str) -> None:
    kv.put(ns + "n", None)
    assert kv.get(ns + "n", "default") is None
    assert kv.exists(ns + "n")
    assert kv.get(ns + "absent", "default") == "default"
    assert kv.get(ns + "absent") is None


def test_str_and_bytes_name_one_key(kv: zkv.Client, ns: str) -> None:
    kv.put(ns + "k", 1)
    assert kv.get((ns + "k").encode()) == 1
    kv.put((ns + "k").encode(), 2)
    assert kv[ns + "k"] == 2


def test_getitem_missing_raises_keynotfound_a_keyerror(kv: zkv.Client, ns: str) -> None:
    with pytest.raises(zkv.KeyNotFound) as info:
        kv[ns + "missing"]
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        del kv[ns + "missing"]


def test_delete(kv: zkv.Client, ns: str) -> None:
    kv.put(ns + "d", 1)
    assert kv.delete(ns + "d") is True
    assert kv.delete(ns + "d") is False
    assert kv.get(ns + "d") is None


def test_create_fails_on_existing_key(kv: zkv.Client, ns: str) -> None:
    kv.create(ns + "c", "first")
    with pytest.raises(zkv.KeyExists):
        kv.create(ns + "c", "second")
    assert kv.get(ns + "c") == "first"
    kv.delete(ns + "c")
    kv.create(ns + "c", "third")
    assert kv.get(ns + "c") == "third"


def test_exists_and_contains(kv: zkv.Client, ns: str) -> None:
    assert not kv.exists(ns + "e")
    assert (ns + "e") not in kv
    kv[ns + "e"] = 0
    assert kv.exists(ns + "e")
    assert (ns + "e") in kv
    assert 5 not in kv  # not a key type: no request, just False


def test_cas(kv: zkv.Client, ns: str) -> None:
    assert kv.cas(ns + "x", 1, 2) is False  # a missing key matches nothing
    assert kv.get(ns + "x") is None
    kv.put(ns + "x", 1)
    assert kv.cas(ns + "x", 0, 2) is False
    assert kv.cas(ns + "x", 1.0, 2) is False  # 1 and 1.0 differ as msgpack
    assert kv.cas(ns + "x", 1, 2) is True
    assert kv.get(ns + "x") == 2
    kv.put(ns + "obj", {"a": [1, 2]})
    assert kv.cas(ns + "obj", {"a": [1, 2]}, {"a": []}) is True
    assert kv.get(ns + "obj") == {"a": []}


def test_cas_keeps_ttl(kv: zkv.Client, ns: str) -> None:
    since = time.monotonic()
    kv.put(ns + "t", 1, ttl=30)
    assert kv.cas(ns + "t", 1, 2)
    ttl = kv.ttl(ns + "t")
    assert ttl_left(ttl, 30, since), ttl


def test_ttl_and_expire(kv: zkv.Client, ns: str) -> None:
    kv.put(ns + "p", 1)
    assert kv.ttl(ns + "p") is None
    since = time.monotonic()
    assert kv.expire(ns + "p", 100) is True
    ttl = kv.ttl(ns + "p")
    assert ttl_left(ttl, 100, since), ttl
    kv.put(ns + "p", 2)  # a put without ttl removes the TTL
    assert kv.ttl(ns + "p") is None
    assert kv.expire(ns + "absent", 10) is False
    with pytest.raises(zkv.KeyNotFound):
        kv.ttl(ns + "absent")
    assert kv.expire(ns + "p", 0) is True  # non-positive deletes, as Redis EXPIRE
    assert not kv.exists(ns + "p")


def test_expired_keys_vanish_from_every_read_path(
    cluster: Cluster, kv: zkv.Client, ns: str
) -> None:
    # first without a TTL: every key is there, however slow the test runs
    kv.put(ns + "gone", "v")
    kv.put(ns + "stays", "v")
    kv.mput({ns + "m1": 1, ns + "m2": 2})
    kv.put(ns + "cas", 1)
    kv.put(ns + "exp", 1)
    assert kv.exists(ns + "gone")
    assert sorted(kv.keys(ns)) == sorted(
        ns + k for k in ["gone", "stays", "m1", "m2", "cas", "exp"]
    )
    # then a short TTL for all but one, each way there is to give one
    kv.put(ns + "gone", "v", ttl=0.3)
    kv.mput({ns + "m1": 1, ns + "m2": 2}, ttl=0.3)
    kv.put(ns + "cas", 1, ttl=0.3)
    assert kv.expire(ns + "exp", 0.3) is True
    cluster.wait_for(lambda: list(kv.keys(ns)) == [ns + "stays"], "the short TTLs to pass")
    # expired once, expired for good: every read path agrees
    assert kv.get(ns + "gone") is None
    with pytest.raises(zkv.KeyNotFound):
        kv[ns + "gone"]
    assert not kv.exists(ns + "gone")
    assert kv.mget([ns + "m1", ns + "m2", ns + "stays"]) == {ns + "stays": "v"}
    assert list(kv.keys(ns)) == [ns + "stays"]
    with pytest.raises(zkv.KeyNotFound):
        kv.ttl(ns + "exp")
    assert kv.cas(ns + "cas", 1, 2) is False
    assert kv.delete(ns + "gone") is False
    assert kv.expire(ns + "gone", 10) is False
    kv.create(ns + "gone", "again")  # an expired key does not block create
    assert kv.get(ns + "gone") == "again"


def test_active_expiry_reclaims_unread_keys(cluster: Cluster, kv: zkv.Client, ns: str) -> None:
    def held() -> int:  # keys in the nodes' memory, as their heartbeats last reported
        return sum(n["keys"] for n in cluster.status().values())

    before = len(kv)  # live keys: nobody else writes to this cluster meanwhile
    data = {f"{ns}{i}": i for i in range(300)}
    kv.mput(data)  # first without a TTL, so that the status is seen to count them
    cluster.wait_for(lambda: held() >= before + len(data), "the status to count the keys")
    kv.mput(data, ttl=0.2)  # a write, not a read
    # nobody reads the keys, yet the sweep removes every one of them
    cluster.wait_for(lambda: held() <= before, "the sweep to reclaim the unread keys")


def test_mget_mput_span_all_shards(cluster: object, kv: zkv.Client, ns: str) -> None:
    data = {f"{ns}{i}": {"n": i} for i in range(200)}
    kv.mput(data)
    slot_map = SlotMap.even(["s0", "s1", "s2"], 16384)
    assert {slot_map.shard_of(k.encode()) for k in data} == {"s0", "s1", "s2"}
    wanted = [*data, ns + "missing"]
    got = kv.mget(wanted)
    assert got == data
    assert kv.mget([]) == {}
    kv.mput({})
    keys_as_bytes = [k.encode() for k in list(data)[:3]]
    assert kv.mget(keys_as_bytes) == {k: data[k.decode()] for k in keys_as_bytes}


def test_mput_with_ttl(kv: zkv.Client, ns: str) -> None:
    since = time.monotonic()
    kv.mput({ns + "a": 1, ns + "b": 2}, ttl=50)
    for k in ("a", "b"):
        ttl = kv.ttl(ns + k)
        assert ttl_left(ttl, 50, since), ttl


def test_tagged_keys_share_a_shard(kv: zkv.Client, ns: str) -> None:
    keys = [f"{{{ns}user:1}}:field{i}" for i in range(50)]
    assert len({slot_of(k.encode(), 16384) for k in keys}) == 1
    kv.mput({k: i for i, k in enumerate(keys)})
    assert kv.mget(keys) == {k: i for i, k in enumerate(keys)}
    status = {}
    # every key lives on exactly the shard that owns the tag's slot
    shard = SlotMap.even(["s0", "s1", "s2"], 16384).shard_of(f"{ns}user:1".encode())
    status = {k: SlotMap.even(["s0", "s1", "s2"], 16384).shard_of(k.encode()) for k in keys}
    assert set(status.values()) == {shard}


def test_keys_pages_over_many_keys(kv: zkv.Client, ns: str) -> None:
    n = 3500  # more than three pages of 1000, over three shards
    kv.mput({f"{ns}{i:05d}": i for i in range(n)})
    kv.put(ns.rstrip(":") + "-other", 1)  # same stem, different prefix
    keys = list(kv.keys(ns))
    assert len(keys) == n
    assert sorted(keys) == [f"{ns}{i:05d}" for i in range(n)]
    assert all(isinstance(k, str) for k in keys)
    assert sum(1 for _ in kv.keys(ns + "0001")) == 10


def test_keys_yields_bytes_for_non_utf8(kv: zkv.Client, ns: str) -> None:
    raw = ns.encode() + b"\xff\xfe"
    kv.put(raw, 1)
    assert list(kv.keys(ns)) == [raw]
    assert kv[raw] == 1


def test_len_iter_items_and_clear(cluster_factory: object) -> None:
    c = cluster_factory()  # type: ignore[operator]
    kv = c.client()
    assert len(kv) == 0
    kv.mput({f"k{i}": i for i in range(100)})
    kv.put("short", 1, ttl=3600)  # a key with a TTL counts until it expires
    assert len(kv) == 101
    assert kv.expire("short", 0.2) is True
    c.wait_for(lambda: len(kv) == 100, "the expired key to leave the count")
    assert sorted(kv) == sorted(f"k{i}" for i in range(100))
    assert dict(kv.items("k")) == {f"k{i}": i for i in range(100)}
    assert sorted(kv.values("k1")) == sorted([1, *range(10, 20)])
    kv.clear()
    assert len(kv) == 0
    assert list(kv) == []
    assert isinstance(kv, MutableMapping)


def test_size_limits_store_nothing(kv: zkv.Client, ns: str) -> None:
    # the test cluster's limits: 256-byte keys, 64 KiB values
    with pytest.raises(zkv.KeyTooLarge) as info:
        kv.put(ns + "k" * 300, 1)
    assert "limits.max_key_bytes" in str(info.value)
    with pytest.raises(zkv.ValueTooLarge) as vinfo:
        kv.put(ns + "big", "x" * 70_000)
    assert "limits.max_value_bytes" in str(vinfo.value)
    assert isinstance(vinfo.value, ValueError)
    assert kv.get(ns + "big") is None
    with pytest.raises(zkv.ValueTooLarge):
        kv.create(ns + "big", "x" * 70_000)
    kv.put(ns + "c", 1)
    with pytest.raises(zkv.ValueTooLarge):
        kv.cas(ns + "c", 1, "x" * 70_000)
    assert kv.get(ns + "c") == 1
    with pytest.raises(zkv.ValueTooLarge):
        kv.mput({ns + "ok": 1, ns + "toobig": "x" * 70_000})
    with pytest.raises(zkv.KeyTooLarge):
        kv.mput({ns + "ok": 1, ns + "k" * 300: 1})
    assert kv.get(ns + "ok") is None  # nothing of a refused batch is stored


def test_bad_arguments_raise_before_sending(kv: zkv.Client, ns: str) -> None:
    with pytest.raises(TypeError):
        kv.put(123, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kv.put(ns + "v", object())
    with pytest.raises(zkv.InvalidRequest):
        kv.put(ns + "v", 1, ttl=0)
    with pytest.raises(zkv.InvalidRequest):
        kv.put(ns + "v", 1, ttl=-1)
    with pytest.raises(ValueError, match=r"consistency|Consistency"):
        kv.get(ns + "v", consistency="sometimes")
    assert kv.get(ns + "v", consistency="eventual") is None
    assert kv.get(ns + "v", consistency=zkv.Consistency.STRONG) is None


def test_shared_between_threads(kv: zkv.Client, ns: str) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                kv.put(f"{ns}{t}:{i}", i)
                assert kv.get(f"{ns}{t}:{i}") == i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(list(kv.keys(ns))) == 200


def test_closed_client_raises(cluster: object) -> None:
    kv = zkv.Client(cluster.endpoint)  # type: ignore[attr-defined]
    with kv:
        kv.put("closed-test", 1)
    assert kv.closed
    with pytest.raises(zkv.ClientClosed):
        kv.get("closed-test")
    kv.close()


def test_from_config(cluster: object) -> None:
    with zkv.Client.from_config(cluster.config) as kv:  # type: ignore[attr-defined]
        kv.put("from-config", 1)
        assert kv.get("from-config") == 1
        assert kv.endpoint == cluster.endpoint  # type: ignore[attr-defined]


def test_cluster_status_lists_every_node(cluster: object, kv: zkv.Client) -> None:
    status = kv.cluster_status()
    nodes = {n["name"]: n for n in status["nodes"]}
    assert set(nodes) == {"s0a", "s1a", "s2a"}
    assert sum(n["slots"] for n in nodes.values()) == 16384
    for n in nodes.values():
        assert n["alive"] is True
        assert n["role"] == "primary"
        assert n["pid"] == cluster.procs[n["name"]].pid  # type: ignore[attr-defined]
        assert n["epoch"] == 1  # the first epoch of each shard


def test_nothing_listening_times_out_as_unavailable() -> None:
    with zkv.Client(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.3) as kv:
        started = time.monotonic()
        with pytest.raises(zkv.Unavailable):
            kv.get("x")
        print(f"Unavailable after {time.monotonic() - started:.2f} s (timeout 0.3 s)")
