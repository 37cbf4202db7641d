"""Shared routing state and the controller lease of several brokers, kept in etcd.

With a ``coordination`` section in the config, any number of brokers share one routing
state (slot map, nodes, primaries and epochs, the move in progress, the map ``version``)
and at most one of them, the **controller**, makes decisions. This module owns the two
etcd keys under ``coordination.etcd.prefix``:

``<prefix>/routing``
    The routing state as one JSON document, in the shape of the single broker's
    ``routing.json``: ``{"version", "slots": {shard: [[first, last], ...]}, "nodes":
    {shard: [name, ...]}, "shards": {shard: {"primary", "epoch"}}, "move"}``.
    ``EtcdState.save`` writes it in one etcd transaction that compares the key's
    ``mod_revision`` with the revision the caller loaded (0: the key must be absent), and,
    given a ``Fence``, that the controller key is still the one the caller created; so a
    deposed controller can never overwrite a newer decision. ``poll`` asks for the key only
    if it changed since a known revision: one small request that returns no document while
    nothing changed.

``<prefix>/controller``
    The controller's name, attached to an etcd lease of ``lease_ttl_s``.
    ``ControllerLease`` campaigns for it (put-if-absent in a transaction), keeps the lease
    alive and steps down (revokes it) on ``stop``. The caller drives it with ``tick(now)``
    from its own loop; nothing runs in the background. A controller trusts its lease only
    until ``LeaseTimer.deadline``: three quarters of the TTL after the last keep-alive that
    etcd answered was *sent*. etcd renews a lease when the keep-alive arrives, so the lease
    cannot expire before ``sent + TTL``: the controller thinks itself deposed a quarter of
    the TTL (0.5 s by default) before etcd could give the key to another broker.

The timing rules are pure (``LeaseTimer``, clock passed in) and the document checks too
(``encode_routing`` / ``decode_routing``); ``EtcdDriver`` is the thin layer that talks to
etcd. Every request has a timeout (``coordination.etcd.timeout_s`` per endpoint, each
endpoint tried once), and every failure is a ``CoordinationError`` naming the endpoints.

**Why etcd3gw.** etcd's v3 API is reached through etcd3gw, the OpenStack client of etcd's
gRPC-JSON gateway (``/v3/``, present since etcd 3.4): pure Python over ``requests``, typed,
maintained, and with no gRPC or protobuf to keep in step, which is what broke ``etcd3``
(0.12.0, 2020: its generated code refuses current protobuf). Of the gRPC clients,
``etcd-sdk-python`` (the maintained fork of ``etcd3``) works but does not declare its
protobuf dependency and pulls in grpcio, and ``aetcd`` is asyncio-only while brokers run a
synchronous ZeroMQ poll loop. Each etcd3gw call is one HTTP request with a timeout, which
fits a caller-driven ``tick``. Its watch (a streaming request read by a thread, with no
timeout and no reconnection) is not used: ``EtcdState.poll`` replaces it.

Neither ``EtcdDriver`` nor the classes above are thread-safe beyond one lock around each
request: drive them from one thread.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from zkv.errors import CoordinationError

if TYPE_CHECKING:
    from etcd3gw.client import Etcd3Client

    from zkv.config import EtcdConfig

__all__ = [
    "ControllerLease",
    "EtcdDriver",
    "EtcdState",
    "Fence",
    "KeyInfo",
    "LeaseTimer",
    "decode_routing",
    "encode_routing",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_URL = re.compile(r"^http://(?P<host>[^:/\s\[\]]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})$")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^\"')]+)")
_ROUTING_KEYS = frozenset({"version", "slots", "nodes", "shards", "move"})


# --------------------------------------------------------------------------- pure parts


def encode_routing(doc: dict[str, Any]) -> bytes:
    """The routing document as stored in etcd (compact JSON); ``ValueError`` if it does not
    have the shape described in the module docstring (the caller's bug)."""
    problem = _routing_problem(doc)
    if problem:
        raise ValueError(f"routing document: {problem}")
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_routing(data: bytes, where: str = "routing") -> dict[str, Any]:
    """The routing document stored as ``data`` at key ``where``; ``CoordinationError`` if it
    is not JSON of the expected shape (someone else wrote the key)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CoordinationError(f"etcd key {where} does not hold JSON: {exc}") from None
    problem = _routing_problem(doc)
    if problem:
        raise CoordinationError(f"etcd key {where} is not a zkv routing document: {problem}")
    assert isinstance(doc, dict)
    return doc


def _routing_problem(doc: object) -> str:
    """What is wrong with the shape of ``doc`` ("" if nothing)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    missing = sorted({"version", "slots", "nodes", "shards"} - doc.keys())
    if missing:
        return f"{missing[0]} is missing"
    unknown = sorted(doc.keys() - _ROUTING_KEYS)
    if unknown:
        return f"unknown key {unknown[0]!r}"
    if type(doc["version"]) is not int or doc["version"] < 0:
        return "version must be an integer of at least 0"
    slots, nodes, shards = doc["slots"], doc["nodes"], doc["shards"]
    if not isinstance(slots, dict) or not all(
        isinstance(runs, list)
        and all(
            isinstance(run, list) and len(run) == 2 and all(type(s) is int for s in run)
            for run in runs
        )
        for runs in slots.values()
    ):
        return "slots must map each shard to [[first, last], ...] runs"
    if not isinstance(nodes, dict) or not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names)
        for names in nodes.values()
    ):
        return "nodes must map each shard to a list of node names"
    if not isinstance(shards, dict) or not all(
        isinstance(s, dict)
        and isinstance(s.get("primary"), str)
        and type(s.get("epoch")) is int
        and s["epoch"] >= 0
        for s in shards.values()
    ):
        return "shards must map each shard to {primary, epoch}"
    if doc.get("move") is not None and not isinstance(doc["move"], dict):
        return "move must be an object or null"
    return ""


@dataclass
class LeaseTimer:
    """When a lease holder must send keep-alives, and until when it may trust its lease.

    Pure: every method takes the time (``time.monotonic()`` seconds) from the caller. A
    lease granted or renewed by a request *sent* at ``t`` with a TTL of ``ttl_s`` cannot
    expire in etcd before ``t + ttl_s`` (etcd starts the TTL when the request arrives);
    the holder trusts it until ``deadline = t + trust_fraction * ttl_s``, the rest being a
    margin for pauses between checking ``valid`` and acting on it. Keep-alives are due
    every ``keepalive_fraction * ttl_s`` since the last attempt, so a few may fail before
    the deadline passes.
    """

    keepalive_fraction: float = 0.25
    trust_fraction: float = 0.75
    #: The TTL etcd granted (0: no lease held).
    ttl_s: float = 0.0
    #: When the last request that etcd answered with a live lease was sent.
    sent_at: float | None = None
    #: When the last keep-alive (or grant) was attempted, answered or not.
    attempted_at: float = -math.inf

    def granted(self, sent_at: float, ttl_s: float) -> None:
        """A grant (or keep-alive) sent at ``sent_at`` was answered with ``ttl_s``."""
        self.ttl_s = float(ttl_s)
        self.sent_at = sent_at
        self.attempted_at = max(self.attempted_at, sent_at)

    renewed = granted

    def attempted(self, now: float) -> None:
        """A keep-alive is being sent at ``now`` (its answer may never come)."""
        self.attempted_at = now

    def lost(self) -> None:
        """The lease is gone (revoked, expired, or given up)."""
        self.ttl_s = 0.0
        self.sent_at = None
        self.attempted_at = -math.inf

    @property
    def deadline(self) -> float | None:
        """Until when the lease may be trusted (None: no lease)."""
        if self.sent_at is None:
            return None
        return self.sent_at + self.trust_fraction * self.ttl_s

    def valid(self, now: float) -> bool:
        """Whether the lease may still be trusted at ``now``."""
        deadline = self.deadline
        return deadline is not None and now < deadline

    def keepalive_due(self, now: float) -> bool:
        """Whether a keep-alive should be sent at ``now``."""
        return self.sent_at is not None and now >= self.attempted_at + (
            self.keepalive_fraction * self.ttl_s
        )


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of being the controller for a transaction: the controller key as its holder
    created it. A save made with it fails once the key has expired or been taken over."""

    key: str
    create_revision: int


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One etcd key as a range request returns it."""

    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


# --------------------------------------------------------------------------- etcd driver


class EtcdDriver:
    """The few etcd v3 calls zkv needs, through etcd3gw, with a timeout on each.

    ``endpoints`` are etcd client URLs (``http://HOST:PORT``); a request goes to the one
    that answered last and moves on to the next when one cannot be reached, each tried
    once (so a call takes at most ``len(endpoints) * timeout_s`` plus connection setup).
    Errors are ``CoordinationError``; etcd's answers to transactions are returned as
    etcd3gw gives them (JSON, base64 keys and values, 64-bit numbers as strings).
    """

    def __init__(self, endpoints: Sequence[str], timeout_s: float = 0.5) -> None:
        try:
            from etcd3gw.client import Etcd3Client
        except ImportError as exc:  # pragma: no cover - the extra is part of the test extra
            raise CoordinationError(
                "coordination needs the etcd3gw package: pip install 'zkv[etcd]'"
            ) from exc
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = tuple(endpoints)
        self.timeout_s = timeout_s
        self._clients: list[Etcd3Client] = []
        for url in self.endpoints:
            m = _URL.fullmatch(url)
            if m is None:
                raise ValueError(f"{url!r} is not an etcd client URL (http://HOST:PORT)")
            self._clients.append(
                # api_path fixed: etcd 3.4 and later serve /v3/; no discovery request
                Etcd3Client(
                    host=m["host"].strip("[]"),
                    port=int(m["port"]),
                    timeout=timeout_s,
                    api_path="/v3/",
                )
            )
        self._current = 0
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: EtcdConfig) -> EtcdDriver:
        """A driver for ``coordination.etcd``."""
        return cls(config.endpoints, config.timeout_s)

    def close(self) -> None:
        """Close the HTTP connections (the driver may still be used; it reconnects)."""
        for client in self._clients:
            client.session.close()

    def _call(self, what: str, fn: Callable[[Etcd3Client], _T]) -> _T:
        """``fn`` on the endpoints in turn until one answers; ``CoordinationError`` if none
        does, or if etcd refuses the request."""
        from etcd3gw import exceptions as e
        from requests import RequestException

        unreachable = (e.ConnectionFailedError, e.ConnectionTimeoutError, e.InternalServerError)
        problems: list[str] = []
        with self._lock:
            for i in range(len(self._clients)):
                index = (self._current + i) % len(self._clients)
                try:
                    result = fn(self._clients[index])
                except (*unreachable, RequestException) as exc:
                    problems.append(f"{self.endpoints[index]}: {_describe(exc)}")
                    continue
                except e.Etcd3Exception as exc:
                    raise CoordinationError(
                        f"etcd at {self.endpoints[index]} refused {what}: {_describe(exc)}"
                    ) from exc
                except (ValueError, KeyError, TypeError) as exc:
                    raise CoordinationError(
                        f"etcd at {self.endpoints[index]} answered {what} unexpectedly: {exc!r}"
                    ) from exc
                self._current = index
                return result
        raise CoordinationError(
            f"etcd unreachable ({what}, timeout {self.timeout_s:g} s): {'; '.join(problems)}; "
            "is etcd running at coordination.etcd.endpoints?"
        )

    def get(self, key: str, *, newer_than: int = 0) -> KeyInfo | None:
        """The key (None if absent, or if its ``mod_revision`` is not above ``newer_than``)."""

        def call(c: Etcd3Client) -> list[tuple[bytes, Any]]:
            if newer_than:
                return c.get(key, metadata=True, min_mod_revision=newer_than + 1)
            return c.get(key, metadata=True)

        found = self._call(f"get {key}", call)
        if not found:
            return None
        value, meta = found[0]
        return KeyInfo(
            value=value,
            mod_revision=int(meta["mod_revision"]),
            create_revision=int(meta["create_revision"]),
            lease=int(meta.get("lease", 0)),
        )

    def txn(
        self,
        what: str,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """One transaction (etcd's ``Txn``); etcd's answer as JSON."""
        payload = {"compare": compare, "success": success, "failure": failure}
        return dict(self._call(what, lambda c: c.transaction(payload)))

    def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease of ``ttl_s`` whole seconds: ``(lease id, granted TTL)``; etcd may
        grant more than asked (its minimum is 2 s with its default election timeout)."""
        result = self._call(
            "lease grant", lambda c: c.post(c.get_url("/lease/grant"), json={"TTL": ttl_s})
        )
        return int(result["ID"]), int(result["TTL"])

    def keepalive(self, lease_id: int) -> int:
        """Renew the lease: its TTL again, or 0 if etcd no longer knows it (expired)."""
        result = self._call(
            "lease keep-alive",
            lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease_id}),
        )
        return max(0, int(result["result"].get("TTL", 0)))

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease (deleting its keys); a lease etcd no longer knows is fine."""
        from etcd3gw import exceptions as e

        def call(c: Etcd3Client) -> None:
            try:
                c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease_id})
            except e.Etcd3Exception as exc:
                if "lease not found" not in (exc.detail_text or ""):
                    raise

        self._call("lease revoke", call)


def _describe(exc: BaseException) -> str:
    """An etcd3gw or requests exception in one short line."""
    detail = getattr(exc, "detail_text", None)
    text = " ".join(str(detail or exc or type(exc).__name__).split())
    if m := _ERRNO.search(text):  # requests nests the reason three deep
        return m[1].strip()
    if "timed out" in text.lower():
        return "timed out"
    return text[:300]


def _b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def _fence_compare(fence: Fence | None) -> list[dict[str, Any]]:
    if fence is None:
        return []
    return [
        {
            "key": _b64(fence.key),
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": str(fence.create_revision),
        }
    ]


# --------------------------------------------------------------------------- routing state


class EtcdState:
    """The routing document under ``<prefix>/routing``: load, save by revision, poll.

    Revisions are etcd's ``mod_revision`` of the key: 0 while it is absent, then growing
    with each save (never reused), so "the revision I loaded" is the whole precondition.
    """

    def __init__(self, driver: EtcdDriver, prefix: str) -> None:
        self.driver = driver
        self.key = f"{prefix}/routing"

    def load(self) -> tuple[dict[str, Any] | None, int]:
        """``(document, revision)``; ``(None, 0)`` if no broker has saved one yet."""
        info = self.driver.get(self.key)
        if info is None:
            return None, 0
        return decode_routing(info.value, self.key), info.mod_revision

    def save(
        self, doc: dict[str, Any], expected_revision: int, fence: Fence | None = None
    ) -> int | None:
        """Write ``doc`` if the key is still at ``expected_revision`` (0: still absent) and,
        with ``fence``, the controller key is still the fence's; the new revision, or None
        if refused (someone saved first or the fence is gone: load again and decide again).

        One transaction: it happens completely or not at all. ``CoordinationError`` if etcd
        cannot be reached; then the save may or may not have happened (load to find out).
        """
        data = encode_routing(doc)
        compare: list[dict[str, Any]] = [
            {
                "key": _b64(self.key),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": str(expected_revision),
            },
            *_fence_compare(fence),
        ]
        put = {"request_put": {"key": _b64(self.key), "value": _b64(data)}}
        result = self.driver.txn(f"save {self.key}", compare, [put], [])
        if not result.get("succeeded", False):
            return None
        return int(result["header"]["revision"])

    def poll(self, known_revision: int) -> tuple[dict[str, Any], int] | None:
        """``(document, revision)`` if the key changed after ``known_revision``, else None.

        While nothing changed etcd answers with a header only, so brokers can poll often
        (every 0.1 s is a few hundred bytes a second).
        """
        info = self.driver.get(self.key, newer_than=known_revision)
        if info is None:
            return None
        return decode_routing(info.value, self.key), info.mod_revision


# --------------------------------------------------------------------------- controller


class ControllerLease:
    """At most one controller among the brokers: the holder of ``<prefix>/controller``.

    Drive it with ``tick(now)`` from the broker's loop, at least every
    ``lease_ttl_s / 8`` (0.25 s by default): while not controller it checks whether the key
    is free (every ``lease_ttl_s / 4``) and campaigns for it; while controller it sends
    the keep-alives that are due. ``is_controller(now)`` answers from the local deadline
    alone (no request), so it turns False on its own when keep-alives stop getting through,
    before etcd could let another broker take the key. ``stop()`` steps down at once.
    A tick makes at most four requests, each bounded by the driver's timeout; ``tick``
    never raises for etcd trouble: ``last_error`` holds the last problem (None once a
    request succeeds again).
    """

    def __init__(
        self,
        driver: EtcdDriver,
        prefix: str,
        name: str,
        lease_ttl_s: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.driver = driver
        self.key = f"{prefix}/controller"
        self.name = name
        self.lease_ttl_s = lease_ttl_s
        self.timer = LeaseTimer()
        self._clock = clock
        self._lease_id: int | None = None
        self._create_revision = 0
        self._next_campaign = -math.inf
        #: The controller's name as last seen in etcd (None: no controller seen).
        self.holder: str | None = None
        #: The last etcd problem met by ``tick`` (None after a successful request).
        self.last_error: CoordinationError | None = None

    def is_controller(self, now: float | None = None) -> bool:
        """Whether this broker holds the controller key and may trust it at ``now``."""
        now = self._clock() if now is None else now
        return self._lease_id is not None and self.timer.valid(now)

    def fence(self, now: float | None = None) -> Fence | None:
        """The fence for ``EtcdState.save`` while controller, else None."""
        if not self.is_controller(now):
            return None
        return Fence(self.key, self._create_revision)

    def tick(self, now: float | None = None) -> bool:
        """Do what is due at ``now`` (read from ``clock`` just before the call; an earlier
        reading only makes the deadline earlier); whether this broker is the controller."""
        now = self._clock() if now is None else now
        if self._lease_id is not None and not self.timer.valid(now):
            log.warning(
                "controller %s: no keep-alive reached etcd within %.1f s: stepping down "
                "(last problem: %s)",
                self.name,
                self.timer.trust_fraction * self.timer.ttl_s,
                self.last_error,
            )
            self._forget()  # the lease expires by itself in etcd; no request to wait on
        if self._lease_id is not None:
            if self.timer.keepalive_due(now):
                self._keep_alive(now)
        elif now >= self._next_campaign:
            self._campaign(now)
        return self.is_controller(now)

    def stop(self) -> None:
        """Step down: revoke the lease, which deletes the key so another broker can take
        over at its next tick. If etcd cannot be reached the lease simply expires."""
        lease_id = self._lease_id
        self._forget()
        if lease_id is not None:
            try:
                self.driver.revoke(lease_id)
            except CoordinationError as exc:
                self.last_error = exc
                log.warning("controller %s: could not revoke its lease: %s", self.name, exc)
            else:
                log.info("controller %s: stepped down", self.name)

    def _forget(self) -> None:
        self._lease_id = None
        self._create_revision = 0
        self.timer.lost()
        if self.holder == self.name:
            self.holder = None

    def _keep_alive(self, now: float) -> None:
        assert self._lease_id is not None
        self.timer.attempted(now)
        try:
            ttl = self.driver.keepalive(self._lease_id)
            info = self.driver.get(self.key) if ttl else None
        except CoordinationError as exc:
            self.last_error = exc  # the deadline stays; ``tick`` deposes us once it passes
            return
        self.last_error = None
        if not ttl or info is None or info.create_revision != self._create_revision:
            log.warning("controller %s: lost the controller key: stepping down", self.name)
            self._forget()
            self.holder = None if info is None else info.value.decode("utf-8", "replace")
            return
        self.timer.renewed(now, ttl)

    def _campaign(self, now: float) -> None:
        self._next_campaign = now + self.timer.keepalive_fraction * self.lease_ttl_s
        try:
            info = self.driver.get(self.key)
            if info is not None:
                self.holder = info.value.decode("utf-8", "replace")
                self.last_error = None
                return
            lease_id, ttl = self.driver.grant(math.ceil(self.lease_ttl_s))
        except CoordinationError as exc:
            self.last_error = exc
            return
        key = _b64(self.key)
        try:
            result = self.driver.txn(
                f"campaign for {self.key}",
                [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                [{"request_put": {"key": key, "value": _b64(self.name), "lease": str(lease_id)}}],
                [{"request_range": {"key": key}}],
            )
        except CoordinationError as exc:
            # the put may have happened: give the lease back (or let it expire)
            self.last_error = exc
            self._revoke_quietly(lease_id)
            return
        self.last_error = None
        if not result.get("succeeded", False):
            self.holder = _holder_from(result)
            self._revoke_quietly(lease_id)
            return
        self._lease_id = lease_id
        self._create_revision = int(result["header"]["revision"])
        self.timer.granted(now, ttl)
        self.holder = self.name
        log.info(
            "controller %s: became the controller (lease %x, TTL %d s)", self.name, lease_id, ttl
        )

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.driver.revoke(lease_id)
        except CoordinationError as exc:
            self.last_error = exc


def _holder_from(result: dict[str, Any]) -> str | None:
    """The controller's name from a failed campaign's range response."""
    for response in result.get("responses", []):
        for kv in response.get("response_range", {}).get("kvs", []):
            return base64.b64decode(kv.get("value", "")).decode("utf-8", "replace")
    return None
