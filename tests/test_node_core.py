"""NodeCore: a node's request handling without sockets: frames in, replies and records out."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from zkv import protocol
from zkv.config import LimitsConfig
from zkv.errors import (
    ErrorCode,
    StorageFull,
)
from zkv.node.core import NodeCore
from zkv.protocol import Consistency, NodeState, Op, Request
from zkv.storage.engine import RecordOp, Store

CLIENT = b"c" * 16


def core(**limits: int) -> NodeCore:
    node = NodeCore(Store(16384), LimitsConfig(**limits), 16384, "s0a", "s0")
    node.replica_state = None  # serving as the primary
    node.epoch = 3
    return node


def ask(node: NodeCore, request: Request, epoch: int | None = 3) -> tuple[int, Any, bool]:
    """(error code, result or error message, strong) of one request."""
    reply, strong = node.handle(protocol.encode_request(request), epoch)
    assert len(reply) == 2
    seq, code, form = protocol.decode_reply_header(reply[0])
    assert seq == request.seq
    if code == 0 and form == protocol.FORM_VALUE:
        assert request.op is Op.GET  # only a stored value is sent as it is
        return code, reply[1], strong
    assert form == protocol.FORM_MSGPACK
    body = msgpack.unpackb(reply[1])
    return code, body if code == 0 else body[0], strong


def put(key: bytes, value: object, seq: int, **kw: Any) -> Request:
    return Request(Op.PUT, key, [msgpack.packb(value), None], CLIENT, seq, **kw)


def test_a_write_is_applied_once_and_its_retry_gets_the_first_outcome() -> None:
    node = core()
    records: list[tuple[int, Any]] = []
    node.store.subscribe(lambda seq, record: records.append((seq, record[0])))
    create = Request(Op.CREATE, b"k", [msgpack.packb(1), None], CLIENT, 7)
    assert ask(node, create)[:2] == (0, None)
    assert ask(node, create)[:2] == (0, None)  # not KeyExists: the same request again
    assert [op for _, op in records] == [RecordOp.SET, RecordOp.RESULT]
    other = Request(Op.CREATE, b"k", [msgpack.packb(2), None], CLIENT, 8)
    assert ask(node, other)[0] == ErrorCode.KEY_EXISTS


def test_strong_writes_say_so_and_reads_are_never_held() -> None:
    node = core()
    assert ask(node, put(b"k", 1, 1))[2] is True
    assert ask(node, put(b"k", 1, 2, consistency=Consistency.EVENTUAL))[2] is False
    assert ask(node, Request(Op.GET, b"k", [], CLIENT, 3))[1:] == (msgpack.packb(1), False)


def test_a_get_replies_with_the_stored_value_itself() -> None:
    node = core()
    value = msgpack.packb({"a": [1, b"\xff"]})
    ask(node, Request(Op.PUT, b"k", [value, None], CLIENT, 1))
    reply, strong = node.handle(protocol.encode_request(Request(Op.GET, b"k", [], CLIENT, 2)), 3)
    assert reply[0] == protocol.REPLY_HEADER.pack(protocol.VERSION, 0, protocol.FORM_VALUE, 2)
    assert reply[1] == value and not strong
    assert protocol.decode_reply(reply) == (2, value)
    # a missing key is a msgpack nil, not an empty value
    reply, _ = node.handle(protocol.encode_request(Request(Op.GET, b"no", [], CLIENT, 3)), 3)
    assert reply[0] == protocol.REPLY_HEADER.pack(protocol.VERSION, 0, protocol.FORM_MSGPACK, 3)
    assert protocol.decode_reply(reply) == (3, None)
    # an empty stored value is still a value
    ask(node, Request(Op.PUT, b"e", [b"", None], CLIENT, 4))
    reply, _ = node.handle(protocol.encode_request(Request(Op.GET, b"e", [], CLIENT, 5)), 3)
    assert protocol.decode_reply_header(reply[0]) == (5, 0, protocol.FORM_VALUE)
    assert protocol.decode_reply(reply) == (5, b"")


def test_a_retried_writes_first_outcome_has_a_v2_reply_header() -> None:
    node = core()
    create = Request(Op.CREATE, b"k", [msgpack.packb(1), None], CLIENT, 9)
    first, _ = node.handle(protocol.encode_request(create), 3)
    seq = node.store.seq
    again, strong = node.handle(protocol.encode_request(create), 3)
    assert node.store.seq == seq  # not applied again: the remembered outcome
    assert again == first and strong
    assert len(again[0]) == protocol.REPLY_HEADER.size == 11
    assert protocol.decode_reply_header(again[0]) == (9, 0, protocol.FORM_MSGPACK)


def test_a_write_stamped_with_another_epoch_is_refused() -> None:
    node = core()
    code, message, _ = ask(node, put(b"k", 1, 1), epoch=2)
    assert code == ErrorCode.UNAVAILABLE and "epoch 2" in message
    assert node.store.get(b"k") is None


def test_a_replica_serves_reads_only_while_following() -> None:
    node = core()
    ask(node, put(b"k", 1, 1))
    node.replica_state = NodeState.FOLLOWING
    assert ask(node, put(b"k", 2, 2))[0] == ErrorCode.UNAVAILABLE
    eventual = Consistency.EVENTUAL
    assert ask(node, Request(Op.GET, b"k", [], CLIENT, 3, eventual))[0] == 0
    # a strong read belongs to the primary (a broker that lags may still send one here)
    code, message, _ = ask(node, Request(Op.GET, b"k", [], CLIENT, 5))
    assert code == ErrorCode.UNAVAILABLE and "strong reads go to its primary" in message
    node.replica_state = NodeState.SYNCING
    code, message, _ = ask(node, Request(Op.GET, b"k", [], CLIENT, 4, eventual))
    assert code == ErrorCode.UNAVAILABLE and "syncing" in message


def test_a_primary_without_the_controllers_lease_serves_no_strong_operation() -> None:
    node = core()
    ask(node, put(b"k", 1, 1))
    node.lease_ok = False  # several brokers: the controller's lease ran out
    code, message, _ = ask(node, put(b"k", 2, 2))
    assert code == ErrorCode.UNAVAILABLE and "lease from the controller ran out" in message
    assert ask(node, Request(Op.GET, b"k", [], CLIENT, 3))[0] == ErrorCode.UNAVAILABLE
    assert ask(node, Request(Op.GET, b"k", [], CLIENT, 4, Consistency.EVENTUAL))[0] == 0
    assert node.store.get(b"k") is not None and node.store.seq == 2  # nothing changed


def test_writes_are_refused_while_the_log_cannot_take_them() -> None:
    node = core()
    node.refusal = StorageFull("disk full")
    assert ask(node, put(b"k", 1, 1))[:2] == (ErrorCode.STORAGE_FULL, "disk full")
    assert node.store.seq == 0
    assert ask(node, Request(Op.GET, b"k", [], CLIENT, 2))[0] == 0  # reads go on


def test_limits_are_checked_before_anything_changes() -> None:
    node = core(max_key_bytes=4, max_value_bytes=8)
    assert ask(node, put(b"toolong", 1, 1))[0] == ErrorCode.KEY_TOO_LARGE
    assert ask(node, put(b"k", "x" * 20, 2))[0] == ErrorCode.VALUE_TOO_LARGE
    items = [[b"a", msgpack.packb(1)], [b"b", msgpack.packb("y" * 20)]]
    assert ask(node, Request(Op.MPUT, b"", [items, None], CLIENT, 3))[0] == (
        ErrorCode.VALUE_TOO_LARGE
    )
    assert node.store.seq == 0 and len(node.store) == 0


def test_a_batch_runs_in_order_with_errors_in_place() -> None:
    node = core()
    ops = [
        [Op.PUT, b"a", [msgpack.packb(1), None]],
        [Op.GET, b"a", []],
        [Op.CREATE, b"a", [msgpack.packb(2), None]],
        [Op.MGET, b"a", [[b"a"]]],  # not a single-key op
        [Op.DELETE, b"b", []],
    ]
    code, results, _ = ask(node, Request(Op.BATCH, b"", [ops], CLIENT, 1))
    assert code == 0
    assert results[0] == [0, None]
    assert results[1] == [0, msgpack.packb(1)]
    assert results[2][0] == ErrorCode.KEY_EXISTS
    assert results[3][0] == ErrorCode.INVALID_REQUEST
    assert results[4] == [0, False]


GOOD_HEAD = protocol.encode_request(Request(Op.GET, b"k", [], CLIENT, 6))[0]


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"x"],
        [b"x", protocol.NO_ARGS],  # a head shorter than the header
        [b"\x00" * 31 + b"k", b"\xc1"],
        [b"\xff" * 31 + b"k", protocol.NO_ARGS],
        [GOOD_HEAD, b"\xc1"],  # a good head, a body that is not msgpack
        [GOOD_HEAD[:31], b"k", protocol.NO_ARGS],  # version 1's three frames
        [GOOD_HEAD, protocol.NO_ARGS, b""],
    ],
)
def test_malformed_requests_are_answered_with_an_error(frames: list[bytes]) -> None:
    node = core()
    reply, strong = node.handle(frames, 3)
    assert len(reply) == 2
    _seq, code, form = protocol.decode_reply_header(reply[0])
    assert code != 0 and not strong
    assert form == protocol.FORM_MSGPACK
    assert node.errors == 1 and node.requests == 1
