"""The public names of the zkv package and the shape of its exception tree."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest

import zkv
import zkv.errors
from zkv.client import Client
from zkv.protocol import Consistency

ERROR_CLASS_NAMES = sorted(
    name
    for name in zkv.errors.__all__
    if inspect.isclass(getattr(zkv.errors, name))
    and issubclass(getattr(zkv.errors, name), BaseException)
)


def test_error_class_names_are_what_we_expect() -> None:
    # guards the derivation above: ErrorCode, ERROR_CLASSES and error_from_code are not errors
    assert ERROR_CLASS_NAMES == [
        "ClientClosed",
        "ConfigError",
        "CoordinationError",
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
    ]


def test_all_is_exactly_the_public_names() -> None:
    expected = {
        "AsyncClient",
        "Client",
        "Consistency",
        "CurveKeys",
        "__version__",
        *ERROR_CLASS_NAMES,
    }
    assert set(zkv.__all__) == expected
    assert len(zkv.__all__) == len(set(zkv.__all__))  # no duplicates


def test_every_error_class_in_errors_all_is_a_class_defined_there() -> None:
    for name in zkv.errors.__all__:
        assert hasattr(zkv.errors, name), name
    every_class = {
        name
        for name, obj in vars(zkv.errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, zkv.errors.ZkvError)
        and obj.__module__ == "zkv.errors"
    }
    assert every_class == set(ERROR_CLASS_NAMES)


@pytest.mark.parametrize("name", ERROR_CLASS_NAMES)
def test_error_class_importable_from_zkv(name: str) -> None:
    assert getattr(zkv, name) is getattr(zkv.errors, name)
    namespace: dict[str, object] = {}
    exec(f"from zkv import {name}", namespace)
    assert namespace[name] is getattr(zkv.errors, name)


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from zkv import *", namespace)
    assert set(zkv.__all__) - {"__version__"} <= set(namespace)


def test_public_objects() -> None:
    assert zkv.Client is Client
    assert zkv.Consistency is Consistency
    assert zkv.__version__ == "0.1.0"
    assert zkv.__version__ == importlib.metadata.version("zkv")


@pytest.mark.parametrize("name", ERROR_CLASS_NAMES)
def test_every_error_is_a_zkv_error(name: str) -> None:
    assert issubclass(getattr(zkv, name), zkv.ZkvError)
    assert issubclass(getattr(zkv, name), Exception)


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (zkv.KeyNotFound, KeyError),
        (zkv.Timeout, TimeoutError),
        (zkv.KeyTooLarge, ValueError),
        (zkv.ValueTooLarge, ValueError),
        (zkv.ConfigError, ValueError),
        (zkv.InvalidRequest, ValueError),
        (zkv.KeyNotFound, zkv.RequestError),
        (zkv.KeyExists, zkv.RequestError),
        (zkv.ServerError, zkv.RequestError),
        (zkv.LocalProtocolError, zkv.ProtocolError),
        (zkv.RemoteProtocolError, zkv.ProtocolError),
        (zkv.Timeout, zkv.TransportError),
        (zkv.Unavailable, zkv.TransportError),
        (zkv.ClientClosed, zkv.TransportError),
    ],
)
def test_error_bases(cls: type, base: type) -> None:
    assert issubclass(cls, base)


def test_catch_as_builtin() -> None:
    with pytest.raises(KeyError):
        raise zkv.KeyNotFound("gone")
    with pytest.raises(TimeoutError):
        raise zkv.Timeout("slow")
    with pytest.raises(ValueError, match="too big"):
        raise zkv.ValueTooLarge("too big")


def test_str_has_no_quotes() -> None:
    assert str(zkv.KeyNotFound("msg")) == "msg"
    assert str(zkv.KeyNotFound("key 'k' not found")) == "key 'k' not found"
    assert str(KeyError("msg")) == "'msg'"  # what KeyError would have printed
    assert str(zkv.ZkvError()) == ""
    assert str(zkv.Timeout("late")) == "late"


def test_error_attributes() -> None:
    err = zkv.KeyNotFound("msg", key=b"k")
    assert err.message == "msg"
    assert err.key == b"k"
    assert err.seq is None
    assert err.args == ("msg",)
    assert err.code is zkv.errors.ErrorCode.KEY_NOT_FOUND
    assert zkv.ZkvError("x").key is None
    assert zkv.RequestError.code is None


def test_code_of() -> None:
    assert zkv.errors.code_of(zkv.KeyExists("x")) is zkv.errors.ErrorCode.KEY_EXISTS
    assert zkv.errors.code_of(zkv.ConfigError("x")) is zkv.errors.ErrorCode.SERVER_ERROR
    assert zkv.errors.code_of(zkv.RemoteProtocolError("x")) is zkv.errors.ErrorCode.PROTOCOL


def test_error_from_code() -> None:
    err = zkv.errors.error_from_code(1, "gone", b"k")
    assert type(err) is zkv.KeyNotFound
    assert (err.message, err.key) == ("gone", b"k")
    err = zkv.errors.error_from_code(0, "ok?")
    assert type(err) is zkv.RequestError  # OK is not an error class
    assert str(err) == "error code 0: ok?"
    assert type(zkv.errors.error_from_code(1000, "?")) is zkv.RequestError
