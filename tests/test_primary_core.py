"""The primary's side of replication without sockets: the in-sync set and held strong replies
(ReplicaSet), snapshot transfers (Transfers), the Primary driver on fake sockets, and a
primary and a replica state machine talking frame by frame, all on a hand-moved clock."""

from __future__ import annotations

from typing import Any

import zmq

from zkv.node import wire
from zkv.node.follower import (
    Action,
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
from zkv.node.primary import Primary
from zkv.node.replication import ReplicaSet, Sent, Transfers
from zkv.protocol import NodeState
from zkv.storage.engine import RecordOp, Store
from zkv.storage.records import encode_record

SLOTS = 64


def filled(n: int) -> Store:
    store = Store(SLOTS)
    for i in range(n):
        store.put(b"key:%d" % i, b"value:%d" % i, ttl=None if i % 3 else 1e6)
    return store


def snapshot_of(store: Store) -> dict[bytes, tuple[bytes, float | None]]:
    out = {}
    for slot in store.slot_numbers():
        flat = store.slot_items(slot)
        for i in range(0, len(flat), 3):
            out[flat[i]] = (flat[i + 1], flat[i + 2])
    return out


# --------------------------------------------------------------------------- ReplicaSet


def test_a_replica_joins_the_in_sync_set_once_it_has_everything() -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.hello(b"id-b", "b", now=0.0)
    assert rs.in_sync() == []
    rs.ack(b"id-b", 4, primary_seq=5, now=0.1)
    assert rs.in_sync() == []  # behind
    rs.ack(b"id-b", 5, primary_seq=5, now=0.2)
    assert rs.in_sync() == ["b"]
    assert rs.acked() == {"b": 5}


def test_strong_replies_wait_for_every_in_sync_replica() -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    for identity, name in ((b"id-b", "b"), (b"id-c", "c")):
        rs.hello(identity, name, now=0.0)
        rs.ack(identity, 5, primary_seq=5, now=0.0)
    assert rs.wait(6, [b"six"], now=0.1) is None
    assert rs.wait(7, [b"seven"], now=0.1) is None
    assert rs.ack(b"id-b", 7, primary_seq=7, now=0.2) == []  # c still lacks them
    assert rs.ack(b"id-c", 6, primary_seq=7, now=0.3) == [[b"six"]]  # in order
    assert rs.ack(b"id-c", 7, primary_seq=7, now=0.4) == [[b"seven"]]


def test_no_in_sync_replica_means_a_strong_reply_goes_at_once() -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.hello(b"id-b", "b", now=0.0)  # connected, not in sync
    assert rs.wait(3, [b"reply"], now=0.0) == [b"reply"]


def test_a_replica_that_holds_a_write_past_the_timeout_leaves_the_set() -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.hello(b"id-b", "b", now=0.0)
    rs.ack(b"id-b", 5, primary_seq=5, now=0.0)
    assert rs.wait(6, [b"reply"], now=0.0) is None
    rs.ack(b"id-b", 5, primary_seq=6, now=0.9)  # heard from, but without seq 6
    assert rs.expire(now=1.0) == []  # not yet: exactly the timeout
    assert rs.expire(now=1.01) == []  # out of the set, but the broker may still promote it
    assert rs.in_sync() == []  # what the next heartbeat reports
    assert rs.confirm(["b"]) == []  # the broker has not taken it in yet
    assert rs.confirm([]) == [[b"reply"]]  # now it has: the reply goes
    rs.ack(b"id-b", 6, primary_seq=6, now=1.5)  # caught up: back in
    assert rs.in_sync() == ["b"]


def test_a_dropped_replica_that_catches_up_releases_what_it_held() -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.hello(b"id-b", "b", now=0.0)
    rs.ack(b"id-b", 5, primary_seq=5, now=0.0)
    assert rs.wait(6, [b"r6"], now=0.0) is None
    assert rs.expire(now=1.5) == []  # dropped, unconfirmed: r6 still waits for b
    assert rs.wait(5, [b"r5"], now=1.5) == [b"r5"]  # b has seq 5: that one goes
    assert rs.ack(b"id-b", 6, primary_seq=6, now=1.6) == [[b"r6"]]  # back in sync


def test_a_silent_replica_leaves_the_set() -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.hello(b"id-b", "b", now=0.0)
    rs.ack(b"id-b", 0, primary_seq=0, now=0.0)
    assert rs.expire(now=0.9) == [] and rs.in_sync() == ["b"]
    rs.expire(now=1.2)
    assert rs.in_sync() == []
    rs.expire(now=61.0)  # silent for 60 timeouts: forgotten
    assert rs.acked() == {}


def test_a_reconnected_replica_must_catch_up_again() -> None:
    rs = ReplicaSet(ack_timeout_s=1.0)
    rs.hello(b"id-1", "b", now=0.0)
    rs.ack(b"id-1", 3, primary_seq=3, now=0.0)
    rs.hello(b"id-2", "b", now=0.5)  # the same node on a new connection
    assert rs.in_sync() == [] and rs.acked() == {"b": 0}


# --------------------------------------------------------------------------- Transfers


def drive(
    transfers: Transfers, store: Store, now: float, answers: list[Sent] | None = None
) -> list[tuple[bytes, list[bytes]]]:
    """One turn: every message sent, with ``answers`` (then OK) as the sends' outcomes."""
    answers = list(answers or [])
    sent = []
    turn = transfers.turn(store, now)
    try:
        item = next(turn)
        while True:
            result = answers.pop(0) if answers else Sent.OK
            if result is Sent.OK:
                sent.append(item)
            item = turn.send(result)
    except StopIteration:
        return sent


def kinds(sent: list[tuple[bytes, list[bytes]]]) -> list[bytes]:
    return [frames[0] for _, frames in sent]


def test_a_snapshot_goes_begin_chunks_results_end() -> None:
    store = filled(50)
    store.results[b"r" * 24] = b"outcome"
    transfers = Transfers(chunk_keys=10, chunks_per_turn=2)
    transfer = transfers.start(b"id-b", "b", store, now=0.0)
    assert transfer.seq == store.seq
    sent = drive(transfers, store, 0.1)
    assert kinds(sent) == [b"BEGIN", b"CHUNK", b"CHUNK"]  # two chunks per turn
    assert wire.decode_begin(sent[0][1]) == wire.Begin(store.seq)
    while transfers:
        sent += drive(transfers, store, 0.2)
    assert kinds(sent)[-2:] == [b"RESULTS", b"END"]
    flat: list[Any] = []
    for _, frames in sent:
        if frames[0] == b"CHUNK":
            chunk = wire.decode_chunk(frames).flat
            assert len(chunk) >= 30 or frames is sent[-3][1]  # whole slots, >= 10 keys
            flat += chunk
    assert len(flat) // 3 == 50 == wire.decode_end(sent[-1][1]).keys
    assert wire.decode_results(sent[-2][1]).pairs == [[b"r" * 24, b"outcome"]]
    assert {flat[i]: (flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)} == snapshot_of(
        store
    )


def test_an_empty_store_is_begin_results_end() -> None:
    transfers = Transfers()
    store = Store(SLOTS)
    transfers.start(b"id-b", "b", store, now=0.0)
    assert kinds(drive(transfers, store, 0.0)) == [b"BEGIN", b"RESULTS", b"END"]
    assert not transfers


def test_a_full_queue_stops_the_turn_and_the_message_is_built_again() -> None:
    store = filled(30)
    transfers = Transfers(chunk_keys=10, chunks_per_turn=4)
    transfers.start(b"id-b", "b", store, now=0.0)
    sent = drive(transfers, store, 0.0, [Sent.OK, Sent.OK, Sent.FULL])
    assert kinds(sent) == [b"BEGIN", b"CHUNK"]
    transfer = transfers.get(b"id-b")
    assert transfer is not None and transfer.step == "chunks"
    keys_before = transfer.keys
    store.put(b"late", b"write")  # writes go on between turns: the walk is fuzzy
    sent = drive(transfers, store, 0.1, [Sent.FULL])
    assert sent == [] and transfer.keys == keys_before  # nothing counted twice
    while transfers:
        drive(transfers, store, 0.2)
    assert transfer.done and transfer.keys >= 30


def test_a_gone_replica_drops_its_transfer_only() -> None:
    store = filled(30)
    transfers = Transfers(chunk_keys=10, chunks_per_turn=1)
    transfers.start(b"id-b", "b", store, now=0.0)
    transfers.start(b"id-c", "c", store, now=0.0)
    sent = drive(transfers, store, 0.0, [Sent.GONE])
    assert [identity for identity, _ in sent] == [b"id-c", b"id-c"]
    assert transfers.get(b"id-b") is None and len(transfers) == 1


def test_a_new_snap_from_the_same_replica_starts_over() -> None:
    store = filled(30)
    transfers = Transfers(chunk_keys=10, chunks_per_turn=1)
    transfers.start(b"id-b", "b", store, now=0.0)
    drive(transfers, store, 0.0)
    store.put(b"more", b"x")
    transfers.start(b"id-b", "b", store, now=1.0)
    sent = drive(transfers, store, 1.0)
    assert kinds(sent)[0] == b"BEGIN" and wire.decode_begin(sent[0][1]).seq == store.seq
    assert len(transfers) == 1


# --------------------------------------------------------------------------- Primary driver


class FakeSocket:
    """Records what is sent; ``full`` makes sends raise ``zmq.Again``, ``gone`` EHOSTUNREACH."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.full = False
        self.gone = False

    def send_multipart(self, frames: list[bytes], *_: Any) -> None:
        if self.full:
            raise zmq.Again()
        if self.gone:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        self.sent.append(frames)


def primary_on_fakes(store: Store, **kwargs: Any) -> tuple[Primary, FakeSocket, FakeSocket]:
    pub, sync = FakeSocket(), FakeSocket()
    primary = Primary(
        store,
        pub,  # type: ignore[arg-type]
        sync,  # type: ignore[arg-type]
        epoch=3,
        ack_timeout_s=1.0,
        heartbeat_s=0.5,
        now=0.0,
        **kwargs,
    )
    return primary, pub, sync


def test_publish_sends_the_turns_records_as_one_message_or_a_heartbeat() -> None:
    store = Store(SLOTS)
    primary, pub, _ = primary_on_fakes(store)
    store.subscribe(lambda seq, record: primary.record(seq, encode_record(seq, record)))
    primary.publish(0.5)
    assert pub.sent == [wire.encode_heartbeat(3, 0)]
    store.put(b"a", b"1")
    store.delete(b"a")
    primary.publish(0.6)
    assert wire.decode_stream(pub.sent[-1]) == wire.StreamRecords(
        3, 1, [(RecordOp.SET, b"a", b"1", None), (RecordOp.DEL, b"a")]
    )
    primary.publish(0.7)
    assert len(pub.sent) == 2  # idle, but not for a heartbeat interval yet
    primary.publish(1.1)
    assert pub.sent[-1] == wire.encode_heartbeat(3, 2)
    store.put(b"b", b"2")
    primary.discard_outbox()  # the turn could not be logged
    primary.publish(1.2)
    assert len(pub.sent) == 3


def test_the_primary_drops_garbage_on_the_sync_socket() -> None:
    primary, _, sync = primary_on_fakes(Store(SLOTS))
    for frames in ([], [b"id"], [b"id", b"HELLO", b"\xc1"], [b"id", b"ACK", b"x"], [b"id", b"?"]):
        assert primary.on_sync(frames, now=0.1) == []
    assert primary.replicas.acked() == {} and not primary.transferring and sync.sent == []


def test_an_ack_from_a_replica_it_does_not_know_introduces_it() -> None:
    primary, _, _ = primary_on_fakes(filled(1), in_sync=["b"])
    assert primary.hold(1, [b"reply"], now=0.1) is None  # b was in sync before a restart
    assert primary.on_sync([b"id-b", *wire.encode_ack(1, "b")], now=0.2) == [[b"reply"]]
    assert primary.replicas.in_sync() == ["b"]


def test_a_replica_that_stops_acking_releases_held_replies_after_the_timeout() -> None:
    store = filled(3)
    primary, _, _ = primary_on_fakes(store)
    primary.on_sync([b"id-b", *wire.encode_hello("b", 3)], now=0.0)
    primary.on_sync([b"id-b", *wire.encode_ack(3, "b")], now=0.0)
    store.put(b"x", b"y")
    assert primary.hold(store.seq, [b"reply"], now=0.1) is None
    assert primary.tick(now=1.0) == []
    assert primary.tick(now=1.2) == []  # dropped; held until the broker confirms
    assert primary.replicas.in_sync() == []
    assert primary.replicas.confirm([]) == [[b"reply"]]


def test_the_primary_streams_a_snapshot_as_fast_as_the_replica_takes_it() -> None:
    store = filled(5000)
    primary, _, sync = primary_on_fakes(store)
    primary.on_sync([b"id-b", *wire.encode_hello("b", 0)], now=0.0)
    primary.on_sync([b"id-b", *wire.encode_snap()], now=0.0)
    assert primary.transferring
    sync.full = True
    primary.stream_snapshots(now=0.1)
    assert sync.sent == []
    sync.full = False
    primary.stream_snapshots(now=0.2)
    assert [f[1] for f in sync.sent][:2] == [b"BEGIN", b"CHUNK"]
    while primary.transferring:
        primary.stream_snapshots(now=0.3)
    assert all(frames[0] == b"id-b" for frames in sync.sent)
    assert wire.decode_end(sync.sent[-1][1:]).keys == 5000


def test_a_snapshot_to_a_replica_that_went_away_is_dropped() -> None:
    primary, _, sync = primary_on_fakes(filled(10))
    primary.on_sync([b"id-b", *wire.encode_snap()], now=0.0)
    sync.gone = True
    primary.stream_snapshots(now=0.1)
    assert not primary.transferring


# --------------------------------------------------------------------------- both sides


class Link:
    """A primary (on fake sockets) and a replica state machine with its own Store, wired
    frame by frame: whatever one sends, the other decodes."""

    def __init__(self, primary_store: Store, replica_store: Store) -> None:
        self.primary, self.pub, self.sync = primary_on_fakes(primary_store)
        self.primary_store = primary_store
        primary_store.subscribe(
            lambda seq, record: self.primary.record(seq, encode_record(seq, record))
        )
        self.follower = Follower("b", heartbeat_s=0.5)
        self.store = replica_store
        self.store.primary = False
        self.now = 0.0
        self.released: list[list[bytes]] = []

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.released += self.primary.on_sync([b"id-b", *action.frames], self.now)
            elif isinstance(action, Apply):
                self.store.replicate(action.seq, action.record)
            elif isinstance(action, SnapshotBegin):
                self.store.apply_record((RecordOp.CLEAR,))
            elif isinstance(action, SnapshotChunk):
                self.store.load(action.flat)
            elif isinstance(action, SnapshotResults):
                self.store.load_results(action.pairs)
            elif isinstance(action, SnapshotEnd):
                self.store.seq = action.seq
            else:
                assert isinstance(action, Connect | Disconnect | SnapshotAbort)

    def turn(self) -> None:
        """One loop turn of each side, as the node runs them."""
        self.now += 0.01
        self.primary.publish(self.now)
        self.primary.stream_snapshots(self.now)
        for frames in self.pub.sent:
            message = wire.decode_stream(frames)
            self.run(self.follower.on_stream(message, self.store.seq, self.now))
        self.pub.sent.clear()
        for frames in self.sync.sent:
            assert frames[0] == b"id-b"
            message = wire.decode_to_replica(frames[1:])
            self.run(self.follower.on_sync(message, self.store.seq, self.now))
        self.sync.sent.clear()
        self.run(self.follower.tick(self.store.seq, self.now))
        self.released += self.primary.tick(self.now)


def test_a_replica_syncs_while_writes_go_on_and_ends_equal() -> None:
    primary_store = filled(3000)
    replica_store = Store(SLOTS)
    replica_store.put(b"only-here", b"x")  # not the primary's history
    replica_store.seq = 2
    link = Link(primary_store, replica_store)
    link.primary.snapshots = Transfers(chunk_keys=100, chunks_per_turn=1)  # many turns
    link.primary.heartbeat_s = 0.0  # a heartbeat every idle turn
    link.run(link.follower.follow(PrimaryAddress("a", "pub", "sync"), 3, replica_store.seq, 0.0))
    turns = 0
    while link.primary.transferring or link.follower.state != NodeState.FOLLOWING:
        i = turns = turns + 1
        primary_store.put(b"key:%d" % (i * 7), b"new:%d" % i)  # keys sent, and keys not yet
        primary_store.delete(b"key:%d" % (i * 11 + 1))
        primary_store.put(b"fresh:%d" % i, b"x", ttl=5.0)
        link.turn()
        assert turns < 100
    assert turns > 20  # the snapshot took many turns, with writes between them
    assert link.follower.resyncs == 1
    link.turn()
    assert replica_store.seq == primary_store.seq
    assert snapshot_of(replica_store) == snapshot_of(primary_store)
    assert replica_store.get(b"only-here") is None
    assert link.primary.replicas.in_sync() == ["b"]
    primary_store.put(b"strong", b"write")
    assert link.primary.hold(primary_store.seq, [b"ok"], link.now) is None
    link.turn()  # published, applied, acknowledged: released
    assert replica_store.get(b"strong") == b"write"
    assert link.released == [[b"ok"]]
