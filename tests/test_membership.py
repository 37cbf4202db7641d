"""Membership, RoutingTable and ReplicaSet: the broker's routing decisions, without sockets.

Pure state fed NodeInfo reports and a hand-stepped clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zkv.broker.membership import Membership
from zkv.broker.routing import RoutingTable
from zkv.config import ClusterConfig, parse_config
from zkv.errors import ConfigError
from zkv.node.replication import ReplicaSet
from zkv.protocol import NodeInfo, NodeState


def config(tmp_path: Path, shards: dict[str, list[str]]) -> ClusterConfig:
    return parse_config(
        yaml.safe_dump(
            {
                "cluster": "t",
                "broker": {"clients": "tcp://127.0.0.1:0", "nodes": "tcp://127.0.0.1:0"},
                "storage": {"dir": str(tmp_path)},
                "heartbeat": {"interval_s": 0.5, "liveness": 3},
                "shards": {
                    s: [
                        {"name": n, "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"}
                        for n in names
                    ]
                    for s, names in shards.items()
                },
            }
        )
    )


THREE = {"s0": ["a", "b", "c"]}


def report(m: Membership, name: str, now: float = 0.0, **fields: object) -> None:
    info = NodeInfo(name=name, shard="s0", role="replica", state="following", pid=1)
    for key, value in fields.items():
        setattr(info, key, value)
    assert m.seen(f"node:{name}".encode(), info, now) is None


def decided(tmp_path: Path, shards: dict[str, list[str]] = THREE) -> Membership:
    routing = RoutingTable(config(tmp_path, shards), tmp_path / "routing.json")
    routing.elect("s0", shards["s0"][0], 1)
    return Membership(config(tmp_path, shards), routing)


def test_successor_is_the_in_sync_replica_with_the_highest_seq(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=["b", "c"])
    report(m, "b", epoch=1, seq=97)
    report(m, "c", epoch=1, seq=99)
    assert m.primary("s0") is m.members["a"]
    assert m.successor("s0") is None  # the primary is alive
    m.lost("a")
    assert m.successor("s0") is m.members["c"]


def test_no_successor_without_an_in_sync_replica(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=[])
    report(m, "b", epoch=1, seq=100)
    m.lost("a")
    assert m.successor("s0") is None


def test_a_syncing_or_damaged_replica_is_never_the_successor(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=["b", "c"])
    report(m, "b", epoch=1, seq=100, state="syncing")  # mid-snapshot: holds part of the data
    report(m, "c", epoch=1, seq=0, state=NodeState.DAMAGED)
    m.lost("a")
    assert m.successor("s0") is None


def test_in_sync_set_survives_a_restart_of_the_primary(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=["b"])
    report(m, "b", epoch=1, seq=100)
    report(m, "a", role="replica", epoch=0, seq=100, pid=2, state="idle")  # READY after a crash
    assert m.in_sync["s0"] == ["b"]
    m.lost("a")
    assert m.successor("s0") is m.members["b"]


def test_a_primary_back_with_damaged_data_is_replaced(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=["b"])
    report(m, "b", epoch=1, seq=100)
    report(m, "a", role="replica", epoch=0, seq=80, state=NodeState.DAMAGED)
    assert m.members["a"].alive
    assert m.successor("s0") is m.members["b"]


def test_only_the_table_primary_reports_the_in_sync_set(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=[])
    report(m, "b", role="primary", epoch=1, seq=100, in_sync=["c"])  # a liar
    report(m, "c", role="primary", epoch=99, seq=5, in_sync=["b"])  # another
    assert m.in_sync["s0"] == []
    assert m.primary("s0") is m.members["a"]
    assert "claims to be primary" in (m.disagreement(m.members["b"]) or "")
    assert "epoch 99" in (m.disagreement(m.members["c"]) or "")
    report(m, "b", role="replica", epoch=0, seq=0)  # behind the table: catching up, no dispute
    assert m.disagreement(m.members["b"]) is None


def test_election_waits_for_every_node_then_takes_the_highest_seq(tmp_path: Path) -> None:
    routing = RoutingTable(config(tmp_path, THREE), tmp_path / "routing.json")
    m = Membership(config(tmp_path, THREE), routing, now=0.0)
    assert not routing.decided("s0")
    report(m, "a", epoch=3, seq=50, role="primary")  # the first claim is not taken
    report(m, "b", epoch=4, seq=60)
    assert m.candidate("s0", now=0.5) is None  # c has not reported yet
    report(m, "c", epoch=4, seq=60)
    assert m.candidate("s0", now=0.6) is m.members["b"]  # highest seq, then config order
    assert m.reported_epoch("s0") == 4
    assert m.primary("s0") is None  # nothing is routed before the election


def test_election_after_the_wait_among_those_that_reported(tmp_path: Path) -> None:
    routing = RoutingTable(config(tmp_path, THREE), tmp_path / "routing.json")
    m = Membership(config(tmp_path, THREE), routing, now=10.0)
    report(m, "b", epoch=0, seq=0)
    report(m, "c", epoch=0, seq=7, state=NodeState.DAMAGED)
    assert m.candidate("s0", now=10.0 + m.election_wait_s - 0.01) is None
    assert m.candidate("s0", now=10.0 + m.election_wait_s + 0.01) is m.members["b"]


def test_election_wait_counts_from_the_shards_first_report(tmp_path: Path) -> None:
    # nodes slow to start (a loaded machine): the wait starts when the first of them reports,
    # so the node that started first does not win by default
    routing = RoutingTable(config(tmp_path, THREE), tmp_path / "routing.json")
    m = Membership(config(tmp_path, THREE), routing, now=10.0)
    report(m, "b", now=100.0, epoch=0, seq=0)
    assert m.candidate("s0", now=100.0 + m.election_wait_s - 0.01) is None
    report(m, "a", now=100.5, epoch=0, seq=0)
    report(m, "c", now=100.6, epoch=0, seq=0)
    assert m.candidate("s0", now=100.7) is m.members["a"]  # all reported: config order


def test_routing_table_round_trip_and_only_forward_epochs(tmp_path: Path) -> None:
    cfg = config(tmp_path, THREE)
    path = tmp_path / "broker" / "routing.json"
    table = RoutingTable(cfg, path)
    assert table.primaries == {"s0": None} and table.epochs == {"s0": 0}
    table.elect("s0", "b", 5)
    assert table.promote("s0", "c") == 6
    with pytest.raises(ValueError, match="not above"):
        table.elect("s0", "a", 6)
    again = RoutingTable(cfg, path)
    again.load()
    assert (again.primaries["s0"], again.epochs["s0"]) == ("c", 6)
    assert json.loads(path.read_text()) == {
        "shards": {"s0": {"primary": "c", "epoch": 6}},
        "version": 0,
        "nodes": {"s0": ["a", "b", "c"]},
        "move": None,
        "slots": {"s0": [[0, 16383]]},
    }
    assert not list(path.parent.glob("*.tmp"))


def test_the_slot_map_is_runtime_state_saved_with_a_version(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"s0": ["a"], "s1": ["b"]})
    path = tmp_path / "broker" / "routing.json"
    table = RoutingTable(cfg, path)
    assert table.version == 0 and table.slot_map.count_of("s0") == 8192
    assert table.reassign([0, 1, 2, 100], "s1") == 1
    again = RoutingTable(cfg, path)
    again.load()
    assert again.version == 1
    assert again.slot_map.ranges_of("s1") == [(0, 2), (100, 100), (8192, 16383)]
    assert again.slot_map.count_of("s0") == 8192 - 4
    # a shard added to the file owns nothing until slots move to it
    grown = RoutingTable(config(tmp_path, {"s0": ["a"], "s1": ["b"], "s2": ["c"]}), path)
    grown.load()
    assert grown.slot_map.count_of("s2") == 0 and grown.version == 1
    # a shard removed from the file while it owns slots: its data would be unreachable
    shrunk = RoutingTable(config(tmp_path, {"s0": ["a"]}), path)
    with pytest.raises(ConfigError, match="shard s1 owns slots but is not in the config file"):
        shrunk.load()


def test_a_slot_map_with_holes_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"version": 4, "slots": {"s0": [[0, 100]]}}))
    table = RoutingTable(config(tmp_path, THREE), path)
    table.load()
    assert table.version == 0 and table.slot_map.count_of("s0") == 16384


def test_unreadable_routing_table_means_an_election(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    path.write_text("{not json")
    table = RoutingTable(config(tmp_path, THREE), path)
    table.load()
    assert not table.decided("s0")
    path.write_text(json.dumps({"shards": {"s0": {"primary": "zz", "epoch": 3}}}))
    table = RoutingTable(config(tmp_path, THREE), path)
    table.load()
    assert not table.decided("s0")  # not a node of s0


def test_seeded_replicas_hold_strong_replies_until_they_ack(tmp_path: Path) -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.seed(["b"], now=0.0)
    assert rs.in_sync() == ["b"]
    assert rs.wait(5, [b"reply"], now=0.1) is None  # b has not confirmed seq 5
    rs.hello(b"id-b", "b", now=0.2)  # the replica reconnects: still in sync, still owed
    assert rs.in_sync() == ["b"]
    assert rs.ack(b"id-b", 5, 5, now=0.3) == [[b"reply"]]


def test_seeded_replica_that_never_comes_leaves_the_set(tmp_path: Path) -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.seed(["b"], now=0.0)
    assert rs.wait(1, [b"reply"], now=0.1) is None
    assert rs.expire(now=1.5) == []  # left the set; the broker has it on record still
    assert rs.in_sync() == []
    assert rs.confirm([]) == [[b"reply"]]
    rs.hello(b"id-b", "b", now=2.0)  # a replica not seeded must catch up first
    assert rs.in_sync() == []


def test_a_replica_that_lost_its_primary_is_still_a_successor(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=["b"])
    report(m, "b", epoch=1, seq=100, state="idle", pid=7)  # restarted while a was down
    m.lost("a")
    assert m.successor("s0") is m.members["b"]


def test_a_replica_that_discarded_its_data_leaves_the_in_sync_set(tmp_path: Path) -> None:
    m = decided(tmp_path)
    report(m, "a", role="primary", epoch=1, seq=100, in_sync=["b"])
    report(m, "b", epoch=1, seq=0, state="waiting", discarded_seq=90)
    assert m.in_sync["s0"] == []
    m.lost("a")
    assert m.successor("s0") is None


def test_a_topology_change_is_a_new_version_saved_with_the_nodes(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"s0": ["a"], "s1": ["b"]})
    path = tmp_path / "broker" / "routing.json"
    table = RoutingTable(cfg, path)
    table.set_shards({"s0": ["a"], "s1": ["b"]})  # no change: no new version
    assert table.version == 0
    table.set_shards({"s0": ["a", "a2"], "s1": ["b"], "s2": ["c"]})
    assert table.version == 1 and table.primaries["s2"] is None
    assert json.loads(path.read_text())["nodes"] == {"s0": ["a", "a2"], "s1": ["b"], "s2": ["c"]}
    with pytest.raises(ValueError, match="shard s1 still owns slots"):
        table.set_shards({"s0": ["a"]})
    assert table.version == 1


def test_a_reloaded_topology_is_checked_before_it_replaces_the_running_one(
    tmp_path: Path,
) -> None:
    from zkv.broker.topology import check_topology
    from zkv.slots import SlotMap

    old = config(tmp_path, {"s0": ["a", "b"], "s1": ["c"]})
    slot_map = SlotMap.even(["s0", "s1"], 16384)
    primaries: dict[str, str | None] = {"s0": "a", "s1": "c"}
    check_topology(old, config(tmp_path, {"s0": ["a", "b", "d"], "s1": ["c"]}), slot_map, primaries)
    check_topology(old, config(tmp_path, {"s0": ["a"], "s1": ["c"]}), slot_map, primaries)
    with pytest.raises(ConfigError, match="shard s1 owns 8192 slots"):
        check_topology(old, config(tmp_path, {"s0": ["a", "b"]}), slot_map, primaries)
    with pytest.raises(ConfigError, match="node b moved from shard s0 to s1"):
        check_topology(old, config(tmp_path, {"s0": ["a"], "s1": ["c", "b"]}), slot_map, primaries)
    with pytest.raises(ConfigError, match="node a is the primary of shard s0"):
        check_topology(old, config(tmp_path, {"s0": ["b"], "s1": ["c"]}), slot_map, primaries)
