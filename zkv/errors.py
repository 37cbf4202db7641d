"""The zkv exception tree and the wire error codes that carry it.

Every failure a zkv user can see is a ``ZkvError``::

    ZkvError
    ├── ConfigError (ValueError)          bad YAML: names the file and the key path
    ├── StorageCorrupted                  a node's files are damaged beyond a torn tail
    ├── FolderLocked                      another live process uses the data folder
    ├── CoordinationError                 etcd (shared routing state) unreachable or refusing
    ├── ProtocolError                     malformed or unexpected frames
    │   ├── LocalProtocolError            we tried to send something invalid
    │   └── RemoteProtocolError           the peer sent something invalid
    ├── RequestError (.code, .key)        the store answered with an error code
    │   ├── KeyNotFound (KeyError)        the key is absent (or expired)
    │   ├── KeyExists                     create() on a key that is present
    │   ├── KeyTooLarge (ValueError)      key over limits.max_key_bytes
    │   ├── ValueTooLarge (ValueError)    value over limits.max_value_bytes
    │   ├── InvalidRequest (ValueError)   a well-formed request with bad arguments
    │   ├── ServerError                   the server failed while handling the request
    │   ├── TooManyRequests               over limits.max_inflight_per_client at the broker
    │   ├── PermissionDenied              the client's role or key prefixes do not allow it
    │   ├── OutOfMemory                   the write would pass the node's memory.max_bytes
    │   └── StorageError                  the node cannot log writes (an I/O error)
    │       └── StorageFull               ... because its disk is (nearly) full
    └── TransportError                    no answer could be had
        ├── Timeout (TimeoutError)        no reply within the call's timeout
        ├── Unavailable                   no live node serves the key's shard, or no broker
        └── ClientClosed                  the client was closed by its user

``ERROR_CLASSES`` maps each ``ErrorCode`` on the wire to one class and serves both
ends: a node raises ``KeyExists``, the reply carries ``ErrorCode.KEY_EXISTS``, and the
client raises ``KeyExists`` again. An unknown code becomes a plain ``RequestError``.

This module imports nothing from zkv.
"""

from __future__ import annotations

import contextlib
from enum import IntEnum
from pathlib import Path
from typing import ClassVar

__all__ = [
    "ERROR_CLASSES",
    "ClientClosed",
    "ConfigError",
    "CoordinationError",
    "ErrorCode",
    "FolderLocked",
    "InvalidRequest",
    "KeyExists",
    "KeyNotFound",
    "KeyTooLarge",
    "LocalProtocolError",
    "OutOfMemory",
    "PermissionDenied",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestError",
    "ServerError",
    "StorageCorrupted",
    "StorageError",
    "StorageFull",
    "Timeout",
    "TooManyRequests",
    "TransportError",
    "Unavailable",
    "ValueTooLarge",
    "ZkvError",
    "error_from_code",
    "show_key",
]


class ErrorCode(IntEnum):
    """One code per failure on the wire; 0 (``OK``) means success."""

    OK = 0
    KEY_NOT_FOUND = 1
    KEY_EXISTS = 2
    KEY_TOO_LARGE = 3
    VALUE_TOO_LARGE = 4
    INVALID_REQUEST = 5
    PROTOCOL = 6
    UNAVAILABLE = 7
    TIMEOUT = 8
    SERVER_ERROR = 9
    STORAGE_ERROR = 10
    STORAGE_FULL = 11
    TOO_MANY_REQUESTS = 12
    PERMISSION_DENIED = 13
    OUT_OF_MEMORY = 14


class ZkvError(Exception):
    """Base of every error zkv raises."""

    code: ClassVar[ErrorCode | None] = None

    def __init__(self, message: str = "", *, key: bytes | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        #: The sequence number of the request this error answers, where one was read.
        self.seq: int | None = None

    def __str__(self) -> str:
        return self.message


class ConfigError(ZkvError, ValueError):
    """The cluster's YAML file is missing, unreadable or invalid (the operator's fault)."""


class StorageCorrupted(ZkvError):
    """A node's data files are damaged in a way recovery will not guess about.

    The disk's or an operator's fault (a crash alone leaves at most a torn tail, which is cut).
    The message is one line naming the file and offset; ``zkv check --data DIR`` reports,
    and ``--repair`` cuts the damaged part (losing what follows it). Attributes, where the
    raiser knows them: ``path`` (the damaged file), ``offset`` (where in it), ``last_seq``
    (the highest sequence number the folder shows evidence of, from its file names and
    valid records; 0 if none), so a node can tell how much history it would lose.
    """

    def __init__(
        self,
        message: str = "",
        *,
        path: Path | None = None,
        offset: int | None = None,
        last_seq: int = 0,
    ) -> None:
        super().__init__(message)
        #: The damaged file, where known.
        self.path = path
        #: The byte offset of the damage in ``path``, where known.
        self.offset = offset
        #: The highest sequence number the damaged folder shows evidence of (0 if none).
        self.last_seq = last_seq


class FolderLocked(ZkvError):
    """Another live process holds the data folder's lock (``<folder>/LOCK``).

    The operator's fault: two processes were given the same folder (one node started
    twice, or two nodes sharing ``storage.dir`` and name), or the old process still runs.
    The message is one line naming the folder and the holder's PID; ``directory`` and
    ``pid`` (None if the holder had not written it yet) carry them.
    """

    def __init__(
        self, message: str = "", *, directory: Path | None = None, pid: int | None = None
    ) -> None:
        super().__init__(message)
        #: The locked data folder.
        self.directory = directory
        #: The holder's process id, as it wrote it into the lock file (None if unknown).
        self.pid = pid


class CoordinationError(ZkvError):
    """etcd, where several brokers keep their shared routing state, could not be reached in
    time or answered with an error (the network's, etcd's or the operator's fault, not the
    caller's). The message names the endpoints tried and the last problem; the state in
    etcd is unchanged unless etcd applied the request before the answer was lost, which
    the next ``load()`` shows.
    """


class ProtocolError(ZkvError):
    """Frames that do not follow the zkv wire format."""

    code = ErrorCode.PROTOCOL


class LocalProtocolError(ProtocolError):
    """We were about to send something invalid (the caller's fault)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid (the peer's fault)."""


class RequestError(ZkvError):
    """The store answered a request with an error code."""

    code: ClassVar[ErrorCode | None] = None


class KeyNotFound(RequestError, KeyError):
    """The key is absent or has expired."""

    code = ErrorCode.KEY_NOT_FOUND


class KeyExists(RequestError):
    """``create()`` found the key already present."""

    code = ErrorCode.KEY_EXISTS


class KeyTooLarge(RequestError, ValueError):
    """The key is longer than ``limits.max_key_bytes``; nothing was stored."""

    code = ErrorCode.KEY_TOO_LARGE


class ValueTooLarge(RequestError, ValueError):
    """The encoded value is longer than ``limits.max_value_bytes``; nothing was stored."""

    code = ErrorCode.VALUE_TOO_LARGE


class InvalidRequest(RequestError, ValueError):
    """A well-formed request whose arguments are wrong (the caller's fault)."""

    code = ErrorCode.INVALID_REQUEST


class ServerError(RequestError):
    """A broker or node failed while handling the request (zkv's fault); see its log."""

    code = ErrorCode.SERVER_ERROR


class TooManyRequests(RequestError):
    """The broker already holds ``limits.max_inflight_per_client`` of this client's requests
    unanswered: this one was refused at once and changed nothing. Read the replies (or wait
    for them) before sending more."""

    code = ErrorCode.TOO_MANY_REQUESTS


class PermissionDenied(RequestError):
    """The client's role (``read``, ``write``, ``admin``) or its key prefixes do not allow
    this request: it was refused whole and changed nothing (a multi-key request or a
    pipeline with one key outside the prefixes is refused entirely)."""

    code = ErrorCode.PERMISSION_DENIED


class OutOfMemory(RequestError):
    """The write would take the node past its ``memory.max_bytes`` and its ``memory.policy``
    could not make room (``noeviction``, or a ``volatile-*`` policy with no key that has a
    TTL): nothing was changed. Reads and deletes still work; delete keys, raise the limit or
    choose an evicting policy."""

    code = ErrorCode.OUT_OF_MEMORY


class StorageError(RequestError):
    """The node could not log the write to its disk (an I/O error, the device's fault), so it
    did not apply it; reads go on, and the node takes writes again by itself once it can."""

    code = ErrorCode.STORAGE_ERROR


class StorageFull(StorageError):
    """The node's disk is full, or below ``storage.min_free_bytes`` free: the write was not
    applied. Free space (or grow the volume); the node takes writes again by itself."""

    code = ErrorCode.STORAGE_FULL


class TransportError(ZkvError):
    """No answer could be had from the cluster."""


class Timeout(TransportError, TimeoutError):
    """No reply came within the call's timeout; a write's outcome is unknown."""

    code = ErrorCode.TIMEOUT


class Unavailable(TransportError):
    """No live node serves the key's shard, or the broker cannot be reached."""

    code = ErrorCode.UNAVAILABLE


class ClientClosed(TransportError):
    """The client was used after ``close()``."""


ERROR_CLASSES: dict[ErrorCode, type[ZkvError]] = {
    ErrorCode.KEY_NOT_FOUND: KeyNotFound,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.KEY_EXISTS: KeyExists,
    ErrorCode.KEY_TOO_LARGE: KeyTooLarge,
    ErrorCode.VALUE_TOO_LARGE: ValueTooLarge,
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.PROTOCOL: ProtocolError,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.SERVER_ERROR: ServerError,
    ErrorCode.STORAGE_ERROR: StorageError,
    ErrorCode.STORAGE_FULL: StorageFull,
    ErrorCode.TOO_MANY_REQUESTS: TooManyRequests,
    ErrorCode.OUT_OF_MEMORY: OutOfMemory,
}


def error_from_code(code: int, message: str, key: bytes | None = None) -> ZkvError:
    """The exception instance for a wire error ``code``; unknown codes give a ``RequestError``."""
    try:
        cls = ERROR_CLASSES[ErrorCode(code)]
    except (ValueError, KeyError):
        return RequestError(f"error code {code}: {message}", key=key)
    return cls(message, key=key)


def code_of(exc: ZkvError) -> ErrorCode:
    """The wire code for ``exc`` (``SERVER_ERROR`` for classes without one)."""
    return exc.code if exc.code is not None else ErrorCode.SERVER_ERROR


def show_key(key: str | bytes) -> str:
    """A key as people read it in messages: quoted, cut after 64 characters (or bytes) with
    ``...``.

    A ``str`` key, or a ``bytes`` key that is UTF-8 (as ``keys()`` would yield it), shows as
    text: ``show_key(b"user:1") == "'user:1'"``; another ``bytes`` key as bytes:
    ``show_key(b"\\xff") == "b'\\xff'"``. Every layer (storage, protocol, node, HTTP) words
    keys in its messages with this one function.
    """
    if isinstance(key, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            key = key.decode("utf-8")
    return repr(key[:64]) + ("..." if len(key) > 64 else "")
