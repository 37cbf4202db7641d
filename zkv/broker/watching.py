"""The broker's share of change feeds: which node a WATCH goes to, and what it may see.

A client sends one WATCH per shard (``protocol.Op.WATCH``, the shard named in its body).
The broker forwards it, like a single-key request, to that shard's primary, which answers
it at once or parks it (``zkv.node.watching``); the broker keeps nothing per watcher but
the request's in-flight entry, as for any request. With security on, the watch's prefixes
are first narrowed to those the client's grant may read (``Grant.narrow``), so the node
filters out every key the client may not see; a watch that covers nothing the client may
read is refused ``PermissionDenied``. Pure: no sockets.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import replace

from zkv.access import Grant
from zkv.errors import PermissionDenied, Unavailable, show_key
from zkv.protocol import Request

__all__ = ["watch_request"]


def watch_request(request: Request, grant: Grant | None, shards: Container[str]) -> Request:
    """``request`` (a decoded WATCH) as it goes to the node: its prefixes narrowed to
    ``grant``'s (None: every key). ``Unavailable`` if it names a shard not in ``shards``
    (the client's list is stale: it refreshes it and retries)."""
    shard = request.args[0]
    if shard not in shards:
        raise Unavailable(
            f"WATCH: no shard {shard!r} in this cluster (the topology changed); refresh the "
            "shard list and try again"
        )
    if grant is None:
        return request
    prefixes = grant.narrow(request.args[2])
    if not prefixes:
        shown = ", ".join(show_key(p) for p in request.args[2])
        raise PermissionDenied(
            f"WATCH {shown}: client {grant.name!r} may read none of these keys; watch a prefix "
            "inside its own"
        )
    args = list(request.args)
    args[2] = prefixes
    return replace(request, args=args)
