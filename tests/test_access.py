"""zkv.access: what each role and prefix set allows, request by request (pure, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from zkv.access import ClientRole, Grant, ops_of
from zkv.errors import PermissionDenied
from zkv.protocol import Op, Request


def request(op: Op, key: bytes = b"", *args: Any) -> Request:
    return Request(op, key=key, args=list(args))


def allowed(grant: Grant, req: Request) -> bool:
    try:
        grant.check(req)
    except PermissionDenied:
        return False
    return True


def test_roles_include_each_other() -> None:
    read, write, admin = (ops_of(r) for r in ClientRole)
    assert read < write < admin
    assert {Op.GET, Op.EXISTS, Op.TTL, Op.MGET, Op.KEYS, Op.COUNT, Op.STATUS} <= read
    assert not {Op.PUT, Op.DELETE, Op.CREATE, Op.CAS, Op.EXPIRE, Op.MPUT} & read
    assert {Op.PUT, Op.DELETE, Op.CREATE, Op.CAS, Op.EXPIRE, Op.MPUT} <= write
    assert not {Op.CLEAR, Op.FAILOVER} & write
    assert {Op.CLEAR, Op.FAILOVER} <= admin


@pytest.mark.parametrize(
    ("role", "op", "ok"),
    [
        ("read", Op.GET, True),
        ("read", Op.PUT, False),
        ("read", Op.CLEAR, False),
        ("write", Op.PUT, True),
        ("write", Op.FAILOVER, False),
        ("admin", Op.CLEAR, True),
        ("admin", Op.FAILOVER, True),
    ],
)
def test_each_role_allows_its_operations(role: str, op: Op, ok: bool) -> None:
    key = b"k" if op in (Op.GET, Op.PUT) else b""
    assert allowed(Grant.of("c", role), request(op, key)) is ok


def test_the_message_names_the_client_its_role_and_the_role_needed() -> None:
    with pytest.raises(PermissionDenied, match=r"client 'c' has role read.*needs write"):
        Grant.of("c", "read").check(request(Op.PUT, b"k", b"v", None))


def test_prefixes_hold_key_by_key_all_or_nothing() -> None:
    app = Grant.of("app", "write", ["app:", "jobs:"])
    assert allowed(app, request(Op.PUT, b"app:1", b"v", None))
    assert allowed(app, request(Op.GET, b"jobs:1"))
    assert not allowed(app, request(Op.GET, b"other"))
    assert not allowed(app, request(Op.GET, b"ap"))  # a prefix of a prefix is outside
    assert allowed(app, request(Op.MGET, b"", [b"app:1", b"jobs:2"]))
    assert not allowed(app, request(Op.MGET, b"", [b"app:1", b"x"]))
    assert not allowed(app, request(Op.MPUT, b"", [[b"app:1", b"v"], [b"x", b"v"]], None))
    batch = [[int(Op.PUT), b"app:1", b"v", None], [int(Op.GET), b"x"]]
    assert not allowed(app, request(Op.BATCH, b"", batch))
    with pytest.raises(PermissionDenied) as caught:
        app.check(request(Op.MPUT, b"", [[b"app:1", b"v"], [b"x", b"v"]], None))
    assert caught.value.key == b"x"
    assert "nothing of this request was applied" in str(caught.value)


def test_pipelines_count_as_the_operations_inside_them() -> None:
    reader = Grant.of("r", "read")
    reads = [[int(Op.GET), b"a"], [int(Op.EXISTS), b"b"], [int(Op.TTL), b"c"]]
    assert allowed(reader, request(Op.BATCH, b"", reads))
    assert not allowed(reader, request(Op.BATCH, b"", [*reads, [int(Op.DELETE), b"d"]]))


def test_listing_and_whole_store_operations_with_prefixes() -> None:
    app = Grant.of("app", "admin", ["app:"])
    assert allowed(app, request(Op.KEYS, b"", b"app:", None, 100))
    assert allowed(app, request(Op.KEYS, b"", b"app:users:", None, 100))
    assert not allowed(app, request(Op.KEYS, b"", b"", None, 100))
    assert not allowed(app, request(Op.KEYS, b"", b"ap", None, 100))
    assert not allowed(app, request(Op.COUNT))
    assert not allowed(app, request(Op.CLEAR))
    assert allowed(app, request(Op.STATUS))
    everything = Grant.of("all", "admin")
    assert allowed(everything, request(Op.COUNT))
    assert allowed(everything, request(Op.KEYS, b"", b"", None, 100))
