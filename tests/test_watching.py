"""Watch feeds, the pure parts: the node's history ring and parked watches
(``zkv.node.watching``), the client's cursor and feed core (``zkv.client.watch``), and
narrowing a watch to a grant's prefixes (``zkv.access``). No sockets, a hand-moved clock."""

from __future__ import annotations

from typing import Any

import pytest

from zkv import protocol
from zkv.access import Grant
from zkv.client.watch import Cursor, Resync, WatchCore, WatchEvent
from zkv.errors import InvalidRequest, PermissionDenied, Unavailable
from zkv.node.watching import FeedState, History, Watches, record_events
from zkv.protocol import Op, Request
from zkv.storage.engine import RecordOp, Store

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Store:
    return Store(64, Clock())


def watch_frames(
    shard: str = "s0",
    cursor: list[int] | None = None,
    prefixes: list[bytes] | None = None,
    max_events: int = 100,
    wait_ms: int = 1000,
    values: bool = True,
    page: list[Any] | None = None,
    seq: int = 7,
) -> list[bytes]:
    args = [shard, cursor, prefixes or [b""], max_events, wait_ms, values, page]
    return protocol.encode_request(Request(Op.WATCH, b"", args, seq=seq))


def state(store: Store, confirmed: int | None = None, **kw: Any) -> FeedState:
    fields: dict[str, Any] = {
        "serving": True,
        "epoch": 1,
        "confirmed": store.seq if confirmed is None else confirmed,
        "store": store,
        "shard": "s0",
        "name": "s0a",
    }
    fields.update(kw)
    return FeedState(**fields)


def result(frames: list[bytes] | None) -> Any:
    assert frames is not None
    return protocol.decode_reply(frames)[1]


# --------------------------------------------------------------------------- records


def test_record_events_skip_what_users_did_not_do() -> None:
    assert record_events((RecordOp.SET, b"k", b"v", None)) == [("put", b"k", b"v", None)]
    assert record_events((RecordOp.MSET, [[b"a", b"1"], [b"b", b"2"]], 5.0)) == [
        ("put", b"a", b"1", 5.0),
        ("put", b"b", b"2", 5.0),
    ]
    assert record_events((RecordOp.EXPIRED, b"k")) == [("expire", b"k", None, None)]
    assert record_events((RecordOp.EVICT, b"k")) == [("evict", b"k", None, None)]
    assert record_events((RecordOp.EXPIRE_AT, b"k", 9.0)) == [("ttl", b"k", None, 9.0)]
    assert record_events((RecordOp.CLEAR,)) == [("clear", b"", None, None)]
    for record in [(RecordOp.RESULT, b"r", b"o"), (RecordOp.COPY, b"k", b"v", None)]:
        assert record_events(record) == []
    assert record_events((RecordOp.DROP, b"k")) == []


# --------------------------------------------------------------------------- history


def test_history_is_bounded_by_count_and_bytes(store: Store) -> None:
    history = History(max_records=10, max_bytes=10_000)
    history.attach(store)
    for i in range(25):
        store.put(b"k%d" % i, b"v")
    assert len(history) == 10 and history.floor == 15 and history.last == 25
    assert history.get(15) is None and history.get(16) == (RecordOp.SET, b"k15", b"v", None)
    big = History(max_records=1000, max_bytes=1000)
    big.attach(store)
    for _ in range(20):
        store.put(b"k", b"x" * 200)
    assert big.bytes <= 1000 and len(big) < 20


def test_history_follows_rollback_gaps_and_resets(store: Store) -> None:
    history = History()
    history.attach(store)
    store.put(b"a", b"1")
    store.begin()
    store.put(b"b", b"2")
    store.put(b"c", b"3")
    store.rollback()
    store.put(b"d", b"4")  # seq 2 again: the rolled-back records are replaced
    assert history.last == 2 and history.get(2) == (RecordOp.SET, b"d", b"4", None)
    store.replicate(10, (RecordOp.SET, b"e", b"5", None))  # a gap: after a snapshot
    assert history.floor == 9 and history.last == 10
    store.reset()  # a resync replaces the history
    assert len(history) == 0
    store.seq = 40
    assert history.floor == 40


# --------------------------------------------------------------------------- watches


def test_watch_from_now_then_events_in_order_with_skip(store: Store) -> None:
    history = History()
    history.attach(store)
    watches = Watches(history, linger_s=0.0)
    store.put(b"old", b"0")
    first = result(watches.handle(watch_frames(), "t", 0.0, state(store)))
    assert first == ["ok", 1, 2, 0, []]  # from now: the next record
    store.mput([[b"a", b"1"], [b"x", b"2"], [b"b", b"3"]])
    store.delete(b"a")
    reply = result(
        watches.handle(watch_frames(cursor=[1, 2, 0], max_events=2), "t", 0, state(store))
    )
    assert reply[:4] == ["ok", 1, 2, 2]  # stopped inside the MSET, after two events
    assert [e[:4] for e in reply[4]] == [[2, 0, "put", b"a"], [2, 1, "put", b"x"]]
    reply = result(
        watches.handle(watch_frames(cursor=[1, 2, 2], prefixes=[b"a", b"b"]), "t", 0, state(store))
    )
    assert [e[:4] for e in reply[4]] == [[2, 2, "put", b"b"], [3, 0, "delete", b"a"]]
    assert reply[2:4] == [4, 0]
    no_values = result(
        watches.handle(watch_frames(cursor=[1, 2, 0], values=False), "t", 0, state(store))
    )
    assert all(e[4] is None for e in no_values[4])


def test_parked_watch_answered_by_confirmed_records_or_its_deadline(store: Store) -> None:
    history = History()
    history.attach(store)
    watches = Watches(history, linger_s=0.0)
    assert (
        watches.handle(watch_frames(cursor=[1, 1, 0], wait_ms=500), "t1", 0.0, state(store)) is None
    )
    assert (
        watches.handle(
            watch_frames(cursor=[1, 1, 0], prefixes=[b"z"], wait_ms=500), "t2", 0.0, state(store)
        )
        is None
    )
    assert len(watches) == 2 and watches.next_deadline() == 0.5
    store.put(b"k", b"v")
    assert watches.due(0.1, state(store, confirmed=0)) == []  # not confirmed yet: nothing
    answered = watches.due(0.1, state(store))
    assert [t for t, _ in answered] == ["t1"]
    assert result(answered[0][1])[4][0][:4] == [1, 0, "put", b"k"]
    # t2 saw nothing it wants; its position moved past the record, and it runs out
    assert watches.due(0.4, state(store)) == []
    ((token, frames),) = watches.due(0.5, state(store))
    assert token == "t2" and result(frames) == ["ok", 1, 2, 0, []]


def test_parked_watches_linger_to_batch_events(store: Store) -> None:
    history = History()
    history.attach(store)
    watches = Watches(history, linger_s=0.01)
    assert watches.handle(watch_frames(cursor=[1, 1, 0]), "t", 0.0, state(store)) is None
    store.put(b"a", b"1")
    assert watches.due(0.5, state(store)) == []  # lingers for more
    assert watches.next_deadline() == pytest.approx(0.51)
    store.put(b"b", b"2")
    assert watches.due(0.505, state(store)) == []
    ((_token, frames),) = watches.due(0.51, state(store))
    assert [e[3] for e in result(frames)[4]] == [b"a", b"b"]
    # a watch that finds a few events waits the linger for more; a full page goes at once
    assert watches.handle(watch_frames(cursor=[1, 2, 0]), "t", 0.6, state(store)) is None
    store.put(b"c", b"3")
    assert watches.due(0.605, state(store)) == []
    ((_token, frames),) = watches.due(0.61, state(store))
    assert [e[3] for e in result(frames)[4]] == [b"b", b"c"]
    full = watches.handle(watch_frames(cursor=[1, 1, 0], max_events=2), "t", 0.7, state(store))
    assert [e[3] for e in result(full)[4]] == [b"a", b"b"]


def test_resync_when_history_is_gone_or_cursor_is_ahead(store: Store) -> None:
    history = History(max_records=5)
    history.attach(store)
    watches = Watches(history, linger_s=0.0)
    for i in range(20):
        store.put(b"k", b"%d" % i)
    gone = result(watches.handle(watch_frames(cursor=[1, 3, 0]), "t", 0, state(store)))
    assert gone[:4] == ["resync", 1, 21, 0] and "no longer reaches" in gone[5]
    ahead = result(watches.handle(watch_frames(cursor=[1, 99, 0]), "t", 0, state(store)))
    assert ahead[0] == "resync" and "past what this primary holds" in ahead[5]
    ok = result(watches.handle(watch_frames(cursor=[1, 17, 0]), "t", 0, state(store)))
    assert ok[0] == "ok" and len(ok[4]) == 4


def test_watch_refused_off_primary_wrong_shard_or_too_many(store: Store) -> None:
    history = History()
    history.attach(store)
    watches = Watches(history, max_watchers=1)
    for frames, st in [
        (watch_frames(cursor=[1, 1, 0]), state(store, serving=False)),
        (watch_frames(shard="s9", cursor=[1, 1, 0]), state(store)),
        (watch_frames(cursor=[5, 1, 0]), state(store)),  # a newer epoch than this node's
    ]:
        with pytest.raises(Unavailable):
            result(watches.handle(frames, "t", 0, st))
    assert watches.handle(watch_frames(cursor=[1, 1, 0]), "t", 0, state(store)) is None
    with pytest.raises(Unavailable, match="max_watchers"):
        result(watches.handle(watch_frames(cursor=[1, 1, 0]), "t", 0, state(store)))
    ((_token, frames),) = watches.due(0, state(store, serving=False))  # it lost its role
    with pytest.raises(Unavailable):
        result(frames)


def test_snapshot_pages_walk_the_matching_live_keys(store: Store) -> None:
    history = History()
    history.attach(store)
    watches = Watches(history)
    for i in range(30):
        store.put(b"p:%02d" % i, b"%d" % i)
        store.put(b"q:%02d" % i, b"x")
    store.put(b"p:gone", b"x", ttl=1)
    store.clock.now += 2  # type: ignore[attr-defined]
    keys, page = [], [0, None]
    while page is not None:
        reply = result(
            watches.handle(
                watch_frames(prefixes=[b"p:"], page=page, max_events=7), "t", 0, state(store)
            )
        )
        assert reply[0] == "page"
        keys += [item[0] for item in reply[4]]
        page = reply[5]
    assert sorted(keys) == [b"p:%02d" % i for i in range(30)]


# --------------------------------------------------------------------------- grants


def test_grant_narrows_a_watch_to_its_prefixes() -> None:
    assert Grant.of("x", "read").narrow([b""]) == [b""]
    limited = Grant.of("x", "read", ["a:", "b:"])
    assert limited.narrow([b""]) == [b"a:", b"b:"]
    assert limited.narrow([b"a:1"]) == [b"a:1"]
    assert limited.narrow([b"c:"]) == []


# --------------------------------------------------------------------------- client


def test_cursor_text_round_trip() -> None:
    cursor = Cursor({"s0": (3, 1200, 0), "s1": (2, 980, 1)})
    assert str(cursor) == "s0@3:1200,s1@2:980+1"
    assert Cursor.decode(str(cursor)) == cursor
    assert Cursor.decode("") == Cursor()
    with pytest.raises(InvalidRequest):
        Cursor.decode("s0:12")


def _reply(seq: int, body: Any) -> list[bytes]:
    return protocol.encode_reply(seq, body)


def test_watch_core_feed_resync_and_snapshot() -> None:
    core = WatchCore("k", snapshot=True, wait_s=1.0)
    core.set_shards(["s0"], 0.0)
    (send,) = core.requests(0.0)
    assert protocol.decode_request(send.frames).args[1] is None  # from now
    assert core.requests(0.0) == []  # one outstanding per shard
    assert core.on_reply(_reply(send.seq, ["ok", 1, 5, 0, []]), 0.1) == []
    assert core.started() and core.cursor["s0"] == (1, 5, 0)
    (send,) = core.requests(0.1)
    events = core.on_reply(
        _reply(send.seq, ["ok", 1, 7, 0, [[5, 0, "put", b"k1", protocol.pack_value(1), None]]]), 0.2
    )
    (event,) = events
    assert isinstance(event, WatchEvent) and (event.key, event.value) == ("k1", 1)
    assert event.cursor["s0"] == (1, 5, 1) and core.cursor["s0"] == (1, 7, 0)
    (send,) = core.requests(0.2)
    (resync,) = core.on_reply(_reply(send.seq, ["resync", 2, 50, 0, [], "gone"]), 0.3)
    assert isinstance(resync, Resync) and resync.snapshot
    (send,) = core.requests(0.3)
    assert protocol.decode_request(send.frames).args[6] == [0, None]  # the first page
    states = core.on_reply(
        _reply(send.seq, ["page", 2, 0, 0, [[b"k1", protocol.pack_value(9), None]], None]), 0.4
    )
    assert [(e.kind, e.key, e.value) for e in states] == [("state", "k1", 9)]  # type: ignore[union-attr]
    assert core.cursor["s0"] == (2, 50, 0)
    (send,) = core.requests(0.4)
    with pytest.raises(PermissionDenied):
        core.on_reply(protocol.encode_error(send.seq, PermissionDenied("no")), 0.5)


def test_watch_core_backs_off_and_resends_lost_requests() -> None:
    core = WatchCore("", cursor="s0@1:3", wait_s=1.0)
    core.set_shards(["s0"], 0.0)
    (send,) = core.requests(0.0)
    assert core.on_reply(protocol.encode_error(send.seq, Unavailable("failover")), 0.0) == []
    assert core.requests(0.01) == []  # backing off
    (send,) = core.requests(0.1)
    assert protocol.decode_request(send.frames).args[1] == [1, 3, 0]
    core.expire(0.5)
    assert core.requests(0.5) == []  # still waiting for its reply
    core.expire(10.0)  # lost: sent again
    (again,) = core.requests(10.0)
    assert again.seq != send.seq
    assert core.on_reply(_reply(send.seq, ["ok", 1, 9, 0, []]), 10.0) == []  # the late one
    assert core.cursor["s0"] == (1, 3, 0)


def test_broker_forwards_a_watch_narrowed_to_the_grant() -> None:
    from zkv.broker.watching import watch_request

    args = ["s0", None, [b""], 100, 1000, True, None]
    request = Request(Op.WATCH, b"", list(args))
    assert watch_request(request, None, {"s0": 1}).args == args
    narrowed = watch_request(request, Grant.of("r", "read", ["a:", "b:"]), {"s0": 1})
    assert narrowed.args[2] == [b"a:", b"b:"] and request.args[2] == [b""]
    with pytest.raises(PermissionDenied):
        watch_request(
            Request(Op.WATCH, b"", ["s0", None, [b"c:"], 100, 0, True, None]),
            Grant.of("r", "read", ["a:"]),
            {"s0": 1},
        )
    with pytest.raises(Unavailable, match="topology"):
        watch_request(request, None, {"s1": 1})


def test_watch_core_follows_the_shard_list() -> None:
    core = WatchCore("", cursor="s0@1:3,s9@1:7", wait_s=1.0)
    core.set_shards(["s0", "s1"], 0.0)
    sent = {s.shard: protocol.decode_request(s.frames).args[1] for s in core.requests(0.0)}
    assert sent == {"s0": [1, 3, 0], "s1": None}  # a new shard: from now on
    core.set_shards(["s0"], 0.1)  # s1 is gone: no longer asked
    assert core.requests(0.1) == [] and "s9" in core.cursor  # kept in the cursor
