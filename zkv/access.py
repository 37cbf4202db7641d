"""Who may do what: client roles and key prefixes, checked before a request is forwarded.

A ``Grant`` is what one client (a CURVE key of ``security.clients``, or an HTTP bearer
token of ``http.tokens``) may do:

- a role: ``read`` (get, exists, ttl, mget, keys, count, status, watch), ``write`` (read plus put,
  delete, create, cas, expire, mput), ``admin`` (write plus clear, failover and reshard);
- optionally key prefixes: then every key it reads or writes must start with one of them.

``Grant.check(request)`` raises ``PermissionDenied`` naming what is refused. A pipeline is
checked operation by operation (a ``read`` client may run a pipeline of reads) and a
multi-key request key by key, all or nothing: one refused key refuses the whole request,
so nothing of it is applied. ``keys(prefix)`` is allowed when ``prefix`` lies inside one
of the grant's prefixes; ``count`` and ``clear`` cover every key, so a grant with prefixes
may not use them.

Pure: no sockets; the broker and the HTTP gateway both use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from zkv.errors import PermissionDenied, show_key
from zkv.protocol import Op, Request

__all__ = ["ClientRole", "Grant", "ops_of"]


class ClientRole(StrEnum):
    """What a client may do, each role including the one before."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


#: A pipeline (BATCH) is open to every role: the operations inside it are checked.
_READ: Final = frozenset(
    {Op.GET, Op.EXISTS, Op.TTL, Op.MGET, Op.KEYS, Op.COUNT, Op.STATUS, Op.BATCH, Op.WATCH}
)
_WRITE: Final = _READ | {Op.PUT, Op.DELETE, Op.CREATE, Op.CAS, Op.EXPIRE, Op.MPUT}
_ADMIN: Final = _WRITE | {Op.CLEAR, Op.FAILOVER, Op.RESHARD}
_OPS: Final = {ClientRole.READ: _READ, ClientRole.WRITE: _WRITE, ClientRole.ADMIN: _ADMIN}
#: Operations that cover every key: a grant limited to prefixes may not use them.
_WHOLE_STORE: Final = frozenset({Op.COUNT, Op.CLEAR})
_OP_BY_CODE: Final = {int(op): op for op in Op}


def ops_of(role: ClientRole) -> frozenset[Op]:
    """The operations ``role`` allows (a pipeline counts as the operations inside it)."""
    return _OPS[role]


@dataclass(frozen=True, slots=True)
class Grant:
    """One client's role and key prefixes (none: every key)."""

    name: str
    role: ClientRole
    prefixes: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, name: str, role: str, prefixes: Iterable[str] = ()) -> Grant:
        """A grant from the config's words: a role name and text prefixes (UTF-8)."""
        return cls(name, ClientRole(role), tuple(p.encode() for p in prefixes))

    def allows_key(self, key: bytes) -> bool:
        """Whether ``key`` lies inside the grant's prefixes."""
        return not self.prefixes or key.startswith(self.prefixes)

    def check_op(self, op: Op, key: bytes | None = None) -> None:
        """Refuse ``op`` (on ``key``, for a single-key op) unless the grant allows it."""
        if op not in _OPS[self.role]:
            raise PermissionDenied(
                f"{op.name}: client {self.name!r} has role {self.role.value}, which does not "
                f"allow it (needs {_least_role(op).value})"
            )
        if self.prefixes and op in _WHOLE_STORE:
            raise PermissionDenied(
                f"{op.name}: client {self.name!r} may only use keys starting with "
                f"{self._shown_prefixes()}, and {op.name} covers every key"
            )
        if key is not None and not self.allows_key(key):
            raise self._outside(op, key)

    def check(self, request: Request) -> None:
        """Refuse ``request`` whole unless every operation and key in it is allowed."""
        op = request.op
        if op is Op.BATCH:
            for entry in request.args[0]:
                inner = _OP_BY_CODE.get(entry[0]) if entry and type(entry[0]) is int else None
                if inner is None:
                    continue  # malformed: the node answers it as such
                self.check_op(inner, entry[1] if type(entry[1]) is bytes else None)
            return
        if op is Op.MGET:
            self.check_op(op)
            self._check_keys(op, request.args[0])
        elif op is Op.MPUT:
            self.check_op(op)
            self._check_keys(op, (item[0] for item in request.args[0]))
        elif op is Op.KEYS:
            self.check_op(op)
            prefix = request.args[0]
            if self.prefixes and not (type(prefix) is bytes and self.allows_key(prefix)):
                raise PermissionDenied(
                    f"KEYS: client {self.name!r} may only list keys starting with "
                    f"{self._shown_prefixes()}; ask for one of those prefixes"
                )
        else:
            self.check_op(op, request.key if request.key or op in _SINGLE else None)

    def narrow(self, prefixes: Iterable[bytes]) -> list[bytes]:
        """The prefixes of a watch on ``prefixes`` that this grant may read: each one inside
        one of the grant's prefixes, or one of the grant's inside it (a watch on ``b""`` by
        a client limited to ``a:`` and ``b:`` watches ``a:`` and ``b:``). Empty: nothing
        the watch covers is readable (the caller refuses it)."""
        self.check_op(Op.WATCH)
        if not self.prefixes:
            return list(dict.fromkeys(prefixes))
        narrowed: list[bytes] = []
        for prefix in prefixes:
            if prefix.startswith(self.prefixes):
                narrowed.append(prefix)
            else:
                narrowed += [mine for mine in self.prefixes if mine.startswith(prefix)]
        return list(dict.fromkeys(narrowed))

    def _check_keys(self, op: Op, keys: Iterable[Any]) -> None:
        if not self.prefixes:
            return
        for key in keys:
            if type(key) is bytes and not self.allows_key(key):
                raise self._outside(op, key)

    def _outside(self, op: Op, key: bytes) -> PermissionDenied:
        return PermissionDenied(
            f"{op.name} {show_key(key)}: client {self.name!r} may only use keys starting with "
            f"{self._shown_prefixes()}; nothing of this request was applied",
            key=key,
        )

    def _shown_prefixes(self) -> str:
        return ", ".join(show_key(p) for p in self.prefixes)


_SINGLE: Final = frozenset(
    {Op.GET, Op.PUT, Op.DELETE, Op.CREATE, Op.EXISTS, Op.CAS, Op.EXPIRE, Op.TTL}
)


def _least_role(op: Op) -> ClientRole:
    return next((role for role in ClientRole if op in _OPS[role]), ClientRole.ADMIN)
