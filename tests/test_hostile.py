"""Hostile input: garbage frames to a live broker and nodes change nothing and stop nothing."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from conftest import ttl_left

from zkv import protocol
from zkv.errors import ZkvError
from zkv.protocol import Op, Request


def valid_requests(rng: random.Random) -> list[list[bytes]]:
    """Well-formed read requests to mutate (writes are not fuzzed, so no real key changes)."""
    cid = rng.randbytes(16)
    key = b"fuzz:" + rng.randbytes(rng.randint(0, 12))
    reqs = [
        Request(Op.GET, key, [], cid, 1),
        Request(Op.EXISTS, key, [], cid, 2),
        Request(Op.TTL, key, [], cid, 3),
        Request(Op.MGET, b"", [[key, b"fuzz:other"]], cid, 4),
        Request(Op.KEYS, b"", [b"fuzz:", None, 10], cid, 5),
        Request(Op.COUNT, b"", [], cid, 6),
        Request(Op.STATUS, b"", [], cid, 7),
        Request(Op.PUT, key, [b"\x01", None], cid, 8),
    ]
    return [protocol.encode_request(r) for r in reqs]


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    choice = rng.randrange(10)
    i = rng.randrange(len(frames))
    frame = bytearray(frames[i])
    if choice == 0 and frame:  # flip bits
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del frame[rng.randrange(len(frame) + 1) :]
    elif choice == 2:  # extend
        frame += rng.randbytes(rng.randint(1, 64))
    elif choice == 3:  # drop or duplicate a frame
        if rng.random() < 0.5 and len(frames) > 1:
            del frames[i]
            return frames
        frames.insert(i, bytes(frame))
    elif choice == 4:  # replace the body with random msgpack of the wrong shape
        frames[-1] = msgpack.packb(random_object(rng, 4), use_bin_type=True)
        return frames
    elif choice == 5:  # absurd declared lengths
        frames[-1] = rng.choice(
            [
                b"\xdb\xff\xff\xff\xff",
                b"\xc6\xff\xff\xff\xff",
                b"\xdd\xff\xff\xff\xff",
                b"\xdf\xff\xff\xff\xff",
            ]
        )
        return frames
    elif choice == 6:  # deep nesting
        depth = rng.choice([20, 500, 100_000])
        frames[-1] = b"\x91" * depth + b"\x90"
        return frames
    elif choice == 7 and len(frames) == 2:  # version 1's layout: [header, key, body]
        head = frames[0]
        return [
            head[: protocol.REQUEST_HEADER.size],
            head[protocol.REQUEST_HEADER.size :],
            frames[1],
        ]
    elif choice == 8 and frames[0]:  # another protocol version (0, 1, 3, 255)
        head = bytearray(frames[0])
        head[0] = rng.choice([0, 1, protocol.VERSION + 1, 255])
        frames[0] = bytes(head)
        return frames
    else:  # wrong argument types
        frames[-1] = msgpack.packb(
            [random_object(rng, 2) for _ in range(rng.randint(0, 4))], use_bin_type=True
        )
        return frames
    frames[i] = bytes(frame)
    return frames


def random_object(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth > 0 else 6)
    if kind == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 1:
        return rng.random() * 10 ** rng.randint(-5, 300)
    if kind == 2:
        return rng.randbytes(rng.randint(0, 20))
    if kind == 3:
        return "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 10)))
    if kind == 4:
        return rng.choice([None, True, False, float("nan"), float("inf")])
    if kind == 5:
        return -1
    if kind == 6:
        return [random_object(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {str(rng.random()): random_object(rng, depth - 1) for _ in range(rng.randint(0, 3))}


def is_valid_write(frames: list[bytes]) -> bool:
    try:
        request = protocol.decode_request(frames)
    except ZkvError:
        return False
    return request.op in protocol.WRITE_OPS


def garbage(rng: random.Random, count: int) -> Iterator[list[bytes]]:
    """Seeded garbage: random frame lists and mutations of valid requests."""
    valid = valid_requests(rng)
    for n in range(count):
        if n % 4 == 0:
            frames = [
                rng.randbytes(rng.choice([0, 1, 5, 10, 11, 30, 31, 32, 200]))
                for _ in range(rng.choice([0, 1, 2, 2, 3, 4, 9, 40]))
            ]
            if not frames:
                frames = [b""]
        else:
            frames = mutate(rng, rng.choice(valid))
        if not is_valid_write(frames):
            yield frames


def node_messages(rng: random.Random) -> list[list[bytes]]:
    """Well-formed broker <-> node messages (v2: node header, envelope and request head or
    reply header in one frame, then the body) to mutate: what a fake node could send."""
    head, body = protocol.encode_request(Request(Op.GET, b"fuzz:k", [], rng.randbytes(16), 1))
    reply = protocol.encode_reply(1, b"\x01")
    info = protocol.encode_node_info(protocol.NODE_HEARTBEAT, protocol.NodeInfo("s0a", "s0"))
    direct = b"C" + rng.randbytes(5)
    gather = b"F" + rng.randbytes(12)
    move = b"M" + rng.randbytes(8)
    return [
        [protocol.node_frame(protocol.NODE_REPLY, 0, direct, reply[0]), reply[1]],
        [protocol.node_frame(protocol.NODE_REPLY, 0, gather, reply[0]), reply[1]],
        [protocol.node_frame(protocol.NODE_REPLY, 0, move, reply[0]), reply[1]],
        [protocol.node_frame(protocol.NODE_REQUEST, 0, direct, head), body],
        info,
        [protocol.node_header(protocol.NODE_READY, 0), info[1]],
    ]


def node_garbage(rng: random.Random, count: int) -> Iterator[list[bytes]]:
    """Seeded mutations of broker <-> node messages, and the node header's envelope length
    made to lie (longer or shorter than the frame holds)."""
    valid = node_messages(rng)
    for n in range(count):
        frames = list(rng.choice(valid))
        if n % 5 == 0:
            first = bytearray(frames[0])
            first[protocol.NODE_HEADER.size - 1] = rng.randrange(256)  # the envelope's length
            frames[0] = bytes(first)
        else:
            frames = mutate(rng, frames)
        yield frames


def drain(sock: zmq.Socket[bytes]) -> int:
    n = 0
    while sock.poll(0):
        sock.recv_multipart()
        n += 1
    return n


def answer_behind(sock: zmq.Socket[bytes]) -> int:
    """Send a STATUS behind all that ``sock`` sent and wait for its answer: the broker takes
    one connection's requests in order, so it has handled them all by then. The number of
    other replies received meanwhile."""
    seq = 999_999
    sock.send_multipart(protocol.encode_request(Request(Op.STATUS, b"", [], b"\xee" * 16, seq)))
    others = 0
    while True:
        assert sock.poll(20_000), "the broker never answered a STATUS sent behind the garbage"
        frames = sock.recv_multipart()
        try:
            got, result = protocol.decode_reply(frames)
        except ZkvError:  # an error reply to a malformed request
            others += 1
            continue
        if got == seq and isinstance(result, dict) and "broker" in result:
            return others
        others += 1


@pytest.fixture
def dealer() -> Iterator[Any]:
    ctx = zmq.Context.instance()
    sockets: list[zmq.Socket[bytes]] = []

    def make(endpoint: str, identity: bytes | None = None) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    try:
        yield make
    finally:
        for sock in sockets:
            sock.close(linger=0)


@pytest.mark.fault
def test_fuzzed_frames_leave_broker_and_nodes_serving(cluster_factory: Any, dealer: Any) -> None:
    c = cluster_factory()
    kv = c.client()
    keep = {f"keep:{i}": {"i": i, "s": "x" * (i % 7)} for i in range(300)}
    kv.mput(keep)
    ttl_set = time.monotonic()
    kv.put("keep:ttl", 1, ttl=300)
    rng = random.Random(20261125)

    # 1. the broker's client socket: thousands of malformed requests
    attacker = dealer(c.endpoint)
    replies = 0
    for sent, frames in enumerate(garbage(rng, 4000), 1):
        attacker.send_multipart(frames)
        if sent % 200 == 0:
            replies += drain(attacker)
            assert kv.get("keep:7") == keep["keep:7"]  # others are served meanwhile
    # 2. the broker's node socket: a fake node sending garbage, and bad READYs
    fake = dealer(c.nodes_endpoint, identity=b"node:intruder")
    for frames in garbage(rng, 1000):
        fake.send_multipart(frames)
    for frames in node_garbage(rng, 1000):
        fake.send_multipart(frames)
    for kind in (protocol.NODE_READY, protocol.NODE_HEARTBEAT, protocol.NODE_REPLY):
        fake.send_multipart([protocol.node_header(kind, 0), b"\x81\xa4name\xa3s0a"])
        fake.send_multipart(
            [protocol.node_header(kind, 0), msgpack.packb({"name": "s0a", "shard": "s0"})]
        )  # wrong identity
        # a reply that names a client: [node header + envelope + reply header, body]
        envelope = b"C" + b"\x00" * 5
        fake.send_multipart([protocol.node_frame(kind, 0, envelope, b"x"), b"y"])
        fake.send_multipart(
            [protocol.node_frame(kind, 0, envelope, protocol.encode_reply(1, None)[0]), b"\xc0"]
        )
        # the envelope's length says more than the frame holds
        fake.send_multipart([protocol.NODE_HEADER.pack(kind, 0, 200) + b"C", b"y"])
        fake.send_multipart([protocol.NODE_HEADER.pack(kind, 0, 1), b"y"])
        # version 1's shapes: a 9-byte node header, the envelope and reply in frames apart
        fake.send_multipart([kind + bytes(8), envelope, b"x", b"y"])
        fake.send_multipart([kind + bytes(8), b"y"])
        fake.send_multipart([kind, b"y"])
    fake.send_multipart([b"x"] * 50)  # too many frames
    # 3. each node's sync socket
    for name in ("s0a", "s1a", "s2a"):
        sync = dealer(c.procs[name].info["sync"])
        for frames in garbage(rng, 300):
            sync.send_multipart(frames)
    # 4. clients that vanish with requests in flight
    for _ in range(50):
        gone = dealer(c.endpoint)
        gone.send_multipart(protocol.encode_request(Request(Op.COUNT, seq=1)))
        gone.close(linger=0)

    # everyone still answers, and nothing changed
    replies += answer_behind(attacker)  # the broker has handled every request of the attacker
    assert replies > 0  # malformed requests got error replies, not silence
    for proc in c.procs.values():
        assert proc.popen is not None and proc.popen.poll() is None, f"{proc.name} died"
    assert kv.mget(list(keep)) == keep
    assert ttl_left(kv.ttl("keep:ttl"), 300, ttl_set)
    assert len(kv) == len(keep) + 1
    assert sorted(kv.keys("keep:")) == sorted([*keep, "keep:ttl"])
    kv.put("after", "fuzz")
    assert kv["after"] == "fuzz"
    nodes = {n["name"]: n for n in kv.cluster_status()["nodes"]}
    assert all(n["alive"] for n in nodes.values())
    assert set(nodes) == {"s0a", "s1a", "s2a"}  # the intruder was never registered
    log = c.procs["broker"].log_file.read_text()
    assert log.count("\n") < 200, "malformed input flooded the broker's log"
    assert "Traceback" not in log, "malformed input raised an unexpected error in the broker"


@pytest.mark.fault
def test_malformed_requests_get_error_replies(cluster: Any, dealer: Any) -> None:
    sock = dealer(cluster.endpoint)
    cid = b"c" * 16

    def ask_raw(frames: list[bytes]) -> list[bytes]:
        sock.send_multipart(frames)
        assert sock.poll(5000), "no reply"
        return sock.recv_multipart()

    def ask(frames: list[bytes]) -> tuple[int, int, Any]:
        reply = ask_raw(frames)
        assert len(reply) == 2
        assert len(reply[0]) == protocol.REPLY_HEADER.size == 11
        seq, code, form = protocol.decode_reply_header(reply[0])
        assert form == protocol.FORM_MSGPACK  # an error is always msgpack
        return seq, code, msgpack.unpackb(reply[1])

    good = protocol.encode_request(Request(Op.GET, b"k", [], cid, 11))
    assert good[0][protocol.REQUEST_HEADER.size :] == b"k"
    # unknown op: the header is read, so the error answers seq 11
    bad_op = bytearray(good[0])
    bad_op[1] = 99
    seq, code, body = ask([bytes(bad_op), protocol.NO_ARGS])
    assert (seq, code) == (11, protocol.ErrorCode.PROTOCOL)
    assert "unknown op" in body[0]
    # unknown consistency on a single-key op: refused by the broker, seq 11
    bad_level = bytearray(good[0])
    bad_level[2] = 7
    seq, code, body = ask([bytes(bad_level), protocol.NO_ARGS])
    assert (seq, code) == (11, protocol.ErrorCode.PROTOCOL)
    assert "consistency 7" in body[0]
    # another protocol version: the seq could be read, so the error answers it
    for version in (1, protocol.VERSION + 1):
        old = bytearray(good[0])
        old[0] = version
        seq, code, body = ask([bytes(old), protocol.NO_ARGS])
        assert (seq, code) == (11, protocol.ErrorCode.PROTOCOL)
        assert f"protocol version {version}" in body[0]
    # invalid msgpack body on a single-key op: the node answers with the right seq
    seq, code, _ = ask([good[0], b"\xc1"])
    assert (seq, code) == (11, protocol.ErrorCode.PROTOCOL)
    # wrong argument types
    put = protocol.encode_request(Request(Op.PUT, b"k", [b"v", None], cid, 12))
    seq, code, body = ask([put[0], msgpack.packb(["not bytes", None])])
    assert (seq, code) == (12, protocol.ErrorCode.INVALID_REQUEST)
    assert "value must be bytes" in body[0]
    # a key past the hard ceiling, in the head of a single-key op
    huge = protocol.encode_request(Request(Op.GET, b"k", [], cid, 14))[0][:-1]
    seq, code, body = ask([huge + b"k" * (protocol.MAX_KEY_FRAME_BYTES + 1), protocol.NO_ARGS])
    assert (seq, code) == (14, protocol.ErrorCode.PROTOCOL)
    assert f"key of {protocol.MAX_KEY_FRAME_BYTES + 1} bytes" in body[0]
    # a key on a multi-key op
    count = protocol.encode_request(Request(Op.COUNT, b"", [], cid, 15))[0]
    seq, code, body = ask([count + b"k", protocol.NO_ARGS])
    assert (seq, code) == (15, protocol.ErrorCode.PROTOCOL)
    assert "COUNT takes no key" in body[0]
    # deep nesting and absurd lengths on a fan-out op (decoded by the broker)
    mget = protocol.encode_request(Request(Op.MGET, b"", [[b"k"]], cid, 13))
    for body_bytes in (
        b"\x91" * 100_000 + b"\x90",
        b"\xdd\xff\xff\xff\xff",
        b"\x91" * 20 + b"\x90",
    ):
        seq, code, _ = ask([mget[0], body_bytes])
        assert seq == 13
        assert code in (protocol.ErrorCode.PROTOCOL, protocol.ErrorCode.INVALID_REQUEST)
    # wrong frame count: answered (seq 0, the header was not read)
    seq, code, body = ask([b"only one frame"])
    assert (seq, code) == (0, protocol.ErrorCode.PROTOCOL)
    assert "2 frames after the identity, got 1" in body[0]
    # version 1's three frames [header, key, body]
    seq, code, body = ask([good[0][: protocol.REQUEST_HEADER.size], b"k", protocol.NO_ARGS])
    assert (seq, code) == (0, protocol.ErrorCode.PROTOCOL)
    assert "got 3" in body[0]
    # a head shorter than the fixed header
    seq, code, body = ask([good[0][:10], protocol.NO_ARGS])
    assert (seq, code) == (0, protocol.ErrorCode.PROTOCOL)
    assert "header is 10 bytes" in body[0]
    # and a well-formed GET still works, its value sent as it is (form 1)
    key = b"hostile:v2"
    put_reply = ask_raw(protocol.encode_request(Request(Op.PUT, key, [b"\x07", None], cid, 16)))
    assert protocol.decode_reply(put_reply) == (16, None)
    got = ask_raw(protocol.encode_request(Request(Op.GET, key, [], cid, 17)))
    assert got == [
        protocol.REPLY_HEADER.pack(protocol.VERSION, 0, protocol.FORM_VALUE, 17),
        b"\x07",
    ]
