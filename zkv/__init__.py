"""zkv: a sharded, replicated key-value store for Python, built on ZeroMQ.

>>> import zkv
>>> kv = zkv.Client("tcp://127.0.0.1:7400")
>>> kv["greeting"] = "hello"
>>> kv.get("greeting")
'hello'

A cluster whose config has a ``security`` section takes CURVE keys:
``zkv.Client.from_config("config/secure.yaml", client="app")``, or
``zkv.Client(endpoint, curve=zkv.CurveKeys.load("keys/app.key_secret"))``.
"""

from zkv.client import AsyncClient, Client
from zkv.errors import (
    ClientClosed,
    ConfigError,
    CoordinationError,
    FolderLocked,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    KeyTooLarge,
    LocalProtocolError,
    OutOfMemory,
    PermissionDenied,
    ProtocolError,
    RemoteProtocolError,
    RequestError,
    ServerError,
    StorageCorrupted,
    StorageError,
    StorageFull,
    Timeout,
    TooManyRequests,
    TransportError,
    Unavailable,
    ValueTooLarge,
    ZkvError,
)
from zkv.protocol import Consistency
from zkv.security import CurveKeys

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosed",
    "ConfigError",
    "Consistency",
    "CoordinationError",
    "CurveKeys",
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
    "__version__",
]
