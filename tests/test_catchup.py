"""Catch-up after a disconnection (partial resync): the history rule (zkv.node.history), the
backlog and its transfers (zkv.node.catchup), the follower's side, and a primary and a
replica talking frame by frame, on a hand-moved clock; then a real cluster, the replica
killed under load and restarted."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from test_replica_core import FakeContext

from zkv.node import wire
from zkv.node.catchup import Backlog, CatchUps, plan
from zkv.node.follower import (
    Action,
    Adopt,
    Apply,
    Connect,
    Disconnect,
    Follower,
    PrimaryAddress,
    Send,
    SnapshotAbort,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotResults,
)
from zkv.node.history import EMPTY, MAX_PAST, History, HistoryFile
from zkv.node.primary import Primary
from zkv.node.replica import Replica as ReplicaDriver
from zkv.node.replication import Sent
from zkv.protocol import NodeState
from zkv.storage.engine import RecordOp, Store
from zkv.storage.persistence import Persistence
from zkv.storage.records import encode_record

# --------------------------------------------------------------------------- the history rule

A, B, C = 0xA, 0xB, 0xC  # history ids


def test_a_replica_of_the_same_history_is_a_prefix_up_to_the_primarys_seq() -> None:
    primary = History(A)
    assert primary.allows(A, 0, 100) and primary.allows(A, 90, 100) and primary.allows(A, 100, 100)
    assert not primary.allows(A, 101, 100)  # it holds records this primary does not
    assert not primary.allows(0, 5, 100)  # no history: never a prefix of anything
    assert not primary.allows(B, 5, 100)  # an unrelated history
    assert "no history id" in primary.why_not(0, 5, 100)


def test_after_a_failover_the_rule_cuts_at_the_promotion_point() -> None:
    # B was a replica of A's history at seq 100 when it was promoted
    new_primary = History(A).promote(100, B)
    assert new_primary == History(B, ((A, 100),))
    seq = 130  # it wrote 30 records of its own since
    # a replica behind the promotion point: A's records up to 90 are B's too
    assert new_primary.allows(A, 90, seq)
    # exactly at the promotion point: it lacks only B's own records
    assert new_primary.allows(A, 100, seq)
    # ahead of it: records 101.. of A's history that B never had
    assert not new_primary.allows(A, 105, seq)
    assert "forked from this one after seq 100" in new_primary.why_not(A, 105, seq)
    # the old primary rejoining, with the writes it took after B's promotion
    assert not new_primary.allows(A, 103, seq)
    # a replica that followed B already
    assert new_primary.allows(B, 120, seq) and not new_primary.allows(B, 131, seq)


def test_a_primary_that_restarts_with_fewer_records_forks_where_its_data_stops() -> None:
    # A wrote 100 records, lost 96..100 in a crash (not fsynced), and restarts as primary
    restarted = History(A).clamp(95).promote(95, C)
    assert restarted.allows(A, 95, 95) and not restarted.allows(A, 96, 200)
    # a node promoted twice keeps every past history, clamped to what it still holds
    twice = History(B, ((A, 100),)).clamp(80).promote(80, C)
    assert twice == History(C, ((A, 80), (B, 80)))
    assert not twice.allows(A, 90, 300)  # records 81..100 of A are not in its data any more


def test_past_histories_are_bounded() -> None:
    history = EMPTY
    for i in range(1, 20):
        history = history.promote(i * 10, i)
    assert len(history.past) == MAX_PAST and history.current == 19
    assert history.allows(18, 180, 500) and not history.allows(1, 10, 500)  # forgotten


def test_the_history_file_survives_a_restart_and_a_bad_one_is_ignored(tmp_path: Path) -> None:
    files = HistoryFile(tmp_path)
    assert files.history == EMPTY
    files.set(History(B, ((A, 7),)))
    assert HistoryFile(tmp_path).history == History(B, ((A, 7),))
    (tmp_path / "history.json").write_text("{not json")
    assert HistoryFile(tmp_path).history == EMPTY
    (tmp_path / "history.json").write_text(json.dumps({"current": -1, "past": []}))
    assert HistoryFile(tmp_path).history == EMPTY


# --------------------------------------------------------------------------- the backlog


def test_the_backlog_holds_its_last_records_within_its_bound() -> None:
    backlog = Backlog(max_bytes=10, overhead_bytes=0)
    for seq in range(1, 6):
        backlog.append(seq, b"%03d" % seq)  # 3 bytes each: 3 fit
    assert (backlog.first_seq, backlog.last_seq, backlog.bytes) == (3, 5, 9)
    assert backlog.since(2, 5) == [b"003", b"004", b"005"]
    assert backlog.since(4, 5) == [b"005"]
    assert backlog.since(5, 5) == []  # in step: nothing to send
    assert backlog.since(1, 5) is None  # record 2 is gone
    assert backlog.since(3, 6) is None  # record 6 was never held
    backlog.truncate(4)  # rolled back
    assert backlog.last_seq == 4 and backlog.bytes == 6
    backlog.append(9, b"009")  # not the next one: starts afresh
    assert (backlog.first_seq, backlog.last_seq) == (9, 9)
    backlog.clear()
    assert backlog.first_seq is None and backlog.since(0, 0) == []
    off = Backlog(0)
    off.append(1, b"x")
    assert len(off) == 0


def test_plan_serves_a_prefix_from_the_backlog_and_says_why_not_otherwise() -> None:
    backlog = Backlog(1 << 20)
    for seq in range(50, 131):
        backlog.append(seq, b"r%d" % seq)
    history = History(B, ((A, 100),))
    assert plan(history, backlog, A, 100, 130) == [b"r%d" % s for s in range(101, 131)]
    assert plan(history, backlog, B, 129, 130) == [b"r130"]
    assert "forked" in str(plan(history, backlog, A, 101, 130))
    assert "no longer held" in str(plan(history, backlog, A, 20, 130))
    assert "no longer held" in str(plan(history, Backlog(1 << 20), A, 20, 130))


def test_a_catchup_goes_continue_then_bounded_records_at_the_replicas_pace() -> None:
    payloads = [encode_record(11 + i, (RecordOp.DEL, b"k%d" % i)) for i in range(25)]
    catchups = CatchUps(chunk_records=10, chunk_bytes=1 << 20, chunks_per_turn=2)
    catchups.start(b"id-b", "b", 10, History(B), payloads, now=0.0)
    sent: list[list[bytes]] = []

    def turn(full_after: int = 99) -> None:
        gen = catchups.turn(now=1.0)
        try:
            identity, frames = next(gen)
            while True:
                assert identity == b"id-b"
                if len(sent) >= full_after:
                    identity, frames = gen.send(Sent.FULL)
                    continue
                sent.append(frames)
                identity, frames = gen.send(Sent.OK)
        except StopIteration:
            pass

    turn(full_after=2)  # CONTINUE and one RECORDS, then the queue is full
    assert [f[0] for f in sent] == [b"CONTINUE", b"RECORDS"]
    assert wire.decode_continue(sent[0]) == wire.Continue(10, 35, History(B))
    turn()  # the last two RECORDS
    assert len(sent) == 4
    assert not catchups  # done, dropped
    records = [wire.decode_catchup_records(f) for f in sent[1:]]
    assert [(r.seq, len(r.records)) for r in records] == [(11, 10), (21, 10), (31, 5)]


def test_an_empty_catchup_is_a_continue_alone() -> None:
    catchups = CatchUps()
    catchups.start(b"id-b", "b", 10, History(B), [], now=0.0)
    gen = catchups.turn(now=0.0)
    _identity, frames = next(gen)
    assert wire.decode_continue(frames) == wire.Continue(10, 10, History(B))
    with pytest.raises(StopIteration):
        gen.send(Sent.OK)
    assert not catchups


# --------------------------------------------------------------------------- the follower

P = PrimaryAddress("s0a", "pub", "sync")


def put(seq: int) -> tuple[Any, ...]:
    return (RecordOp.SET, b"k%d" % seq, b"v%d" % seq, None)


def stream(seq: int, n: int = 1, history: int = B) -> wire.StreamRecords:
    return wire.StreamRecords(1, seq, [put(seq + i) for i in range(n)], history)


class Replica:
    """A Follower and the store its actions are carried out on; every Apply must be the
    next record (no gap, no duplicate)."""

    def __init__(self, seq: int, history: History) -> None:
        self.follower = Follower("s0b", heartbeat_s=0.5, history=history)
        self.store = Store(16)
        self.store.primary = False
        self.store.seq = seq
        self.history = history
        self.now = 0.0
        self.sent: list[list[bytes]] = []

    def run(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, Apply):
                assert action.seq == self.store.seq + 1
                self.store.replicate(action.seq, action.record)
            elif isinstance(action, Send):
                self.sent.append(action.frames)
            elif isinstance(action, Adopt):
                self.history = action.history
            elif isinstance(action, SnapshotBegin):
                self.store.reset()
            elif isinstance(action, SnapshotEnd):
                self.store.seq = action.seq
        return actions

    def on_stream(self, message: wire.StreamMessage) -> list[Action]:
        return self.run(self.follower.on_stream(message, self.store.seq, self.now))

    def on_sync(self, message: wire.ToReplica) -> list[Action]:
        return self.run(self.follower.on_sync(message, self.store.seq, self.now))

    def connect(self) -> None:
        self.run(self.follower.follow(P, 1, self.store.seq, self.now))


def test_a_replica_behind_catches_up_and_hands_over_to_the_stream() -> None:
    r = Replica(10, History(B))
    r.connect()
    r.on_stream(stream(15, 2, history=C))  # 15, 16: behind; queued
    assert r.sent[-1] == wire.encode_catchup(10, B)
    assert r.follower.state == NodeState.SYNCING and r.follower.catchups == 1
    new = History(C, ((B, 12),))  # the primary's history, of which 1..12 are B's
    assert r.on_sync(wire.Continue(10, 16, new)) == [Adopt(new)]
    assert r.history == new and r.follower.history == new
    r.on_stream(stream(17, history=C))  # still queued
    r.on_sync(wire.CatchUpRecords(11, [put(s) for s in range(11, 14)]))
    assert r.store.seq == 13 and r.follower.state == NodeState.SYNCING
    out = r.on_sync(wire.CatchUpRecords(14, [put(s) for s in range(14, 17)]))
    # 14..16 from the catch-up, then the queued 17 (15 and 16 queued are dropped)
    assert [a.seq for a in out if isinstance(a, Apply)] == [14, 15, 16, 17]
    assert r.follower.state == NodeState.FOLLOWING and r.store.seq == 17
    assert r.follower.resyncs == 0
    r.on_stream(stream(18, history=C))
    assert r.store.seq == 18


def test_a_replica_in_step_gets_an_empty_catchup_and_follows() -> None:
    r = Replica(10, History(B))
    r.connect()
    r.on_stream(wire.StreamHeartbeat(1, 10, C))  # the primary restarted: a new history
    assert r.sent[-1] == wire.encode_catchup(10, B)
    r.on_sync(wire.Continue(10, 10, History(C, ((B, 10),))))
    assert r.follower.state == NodeState.FOLLOWING and r.history.current == C


def test_a_catchup_refused_is_answered_by_a_snapshot_that_drops_the_old_history() -> None:
    r = Replica(10, History(A))  # e.g. the old primary, ahead of the fork point
    r.connect()
    r.on_stream(wire.StreamHeartbeat(1, 20, B))
    assert r.sent[-1] == wire.encode_catchup(10, A)
    out = r.on_sync(wire.Begin(20, History(B, ((A, 8),))))
    assert out == [Adopt(EMPTY), SnapshotBegin(20)]  # no claim while its data is replaced
    r.on_sync(wire.Results([]))
    out = r.on_sync(wire.End(0))
    assert out == [SnapshotEnd(20), Adopt(History(B, ((A, 8),)))]
    assert r.follower.state == NodeState.FOLLOWING


def test_a_stale_continue_and_stray_records_are_ignored() -> None:
    r = Replica(10, History(B))
    r.connect()
    r.on_stream(wire.StreamHeartbeat(1, 12, B))
    assert r.on_sync(wire.CatchUpRecords(11, [put(11)])) == []  # before CONTINUE
    assert r.on_sync(wire.Continue(9, 12, History(B))) == []  # not the one asked for
    r.on_sync(wire.Continue(10, 12, History(B)))
    out = r.on_sync(wire.CatchUpRecords(12, [put(12)]))  # 11 skipped: never applied
    assert out == [Send(wire.encode_snap())] and r.store.seq == 10


def test_a_changed_stream_history_while_following_asks_to_catch_up() -> None:
    r = Replica(10, History(B))
    r.connect()
    r.on_stream(wire.StreamHeartbeat(1, 10, B))  # in step, same history: follows at once
    assert r.follower.state == NodeState.FOLLOWING and r.sent == [wire.encode_hello("s0b", 10)]
    r.on_stream(stream(11, history=C))  # the primary restarted with another history
    assert r.sent[-1] == wire.encode_catchup(10, B) and r.store.seq == 10  # not applied
    # a queued record of a history other than the one adopted is not applied either
    r.on_stream(stream(12, history=A))
    r.on_sync(wire.Continue(10, 10, History(C, ((B, 10),))))
    assert r.store.seq == 11  # 11 (of C) applied from the queue, 12 (of A) not
    assert r.sent[-1] == wire.encode_catchup(11, C)


def test_no_history_or_force_snapshot_asks_for_a_snapshot() -> None:
    r = Replica(10, EMPTY)
    r.connect()
    r.on_stream(wire.StreamHeartbeat(1, 10, B))  # even in step: it cannot prove a prefix
    assert r.sent[-1] == wire.encode_snap()
    r = Replica(10, History(B))
    r.follower.force_snapshot = True
    r.connect()
    r.on_stream(wire.StreamHeartbeat(1, 10, B))
    assert r.sent[-1] == wire.encode_snap()


# --------------------------------------------------------------------------- primary and replica


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.full = False

    def send_multipart(self, frames: list[bytes], *_: Any) -> None:
        if self.full:
            raise zmq.Again()
        self.sent.append(frames)


class Link:
    """A primary on fake sockets and a replica state machine, wired frame by frame; the
    replica can be cut off (its stream and sync messages are lost) and reconnected."""

    def __init__(self, history: History, backlog_bytes: int = 1 << 20) -> None:
        self.pstore = Store(64)
        self.pub, self.sync = FakeSocket(), FakeSocket()
        self.backlog = Backlog(backlog_bytes)
        self.primary = Primary(
            self.pstore,
            self.pub,  # type: ignore[arg-type]
            self.sync,  # type: ignore[arg-type]
            epoch=1,
            ack_timeout_s=1.0,
            heartbeat_s=0.0,
            now=0.0,
            history=history,
            backlog=self.backlog,
        )

        def tap(seq: int, record: tuple[Any, ...]) -> None:
            payload = encode_record(seq, record)
            self.backlog.append(seq, payload)
            self.primary.record(seq, payload)

        self.pstore.subscribe(tap)
        self.follower = Follower("b", heartbeat_s=0.5, history=EMPTY)
        self.rstore = Store(64)
        self.rstore.primary = False
        self.connected = False
        self.now = 0.0

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self.connected:
                    self.primary.on_sync([b"id-b", *action.frames], self.now)
            elif isinstance(action, Apply):
                assert action.seq == self.rstore.seq + 1  # no gap, no duplicate
                self.rstore.replicate(action.seq, action.record)
            elif isinstance(action, SnapshotBegin):
                self.rstore.reset()
            elif isinstance(action, SnapshotChunk):
                self.rstore.load(action.flat)
            elif isinstance(action, SnapshotResults):
                self.rstore.load_results(action.pairs)
            elif isinstance(action, SnapshotEnd):
                self.rstore.seq = action.seq
            elif isinstance(action, Connect):
                self.connected = True
            elif isinstance(action, Disconnect):
                self.connected = False
            else:
                assert isinstance(action, Adopt | SnapshotAbort)

    def turn(self) -> None:
        self.now += 0.01
        self.primary.publish(self.now)
        self.primary.stream_snapshots(self.now)
        for frames in self.pub.sent if self.connected else []:
            self.run(self.follower.on_stream(wire.decode_stream(frames), self.rstore.seq, self.now))
        for frames in self.sync.sent if self.connected else []:
            message = wire.decode_to_replica(frames[1:])
            self.run(self.follower.on_sync(message, self.rstore.seq, self.now))
        self.pub.sent.clear()
        self.sync.sent.clear()
        self.run(self.follower.tick(self.rstore.seq, self.now))

    def until_following(self, writes: int = 3) -> int:
        turns = 0
        while self.primary.transferring or self.follower.state != NodeState.FOLLOWING:
            turns += 1
            for i in range(writes):
                self.pstore.put(b"w%d" % (turns * writes + i), b"x%d" % turns)
            self.turn()
            assert turns < 200
        self.turn()
        return turns

    def equal(self) -> bool:
        return self.rstore.seq == self.pstore.seq and all(
            self.rstore.slot_items(s) == self.pstore.slot_items(s)
            for s in set(self.pstore.slot_numbers()) | set(self.rstore.slot_numbers())
        )


def test_a_replica_cut_off_under_writes_catches_up_with_only_what_it_missed() -> None:
    link = Link(History(B))
    for i in range(5000):
        link.pstore.put(b"pre%d" % i, b"v")
    link.run(link.follower.follow(P, 1, link.rstore.seq, link.now))
    link.until_following()  # no history yet: the first sync is a snapshot
    assert link.primary.resync_full == 1 and link.follower.history.current == B
    full_bytes = link.primary.resync_bytes
    # cut off: 300 writes it does not see, then it reconnects (as after a restart)
    link.run(link.follower.close(link.now))
    for i in range(300):
        link.pstore.put(b"missed%d" % i, b"m%d" % i)
        link.turn()
    link.primary.catchups.chunk_records = 50  # several turns, with writes between them
    link.primary.catchups.chunks_per_turn = 1
    link.run(link.follower.follow(P, 1, link.rstore.seq, link.now))
    turns = link.until_following()
    assert turns > 3
    assert (link.primary.resync_full, link.primary.resync_partial) == (1, 1)
    assert link.follower.resyncs == 1  # the first snapshot only
    assert link.primary.resync_bytes - full_bytes < full_bytes
    assert link.equal()


def test_a_replica_whose_records_left_the_backlog_gets_a_snapshot() -> None:
    link = Link(History(B), backlog_bytes=2000)
    link.run(link.follower.follow(P, 1, link.rstore.seq, link.now))
    link.until_following()
    link.run(link.follower.close(link.now))
    for i in range(300):  # far more than 2000 bytes of records
        link.pstore.put(b"missed%d" % i, b"m%d" % i)
    link.turn()
    link.run(link.follower.follow(P, 1, link.rstore.seq, link.now))
    link.until_following()
    assert (link.primary.resync_full, link.primary.resync_partial) == (2, 0)
    assert link.follower.catchups == 1  # asked, and was answered by a snapshot
    assert link.equal()


def test_a_replica_ahead_of_a_new_primary_gets_a_snapshot_not_its_records() -> None:
    # the new primary (history C) was promoted at seq 5 of history B; the replica holds B
    # up to 8: records 6..8 the new primary never had, under numbers it reuses
    link = Link(History(C, ((B, 5),)))
    for i in range(1, 11):
        link.pstore.put(b"k%d" % i, b"new%d" % i)
    link.follower.history = History(B)
    for i in range(1, 9):
        link.rstore.replicate(i, (RecordOp.SET, b"k%d" % i, b"old%d" % i, None))
    link.run(link.follower.follow(P, 1, link.rstore.seq, link.now))
    link.until_following(writes=0)
    assert (link.primary.resync_full, link.primary.resync_partial) == (1, 0)
    assert link.equal() and link.rstore.get(b"k6") == b"new6"


# --------------------------------------------------------------------------- the driver


def _driver(folder: Path) -> tuple[ReplicaDriver, Store, Persistence, FakeContext, Backlog]:
    store = Store(16)
    store.primary = False
    persistence = Persistence(folder, "no")
    persistence.recover(store)
    backlog = Backlog(1 << 20)
    persistence.tap = backlog.append
    replica = ReplicaDriver(
        "s0b",
        store,
        persistence,
        FakeContext(),  # type: ignore[arg-type]
        hwm=1000,
        heartbeat_s=0.5,
        histories=HistoryFile(folder),
        backlog=backlog,
    )
    return replica, store, persistence, replica.context, backlog  # type: ignore[return-value]


def test_the_driver_keeps_the_history_across_a_restart_and_catches_up(tmp_path: Path) -> None:
    replica, store, persistence, context, backlog = _driver(tmp_path)
    replica.follow(*P, epoch=1, now=0.0)
    replica.on_stream(wire.encode_heartbeat(1, 3, C), now=0.1)
    _sub, dealer = context.sockets
    assert dealer.sent[-1] == wire.encode_snap()  # no history yet
    backlog.append(1, b"from a history given up")
    for frames in (
        wire.encode_begin(3, History(C)),
        wire.encode_chunk([b"a", b"1", None]),
        wire.encode_results([]),
        wire.encode_end(1),
    ):
        replica.on_sync(frames, now=0.2)
    assert json.loads((tmp_path / "history.json").read_text())["current"] == C
    assert store.seq == 3 and len(backlog) == 0  # emptied by the snapshot
    replica.close()
    persistence.close()
    # restarted: it still knows its history, so it asks for the records it missed
    replica, store, persistence, context, backlog = _driver(tmp_path)
    assert store.seq == 3 and replica.core.history == History(C)
    replica.follow(*P, epoch=1, now=1.0)
    replica.on_stream(wire.encode_heartbeat(1, 5, C), now=1.1)
    _sub, dealer = context.sockets
    assert dealer.sent[-1] == wire.encode_catchup(3, C)
    records = [encode_record(s, put(s)) for s in (4, 5)]
    replica.on_sync(wire.encode_continue(3, 5, History(C)), now=1.2)
    replica.on_sync(wire.encode_catchup_records(4, records), now=1.2)
    assert replica.state == NodeState.FOLLOWING and store.seq == 5
    assert store.get(b"k5") == b"v5" and backlog.since(3, 5) == records
    assert replica.catchups == 1 and replica.resyncs == 0
    replica.close()
    persistence.close()


# --------------------------------------------------------------------------- a real cluster

ONE_SHARD = {"s0": ["s0a", "s0b"]}


def following(c: Any) -> bool:
    """Whether the replica's current process reports ``following``."""
    node = c.node("s0b")
    return bool(node["state"] == "following" and node["pid"] == c.procs["s0b"].pid)


def in_step(c: Any) -> bool:
    nodes = c.status()
    return following(c) and nodes["s0b"]["seq"] == nodes["s0a"]["seq"]


@pytest.mark.fault
@pytest.mark.timeout(60)
def test_a_replica_killed_under_load_catches_up_without_a_snapshot(cluster_factory: Any) -> None:
    c = cluster_factory(ONE_SHARD)
    kv = c.client(timeout_s=10.0)
    kv.mput({f"pre{i}": i for i in range(2000)})
    c.wait_for(lambda: in_step(c), "the replica to follow")
    before = c.node("s0a")
    acked: dict[str, int] = {}
    stop = threading.Event()

    def load() -> None:
        writer = c.client(timeout_s=10.0)
        i = 0
        while not stop.is_set() and i < 100_000:
            writer.put(f"live{i}", i, consistency="eventual")
            acked[f"live{i}"] = i
            i += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        c.wait_for(lambda: len(acked) > 200, "some writes")
        c.procs["s0b"].signal(signal.SIGKILL)
        mark = len(acked)
        c.wait_for(lambda: len(acked) > mark + 500, "writes while the replica is down")
        started = time.monotonic()
        c.start("s0b")
        c.wait_for(lambda: following(c), "the replica to catch up")
        print(f"\nback in step {time.monotonic() - started:.2f} s after the restart")
    finally:
        stop.set()
        thread.join(30)
    c.wait_for(lambda: in_step(c), "the replica to be in step")
    # the primary's counters arrive with its heartbeat
    c.wait_for(
        lambda: c.node("s0a")["resync_partial"] > before["resync_partial"],
        "the primary to report the catch-up",
    )
    after = c.node("s0a")
    assert after["resync_full"] == before["resync_full"]  # no snapshot
    print(f"resync bytes {after['resync_bytes'] - before['resync_bytes']}")
    assert "requesting the records after seq" in c.procs["s0b"].log_file.read_text()
    keys = sorted(acked)
    got = kv.mget(keys, consistency="eventual")
    assert got == {k: acked[k] for k in keys}  # every acknowledged write is on the replica


@pytest.mark.fault
@pytest.mark.timeout(60)
def test_a_replica_behind_the_backlog_gets_a_snapshot_with_the_data_intact(
    cluster_factory: Any,
) -> None:
    c = cluster_factory(ONE_SHARD, replication={"backlog_bytes": 4096})
    kv = c.client(timeout_s=10.0)
    kv.mput({f"pre{i}": i for i in range(500)})
    c.wait_for(lambda: in_step(c), "the replica to follow")
    before = c.node("s0a")
    c.procs["s0b"].stop()
    kv.mput({f"missed{i}": i for i in range(2000)})  # one record far larger than 4 KiB
    for i in range(50):
        kv.put(f"after{i}", i)
    c.start("s0b")
    c.wait_for(lambda: in_step(c), "the replica to resync")
    c.wait_for(
        lambda: c.node("s0a")["resync_full"] > before["resync_full"],
        "the primary to report the snapshot",
    )
    after = c.node("s0a")
    assert after["resync_full"] == before["resync_full"] + 1
    assert after["resync_partial"] == before["resync_partial"]
    assert "are no longer held" in c.procs["s0a"].log_file.read_text()
    keys = [f"pre{i}" for i in range(500)] + [f"missed{i}" for i in range(2000)]
    keys += [f"after{i}" for i in range(50)]
    assert kv.mget(keys, consistency="eventual") == kv.mget(keys)
    assert kv.count(consistency="eventual") == 2550
