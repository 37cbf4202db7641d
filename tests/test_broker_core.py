"""The broker's pure cores without sockets: liveness, the gather table, each switch-over step.

Fed NodeInfo reports and a hand-stepped clock; each test runs in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zkv.broker.fanout import Gathers, plan
from zkv.broker.membership import Membership
from zkv.broker.routing import RoutingTable
from zkv.broker.switchover import Switch, Switchboard
from zkv.config import parse_config
from zkv.errors import InvalidRequest, ServerError, Timeout, Unavailable
from zkv.protocol import NodeInfo, NodeState, Op, Request, Role
from zkv.slots import SlotMap

SHARD = {"s0": ["a", "b", "c"]}


def membership(tmp_path: Path) -> Membership:
    doc = {
        "cluster": "t",
        "broker": {"clients": "tcp://127.0.0.1:0", "nodes": "tcp://127.0.0.1:0"},
        "storage": {"dir": str(tmp_path)},
        "heartbeat": {"interval_s": 0.5, "liveness": 3},
        "shards": {
            s: [
                {"name": n, "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"}
                for n in names
            ]
            for s, names in SHARD.items()
        },
    }
    config = parse_config(yaml.safe_dump(doc))
    routing = RoutingTable(config, tmp_path / "routing.json")
    routing.elect("s0", "a", 1)
    return Membership(config, routing)


def report(m: Membership, name: str, now: float, **fields: object) -> None:
    info = NodeInfo(name=name, shard="s0", role=Role.REPLICA, state=NodeState.FOLLOWING, pid=1)
    for key, value in fields.items():
        setattr(info, key, value)
    assert m.seen(f"node:{name}".encode(), info, now) is None


def serving(m: Membership, now: float, seq: int = 10) -> None:
    report(m, "a", now, role=Role.PRIMARY, epoch=1, seq=seq, in_sync=["b", "c"])
    report(m, "b", now, epoch=1, seq=seq)
    report(m, "c", now, epoch=1, seq=seq - 5)


# ------------------------------------------------------------------ liveness


def test_a_node_is_alive_until_silent_for_liveness_heartbeats(tmp_path: Path) -> None:
    m = membership(tmp_path)
    serving(m, now=0.0)
    assert m.expire(now=1.5) == []  # 3 x 0.5 s: not yet past
    report(m, "b", now=1.4, epoch=1, seq=10)
    assert m.expire(now=1.51) == ["a", "c"]
    assert m.primary("s0") is None
    assert [x.name for x in m.alive()] == ["b"]
    assert m.successor("s0") is m.members["b"]
    assert m.expire(now=10.0) == ["b"]


def test_an_unknown_node_or_a_wrong_shard_is_refused(tmp_path: Path) -> None:
    m = membership(tmp_path)
    assert "unknown node" in (m.seen(b"node:z", NodeInfo(name="z", shard="s0"), 0.0) or "")
    assert "config says" in (m.seen(b"node:a", NodeInfo(name="a", shard="s9"), 0.0) or "")


# ------------------------------------------------------------------ gathers


def mget(keys: list[bytes]) -> Request:
    return Request(Op.MGET, b"", [keys], seq=7)


def test_gather_merges_parts_answered_in_any_order() -> None:
    slot_map = SlotMap.even(["s0", "s1", "s2"], 16384)
    keys = [f"k{i}".encode() for i in range(20)]
    parts = plan(mget(keys), slot_map)
    assert len(parts) == 3
    table = Gathers()
    gid = table.start(b"client", mget(keys), parts, 5.0, slot_map)
    answers = [[k.decode() for k in part.request.args[0]] for part in parts]
    assert table.answer(gid, 2, answers[2]) is None
    assert table.answer(gid, 0, answers[0]) is None
    gather, merged = table.answer(gid, 1, answers[1]) or (None, None)
    assert gather is not None and gather.client == b"client"
    assert merged == [k.decode() for k in keys]
    assert len(table) == 0
    assert table.answer(gid, 0, answers[0]) is None  # a late duplicate is dropped


def test_gather_fails_on_the_first_failed_part_and_drops_the_rest() -> None:
    slot_map = SlotMap.even(["s0", "s1"], 16384)
    keys = [f"k{i}".encode() for i in range(10)]
    table = Gathers()
    gid = table.start(b"c", mget(keys), plan(mget(keys), slot_map), 5.0, slot_map)
    failure = Unavailable("shard s1 has no live node")
    gather, outcome = table.answer(gid, 1, failure) or (None, None)
    assert gather is not None and outcome is failure
    assert table.answer(gid, 0, ["a", "b"]) is None  # it ended: the other part is dropped
    assert len(table) == 0


def test_gather_of_malformed_answers_is_a_server_error() -> None:
    slot_map = SlotMap.even(["s0"], 16384)
    table = Gathers()
    parts = plan(mget([b"a", b"b"]), slot_map)
    gid = table.start(b"c", mget([b"a", b"b"]), parts, 5.0, slot_map)
    _, outcome = table.answer(gid, 0, ["only one"]) or (None, None)
    assert isinstance(outcome, ServerError)


def test_gathers_past_their_deadline_time_out() -> None:
    slot_map = SlotMap.even(["s0", "s1"], 16384)
    table = Gathers()
    count = Request(Op.COUNT, seq=3)
    early = table.start(b"c1", count, plan(count, slot_map), 1.0, slot_map)
    late = table.start(b"c2", count, plan(count, slot_map), 2.0, slot_map)
    assert table.expire(now=1.0) == []
    [(gather, error)] = table.expire(now=1.5)
    assert gather.client == b"c1" and isinstance(error, Timeout)
    assert table.answer(early, 0, 1) is None  # gone
    assert table.answer(late, 0, 1) is None
    done = table.answer(late, 1, 2)
    assert done is not None and done[0].client == b"c2" and done[1] == 3  # COUNT: summed


# ------------------------------------------------------------------ switch-over


def board(tmp_path: Path) -> tuple[Membership, Switchboard]:
    m = membership(tmp_path)
    return m, Switchboard(m, heartbeat_interval_s=0.5)


def request(
    sb: Switchboard, target: str | None, now: float = 0.0, budget_s: float = 10.0
) -> Switch:
    return sb.request("s0", target, budget_s, now, client=b"cl", rid=b"rid-1", seq=9)


def test_switch_requests_that_cannot_be_done_are_refused(tmp_path: Path) -> None:
    m, sb = board(tmp_path)
    with pytest.raises(Unavailable, match="no live primary"):
        request(sb, "b")
    serving(m, now=0.0)
    with pytest.raises(InvalidRequest, match="no shard"):
        sb.request("s9", None, 10.0, 0.0, client=b"c", rid=b"r", seq=1)
    with pytest.raises(InvalidRequest, match="not a node of shard"):
        request(sb, "zz")
    with pytest.raises(InvalidRequest, match="already the primary"):
        request(sb, "a")
    report(m, "c", 0.0, epoch=1, seq=5, state=NodeState.SYNCING)
    with pytest.raises(Unavailable, match="not a live, following replica"):
        request(sb, "c")
    request(sb, "b")
    with pytest.raises(InvalidRequest, match="already switching"):
        sb.request("s0", "b", 10.0, 0.0, client=b"c", rid=b"other", seq=2)


def test_switch_steps_stop_writes_wait_for_the_target_then_promote(tmp_path: Path) -> None:
    m, sb = board(tmp_path)
    serving(m, now=0.0, seq=10)
    switch = request(sb, None, now=1.0)  # to the most advanced in-sync replica
    assert switch.target.name == "b"
    assert switch.deadline == pytest.approx(1.0 + 10.0 - 1.5)  # margin: 1 s + a heartbeat
    assert m.primary("s0") is None  # writes are routed nowhere: clients retry
    assert sb.advance(now=1.1) == []
    report(m, "a", 1.2, role=Role.PRIMARY, epoch=1, seq=12, in_sync=["b"])
    report(m, "b", 1.3, epoch=1, seq=11)
    assert sb.advance(now=1.3) == []  # behind the old primary's last report
    report(m, "b", 1.4, epoch=1, seq=12)
    [(done, error)] = sb.advance(now=1.4)
    assert done is switch and error is None  # the broker promotes b now
    assert "s0" not in m.switching and sb.switches == {}


def test_a_switch_that_does_not_catch_up_in_time_is_abandoned(tmp_path: Path) -> None:
    m, sb = board(tmp_path)
    serving(m, now=0.0)
    switch = request(sb, "b", now=0.0, budget_s=3.0)
    assert switch.deadline == pytest.approx(1.5)  # half the budget at most
    assert sb.advance(now=1.5) == []
    [(done, error)] = sb.advance(now=1.6)
    assert isinstance(error, Timeout) and "did not catch up" in str(error)
    assert m.primary("s0") is m.members["a"]  # the old primary serves again
    sb.answered(done, [b"reply"])
    assert sb.outcome(b"rid-1") == [b"reply"]


def test_a_switch_whose_target_dies_is_abandoned_at_once(tmp_path: Path) -> None:
    m, sb = board(tmp_path)
    serving(m, now=0.0)
    request(sb, "b")
    m.lost("b")
    [(_, error)] = sb.advance(now=0.1)
    assert isinstance(error, Timeout)


def test_a_resent_request_joins_the_switch_in_progress(tmp_path: Path) -> None:
    m, sb = board(tmp_path)
    serving(m, now=0.0)
    request(sb, "b")
    assert sb.join(b"rid-1", b"new-address")
    assert sb.switches["s0"].client == b"new-address"
    assert not sb.join(b"another", b"x")
    assert sb.outcome(b"rid-1") is None


def test_a_primary_that_cannot_log_hands_over_to_a_replica_with_room(tmp_path: Path) -> None:
    m, sb = board(tmp_path)
    serving(m, now=0.0)
    assert sb.hand_over("s0", 0.0, 10.0, room_bytes=1 << 20) is None  # it can log
    report(m, "a", 0.1, role=Role.PRIMARY, epoch=1, seq=10, in_sync=["b", "c"], storage="full")
    report(m, "b", 0.1, epoch=1, seq=10, storage="full", free_bytes=0)
    report(m, "c", 0.1, epoch=1, seq=10, free_bytes=100)
    assert sb.hand_over("s0", 0.1, 10.0, room_bytes=1 << 20) is None  # no replica has room
    report(m, "c", 0.2, epoch=1, seq=10, free_bytes=1 << 30)
    switch = sb.hand_over("s0", 0.2, 10.0, room_bytes=1 << 20)
    assert switch is not None and switch.target.name == "c" and switch.client is None
    assert "cannot log" in switch.why
    assert sb.hand_over("s0", 0.3, 10.0, room_bytes=1 << 20) is None  # one at a time
