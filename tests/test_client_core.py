"""Unit tests for zkv.client._core.ClientCore, driven by hand (no sockets, no real time:
every core here reads a ``FakeClock`` the tests move, as a driver's waits would)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from zkv import protocol
from zkv.client import _core, _sync
from zkv.client._core import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    FIRST_ATTEMPT_S,
    KEYS_PAGE,
    MAX_ATTEMPT_S,
    MIN_ATTEMPT_S,
    MISSING,
    NOT_SENT,
    Call,
    ClientCore,
    Emit,
    Missing,
    Send,
    Sleep,
    Walk,
    check_ttl,
    key_bytes,
    key_out,
)
from zkv.errors import (
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    RemoteProtocolError,
    RequestError,
    ServerError,
    Timeout,
    Unavailable,
    ValueTooLarge,
)
from zkv.http import app
from zkv.http.codec import json_type
from zkv.protocol import Consistency, Op, Request


class FakeClock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class _NoRealTime:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"ClientCore read time.{name} instead of its clock")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The fake clock; the core's module may not read real time while it runs."""
    monkeypatch.setattr(_core, "time", _NoRealTime())
    return FakeClock()


@pytest.fixture
def core(clock: FakeClock) -> ClientCore:
    return ClientCore(timeout_s=2.0, clock=clock)


def _start(call: Call) -> tuple[Send, Request]:
    send = next(call)
    assert isinstance(send, Send)
    # [head, body]: the 31-byte header then the key, and the msgpack arguments
    assert len(send.frames) == 2
    assert all(type(f) is bytes for f in send.frames)
    request = protocol.decode_request(send.frames)
    assert request.seq == send.seq
    assert send.frames[0][protocol.REQUEST_HEADER.size :] == request.key
    assert send.frames == protocol.encode_request(request)  # byte for byte the protocol's
    return send, request


def _finish(call: Call, reply: list[bytes] | None) -> Any:
    with pytest.raises(StopIteration) as stop:
        call.send(reply)
    return stop.value.value


def _exchange(call: Call, result: Any) -> tuple[Request, Any]:
    """Run ``call`` to completion, answering its one request with ``result``."""
    send, request = _start(call)
    return request, _finish(call, protocol.encode_reply(send.seq, result))


# --------------------------------------------------------------------------- requests


def test_put_request(core: ClientCore, clock: FakeClock) -> None:
    before = clock()
    call = core.put("k", {"a": [1, 2]}, None)
    send, request = _start(call)
    assert request.op is Op.PUT
    assert request.key == b"k"
    assert request.args == [protocol.pack_value({"a": [1, 2]}), None]
    assert protocol.unpack_value(request.args[0]) == {"a": [1, 2]}
    assert request.client_id == core.client_id
    assert len(core.client_id) == 16
    assert request.seq == 1
    assert request.consistency is Consistency.STRONG
    assert request.timeout_ms == 2000
    # the first attempt waits FIRST_ATTEMPT_S, then the same request goes again
    assert before + FIRST_ATTEMPT_S <= send.deadline <= clock() + FIRST_ATTEMPT_S
    assert send.deadline == clock() + FIRST_ATTEMPT_S
    assert _finish(call, protocol.encode_reply(send.seq, None)) is None


def test_put_with_ttl(core: ClientCore) -> None:
    request, result = _exchange(core.put(b"k", "v", 2.5), None)
    assert request.args == [protocol.pack_value("v"), 2.5]
    assert result is None


def test_seq_counts_up_and_client_id_is_fixed(core: ClientCore) -> None:
    seqs = []
    for i in range(5):
        request, _ = _exchange(core.get(f"k{i}"), None)
        assert request.client_id == core.client_id
        seqs.append(request.seq)
    assert seqs == [1, 2, 3, 4, 5]
    assert ClientCore().client_id != core.client_id


def test_get(core: ClientCore) -> None:
    stored = protocol.pack_value([1, "two"])
    request, result = _exchange(core.get("key"), stored)
    assert (request.op, request.key, request.args) == (Op.GET, b"key", [])
    assert result == [1, "two"]  # the core decodes the stored bytes
    # the stored bytes came as the reply's body itself (form 1), no msgpack around them
    reply = protocol.encode_reply(1, stored)
    assert protocol.decode_reply_header(reply[0])[2] == protocol.FORM_VALUE
    assert reply[1] == stored
    assert _exchange(core.get("key"), None)[1] is None
    assert _exchange(core.get("key", "dflt"), None)[1] == "dflt"


def test_get_missing_sentinel(core: ClientCore) -> None:
    assert _exchange(core.get("k", MISSING), None)[1] is MISSING
    assert _exchange(core.get("k", MISSING), protocol.pack_value(None))[1] is None
    assert list(Missing) == [MISSING]  # one value: `is MISSING` narrows the type
    assert repr(MISSING) == "MISSING"


def test_one_missing_sentinel_for_client_and_gateway() -> None:
    assert _sync.MISSING is app.MISSING is MISSING


def test_create(core: ClientCore) -> None:
    request, result = _exchange(core.create("k", 7, 10), None)
    assert (request.op, request.args) == (Op.CREATE, [protocol.pack_value(7), 10])
    assert result is None


@pytest.mark.parametrize(("op", "method"), [(Op.DELETE, "delete"), (Op.EXISTS, "exists")])
def test_bool_ops(core: ClientCore, op: Op, method: str) -> None:
    request, result = _exchange(getattr(core, method)("k"), True)
    assert (request.op, request.key, request.args) == (op, b"k", [])
    assert result is True
    assert _exchange(getattr(core, method)("k"), False)[1] is False
    assert _exchange(getattr(core, method)("k"), 1)[1] is True


def test_cas(core: ClientCore) -> None:
    request, result = _exchange(core.cas("k", "old", ["new"]), True)
    assert request.op is Op.CAS
    assert request.args == [protocol.pack_value("old"), protocol.pack_value(["new"])]
    assert result is True
    assert _exchange(core.cas("k", 1, 2), False)[1] is False


def test_expire(core: ClientCore) -> None:
    request, result = _exchange(core.expire("k", 30), True)
    assert (request.op, request.args) == (Op.EXPIRE, [30])
    assert result is True
    request, _ = _exchange(core.expire("k", 0), False)  # non-positive is sent (it deletes)
    assert request.args == [0]
    request, _ = _exchange(core.expire("k", -1.5), False)
    assert request.args == [-1.5]


@pytest.mark.parametrize("seconds", ["5", None, True, [1]])
def test_expire_type_errors(core: ClientCore, seconds: Any) -> None:
    with pytest.raises(TypeError, match="seconds must be a number"):
        next(core.expire("k", seconds))


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf])
def test_expire_non_finite(core: ClientCore, seconds: float) -> None:
    with pytest.raises(InvalidRequest, match="finite"):
        next(core.expire("k", seconds))


def test_ttl(core: ClientCore) -> None:
    request, result = _exchange(core.ttl("k"), 4.5)
    assert (request.op, request.args) == (Op.TTL, [])
    assert result == 4.5
    assert _exchange(core.ttl("k"), None)[1] is None


def test_mget(core: ClientCore) -> None:
    keys = ["a", b"b", "c"]
    call = core.mget(keys)
    send, request = _start(call)
    assert request.op is Op.MGET
    assert request.key == b""
    assert request.args == [[b"a", b"b", b"c"]]
    values = [protocol.pack_value(1), None, protocol.pack_value({"x": b"y"})]
    result = _finish(call, protocol.encode_reply(send.seq, values))
    assert result == {"a": 1, "c": {"x": b"y"}}  # keyed as passed, absent keys left out


def test_mget_mismatched_reply(core: ClientCore) -> None:
    call = core.mget(["a", "b"])
    send, _ = _start(call)
    with pytest.raises(ValueError, match="zip"):  # zip(strict=True)
        call.send(protocol.encode_reply(send.seq, [None]))


def test_mput(core: ClientCore) -> None:
    request, result = _exchange(core.mput({"a": 1, b"b": [2]}, 60), None)
    assert request.op is Op.MPUT
    assert request.key == b""
    assert request.args == [
        [[b"a", protocol.pack_value(1)], [b"b", protocol.pack_value([2])]],
        60,
    ]
    assert result is None
    request, _ = _exchange(core.mput({}, None), None)
    assert request.args == [[], None]


def test_keys_page(core: ClientCore) -> None:
    call = core.keys_page("user:", None)
    send, request = _start(call)
    assert request.op is Op.KEYS
    assert request.args == [b"user:", None, KEYS_PAGE]
    keys, cursor = _finish(
        call, protocol.encode_reply(send.seq, [[b"user:1", b"user:\xff"], ["s1", 5, b"user:1"]])
    )
    assert keys == ["user:1", b"user:\xff"]
    assert cursor == ["s1", 5, b"user:1"]
    request, (keys, cursor) = _exchange(core.keys_page(b"", ["s1", 5, None], 10), [[], None])
    assert request.args == [b"", ["s1", 5, None], 10]
    assert (keys, cursor) == ([], None)


@pytest.mark.parametrize(
    ("method", "op", "result"),
    [("clear", Op.CLEAR, None), ("count", Op.COUNT, 42), ("status", Op.STATUS, {"shards": {}})],
)
def test_cluster_ops(core: ClientCore, method: str, op: Op, result: Any) -> None:
    request, got = _exchange(getattr(core, method)(), result)
    assert (request.op, request.key, request.args) == (op, b"", [])
    assert got == result


def test_per_call_timeout_and_consistency(core: ClientCore, clock: FakeClock) -> None:
    before = clock()
    call = core.get("k", timeout=0.25, consistency="eventual")
    send, request = _start(call)
    assert request.timeout_ms == 250
    assert request.consistency is Consistency.EVENTUAL
    assert before + 0.25 <= send.deadline <= clock() + 0.25
    assert send.deadline == clock() + 0.25
    # the defaults are untouched
    request = _exchange(core.get("k"), None)[0]
    assert request.consistency is Consistency.STRONG
    assert request.timeout_ms == 2000


def test_timeout_ms_rounds_up(clock: FakeClock) -> None:
    core = ClientCore(timeout_s=0.0001, consistency=Consistency.EVENTUAL, clock=clock)
    _, request = _start(core.get("k"))
    assert request.timeout_ms == 1
    assert request.consistency is Consistency.EVENTUAL


def test_the_clock_is_monotonic_unless_given(clock: FakeClock) -> None:
    assert ClientCore().clock is time.monotonic  # what Client and AsyncClient use
    assert ClientCore(clock=clock).clock is clock


def test_constructor_consistency_from_string() -> None:
    assert ClientCore(consistency="eventual").consistency is Consistency.EVENTUAL
    with pytest.raises(ValueError, match="weak"):
        ClientCore(consistency="weak")


@pytest.mark.parametrize("timeout", [0, -1, math.nan])
def test_bad_timeout(core: ClientCore, timeout: float) -> None:
    with pytest.raises(InvalidRequest, match="timeout must be a positive number"):
        next(core.get("k", timeout=timeout))


def test_huge_timeout_is_clamped(core: ClientCore) -> None:
    _, request = _start(core.get("k", timeout=1e12))
    assert request.timeout_ms == protocol.MAX_TIMEOUT_MS


def test_infinite_timeout(core: ClientCore) -> None:
    try:
        _, request = _start(core.get("k", timeout=math.inf))
    except InvalidRequest:
        return  # refusing it would be fine too
    assert request.timeout_ms == protocol.MAX_TIMEOUT_MS


# --------------------------------------------------------------------------- walks


def _walk(walk: Walk, results: list[Any]) -> tuple[list[Any], list[Request], list[str]]:
    """Run ``walk`` as a client does, answering its requests in turn with reply frames that
    carry ``results``; what it emitted, the requests it made, and its steps in order."""
    emitted: list[Any] = []
    requests: list[Request] = []
    steps: list[str] = []
    result: Any = None
    while True:
        try:
            step = walk.send(result)
        except StopIteration:
            assert not results, "the walk ended before every scripted reply was read"
            return emitted, requests, steps
        if isinstance(step, Emit):
            assert step.items, "an empty page emits nothing"
            emitted.extend(step.items)
            steps.append("emit")
            result = None
        else:
            request, result = _exchange(step, results.pop(0))
            requests.append(request)
            steps.append(request.op.name)


def test_walk_keys_pages_through_every_shard(core: ClientCore) -> None:
    c1, c2 = ["s0", 9, b"user:b"], ["s1", 0, None]
    emitted, requests, steps = _walk(
        core.walk_keys("user:"),
        [
            [[b"user:a", b"user:b"], c1],
            [[], c2],  # a short (here empty) page before the end
            [[b"user:c", b"user:\xff"], None],
        ],
    )
    assert emitted == ["user:a", "user:b", "user:c", b"user:\xff"]  # str, bytes if not UTF-8
    assert [r.args for r in requests] == [
        [b"user:", None, KEYS_PAGE],
        [b"user:", c1, KEYS_PAGE],
        [b"user:", c2, KEYS_PAGE],
    ]
    assert steps == ["KEYS", "emit", "KEYS", "KEYS", "emit"]
    assert [r.seq for r in requests] == [1, 2, 3]  # a call of its own for each page


def test_walk_keys_of_nothing(core: ClientCore) -> None:
    assert _walk(core.walk_keys(b""), [[[], None]])[0] == []
    assert _walk(core.walk_keys(b"p"), [[[b"p1"], None]])[0] == ["p1"]


def test_walk_items_gets_each_page_once(core: ClientCore) -> None:
    cursor = ["s2", 100, b"k3"]
    emitted, requests, steps = _walk(
        core.walk_items("k"),
        [
            [[b"k1", b"k2", b"k3"], cursor],
            [protocol.pack_value(1), None, protocol.pack_value({"x": [2]})],  # k2 went
            [[], ["s2", 200, None]],
            [[b"k\xff"], None],
            [protocol.pack_value(None)],
        ],
    )
    assert emitted == [("k1", 1), ("k3", {"x": [2]}), (b"k\xff", None)]
    assert steps == ["KEYS", "MGET", "emit", "KEYS", "KEYS", "MGET", "emit"]  # no MGET of []
    assert requests[1].args == [[b"k1", b"k2", b"k3"]]
    assert requests[2].args == [b"k", cursor, KEYS_PAGE]
    assert requests[4].args == [[b"k\xff"]]


def test_walk_values(core: ClientCore) -> None:
    emitted, _, steps = _walk(
        core.walk_values(""),
        [[[b"a", b"b"], None], [protocol.pack_value("A"), protocol.pack_value(["B"])]],
    )
    assert emitted == ["A", ["B"]]
    assert steps == ["KEYS", "MGET", "emit"]
    # a page whose every key went between the two calls emits nothing
    emitted, _, steps = _walk(core.walk_values(""), [[[b"a"], None], [None]])
    assert (emitted, steps) == ([], ["KEYS", "MGET"])


@pytest.mark.parametrize("walk", ["walk_keys", "walk_items", "walk_values"])
def test_walk_timeout_and_consistency_apply_to_every_call(core: ClientCore, walk: str) -> None:
    make = getattr(core, walk)
    results: list[Any] = [[[b"a"], ["s0", 1, b"a"]], [[b"b"], None]]
    if walk != "walk_keys":
        results = [results[0], [None], results[1], [protocol.pack_value(2)]]
    _, requests, _ = _walk(make("", timeout=0.75, consistency="eventual"), list(results))
    assert len(requests) == len(results)
    assert {(r.timeout_ms, r.consistency) for r in requests} == {(750, Consistency.EVENTUAL)}
    _, requests, _ = _walk(make(""), [[[], None]])
    assert (requests[0].timeout_ms, requests[0].consistency) == (2000, Consistency.STRONG)


def test_a_walk_is_lazy_and_checks_its_prefix_when_run(core: ClientCore) -> None:
    walk = core.walk_keys(5)
    step = next(walk)  # nothing happened before this: the first step is the first page's call
    assert not isinstance(step, Emit)
    with pytest.raises(TypeError, match="a zkv key is str or bytes"):
        next(step)
    assert _exchange(core.get("k"), None)[0].seq == 1  # no sequence number spent


def test_a_walk_stops_when_a_call_fails(core: ClientCore) -> None:
    walk = core.walk_items("")
    page = next(walk)
    assert not isinstance(page, Emit)
    send, _ = _start(page)
    with pytest.raises(ServerError, match="node failed"):
        page.send(protocol.encode_error(send.seq, ServerError("node failed")))
    walk.close()  # as the drivers do when a call raises: nothing more is asked
    with pytest.raises(StopIteration):
        next(walk)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (KeyNotFound("key 'k' not found", key=b"k"), KeyNotFound),
        (KeyExists("key 'k' exists", key=b"k"), KeyExists),
        (ValueTooLarge("too big", key=b"k"), ValueTooLarge),
        (InvalidRequest("bad args", key=None), InvalidRequest),
        (ServerError("node failed"), ServerError),
        (Timeout("node timed out"), Timeout),
    ],
)
def test_error_replies_raise_typed_errors(core: ClientCore, exc: Any, cls: type) -> None:
    call = core.create("k", 1, None)
    send, _ = _start(call)
    with pytest.raises(cls) as info:
        call.send(protocol.encode_error(send.seq, exc))
    assert type(info.value) is cls
    assert info.value.message == exc.message
    assert info.value.key == exc.key
    assert info.value.seq == send.seq


def test_ttl_missing_key(core: ClientCore) -> None:
    call = core.ttl("gone")
    send, _ = _start(call)
    with pytest.raises(KeyError):
        call.send(protocol.encode_error(send.seq, KeyNotFound("nope", key=b"gone")))


def test_get_reply_of_unknown_form(core: ClientCore) -> None:
    call = core.get("k")
    send, _ = _start(call)
    frames = [protocol.REPLY_HEADER.pack(protocol.VERSION, 0, 2, send.seq), protocol.packb(None)]
    with pytest.raises(RemoteProtocolError, match="unknown form 2"):
        call.send(frames)


def test_unknown_error_code(core: ClientCore) -> None:
    call = core.get("k")
    send, _ = _start(call)
    frames = [
        protocol.REPLY_HEADER.pack(protocol.VERSION, 77, protocol.FORM_MSGPACK, send.seq),
        protocol.packb(["?", None]),
    ]
    with pytest.raises(RequestError, match="error code 77"):
        call.send(frames)


def test_malformed_reply(core: ClientCore) -> None:
    call = core.get("k")
    _start(call)
    with pytest.raises(RemoteProtocolError):
        call.send([b"\x01\x00", b"\xc0"])


@pytest.mark.parametrize(
    "reply",
    [
        [b"\x01\x00" + (1).to_bytes(8, "big"), b"\xc0"],  # version 1's 10-byte header
        [protocol.REPLY_HEADER.pack(1, 0, 0, 1), b"\xc0"],
        [protocol.REPLY_HEADER.pack(protocol.VERSION, 0, 0, 1), b"\xc1"],
    ],
)
def test_malformed_reply_v2(core: ClientCore, reply: list[bytes]) -> None:
    call = core.get("k")
    send, _ = _start(call)
    assert send.seq == 1
    with pytest.raises(RemoteProtocolError):
        call.send(reply)


WRITES = [
    lambda c: c.put("k", 1, None),
    lambda c: c.create("k", 1, None),
    lambda c: c.delete("k"),
    lambda c: c.cas("k", 1, 2),
    lambda c: c.expire("k", 5),
    lambda c: c.mput({"a": 1}, None),
    lambda c: c.clear(),
]
READS = [
    lambda c: c.get("k"),
    lambda c: c.exists("k"),
    lambda c: c.ttl("k"),
    lambda c: c.mget(["a"]),
    lambda c: c.keys_page("", None),
    lambda c: c.count(),
    lambda c: c.status(),
]


@pytest.mark.parametrize("make", WRITES)
def test_write_without_reply_is_sent_again_then_times_out(make: Any, clock: FakeClock) -> None:
    core = ClientCore(timeout_s=0.2, clock=clock)
    call = make(core)
    first, request = _start(call)
    assert request.op in protocol.WRITE_OPS
    again = call.send(None)  # no answer yet: the same request (same seq) goes again
    assert isinstance(again, Send)
    assert again.frames == first.frames
    assert again.deadline == first.deadline == clock() + 0.2  # the call's own deadline
    clock.advance(0.25)
    with pytest.raises(Timeout) as info:
        call.send(None)
    assert str(info.value) == (
        f"{request.op.name} got no reply within 0.2 s; the write may or may not have been applied"
    )
    assert isinstance(info.value, TimeoutError)


@pytest.mark.parametrize("make", READS)
def test_read_without_reply_past_deadline_is_timeout(make: Any, clock: FakeClock) -> None:
    core = ClientCore(timeout_s=0.001, clock=clock)
    call = make(core)
    _, request = _start(call)
    assert request.op not in protocol.WRITE_OPS
    clock.advance(0.005)
    with pytest.raises(Timeout) as info:
        call.send(None)
    assert str(info.value) == f"{request.op.name} got no reply within 0.001 s"


@pytest.mark.parametrize("make", READS)
def test_read_without_reply_is_sent_again(core: ClientCore, clock: FakeClock, make: Any) -> None:
    call = make(core)
    first, _ = _start(call)
    deadline = clock() + core.timeout_s
    assert first.deadline <= deadline
    again = call.send(None)
    assert isinstance(again, Send)
    assert again.frames == first.frames  # the same request, same seq
    assert again.seq == first.seq
    assert again.deadline <= deadline + 1e-3
    assert again.deadline == clock() + 2 * FIRST_ATTEMPT_S  # sent at once, waiting longer


def test_read_resend_waits_grow_to_the_deadline(clock: FakeClock) -> None:
    core = ClientCore(timeout_s=10.0, clock=clock)
    call = core.get("k")
    start = clock()
    send, _ = _start(call)
    waits = [send.deadline - start]
    for _ in range(6):
        clock.advance(send.deadline - clock())  # each attempt waited out, as a driver does
        now = clock()
        send = call.send(None)
        assert isinstance(send, Send)
        waits.append(send.deadline - now)
    assert waits[0] == pytest.approx(FIRST_ATTEMPT_S, abs=0.05)
    assert waits[1] == pytest.approx(2 * FIRST_ATTEMPT_S, abs=0.05)
    assert max(waits) == pytest.approx(MAX_ATTEMPT_S, abs=0.05)
    assert all(w <= MAX_ATTEMPT_S + 0.05 for w in waits)
    # 0.5, 1, 2, 2, 2, 2: 9.5 s gone; the last attempt gets what is left of the 10 s
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5]
    assert send.deadline == start + 10.0
    clock.advance(0.5)
    with pytest.raises(Timeout):
        call.send(None)
    # a short call never waits past its own deadline
    core = ClientCore(timeout_s=0.2, clock=clock)
    start = clock()
    send, _ = _start(core.get("k"))
    assert send.deadline <= start + 0.2 + 0.05
    assert send.deadline == start + 0.2


# --------------------------------------------------------------------------- retries


def test_not_sent_retries_with_backoff(core: ClientCore, clock: FakeClock) -> None:
    call = core.put("k", 1, None)
    first, _ = _start(call)
    pauses = []
    for _ in range(8):
        action = call.send(NOT_SENT)
        assert isinstance(action, Sleep)
        pauses.append(action.seconds)
        clock.advance(action.seconds)
        again = next(call)
        assert isinstance(again, Send)
        assert again.frames == first.frames  # the very same request, same seq
        assert again.seq == first.seq
    assert pauses[0] == pytest.approx(BACKOFF_FIRST_S)
    assert pauses[1] == pytest.approx(2 * BACKOFF_FIRST_S)
    assert pauses == sorted(pauses)
    assert max(pauses) == pytest.approx(BACKOFF_MAX_S)
    assert pauses == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5])
    assert _finish(call, protocol.encode_reply(first.seq, None)) is None


def test_not_sent_must_be_the_sentinel(core: ClientCore) -> None:
    call = core.get("k")
    _start(call)
    with pytest.raises(RemoteProtocolError, match="2 frames, got 1"):  # an equal list is not it
        call.send([b"not sent"])


def test_not_sent_sleep_never_passes_the_deadline(clock: FakeClock) -> None:
    core = ClientCore(timeout_s=0.005, clock=clock)
    call = core.get("k")
    _start(call)
    with pytest.raises(Unavailable):  # too little time left for another attempt
        call.send(NOT_SENT)
    # with a little more time, one pause, cut short of the deadline (less MIN_ATTEMPT_S)
    core = ClientCore(timeout_s=0.024, clock=clock)
    call = core.get("k")
    send, _ = _start(call)
    action = call.send(NOT_SENT)
    assert isinstance(action, Sleep)
    assert 0 < action.seconds <= 0.005
    assert clock() + action.seconds <= send.deadline + 1e-3
    assert clock() + action.seconds == pytest.approx(send.deadline - MIN_ATTEMPT_S)
    clock.advance(action.seconds)
    again = next(call)
    assert isinstance(again, Send) and again.deadline == send.deadline
    with pytest.raises(Unavailable):  # and no more
        call.send(NOT_SENT)


def test_not_sent_pauses_add_up_to_the_deadline_and_no_further(clock: FakeClock) -> None:
    core = ClientCore(timeout_s=1.0, clock=clock)
    deadline = clock() + 1.0
    call = core.put("k", 1, None)
    _start(call)
    pauses = []
    for _ in range(7):
        action = call.send(NOT_SENT)
        assert isinstance(action, Sleep)
        pauses.append(action.seconds)
        clock.advance(action.seconds)
        assert clock() <= deadline - MIN_ATTEMPT_S + 1e-9
        assert isinstance(next(call), Send)
    with pytest.raises(Unavailable, match=r"^no broker connection to PUT within 1 s$"):
        call.send(NOT_SENT)
    # 0.01 + 0.02 + 0.04 + 0.08 + 0.16 + 0.32 = 0.63; then the 0.5 pause is cut to 0.35
    assert pauses == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.35])
    assert clock() == pytest.approx(deadline - MIN_ATTEMPT_S)


def test_not_sent_past_deadline_is_unavailable(clock: FakeClock) -> None:
    core = ClientCore(timeout_s=0.001, clock=clock)
    call = core.put("k", 1, None)
    send, _ = _start(call)
    clock.advance(0.005)
    assert clock() > send.deadline
    with pytest.raises(Unavailable, match=r"^no broker connection to PUT within 0\.001 s$"):
        call.send(NOT_SENT)


def test_read_not_sent_then_no_reply_is_sent_again(core: ClientCore) -> None:
    call = core.get("k")
    first, _ = _start(call)
    assert isinstance(call.send(NOT_SENT), Sleep)
    assert isinstance(next(call), Send)
    again = call.send(None)
    assert isinstance(again, Send)
    assert again.frames == first.frames


def test_unavailable_reply_is_retried(core: ClientCore) -> None:
    call = core.put("k", 1, None)
    first, _ = _start(call)
    action = call.send(protocol.encode_error(first.seq, Unavailable("no primary for s1")))
    assert isinstance(action, Sleep)
    assert action.seconds == pytest.approx(BACKOFF_FIRST_S)
    again = next(call)
    assert isinstance(again, Send)
    assert again.frames == first.frames
    assert _finish(call, protocol.encode_reply(first.seq, None)) is None


def test_unavailable_reply_past_deadline_is_raised(clock: FakeClock) -> None:
    core = ClientCore(timeout_s=0.001, clock=clock)
    call = core.get("k")
    send, _ = _start(call)
    clock.advance(0.005)
    with pytest.raises(Unavailable) as info:
        call.send(protocol.encode_error(send.seq, Unavailable("no primary for s1", key=b"k")))
    assert str(info.value) == "no primary for s1"
    assert info.value.key == b"k"


@pytest.mark.parametrize("first_reply", ["not sent", "unavailable"])
def test_write_sent_after_retry_without_reply_is_timeout(
    first_reply: str, clock: FakeClock
) -> None:
    core = ClientCore(timeout_s=0.2, clock=clock)
    call = core.put("k", 1, None)
    send, _ = _start(call)
    reply = (
        NOT_SENT
        if first_reply == "not sent"
        else protocol.encode_error(send.seq, Unavailable("no primary"))
    )
    pause = call.send(reply)
    assert isinstance(pause, Sleep)
    clock.advance(pause.seconds)
    assert isinstance(next(call), Send)  # sent this time: it may reach the node
    clock.advance(0.25)
    with pytest.raises(Timeout, match="may or may not have been applied"):
        call.send(None)


# --------------------------------------------------------------------------- reply_seq


def test_reply_seq() -> None:
    assert ClientCore.reply_seq(protocol.encode_reply(12, None)) == 12
    assert ClientCore.reply_seq(protocol.encode_error(13, KeyNotFound("x"))) == 13
    assert ClientCore.reply_seq([b"only one"]) is None
    assert ClientCore.reply_seq([b"short", b""]) is None
    assert ClientCore.reply_seq([*protocol.encode_reply(1, None), b""]) is None
    assert ClientCore.reply_seq(protocol.encode_reply(14, b"a value")) == 14
    assert ClientCore.reply_seq([protocol.REPLY_HEADER.pack(9, 0, 0, 1), b""]) is None
    assert ClientCore.reply_seq([b"\x01\x00" + (1).to_bytes(8, "big"), b""]) is None  # v1


def test_result() -> None:
    assert ClientCore.result(protocol.encode_reply(1, [1, 2])) == [1, 2]
    with pytest.raises(KeyNotFound):
        ClientCore.result(protocol.encode_error(1, KeyNotFound("x")))


# --------------------------------------------------------------------------- keys, values


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("k", b"k"),
        ("", b""),
        ("héllo", "héllo".encode()),
        ("日本", "日本".encode()),
        (b"\xff\x00", b"\xff\x00"),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
    ],
)
def test_key_bytes(key: Any, expected: bytes) -> None:
    out = key_bytes(key)
    assert out == expected
    assert type(out) is bytes


@pytest.mark.parametrize("key", [1, 1.5, None, ["k"], ("k",), object()])
def test_key_bytes_rejects(key: Any) -> None:
    with pytest.raises(TypeError, match="a zkv key is str or bytes"):
        key_bytes(key)


def test_key_bytes_in_requests(core: ClientCore) -> None:
    for key, wire in [("é", "é".encode()), (bytearray(b"x"), b"x"), (b"\xff", b"\xff")]:
        request, _ = _exchange(core.get(key), None)
        assert request.key == wire
    with pytest.raises(TypeError):
        next(core.get(5))
    with pytest.raises(TypeError):
        next(core.mget(["ok", 5]))
    with pytest.raises(TypeError):
        next(core.mput({5: "v"}, None))


@pytest.mark.parametrize(
    ("wire", "expected"),
    [(b"k", "k"), (b"", ""), ("é".encode(), "é"), (b"\xff", b"\xff"), (b"a\xc3", b"a\xc3")],
)
def test_key_out(wire: bytes, expected: Any) -> None:
    out = key_out(wire)
    assert out == expected
    assert type(out) is type(expected)


def _first_step_with_ttl(core: ClientCore, method: str, ttl: Any) -> Send:
    """Make a ``method`` call with ``ttl`` and take its first step (a bad TTL is refused
    before anything is sent: when the call is made or at that step)."""
    call = core.mput({"k": 1}, ttl) if method == "mput" else getattr(core, method)("k", 1, ttl)
    step = next(call)
    assert isinstance(step, Send)
    return step


@pytest.mark.parametrize("ttl", [0, -1, -0.001, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("method", ["put", "create", "mput"])
def test_ttl_values_rejected(core: ClientCore, method: str, ttl: float) -> None:
    with pytest.raises(InvalidRequest, match="ttl must be a positive number"):
        _first_step_with_ttl(core, method, ttl)


@pytest.mark.parametrize("ttl", ["5", True, [5], b"5"])
@pytest.mark.parametrize("method", ["put", "create", "mput"])
def test_ttl_types_rejected(core: ClientCore, method: str, ttl: Any) -> None:
    with pytest.raises(TypeError, match="ttl must be a number"):
        _first_step_with_ttl(core, method, ttl)


# --------------------------------------------------------------------------- check_ttl


@pytest.mark.parametrize("ttl", [None, 1, 0.001, 2.5, 10**9, 1e300])
def test_check_ttl_accepts(ttl: float | None) -> None:
    assert check_ttl(ttl) is ttl  # as given: an int stays an int on the wire


@pytest.mark.parametrize(
    ("ttl", "shown"),
    [(0, "0"), (-1, "-1"), (-0.001, "-0.001"), (math.nan, "nan"), (math.inf, "inf")],
)
def test_check_ttl_values(ttl: float, shown: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_ttl(ttl)
    assert str(info.value) == f"ttl must be a positive number of seconds, got {shown}"
    with pytest.raises(InvalidRequest) as info:
        check_ttl(ttl, '"ttl"', wrong_type=InvalidRequest)
    assert str(info.value) == f'"ttl" must be a positive number of seconds, got {shown}'


@pytest.mark.parametrize(
    ("ttl", "python", "json"),
    [
        ("5", "str", "a string"),
        (True, "bool", "a boolean"),
        (False, "bool", "a boolean"),
        ([5], "list", "an array"),
        ({"s": 5}, "dict", "an object"),
        (b"5", "bytes", "bytes"),
    ],
)
def test_check_ttl_types(ttl: Any, python: str, json: str) -> None:
    with pytest.raises(TypeError) as info:
        check_ttl(ttl)
    assert type(info.value) is TypeError
    assert str(info.value) == f"ttl must be a number of seconds, not {python}"
    # the gateway's wording: its own error type (a 400) and JSON's names for types
    with pytest.raises(InvalidRequest) as info2:
        check_ttl(ttl, "query parameter 'ttl'", wrong_type=InvalidRequest, describe=json_type)
    assert str(info2.value) == f"query parameter 'ttl' must be a number of seconds, not {json}"


def test_the_gateway_checks_ttls_with_check_ttl() -> None:
    assert app._ttl(None, '"ttl"') is None
    assert app._ttl(60, '"ttl"') == 60
    with pytest.raises(InvalidRequest) as info:
        app._ttl("60", '"ttl"')
    assert str(info.value) == '"ttl" must be a number of seconds, not a string'
    with pytest.raises(InvalidRequest) as info:
        app._ttl(0, '"ttl"')
    assert str(info.value) == '"ttl" must be a positive number of seconds, got 0'


def test_ttl_validation_uses_no_seq(core: ClientCore) -> None:
    with pytest.raises(InvalidRequest):
        next(core.put("k", 1, 0))
    assert _exchange(core.get("k"), None)[0].seq == 1


def test_unserialisable_value(core: ClientCore) -> None:
    with pytest.raises(TypeError, match="not msgpack-serialisable"):
        next(core.put("k", object(), None))
    with pytest.raises(TypeError):
        next(core.cas("k", 1, {1, 2}))


def test_request_over_max_request_bytes(clock: FakeClock) -> None:
    core = ClientCore(max_request_bytes=1024, clock=clock)
    _exchange(core.put("k", b"x" * 900, None), None)  # under the limit
    with pytest.raises(ValueTooLarge, match=r"PUT request is \d+ bytes; the limit is 1024") as info:
        next(core.put("k", b"x" * 2000, None))
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueTooLarge, match="split the batch"):
        next(core.mput({f"k{i}": b"x" * 100 for i in range(20)}, None))
