"""zkv.runtime's socket helpers: whole messages out and in, bounded reads, never blocking."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from zkv import protocol
from zkv.protocol import Op, Request
from zkv.runtime import MAX_FRAMES, Waiter, drain, recv_frames, send_frames


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx = zmq.Context()
    a: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
    b: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
    for sock in (a, b):
        sock.setsockopt(zmq.LINGER, 0)
    a.bind("inproc://zkv-runtime-test")
    b.connect("inproc://zkv-runtime-test")
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        ctx.term()


def test_send_frames_sends_each_list_as_one_message(pair: tuple[Any, Any]) -> None:
    a, b = pair
    request = protocol.encode_request(Request(Op.GET, b"k", [], b"c" * 16, 1))
    send_frames(a, request)
    send_frames(a, [b"one"])
    send_frames(a, [b"", b"x", b""])
    assert b.poll(2000)
    assert b.recv_multipart() == request
    assert b.recv_multipart() == [b"one"]
    assert b.recv_multipart() == [b"", b"x", b""]


def test_send_frames_never_blocks() -> None:
    ctx = zmq.Context()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        with pytest.raises(zmq.Again):  # no peer to take it: refused at once
            send_frames(sock, [b"head", b"body"])
    finally:
        sock.close()
        ctx.term()


def test_waiter_wakes_for_a_message_and_after_a_send_or_a_wake(pair: tuple[Any, Any]) -> None:
    a, b = pair
    waiter = Waiter([b])
    try:
        assert waiter.wait(0) == [b]  # a new socket is asked first: nothing there yet
        assert list(drain(b, 10)) == []
        send_frames(a, [b"one"])
        assert waiter.wait(5000) == [b]  # its ZMQ_FD signalled
        assert list(drain(b, 10)) == [[b"one"]]
        assert waiter.wait(0) == [b]  # nothing signalled: a timed-out wait returns all
        send_frames(a, [b"two"])
        assert b.poll(2000)  # the signal consumed elsewhere (here: zmq's own poll)...
        waiter.check(b)  # ...so the driver says to ask first
        assert waiter.wait(5000) == [b]
        assert list(drain(b, 10)) == [[b"two"]]
        started = time.monotonic()
        threading.Timer(0.05, waiter.wake).start()
        assert waiter.wait(10_000) == []  # woken: no socket ready, long before the timeout
        print(f"woken after {time.monotonic() - started:.3f} s")
    finally:
        waiter.close()


def test_drain_reads_at_most_its_bound_and_ends_when_none_is_left(
    pair: tuple[Any, Any],
) -> None:
    a, b = pair
    assert list(drain(b, 10)) == []  # nothing waiting: no wait, no error
    for i in range(5):
        send_frames(a, [b"h%d" % i, b"b%d" % i])
    assert b.poll(2000)
    assert list(drain(b, 3)) == [[b"h0", b"b0"], [b"h1", b"b1"], [b"h2", b"b2"]]
    assert list(drain(b, 10)) == [[b"h3", b"b3"], [b"h4", b"b4"]]
    assert list(drain(b, 10)) == []


def test_too_many_frames_are_read_to_the_end_and_dropped(pair: tuple[Any, Any]) -> None:
    a, b = pair
    send_frames(a, [b"f"] * MAX_FRAMES)
    send_frames(a, [b"x"] * (MAX_FRAMES + 1))
    send_frames(a, [b"x"] * 1000)
    send_frames(a, [b"after"])
    assert b.poll(2000)
    # the oversized messages are None; the next one is whole, not their leftovers
    assert list(drain(b, 10)) == [[b"f"] * MAX_FRAMES, None, None, [b"after"]]
    send_frames(a, [b"1", b"2", b"3"])
    assert b.poll(2000)
    assert recv_frames(b, max_frames=2) is None
