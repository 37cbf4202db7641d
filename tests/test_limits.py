"""Limits a peer cannot exceed (issue 16 part 6): keys per request, requests in flight per
client at the broker, and the broker's queues under a client that never reads its replies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import zkv
from zkv import protocol
from zkv.broker.inflight import Inflight
from zkv.config import LimitsConfig
from zkv.errors import ErrorCode, InvalidRequest, TooManyRequests
from zkv.http.app import status_of
from zkv.protocol import Op, Request

LIMITS = {
    "max_key_bytes": 256,
    "max_value_bytes": 64 * 1024,
    "max_keys_per_request": 5,
    "max_inflight_per_client": 20,
    "hwm": 1000,
}


# --------------------------------------------------------------------------- units


def test_inflight_counts_refuses_past_the_limit_and_releases() -> None:
    inflight = Inflight(2)
    assert inflight.acquire(b"a", 1, 10.0)
    assert inflight.acquire(b"a", 1, 10.0)  # a resend of a pending request counts once
    assert inflight.acquire(b"a", 2, 10.0)
    assert not inflight.acquire(b"a", 3, 10.0)
    assert inflight.acquire(b"b", 1, 10.0)  # another client has its own count
    assert inflight.counts == {b"a": 2, b"b": 1}
    inflight.release(b"a", 1)
    inflight.release(b"a", 99)  # not pending: nothing
    assert inflight.acquire(b"a", 3, 10.0)
    for client, seq in ((b"a", 2), (b"a", 3), (b"b", 1)):
        inflight.release(client, seq)
    assert len(inflight) == 0 and inflight.counts == {}


def test_inflight_forgets_requests_never_answered_after_their_deadline() -> None:
    inflight = Inflight(3)
    for seq in range(3):
        assert inflight.acquire(b"c", seq, 5.0 + seq)
    assert not inflight.acquire(b"c", 9, 5.0)
    assert inflight.expire(5.5) == 1  # seq 0 timed out: its node may have died
    assert inflight.acquire(b"c", 9, 20.0)
    assert inflight.expire(100.0) == 3
    assert len(inflight) == 0 and inflight.counts == {}
    inflight.release(b"c", 1)  # a late answer after the expiry changes nothing
    assert inflight.counts == {}


def test_inflight_memory_stays_bounded_by_the_pending_requests() -> None:
    inflight = Inflight(10)
    for seq in range(100_000):  # answered at once: their deadlines must not pile up
        assert inflight.acquire(b"d", seq, 1e9)
        inflight.release(b"d", seq)
    assert len(inflight) == 0
    assert len(inflight._deadlines) <= 1024 + 1


def test_frame_bounds_never_refuse_what_the_limits_allow() -> None:
    limits = LimitsConfig()
    assert protocol.max_request_frame_bytes(limits) > limits.max_request_bytes
    reply = protocol.max_reply_frame_bytes(limits)
    assert reply > limits.max_request_bytes
    assert reply >= limits.max_keys_per_request * (limits.max_key_bytes + limits.max_value_bytes)
    assert reply >= protocol.MAX_PAGE * limits.max_key_bytes


def test_key_count_error_names_the_limit() -> None:
    protocol.check_key_count("MGET", 5, 5)
    with pytest.raises(InvalidRequest, match=r"MGET of 6 keys.*limits\.max_keys_per_request"):
        protocol.check_key_count("MGET", 6, 5)


def test_too_many_requests_travels_with_its_own_code_and_is_http_429() -> None:
    assert TooManyRequests.code == ErrorCode.TOO_MANY_REQUESTS
    assert isinstance(zkv.errors.error_from_code(12, "x"), TooManyRequests)
    assert status_of(TooManyRequests("x")) == 429


def test_client_refuses_too_many_keys_before_sending() -> None:
    kv = zkv.Client("tcp://127.0.0.1:1", max_keys_per_request=3, connect_timeout_s=0.2)
    try:
        with pytest.raises(InvalidRequest, match=r"limits\.max_keys_per_request"):
            kv.mget(["a", "b", "c", "d"])
        with pytest.raises(InvalidRequest, match="MPUT of 4 keys"):
            kv.mput({k: 1 for k in "abcd"})
        pipe = kv.pipeline()
        for k in "abcd":
            pipe.get(k)
        with pytest.raises(InvalidRequest, match="BATCH of 4 operations"):
            pipe.execute()
    finally:
        kv.close()


# --------------------------------------------------------------------------- processes


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw(endpoint: str) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _get(cid: bytes, seq: int, timeout_ms: int = 2000) -> list[bytes]:
    request = Request(Op.GET, b"flood:%d" % (seq % 50), [], cid, seq, timeout_ms=timeout_ms)
    return protocol.encode_request(request)


def _codes(sock: zmq.Socket[bytes], wait_s: float = 1.0) -> list[int]:
    """The error codes of every reply to ``_get`` that arrives within ``wait_s`` of the last
    one. Only ``flood:1`` exists: a GET of it is answered with its value as it is (form 1), a
    GET of another key with msgpack nil, an error with msgpack."""
    codes = []
    while sock.poll(int(wait_s * 1000)):
        frames = sock.recv_multipart()
        assert len(frames) == 2
        seq, code, form = protocol.decode_reply_header(frames[0])
        if code == ErrorCode.OK and seq % 50 == 1:
            assert form == protocol.FORM_VALUE
        else:
            assert form == protocol.FORM_MSGPACK
            if code == ErrorCode.OK:
                assert frames[1] == protocol.packb(None)
        codes.append(code)
    return codes


def test_broker_refuses_too_many_keys(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]}, limits=LIMITS)
    kv = c.client(max_keys_per_request=1000)  # only the broker checks here
    kv.mput({f"k{i}": i for i in range(5)})
    assert kv.mget([f"k{i}" for i in range(5)]) == {f"k{i}": i for i in range(5)}
    with pytest.raises(InvalidRequest, match=r"MGET of 6 keys; the limit is 5"):
        kv.mget([f"k{i}" for i in range(6)])
    with pytest.raises(InvalidRequest, match=r"limits\.max_keys_per_request"):
        kv.mput({f"new{i}": i for i in range(6)})
    assert kv.get("new0") is None  # refused whole: nothing stored
    pipe = kv.pipeline()
    for i in range(6):
        pipe.put(f"p{i}", i)
    with pytest.raises(InvalidRequest, match="BATCH of 6 operations"):
        pipe.execute()
    assert kv.get("p0") is None


def test_flood_without_reading_keeps_the_broker_bounded_and_serving(cluster_factory: Any) -> None:
    c = cluster_factory({"s0": ["s0a"]}, limits=LIMITS)
    kv = c.client()
    kv.put("flood:1", b"x" * 1000)
    broker = c.procs["broker"].pid
    before = _rss_kib(broker)
    flood = _raw(c.endpoint)
    try:
        flood.setsockopt(zmq.SNDHWM, 0)
        flood.setsockopt(zmq.RCVHWM, 100)  # its replies back up into the broker's queue
        cid = protocol.new_client_id()
        for seq in range(1, 100_001):
            flood.send_multipart(_get(cid, seq))
            if seq % 10_000 == 0:
                assert kv.get("flood:1") == b"x" * 1000  # others are served meanwhile
        time.sleep(0.5)  # let the broker drain what it can
        after = _rss_kib(broker)
        print(f"\nbroker VmRSS before the flood: {before} KiB, after 100000 GETs: {after} KiB")
        assert kv.get("flood:1") == b"x" * 1000
        assert after < 10 * before
        codes = _codes(flood, 0.5)
    finally:
        flood.close()
    assert ErrorCode.TOO_MANY_REQUESTS in codes  # refused at once, not queued
    assert len(codes) < 100_000  # what the flooder did not read was dropped, not kept


def test_requests_a_dead_node_never_answers_are_forgotten(cluster_factory: Any) -> None:
    # a long liveness: the paused node stays "alive", so the broker forwards and waits
    c = cluster_factory(
        {"s0": ["s0a"]}, limits=LIMITS, heartbeat={"interval_s": 0.1, "liveness": 300}
    )
    c.client().put("flood:1", 1)
    node = c.procs["s0a"].pid
    sock = _raw(c.endpoint)
    cid = protocol.new_client_id()
    os.kill(node, signal.SIGSTOP)
    try:
        for seq in range(1, 21):  # the node takes them and never answers
            sock.send_multipart(_get(cid, seq, timeout_ms=300))
        sock.send_multipart(_get(cid, 21, timeout_ms=300))
        assert sock.poll(10_000)
        reply = sock.recv_multipart()
        assert len(reply) == 2
        assert protocol.decode_reply_header(reply[0]) == (
            21,
            ErrorCode.TOO_MANY_REQUESTS,
            protocol.FORM_MSGPACK,
        )
        # once past their timeout (+1 s) the broker forgets them: a new request is taken
        # (and waits on the paused node) instead of being refused
        started, seq = time.monotonic(), 21
        while True:
            seq += 1
            sock.send_multipart(_get(cid, seq, timeout_ms=300))
            if ErrorCode.TOO_MANY_REQUESTS not in _codes(sock, 1.0):  # refusals come at once
                break
            assert time.monotonic() - started < 30, "the broker never forgot them"
        print(f"\nforgotten {time.monotonic() - started:.2f} s after the refusal")
    finally:
        os.kill(node, signal.SIGCONT)
        sock.close()
