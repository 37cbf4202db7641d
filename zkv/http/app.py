"""The gateway's aiohttp application: routes, JSON in and out, errors, metrics, ``serve``.

The routes and their semantics are documented in ``zkv.http`` (the package docstring) and,
for machines, in the OpenAPI document ``zkv.http.openapi.openapi_document()`` served at
``/openapi.json``. Every handler talks to the cluster through one ``zkv.AsyncClient``; one
middleware turns every exception into a JSON error (``{"error": {"code", "message"}}``) and
counts the request in the app's metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from aiohttp import hdrs, web

from zkv.access import Grant
from zkv.client import AsyncClient
from zkv.client._core import MISSING, Key, check_ttl, key_bytes
from zkv.errors import (
    ClientClosed,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    KeyTooLarge,
    LocalProtocolError,
    OutOfMemory,
    PermissionDenied,
    StorageError,
    StorageFull,
    Timeout,
    TooManyRequests,
    Unavailable,
    ValueTooLarge,
    ZkvError,
    show_key,
)
from zkv.http.auth import REALM, Tokens, Unauthorized
from zkv.http.codec import (
    check_text,
    decode_cursor,
    encode_cursor,
    json_type,
    key_from_json,
    key_to_json,
    parse_json,
    value_from_json,
    value_to_json,
)
from zkv.http.metrics import GatewayMetrics
from zkv.http.openapi import openapi_document
from zkv.http.watch import STREAMS, close_streams, watch_stream
from zkv.protocol import MAX_KEY_FRAME_BYTES, Op, Request
from zkv.security import CurveKeys

__all__ = [
    "CLIENT",
    "DEFAULT_LIMIT",
    "MAX_BODY_BYTES",
    "MAX_LIMIT",
    "MAX_LINE_BYTES",
    "METRICS",
    "PUBLIC",
    "ROUTES",
    "STATIC_DIR",
    "TOKENS",
    "create_app",
    "serve",
]

log = logging.getLogger(__name__)

#: The app's ``AsyncClient`` and ``GatewayMetrics``.
CLIENT: Final = web.AppKey("zkv_client", AsyncClient)
METRICS: Final = web.AppKey("zkv_metrics", GatewayMetrics)
#: The bearer tokens the app accepts (none: no token asked); ``replace`` them to reload.
TOKENS: Final = web.AppKey("zkv_tokens", Tokens)
#: The grant of the request's bearer token (absent when the app asks for no token).
_GRANT: Final = web.RequestKey("zkv_grant", Grant)
_OPENAPI: Final = web.AppKey("zkv_openapi", dict)
_OPERATIONS: Final = web.AppKey("zkv_operations", dict)

#: Largest request body accepted (bytes); larger bodies get 413 ``RequestTooLarge``.
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
#: Longest request line accepted (aiohttp's default is 8190 bytes): room for a key of the
#: largest key on the wire, percent-encoded, in the path or the query.
MAX_LINE_BYTES: Final = 3 * MAX_KEY_FRAME_BYTES + 4096
#: Keys per page of ``GET /api/kv`` when ``limit`` is not given, and the largest ``limit``.
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 10_000
#: ``GET /api/kv`` stops filling a page after this long (seconds) and answers with fewer
#: than ``limit`` keys and a cursor: a sparse prefix over many keys takes many scan steps.
LIST_FILL_S: Final = 1.0
#: The status page's files (``GET /`` is ``index.html``; ``GET /static/{name}`` the others).
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
#: A static file's name: one path segment of safe characters, no leading dot (so no ``..``).
_STATIC_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_STATIC_TYPES: Final = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain",
}
#: The page loads only what the gateway serves: no CDN, no inline script or style.
_STATIC_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_CONSISTENCIES: Final = ("strong", "eventual")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- helpers


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, allow_nan=False)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=_dumps)


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


async def _body(request: web.Request) -> Any:
    return parse_json(await request.read())


async def _object(
    request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The request body as a JSON object with the ``required`` fields and no unknown one."""
    doc = await _body(request)
    if not isinstance(doc, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {json_type(doc)}")
    missing = [f'"{name}"' for name in required if name not in doc]
    if missing:
        raise InvalidRequest(f"the request body lacks the field {', '.join(missing)}")
    unknown = sorted(set(doc) - set(required) - set(optional))
    if unknown:
        known = ", ".join(f'"{n}"' for n in (*required, *optional))
        raise InvalidRequest(f"unknown field {unknown[0]!r} in the request body (known: {known})")
    return doc


def _allow(request: web.Request, op: Op, key: Key = b"", args: list[Any] | None = None) -> None:
    """Refuse (``PermissionDenied``, 403) what the request's token does not allow, before
    the cluster is asked: ``op`` on ``key``, or with the wire ``args`` of a multi-key op."""
    grant = request.get(_GRANT)
    if grant is not None:
        grant.check(Request(op, key_bytes(key), args or []))


def _query(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once (None if absent)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidRequest(f"query parameter {name!r} is given {len(values)} times")
    return check_text(values[0], f"query parameter {name!r}") if values else None


def _ttl(value: Any, where: str) -> float | None:
    """The client's TTL check, in the gateway's words: every failure is a 400."""
    return check_ttl(value, where, wrong_type=InvalidRequest, describe=json_type)


def _query_ttl(request: web.Request) -> float | None:
    text = _query(request, "ttl")
    if text is None or text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        raise InvalidRequest(f"query parameter 'ttl' is not a number: {text!r}") from None
    return _ttl(number, "query parameter 'ttl'")


def _consistency(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if value not in _CONSISTENCIES:
        raise InvalidRequest(f'{where} must be "strong" or "eventual", got {value!r}')
    return str(value)


def _query_consistency(request: web.Request) -> str | None:
    return _consistency(_query(request, "consistency"), "query parameter 'consistency'")


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where} must be true or false, not {json_type(value)}")
    return value


def _query_key(request: web.Request) -> str:
    text = _query(request, "key")
    if text is None:
        raise InvalidRequest("query parameter 'key' is required")
    return key_from_json(text, "query parameter 'key'")


def _path_key(request: web.Request) -> str:
    return key_from_json(request.match_info["key"], "the key in the path")


def _limit(request: web.Request) -> int:
    text = _query(request, "limit")
    if text is None or text == "":
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise InvalidRequest(f"query parameter 'limit' is not an integer: {text!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"query parameter 'limit' must be 1 to {MAX_LIMIT}, got {limit}")
    return limit


async def _scan(
    client: AsyncClient,
    prefix: str,
    position: list[Any] | None,
    limit: int,
    consistency: str | None,
) -> tuple[list[Key], list[Any] | None]:
    """Up to ``limit`` keys from ``position`` on, and the position after them.

    It resumes the broker's own key walk (``[shard, slot, after]``) instead of reading the
    listing again from its start: ``AsyncClient.keys()`` cannot start mid-way, so this
    drives the client's ``keys_page`` call, as ``keys()`` itself does.
    """
    keys: list[Key] = []
    deadline = time.monotonic() + LIST_FILL_S
    while True:
        page, position = await client.keys_page(
            prefix, position, limit - len(keys), consistency=consistency
        )
        keys.extend(page)
        if position is None or len(keys) >= limit or time.monotonic() >= deadline:
            return keys, position


# --------------------------------------------------------------------------- handlers


async def set_key(request: web.Request) -> web.Response:
    """``POST /api/kv``, ``POST /put``, ``POST /set``: create or overwrite a key."""
    doc = await _object(request, ("key", "value"), ("ttl", "consistency", "create"))
    key = key_from_json(doc["key"], '"key"')
    value = value_from_json(doc["value"], '"value"')
    ttl = _ttl(doc.get("ttl"), '"ttl"')
    consistency = _consistency(doc.get("consistency"), '"consistency"')
    only_create = _flag(doc.get("create"), '"create"')
    _allow(request, Op.CREATE, key)
    if not only_create:
        _allow(request, Op.PUT, key)
    client = request.app[CLIENT]
    try:
        await client.create(key, value, ttl, consistency=consistency)
    except KeyExists:
        if only_create:
            raise
        await client.put(key, value, ttl, consistency=consistency)
        return _json({"message": f"key {show_key(key)} overwritten"})
    return _json({"message": f"key {show_key(key)} created"}, status=201)


async def put_key(request: web.Request) -> web.Response:
    """``PUT /api/kv/{key}``: the body is the value."""
    key = _path_key(request)
    value = value_from_json(await _body(request), "the value")
    ttl = _query_ttl(request)
    consistency = _query_consistency(request)
    _allow(request, Op.PUT, key)
    await request.app[CLIENT].put(key, value, ttl, consistency=consistency)
    return _json({"message": f"key {show_key(key)} stored"})


async def _get(request: web.Request, key: str) -> web.Response:
    consistency = _query_consistency(request)
    _allow(request, Op.GET, key)
    value = await request.app[CLIENT].get(key, MISSING, consistency=consistency)
    if value is MISSING:
        raise KeyNotFound(f"key {show_key(key)} not found")
    return _json({"key": key, "value": value_to_json(value)})


async def _delete(request: web.Request, key: str) -> web.Response:
    consistency = _query_consistency(request)
    _allow(request, Op.DELETE, key)
    if not await request.app[CLIENT].delete(key, consistency=consistency):
        raise KeyNotFound(f"key {show_key(key)} not found")
    return _json({"message": f"key {show_key(key)} deleted"})


async def get_key(request: web.Request) -> web.Response:
    """``GET /api/kv/{key}``."""
    return await _get(request, _path_key(request))


async def get_key_query(request: web.Request) -> web.Response:
    """``GET /get?key=K``."""
    return await _get(request, _query_key(request))


async def delete_key(request: web.Request) -> web.Response:
    """``DELETE /api/kv/{key}``."""
    return await _delete(request, _path_key(request))


async def delete_key_query(request: web.Request) -> web.Response:
    """``DELETE /delete?key=K``."""
    return await _delete(request, _query_key(request))


async def list_keys(request: web.Request) -> web.Response:
    """``GET /api/kv?prefix=&limit=&cursor=``: one page of the key listing."""
    prefix = _query(request, "prefix")
    limit = _limit(request)
    cursor = _query(request, "cursor")
    consistency = _query_consistency(request)
    position: list[Any] | None = None
    if cursor:
        cursor_prefix, position = decode_cursor(cursor)
        if prefix is not None and prefix != cursor_prefix:
            raise InvalidRequest(
                f"the cursor continues the listing of prefix {cursor_prefix!r}, not {prefix!r}"
            )
        prefix = cursor_prefix
    prefix = prefix or ""
    _allow(request, Op.KEYS, args=[key_bytes(prefix), None, limit])
    keys, position = await _scan(request.app[CLIENT], prefix, position, limit, consistency)
    return _json(
        {
            "keys": [key_to_json(k) for k in keys],
            "cursor": None if position is None else encode_cursor(prefix, position),
        }
    )


async def batch_put(request: web.Request) -> web.Response:
    """``POST /api/kv/batch``: store many keys (``mput``)."""
    doc = await _object(request, ("items",), ("ttl", "consistency"))
    items = doc["items"]
    if not isinstance(items, dict):
        raise InvalidRequest(f'"items" must be an object of keys to values, not {json_type(items)}')
    mapping: dict[Key, Any] = {
        key_from_json(k, '"items" key'): value_from_json(v, f'"items"[{k!r}]')
        for k, v in items.items()
    }
    ttl = _ttl(doc.get("ttl"), '"ttl"')
    consistency = _consistency(doc.get("consistency"), '"consistency"')
    # all or nothing: one key outside the token's prefixes refuses the whole batch
    _allow(request, Op.MPUT, args=[[(key_bytes(k), None) for k in mapping]])
    if mapping:
        await request.app[CLIENT].mput(mapping, ttl, consistency=consistency)
    return _json({"message": f"stored {len(mapping)} keys", "count": len(mapping)})


async def multi_get(request: web.Request) -> web.Response:
    """``POST /api/kv/mget``: the values of many keys, missing ones left out."""
    doc = await _object(request, ("keys",), ("consistency",))
    wanted = doc["keys"]
    if not isinstance(wanted, list):
        raise InvalidRequest(f'"keys" must be an array of strings, not {json_type(wanted)}')
    keys = [key_from_json(k, f'"keys"[{i}]') for i, k in enumerate(wanted)]
    consistency = _consistency(doc.get("consistency"), '"consistency"')
    _allow(request, Op.MGET, args=[[key_bytes(k) for k in keys]])
    values = await request.app[CLIENT].mget(keys, consistency=consistency) if keys else {}
    return _json({"values": {k: value_to_json(v) for k, v in values.items()}})


async def cluster_status(request: web.Request) -> web.Response:
    """``GET /api/status``: the broker's view of the cluster, as JSON."""
    _allow(request, Op.STATUS)
    return _json(value_to_json(await request.app[CLIENT].cluster_status()))


async def watch_feed(request: web.Request) -> web.StreamResponse:
    """``GET /api/watch?prefix=&cursor=&values=&snapshot=``: Server-Sent Events
    (``zkv.http.watch``)."""
    return await watch_stream(request, request.app[CLIENT], request.get(_GRANT))


async def openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return _json(request.app[_OPENAPI])


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the gateway's and the cluster's metrics for Prometheus."""
    _allow(request, Op.STATUS)
    status: dict[str, Any] | None
    try:
        status = await request.app[CLIENT].cluster_status()
    except ZkvError as exc:
        log.warning("metrics without the cluster's status: %s: %s", type(exc).__name__, exc)
        status = None
    body, content_type = request.app[METRICS].render(status, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def _static_response(name: str) -> web.Response:
    """The file ``name`` of ``STATIC_DIR``; 404 for any other name (no path traversal).

    ``name`` must be a plain file name (no ``/``, no leading dot) of a regular file directly
    in the folder: the path is never joined from anything else.
    """
    if _STATIC_NAME.fullmatch(name) is None or name not in _static_names():
        raise web.HTTPNotFound()
    path = STATIC_DIR / name
    content_type = _STATIC_TYPES.get(path.suffix.lower(), "application/octet-stream")
    charset = "utf-8" if content_type.startswith("text/") or content_type.endswith("+xml") else None
    return web.Response(
        body=path.read_bytes(),
        content_type=content_type,
        charset=charset,
        headers=_STATIC_HEADERS,
    )


def _static_names() -> frozenset[str]:
    """The names of the regular files directly in ``STATIC_DIR``."""
    try:
        return frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file())
    except OSError:
        return frozenset()


async def status_page(request: web.Request) -> web.Response:
    """``GET /``: the cluster's status page (``static/index.html``)."""
    return _static_response("index.html")


async def static_file(request: web.Request) -> web.Response:
    """``GET /static/{name}``: a file of the status page (HTML, CSS, JavaScript)."""
    return _static_response(request.match_info["name"])


#: Every route: (method, path, handler, operation name for the metrics).
ROUTES: Final[tuple[tuple[str, str, Handler, str], ...]] = (
    ("POST", "/api/kv/batch", batch_put, "batch"),
    ("POST", "/api/kv/mget", multi_get, "mget"),
    ("POST", "/api/kv", set_key, "set"),
    ("GET", "/api/kv", list_keys, "list"),
    ("PUT", "/api/kv/{key:.+}", put_key, "put"),
    ("GET", "/api/kv/{key:.+}", get_key, "get"),
    ("DELETE", "/api/kv/{key:.+}", delete_key, "delete"),
    ("POST", "/put", set_key, "set"),
    ("POST", "/set", set_key, "set"),
    ("GET", "/get", get_key_query, "get"),
    ("DELETE", "/delete", delete_key_query, "delete"),
    ("GET", "/api/status", cluster_status, "status"),
    ("GET", "/api/watch", watch_feed, "watch"),
    ("GET", "/openapi.json", openapi, "openapi"),
    ("GET", "/metrics", metrics, "metrics"),
    ("GET", "/", status_page, "page"),
    ("GET", "/static/{name}", static_file, "static"),
)
#: The operations (of ``ROUTES``) open without a bearer token: they hold no data. Every
#: other route needs one when the app has tokens (and a request matching no route is
#: answered 404 or 405 without one).
PUBLIC: Final = frozenset({"openapi", "page", "static"})


# --------------------------------------------------------------------------- errors

#: The HTTP status of each ``ZkvError`` class, the first match winning (subclasses first).
#:
#: A node that cannot log a write to its disk did not apply it, keeps serving reads, and
#: takes writes again by itself once it can: ``StorageFull`` (its disk full, or under
#: ``storage.min_free_bytes`` free) is 507 Insufficient Storage, whose meaning (RFC 4918:
#: the server cannot store what the request needs) it is exactly; any other
#: ``StorageError`` (an I/O error of the device) is 503 Service Unavailable, a temporary
#: condition of the service the client may retry later, rather than 500 (kept for bugs of
#: the gateway itself) or 502 (the cluster failing on the request, ``ServerError``).
#: ``OutOfMemory`` (the write would take the node past its ``memory.max_bytes`` and its
#: ``memory.policy`` could not make room) is 507 too: the server cannot store what the
#: request needs, and nothing was changed; reads and deletes go on.
#: ``TooManyRequests`` (the broker holds ``limits.max_inflight_per_client`` requests of the
#: gateway unanswered) is 429 Too Many Requests. ``PermissionDenied`` is 403 Forbidden,
#: whether the gateway refused the request for its bearer token or the broker refused it
#: for the gateway's own key (401 is kept for a missing or unknown token).
_STATUS: Final[tuple[tuple[type[ZkvError], int], ...]] = (
    (KeyNotFound, 404),
    (KeyExists, 409),
    (KeyTooLarge, 413),
    (ValueTooLarge, 413),
    (PermissionDenied, 403),
    (InvalidRequest, 400),
    (LocalProtocolError, 400),
    (TooManyRequests, 429),
    (OutOfMemory, 507),
    (StorageFull, 507),
    (StorageError, 503),
    (Timeout, 504),
    (Unavailable, 503),
    (ClientClosed, 503),
)
#: Any other ``ZkvError`` (``ServerError``, a malformed reply, ...) is the cluster's fault.
_UPSTREAM_FAILED: Final = 502
_HTTP_CODES: Final = {
    400: "InvalidRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestTooLarge",
}


def status_of(exc: ZkvError) -> int:
    """The HTTP status answering ``exc`` (507 for ``StorageFull`` and ``OutOfMemory``, 503
    for another ``StorageError``: see ``_STATUS``)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return _UPSTREAM_FAILED


def _zkv_error(request: web.Request, exc: ZkvError) -> web.Response:
    status = status_of(exc)
    code = type(exc).__name__
    if status >= 500:
        log.warning("%s %s: %s: %s", request.method, request.path, code, exc)
    return _error(status, code, str(exc) or code)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    code = _HTTP_CODES.get(status) or "".join(exc.reason.title().split())
    if status == 404:
        message = f"no route for {request.method} {request.path}; see /openapi.json"
    elif status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ())))
        message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    elif status == 413:
        message = (
            f"the request body is larger than the gateway accepts ({request.client_max_size} bytes)"
        )
    else:
        message = exc.text or exc.reason
    response = _error(status, code, message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure as a JSON error, and count every request in the metrics."""
    start = time.perf_counter()
    outcome = "ok"
    route = request.match_info.route
    operation = request.app[_OPERATIONS].get(route, "unmatched")
    response: web.StreamResponse
    try:
        tokens = request.app[TOKENS]
        if tokens.required and operation not in PUBLIC and operation != "unmatched":
            request[_GRANT] = tokens.authenticate(request.headers.get(hdrs.AUTHORIZATION))
        response = await handler(request)
    except Unauthorized as exc:
        response = _error(401, _HTTP_CODES[401], str(exc))
        response.headers[hdrs.WWW_AUTHENTICATE] = REALM
        outcome = _HTTP_CODES[401]
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_error(request, exc)
        outcome = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
    except ZkvError as exc:
        response = _zkv_error(request, exc)
        outcome = type(exc).__name__
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        response = _error(500, "InternalError", "the gateway failed on this request; see its log")
        outcome = "InternalError"
    resource = route.resource
    request.app[METRICS].observe(
        operation=operation,
        outcome=outcome,
        route="unmatched" if resource is None else resource.canonical,
        method=request.method,
        status=response.status,
        seconds=time.perf_counter() - start,
    )
    return response


# --------------------------------------------------------------------------- the app


def create_app(
    client: AsyncClient, *, max_body_bytes: int = MAX_BODY_BYTES, tokens: Tokens | None = None
) -> web.Application:
    """The gateway's application, serving the cluster that ``client`` is connected to.

    The caller keeps ownership of ``client`` (the app never closes it). Each app has its own
    metrics registry, so several apps can live in one process. Request bodies over
    ``max_body_bytes`` are refused with 413. With ``tokens`` (non-empty), every route but
    ``PUBLIC`` ones needs a bearer token among them (401 otherwise) and is refused with
    403 ``PermissionDenied`` where the token's grant does not allow it, before the cluster
    is asked; ``tokens.replace`` changes them while the app serves.
    """
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[_middleware],
        handler_args={"max_line_size": MAX_LINE_BYTES},
    )
    app[CLIENT] = client
    app[TOKENS] = Tokens() if tokens is None else tokens
    app[METRICS] = GatewayMetrics()
    app[_OPENAPI] = openapi_document()
    app[STREAMS] = set()
    app.on_shutdown.append(close_streams)
    operations: dict[web.AbstractRoute, str] = {}
    for method, path, handler, operation in ROUTES:
        operations[app.router.add_route(method, path, handler)] = operation
    app[_OPERATIONS] = operations
    return app


async def serve(
    endpoint: str,
    host: str,
    port: int,
    *,
    timeout_s: float = 5.0,
    ready: Callable[[int], None] | None = None,
    consistency: str = "strong",
    max_request_bytes: int = 64 * 1024 * 1024,
    max_keys_per_request: int = 10_000,
    max_reply_bytes: int | None = None,
    curve: CurveKeys | None = None,
    ssl_context: ssl.SSLContext | None = None,
    tokens: Tokens | None = None,
) -> None:
    """Serve the gateway on ``host``:``port`` for the cluster whose broker is ``endpoint``.

    Runs until cancelled, then closes the listening socket and the cluster client. Port 0
    takes any free port; ``ready(port)`` is called once listening, with the port bound (the
    first socket's, should ``host`` resolve to several addresses). ``timeout_s`` is each
    cluster call's timeout (an expired call answers 504); ``consistency`` the default of
    requests that do not choose one, and ``max_request_bytes`` the largest request sent to
    the cluster (the config's ``defaults.consistency`` and ``limits.max_request_bytes``);
    ``max_keys_per_request``, ``max_reply_bytes`` and ``curve`` (the gateway's CURVE keys,
    for a cluster with a ``security`` section) as ``AsyncClient`` takes them.

    With ``ssl_context`` (``zkv.http.auth.server_context``) it serves HTTPS; with ``tokens``
    it asks for bearer tokens (see ``create_app``). The caller may reload both while it
    serves (``zkv.http.auth.reload_chain``, ``Tokens.replace``): open connections stay.
    """
    client = AsyncClient(
        endpoint,
        timeout_s=timeout_s,
        consistency=consistency,
        max_request_bytes=max_request_bytes,
        max_keys_per_request=max_keys_per_request,
        max_reply_bytes=max_reply_bytes,
        curve=curve,
    )
    try:
        tokens = Tokens() if tokens is None else tokens
        runner = web.AppRunner(create_app(client, tokens=tokens))
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
            bound = int(runner.addresses[0][1])
            scheme = "http" if ssl_context is None else "https"
            log.info(
                "zkv HTTP gateway on %s://%s:%d for %s (%s)",
                scheme,
                host,
                bound,
                endpoint,
                f"{len(tokens)} bearer tokens" if tokens.required else "no token asked",
            )
            if ready is not None:
                ready(bound)
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            await runner.cleanup()
    finally:
        await client.aclose()
