"""The replica's follow/sync state machine (zkv.node.follower.Follower), without sockets: a
hand-moved clock, decoded messages in, actions out; plus its driver (Replica) on fake
sockets and a real data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zkv.node import replica as replica_module
from zkv.node import wire
from zkv.node.follower import (
    STALL_S,
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
from zkv.node.history import EMPTY, History
from zkv.node.replica import Replica
from zkv.protocol import NodeState
from zkv.storage.engine import Record, RecordOp, Store
from zkv.storage.persistence import Persistence
from zkv.storage.records import encode_record

P = PrimaryAddress("s0a", "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002")
OTHER = PrimaryAddress("s0c", "tcp://127.0.0.1:7101", "tcp://127.0.0.1:7102")
HELLO_AT = wire.encode_hello
SNAP = Send(wire.encode_snap())


def catchup(seq: int, history: int = 0x5EED) -> Send:
    """The CATCHUP a replica of history ``history`` at ``seq`` sends."""
    return Send(wire.encode_catchup(seq, history))


def put(seq: int, key: bytes = b"k") -> Record:
    return (RecordOp.SET, key, b"v%d" % seq, None)


#: The primary's history (``zkv.node.history``) the simulated replica shares.
H = 0x5EED
HIST = History(H)


def records(seq: int, n: int = 1, epoch: int = 1, history: int = H) -> wire.StreamRecords:
    return wire.StreamRecords(
        epoch, seq, [put(seq + i, b"k%d" % (seq + i)) for i in range(n)], history
    )


def beat(seq: int, epoch: int = 1, history: int = H) -> wire.StreamHeartbeat:
    return wire.StreamHeartbeat(epoch, seq, history)


class Sim:
    """A Follower and a Store its actions are carried out on, as ``Replica`` does with its
    sockets and files; the clock moves only when the test moves it."""

    def __init__(self, seq: int = 0, name: str = "s0b", history: History = HIST) -> None:
        self.follower = Follower(name, heartbeat_s=0.5, history=history)
        self.store = Store(16)
        self.store.primary = False
        self.store.seq = seq
        self.now = 100.0
        self.sent: list[list[bytes]] = []
        self.connected: PrimaryAddress | None = None
        self.writing: int | None = None  # the snapshot being written
        self.adopted: list[int] = []
        self.history = history  # as the driver records it

    def run(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, Apply):
                assert action.seq == self.store.seq + 1
                self.store.replicate(action.seq, action.record)
            elif isinstance(action, Send):
                self.sent.append(action.frames)
            elif isinstance(action, Adopt):
                self.history = action.history
            elif isinstance(action, Connect):
                assert self.connected is None
                self.connected = action.primary
            elif isinstance(action, Disconnect):
                self.connected = None
            elif isinstance(action, SnapshotBegin):
                assert self.writing is None
                self.store.reset()
                self.writing = action.seq
            elif isinstance(action, SnapshotChunk):
                assert self.writing is not None
                self.store.load(action.flat)
            elif isinstance(action, SnapshotResults):
                assert self.writing is not None
                self.store.load_results(action.pairs)
            elif isinstance(action, SnapshotEnd):
                assert self.writing == action.seq
                self.adopted.append(action.seq)
                self.store.seq, self.writing = action.seq, None
            elif isinstance(action, SnapshotAbort):
                assert self.writing is not None
                self.writing = None
        return actions

    @property
    def state(self) -> NodeState:
        return self.follower.state

    def follow(self, primary: PrimaryAddress = P, epoch: int = 1) -> list[Action]:
        return self.run(self.follower.follow(primary, epoch, self.store.seq, self.now))

    def stream(self, message: wire.StreamMessage) -> list[Action]:
        return self.run(self.follower.on_stream(message, self.store.seq, self.now))

    def sync(self, message: wire.ToReplica) -> list[Action]:
        return self.run(self.follower.on_sync(message, self.store.seq, self.now))

    def tick(self) -> list[Action]:
        return self.run(self.follower.tick(self.store.seq, self.now))

    def following(self, seq: int = 0) -> Sim:
        self.follow()
        self.stream(beat(seq))
        assert self.state == NodeState.FOLLOWING
        return self

    def snapshot(self, seq: int, data: dict[bytes, bytes]) -> list[Action]:
        """The primary's whole answer to SNAP: BEGIN, one CHUNK, RESULTS, END."""
        flat: list[Any] = []
        for key, value in data.items():
            flat += [key, value, None]
        out = self.sync(wire.Begin(seq, HIST))
        out += self.sync(wire.Chunk(flat))
        out += self.sync(wire.Results([[b"r" * 24, b"reply"]]))
        return out + self.sync(wire.End(len(data)))


# --------------------------------------------------------------------------- following


def test_follow_connects_and_says_hello_at_its_seq() -> None:
    sim = Sim(seq=5)
    assert sim.follow() == [Connect(P), Send(HELLO_AT("s0b", 5))]
    assert sim.state == NodeState.WAITING
    assert sim.follow() == []  # the same primary: nothing to do
    assert sim.follower.epoch == 1


def test_a_heartbeat_at_its_seq_means_following_without_a_snapshot() -> None:
    sim = Sim(seq=5)
    sim.follow()
    assert sim.stream(beat(5)) == []
    assert sim.state == NodeState.FOLLOWING
    assert sim.follower.resyncs == 0


def test_the_next_record_first_means_following_and_it_is_applied() -> None:
    sim = Sim(seq=5)
    sim.follow()
    assert sim.stream(records(6, 2)) == [Apply(6, put(6, b"k6")), Apply(7, put(7, b"k7"))]
    assert sim.state == NodeState.FOLLOWING
    assert sim.store.seq == 7 and sim.store.get(b"k7") == b"v7"


def test_waiting_behind_the_primary_asks_to_catch_up_and_queues() -> None:
    sim = Sim(seq=5)
    sim.follow()
    assert sim.stream(records(9)) == [catchup(5)]
    assert sim.state == NodeState.SYNCING and sim.follower.catchups == 1
    assert sim.stream(records(10)) == []  # queued, not applied
    assert sim.store.seq == 5


def test_force_snapshot_resyncs_even_when_the_seqs_match() -> None:
    sim = Sim(seq=5)
    sim.follower.force_snapshot = True  # a fenced former primary
    sim.follow()
    assert sim.stream(beat(5)) == [SNAP]
    assert sim.state == NodeState.SYNCING


def test_messages_of_another_epoch_are_ignored() -> None:
    sim = Sim(seq=5)
    sim.follow(epoch=2)
    assert sim.stream(beat(9, epoch=1)) == []
    assert sim.stream(records(6, epoch=3)) == []
    assert sim.state == NodeState.WAITING and sim.follower.primary_seq == 0


# --------------------------------------------------------------------------- gaps


def test_a_record_past_the_next_seq_is_a_gap() -> None:
    sim = Sim().following(0)
    sim.stream(records(1))
    assert sim.stream(records(3)) == [catchup(1)]
    assert sim.state == NodeState.SYNCING and sim.follower.catchups == 1
    assert not sim.follower.force_snapshot  # only missing records: its history is the same
    assert sim.follower.lag(sim.store.seq) == 2


def test_a_heartbeat_ahead_is_a_gap() -> None:
    sim = Sim().following(0)
    assert sim.stream(beat(1)) == [catchup(0)]
    assert sim.state == NodeState.SYNCING
    assert not sim.follower.force_snapshot


def test_a_heartbeat_behind_means_the_replica_is_ahead_of_the_primary() -> None:
    sim = Sim(seq=8).following(8)
    assert sim.stream(beat(6)) == [SNAP]
    assert sim.follower.force_snapshot  # it holds writes the primary lost
    assert sim.state == NodeState.SYNCING


def test_a_record_already_held_means_another_history() -> None:
    sim = Sim().following(0)
    sim.stream(records(1, 3))
    assert sim.stream(records(2)) == [SNAP]
    assert sim.follower.force_snapshot
    assert sim.store.seq == 3  # nothing applied twice


def test_records_in_one_message_after_a_gap_are_queued() -> None:
    sim = Sim().following(0)
    out = sim.stream(records(2, 3))  # 1 is missing
    assert out == [catchup(0)]  # answered by a snapshot here (the primary's choice)
    out = sim.snapshot(1, {b"k1": b"v1"})
    assert [a for a in out if isinstance(a, Apply)] == [
        Apply(2, put(2, b"k2")),
        Apply(3, put(3, b"k3")),
        Apply(4, put(4, b"k4")),
    ]
    assert sim.store.seq == 4 and sim.state == NodeState.FOLLOWING


# --------------------------------------------------------------------------- snapshots


def test_snapshot_then_the_queued_records_above_it() -> None:
    sim = Sim(seq=3)
    sim.store.put(b"stale", b"x")  # it must not survive the snapshot
    sim.store.seq = 3
    sim.follow()
    sim.stream(records(9))  # behind: asks
    sim.stream(records(10, 2))  # 10, 11 queued
    out = sim.sync(wire.Begin(10, HIST))
    assert out == [Adopt(EMPTY), SnapshotBegin(10)] and sim.writing == 10
    assert sim.sync(wire.Chunk([b"a", b"1", None, b"b", b"2", 5e9])) == [
        SnapshotChunk([b"a", b"1", None, b"b", b"2", 5e9])
    ]
    assert sim.sync(wire.Results([[b"r" * 24, b"ok"]])) == [SnapshotResults([[b"r" * 24, b"ok"]])]
    sim.stream(records(12))  # still queued while syncing
    out = sim.sync(wire.End(2))
    assert out == [
        SnapshotEnd(10),
        Adopt(HIST),
        Apply(11, put(11, b"k11")),
        Apply(12, put(12, b"k12")),
    ]
    assert sim.state == NodeState.FOLLOWING
    assert sim.adopted == [10] and sim.store.seq == 12
    assert sim.store.get(b"stale") is None and sim.store.get(b"b") == b"2"
    assert sim.store.results[b"r" * 24] == b"ok"
    assert not sim.follower.force_snapshot


def test_a_gap_among_the_queued_records_asks_again() -> None:
    sim = Sim()
    sim.follow()
    sim.stream(records(5))  # asks
    sim.stream(records(8))
    sim.stream(records(10))  # 9 never came
    out = sim.snapshot(7, {b"a": b"1"})
    assert out[-4:] == [SnapshotEnd(7), Adopt(HIST), Apply(8, put(8, b"k8")), catchup(8)]
    assert sim.state == NodeState.SYNCING and sim.follower.catchups == 2
    assert sim.store.seq == 8
    sim.stream(records(11))  # queued for the next snapshot
    out = sim.snapshot(10, {b"a": b"2"})
    assert out[-3:] == [SnapshotEnd(10), Adopt(HIST), Apply(11, put(11, b"k11"))]
    assert sim.state == NodeState.FOLLOWING


def test_sync_messages_outside_a_snapshot_are_ignored() -> None:
    sim = Sim().following(0)
    assert sim.sync(wire.Begin(4)) == []  # not syncing
    sim.stream(beat(3))  # asks
    assert sim.sync(wire.Chunk([b"a", b"1", None])) == []  # before BEGIN
    assert sim.sync(wire.End(1)) == []
    assert sim.state == NodeState.SYNCING


def test_a_second_begin_drops_the_unfinished_snapshot() -> None:
    sim = Sim()
    sim.follow()
    sim.stream(beat(4))
    sim.sync(wire.Begin(4))
    sim.sync(wire.Chunk([b"a", b"1", None]))
    assert sim.sync(wire.Begin(6)) == [SnapshotAbort(), SnapshotBegin(6)]
    sim.sync(wire.Chunk([b"b", b"2", None]))
    sim.sync(wire.End(1))
    assert sim.store.seq == 6 and sim.store.get(b"a") is None and sim.store.get(b"b") == b"2"


# --------------------------------------------------------------------------- timers


def test_acks_after_each_change_and_once_per_heartbeat_interval() -> None:
    sim = Sim().following(0)
    assert sim.tick() == [Send(wire.encode_ack(0, "s0b"))]
    assert sim.tick() == []
    sim.stream(records(1))
    assert sim.tick() == [Send(wire.encode_ack(1, "s0b"))]
    sim.now += 0.49
    assert sim.tick() == []
    sim.now += 0.01
    assert sim.tick() == [Send(wire.encode_ack(1, "s0b"))]


def test_no_acks_unless_following() -> None:
    sim = Sim()
    assert sim.tick() == []  # idle
    sim.follow()
    assert sim.tick() == []  # waiting
    sim.stream(beat(2))
    assert sim.tick() == []  # syncing


def test_a_wait_without_any_stream_message_for_stall_s_reconnects() -> None:
    sim = Sim(seq=3)
    sim.follow(epoch=4)
    sim.now += STALL_S
    assert sim.tick() == []
    sim.now += 0.001
    assert sim.tick() == [Disconnect(), Connect(P), Send(HELLO_AT("s0b", 3))]
    assert sim.state == NodeState.WAITING
    assert sim.follower.epoch == 4  # still the epoch the broker named
    assert sim.stream(beat(3, epoch=4)) == []
    assert sim.state == NodeState.FOLLOWING


def test_a_sync_stalls_only_after_stall_s_without_progress() -> None:
    sim = Sim()
    sim.follow()
    sim.stream(beat(5))
    sim.sync(wire.Begin(5))
    for _ in range(5):  # a slow snapshot that keeps coming is no stall
        sim.now += STALL_S * 0.6
        sim.sync(wire.Chunk([b"a", b"1", None]))
        assert sim.tick() == []
    sim.stream(records(6))  # stream records are no sync progress
    sim.now += STALL_S + 0.001
    out = sim.tick()
    assert out == [Disconnect(), SnapshotAbort(), Connect(P), Send(HELLO_AT("s0b", 0))]
    assert sim.state == NodeState.WAITING and sim.writing is None


def test_a_follower_never_stalls() -> None:
    sim = Sim().following(0)
    sim.now += 10 * STALL_S
    assert sim.tick() == [Send(wire.encode_ack(0, "s0b"))]
    assert sim.state == NodeState.FOLLOWING


# --------------------------------------------------------------------------- connection


def test_a_new_primary_means_a_new_connection() -> None:
    sim = Sim(seq=2).following(2)
    assert sim.follow(OTHER, epoch=2) == [Disconnect(), Connect(OTHER), Send(HELLO_AT("s0b", 2))]
    assert sim.state == NodeState.WAITING
    assert sim.stream(beat(2, epoch=1)) == []  # the old primary's epoch
    sim.stream(beat(2, epoch=2))
    assert sim.state == NodeState.FOLLOWING


def test_close_drops_the_snapshot_and_the_queue() -> None:
    sim = Sim()
    sim.follow()
    sim.stream(beat(3))
    sim.sync(wire.Begin(3))
    assert sim.run(sim.follower.close(sim.now)) == [Disconnect(), SnapshotAbort()]
    assert sim.state == NodeState.IDLE and sim.follower.primary is None
    assert sim.run(sim.follower.close(sim.now)) == []


def test_suspended_it_follows_nobody_until_resumed() -> None:
    sim = Sim().following(0)
    out = sim.run(sim.follower.suspend("disk full", sim.now))
    assert out == [Disconnect()]
    assert sim.state == NodeState.SUSPENDED and sim.follower.suspended
    assert sim.follow() == []  # the broker's heartbeat changes nothing meanwhile
    assert sim.tick() == []
    sim.follower.resume(sim.now)
    assert sim.state == NodeState.IDLE
    assert sim.follow() == [Connect(P), Send(HELLO_AT("s0b", 0))]


def test_a_failed_snapshot_waits_then_insists_on_a_snapshot() -> None:
    sim = Sim(seq=4)
    sim.follow()
    sim.stream(beat(6))
    sim.sync(wire.Begin(6))
    out = sim.run(sim.follower.failed("OSError: no space", sim.now))
    assert out == [SnapshotAbort()]
    assert sim.state == NodeState.SYNCING and sim.follower.force_snapshot
    assert sim.sync(wire.Chunk([b"a", b"1", None])) == []  # the rest of that transfer
    sim.now += STALL_S + 0.001
    sim.tick()
    assert sim.state == NodeState.WAITING
    assert sim.stream(beat(4)) == [SNAP]  # seqs match, but its data is not to be trusted


# --------------------------------------------------------------------------- the driver


class FakeSocket:
    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.sent: list[list[bytes]] = []
        self.connected: list[str] = []
        self.closed = False

    def setsockopt(self, *_: Any) -> None:
        pass

    def connect(self, endpoint: str) -> None:
        self.connected.append(endpoint)

    def send_multipart(self, frames: list[bytes], *_: Any) -> None:
        self.sent.append(frames)

    def close(self, linger: int | None = None) -> None:
        self.closed = True


class FakeContext:
    def __init__(self) -> None:
        self.sockets: list[FakeSocket] = []

    def socket(self, kind: int) -> FakeSocket:
        self.sockets.append(FakeSocket(kind))
        return self.sockets[-1]


def _replica(tmp_path: Path) -> tuple[Replica, Store, Persistence, FakeContext]:
    store = Store(16)
    store.primary = False
    persistence = Persistence(tmp_path, "no")
    persistence.recover(store)
    context = FakeContext()
    replica = Replica("s0b", store, persistence, context, hwm=1000, heartbeat_s=0.5)  # type: ignore[arg-type]
    return replica, store, persistence, context


def test_the_driver_carries_out_a_sync_on_its_sockets_and_folder(tmp_path: Path) -> None:
    replica, store, persistence, context = _replica(tmp_path)
    assert replica.follow(*P, epoch=1, now=0.0) is True
    sub, dealer = context.sockets
    assert sub.connected == [P.publish] and dealer.connected == [P.sync]
    assert dealer.sent == [wire.encode_hello("s0b", 0)]
    replica.on_stream(wire.encode_heartbeat(1, 3), now=0.1)
    assert dealer.sent[-1] == [b"SNAP"] and replica.state == NodeState.SYNCING
    replica.on_stream(wire.encode_records(1, 4, [encode_record(4, put(4))]), now=0.1)
    for frames in (
        wire.encode_begin(3),
        wire.encode_chunk([b"a", b"1", None]),
        wire.encode_results([]),
        wire.encode_end(1),
    ):
        replica.on_sync(frames, now=0.2)
    assert replica.state == NodeState.FOLLOWING and store.seq == 4
    assert store.get(b"a") == b"1" and store.get(b"k") == b"v4"
    assert (tmp_path / "snapshot-00000000000000000003.zkv").exists()
    assert replica.tick(0.3) is False
    assert dealer.sent[-1] == wire.encode_ack(4, "s0b")
    replica.on_stream([b"R", b"garbage"], now=0.4)  # dropped, with a warning
    replica.on_sync([b"END"], now=0.4)
    assert replica.state == NodeState.FOLLOWING and replica.lag == 0
    replica.close()
    assert sub.closed and dealer.closed and replica.sub is None
    persistence.close()


def test_the_driver_tells_the_follower_when_a_snapshot_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica, _store, persistence, _context = _replica(tmp_path)
    replica.follow(*P, epoch=1, now=0.0)
    replica.on_stream(wire.encode_heartbeat(1, 3), now=0.1)

    def no_space(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replica_module, "SnapshotWriter", no_space)
    with pytest.raises(OSError, match="No space"):
        replica.on_sync(wire.encode_begin(3), now=0.2)
    assert replica.state == NodeState.SYNCING and replica.force_snapshot
    replica.on_sync(wire.encode_chunk([b"a", b"1", None]), now=0.3)  # ignored, no error
    assert replica.tick(0.3 + STALL_S + 0.001) is True  # reconnected: re-poll the sockets
    assert replica.state == NodeState.WAITING
    persistence.close()


def test_a_resync_forgets_the_write_outcomes_of_the_history_it_gives_up(
    tmp_path: Path,
) -> None:
    """A write this node applied in a history it gives up (it was primary, its last writes
    never reached the shard) must not answer that write's retry after the resync: the
    retry would be acknowledged although the write is not there."""
    replica, store, persistence, _context = _replica(tmp_path)
    store.emit((RecordOp.RESULT, b"rid-lost", b"\xc3"))  # applied here, never replicated
    store.emit((RecordOp.RESULT, b"rid-kept", b"\xc2"))
    replica.follow(*P, epoch=2, now=0.0)
    replica.on_stream(wire.encode_heartbeat(2, 9), now=0.1)  # behind: a snapshot
    for frames in (
        wire.encode_begin(9),
        wire.encode_chunk([b"a", b"1", None]),
        wire.encode_results([[b"rid-kept", b"\xc2"]]),  # the shard's outcomes
        wire.encode_end(1),
    ):
        replica.on_sync(frames, now=0.2)
    assert store.results.get(b"rid-lost") is None
    assert store.results.get(b"rid-kept") == b"\xc2"
    replica.close()
    persistence.close()
