"""The data commands: ``put``, ``get``, ``del``, ``keys`` and the rest."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zkv.cli._common import (
    EXIT_MISSING,
    EXIT_OK,
    _connect,
    _fail,
    _UsageError,
    config_path,
)
from zkv.errors import (
    KeyNotFound,
)

if TYPE_CHECKING:
    from zkv.security import CurveKeys


def _client(args: argparse.Namespace) -> Any:
    """The client of a data or operations command, from ``--connect`` or the config file,
    with the CURVE keys of ``--key`` / ``$ZKV_KEY`` (required when the file has a
    ``security`` section)."""
    from zkv.client import Client
    from zkv.config import load_config

    kwargs: dict[str, Any] = {}
    if args.timeout is not None:
        if not args.timeout > 0:
            raise _UsageError("--timeout must be a positive number of seconds")
        kwargs["timeout_s"] = args.timeout
    if args.connect:
        args.kv = Client(args.connect, curve=_curve(args), **kwargs)
    else:
        path = config_path(args.config)
        security = load_config(path).security
        if security is None:
            if args.key_file or args.server_key_file:  # $ZKV_KEY is for secured clusters only
                option = "--key" if args.key_file else "--server-key"
                raise _UsageError(
                    f"{path} has no security section (its links are not encrypted): drop {option}"
                )
            curve = None
        else:
            curve = _curve(args)
            if curve is None:
                example = security.secret_file(next(iter(security.clients)))
                raise _UsageError(
                    f"{path} has a security section: pass --key FILE (or set ZKV_KEY) with a "
                    f"client's secret key, e.g. {example}"
                )
        args.kv = Client.from_config(path, curve=curve, **kwargs)
    return args.kv


def _curve(args: argparse.Namespace) -> CurveKeys | None:
    """The client keys of ``--key`` (else ``$ZKV_KEY``) and ``--server-key`` (else
    ``$ZKV_SERVER_KEY``, else ``broker.key`` beside the secret key); None without a key."""
    from zkv.security import CurveKeys

    key = args.key_file or os.environ.get("ZKV_KEY")
    server = args.server_key_file or os.environ.get("ZKV_SERVER_KEY")
    if not key:
        if args.server_key_file:
            raise _UsageError("--server-key needs --key FILE (or ZKV_KEY), the client's own key")
        return None
    return CurveKeys.load(Path(key), Path(server) if server else None)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text} is out of the range of a double")
    return number


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (zkv stores only finite numbers)")


def _json_value(text: str, what: str) -> Any:
    """``text`` parsed as a JSON value zkv can store (no NaN or Infinity; ``{"$b64": ...}``
    is bytes, as in the HTTP API)."""
    from zkv.http.codec import value_from_json

    try:
        doc = json.loads(text, parse_float=_finite, parse_constant=_reject)
    except RecursionError:
        raise _UsageError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise _UsageError(f"{what} is not valid JSON: {exc}") from None
    return value_from_json(doc, what)


def _dumps(value: Any) -> str:
    """A stored value as one line of JSON (bytes as ``{"$b64": ...}``)."""
    from zkv.http.codec import value_to_json

    return json.dumps(value_to_json(value), ensure_ascii=False, allow_nan=False)


def _show_key(key: Any) -> str:
    from zkv.http.codec import key_to_json

    shown = key_to_json(key)
    return shown if isinstance(shown, str) else json.dumps(shown)


def _value_arg(text: str, as_json: bool, what: str = "VALUE") -> Any:
    if text == "-":
        text = sys.stdin.read()
        if not as_json:
            text = text.removesuffix("\n")
    return _json_value(text, what) if as_json else text


def _put(args: argparse.Namespace) -> int:
    value = _value_arg(args.value, args.json)
    _connect(args).put(args.key, value, ttl=args.ttl)
    print("OK")
    return EXIT_OK


def _create(args: argparse.Namespace) -> int:
    value = _value_arg(args.value, args.json)
    _connect(args).create(args.key, value, ttl=args.ttl)
    print("OK")
    return EXIT_OK


def _cas(args: argparse.Namespace) -> int:
    old = _value_arg(args.old, args.json, "OLD")
    new = _value_arg(args.new, args.json, "NEW")
    if _connect(args).cas(args.key, old, new):
        print("OK")
        return EXIT_OK
    return _fail(f"{args.key}: the value is not OLD (or the key is missing); not set", 1)


def _mput(args: argparse.Namespace) -> int:
    mapping = _value_arg(args.object, True, "OBJECT")
    if not isinstance(mapping, dict):
        raise _UsageError("OBJECT must be a JSON object of keys and values")
    if mapping:
        _connect(args).mput(mapping, ttl=args.ttl)
    print("OK")
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    kv = _connect(args)
    if len(args.key) == 1:
        print(_dumps(kv[args.key[0]]))
        return EXIT_OK
    found = kv.mget(args.key)
    missing = [key for key in args.key if key not in found]
    for key in args.key:
        print(_dumps(found[key]) if key in found else "")  # an empty line: missing
    sys.stdout.flush()
    for key in missing:
        print(f"zkv: key {key!r} not found", file=sys.stderr)
    return EXIT_MISSING if missing else EXIT_OK


def _del(args: argparse.Namespace) -> int:
    kv = _connect(args)
    if len(args.key) == 1:
        deleted = int(kv.delete(args.key[0]))
    else:
        with kv.pipeline() as p:
            for key in args.key:
                p.delete(key)
            deleted = sum(map(bool, p.execute()))
    print(deleted)
    return EXIT_OK


def _exists(args: argparse.Namespace) -> int:
    present = _connect(args).exists(args.key)
    print(int(present))
    return EXIT_OK if present else EXIT_MISSING


def _ttl(args: argparse.Namespace) -> int:
    kv = _connect(args)
    ttl = kv.ttl(args.key)
    if ttl is None:
        if not kv.exists(args.key):
            raise KeyNotFound(f"key {args.key!r} not found")
        print(-1)
    else:
        print(f"{ttl:.3f}")
    return EXIT_OK


def _expire(args: argparse.Namespace) -> int:
    if not _connect(args).expire(args.key, args.seconds):
        raise KeyNotFound(f"key {args.key!r} not found")
    print("OK")
    return EXIT_OK


def _count(args: argparse.Namespace) -> int:
    print(_connect(args).count())
    return EXIT_OK


def _clear(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise _UsageError("clear deletes every key: pass --yes to confirm (no terminal)")
        kv = _connect(args)
        answer = input(f"delete all {kv.count()} keys of the cluster at {kv.endpoint}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not cleared")
            return EXIT_OK
    _connect(args).clear()
    print("OK")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise _UsageError("--limit must be 0 or more")
    kv = _connect(args)
    for shown, key in enumerate(kv.keys(args.prefix)):
        if args.limit is not None and shown >= args.limit:
            break
        print(_show_key(key))
    return EXIT_OK
