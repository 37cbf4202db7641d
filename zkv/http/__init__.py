"""The zkv HTTP gateway: a JSON API, an OpenAPI document and Prometheus metrics.

``serve(endpoint, host, port)`` runs it against the cluster whose broker is ``endpoint``
(``zkv http``; ``curve=`` the gateway's keys for a cluster with a ``security`` section,
``zkv http`` passes those of ``http.client``); ``create_app(client)`` builds the
``aiohttp.web.Application`` around an ``AsyncClient`` you own (for tests, or to mount it in
a larger app).

TLS and bearer tokens
=====================
With ``ssl_context=`` (``zkv http`` builds it from ``http.tls``: a PEM certificate chain and
its key; TLS 1.2 at least) it serves HTTPS. With ``tokens=`` (``zkv.http.auth.Tokens`` of
``http.tokens``, each token known by its SHA-256 only; ``zkv token`` makes one) every route
but ``/``, ``/static/{name}`` and ``/openapi.json`` needs ``Authorization: Bearer TOKEN``:
no token, another scheme or an unknown token is **401** ``Unauthorized`` with
``WWW-Authenticate: Bearer realm="zkv"``. The token grants a role and optionally key
prefixes (``zkv.access.Grant``), checked before the cluster is asked: a request it does not
allow is **403** ``PermissionDenied`` and changes nothing. Each route is the operation it
runs: a read ``GET``, ``PUT`` or ``POST /api/kv`` a ``PUT`` (and a ``CREATE``), ``DELETE`` a
``DELETE``, a batch an ``MPUT`` of all its keys (one outside the prefixes refuses it
whole), ``mget`` an ``MGET``, a listing ``KEYS`` of its prefix (inside the token's
prefixes), ``/api/status`` and ``/metrics`` a ``STATUS``. Without tokens nothing is asked.
``zkv http`` reads its config file again on SIGHUP: the new tokens replace the old ones and
the certificate chain is loaded again for new connections, open connections staying.

Routes (JSON in and out)
========================

``POST /api/kv`` with ``{"key", "value", "ttl"?, "consistency"?, "create"?}``
    Creates the key: **201** ``{"message"}``; or overwrites it: **200** ``{"message"}``.
    With ``"create": true`` an existing key is left alone: **409** ``KeyExists``. The
    gateway calls ``create`` and, on ``KeyExists``, ``put``: the created/overwritten answer is
    best-effort when other writers touch the key at the same moment (a key deleted between
    the two calls is reported overwritten). ``ttl`` is seconds (> 0); without it the key has
    no expiry (a TTL it had is removed, as Redis SET does).
``POST /put``, ``POST /set``
    The same as ``POST /api/kv``, for users of simpler stores.
``PUT /api/kv/{key}?ttl=&consistency=``
    The body is the JSON value; **200** ``{"message"}``.
``GET /api/kv/{key}?consistency=`` and ``GET /get?key=K``
    **200** ``{"key", "value"}``; **404** ``KeyNotFound`` if absent or expired.
``DELETE /api/kv/{key}?consistency=`` and ``DELETE /delete?key=K``
    **200** ``{"message"}``; **404** ``KeyNotFound`` if absent.
``GET /api/kv?prefix=&limit=&cursor=&consistency=``
    One page of the keys starting with ``prefix``: **200** ``{"keys": [...], "cursor"}``.
    ``limit`` is 1 to 10,000 (default 100). ``cursor`` is null once the listing has ended;
    otherwise pass it back for the next page. It is an opaque string that holds the prefix
    and where the cluster's key walk stands (shard, slot, last key), so each page resumes
    the walk without reading the listing again from its start, and the gateway keeps no
    state (any gateway process can serve the next page). A page may hold fewer than
    ``limit`` keys while the cursor is not null (the gateway stops filling a page after
    about a second on a sparse prefix): only a null cursor ends the listing. Keys present
    for the whole listing are listed exactly once; keys added or removed meanwhile may or
    may not be. The order is the cluster's (by shard, then slot), not alphabetical.
``POST /api/kv/batch`` with ``{"items": {key: value}, "ttl"?, "consistency"?}``
    Stores every item (``mput``: atomic per shard): **200** ``{"message", "count"}``.
``POST /api/kv/mget`` with ``{"keys": [...], "consistency"?}``
    **200** ``{"values": {key: value}}``, missing keys left out.
``GET /api/status``
    The broker's ``cluster_status()`` as JSON (nodes, shards, broker counters).
``GET /api/watch?prefix=&cursor=&values=&snapshot=``
    A change feed as Server-Sent Events, resumed with ``Last-Event-ID`` (``zkv.http.watch``);
    a token's grant narrows it to the token's prefixes.
``GET /openapi.json``
    The OpenAPI 3.1 document of exactly these routes.
``GET /metrics``
    Prometheus metrics (``zkv.http.metrics`` lists them): the gateway's requests by
    operation and outcome, its latency by route and status, and per-node gauges (free disk
    bytes and storage state among them) and counters read from ``cluster_status()`` at
    each scrape.
``GET /``
    The cluster's status page (HTML): every shard and node (role, alive, epoch, sequence,
    lag, in-sync, keys, slots, disk: free bytes and storage state), the cluster's
    operations per second, refreshed every second from ``/api/status`` (a node that is
    down is shown in red; a disk that is low in amber, full or failing in red with its
    error), and a form that gets, puts and deletes a key through the routes above. Plain
    HTML, CSS and JavaScript from ``zkv/http/static/``: no CDN, no build step, works
    offline.
``GET /static/{name}``
    The page's files (``status.css``, ``status.js``): only the files directly in that
    folder; any other name is 404 ``NotFound``.

Keys and values
---------------
Keys are non-empty strings; in a path they are percent-encoded and may contain ``/``
(``/api/kv/users/1/name`` is the key ``users/1/name``). HTTP clients may normalise ``.``,
``..`` and ``//`` in paths: such keys are best passed as ``?key=`` to ``/get`` and
``/delete``. A listing shows a key that is not UTF-8 as ``{"$b64": ...}``.

Values are any JSON; bytes travel as ``{"$b64": "<base64>"}`` in both directions, at any
depth (see ``zkv.http.codec``). ``consistency`` is ``"strong"`` or ``"eventual"`` (default:
the client's, from the cluster config). Request bodies must be JSON objects where one is
expected, and unknown fields are refused (a misspelt ``"tll"`` is an error, not ignored);
``null`` for an optional field means absent. Unknown query parameters are ignored.

Errors
------
Every error is ``{"error": {"code": "...", "message": "..."}}``, ``code`` being the zkv
exception's name (or the HTTP one for routing errors):

=====  ==========================================================================
400    ``InvalidRequest``: not JSON, a missing, unknown or mistyped field, a bad parameter
401    ``Unauthorized``: the gateway has tokens and the request has none it knows
403    ``PermissionDenied``: the token's role or key prefixes do not allow the request
       (or the broker refused the gateway's own key); nothing changed
404    ``KeyNotFound``; ``NotFound`` for an unknown path
405    ``MethodNotAllowed`` (with an ``Allow`` header)
409    ``KeyExists``
413    ``KeyTooLarge``, ``ValueTooLarge`` (the cluster's limits); ``RequestTooLarge``
       (a body over the gateway's ``max_body_bytes``, 64 MiB by default)
429    ``TooManyRequests``: the broker holds ``limits.max_inflight_per_client`` of the
       gateway's requests unanswered; refused at once, nothing changed
502    another zkv error from the cluster (``ServerError``, a malformed reply)
503    ``Unavailable``: the key's shard has no live node, or no broker can be reached;
       ``StorageError``: the node could not log a write to its disk (an I/O error)
504    ``Timeout``: no answer in time (a write may or may not have been applied)
507    ``StorageFull``: the node's disk is full, or under ``storage.min_free_bytes`` free;
       ``OutOfMemory``: the write would take the node past its ``memory.max_bytes``
       and its ``memory.policy`` could not make room; nothing changed
500    ``InternalError``: a bug in the gateway (logged with its traceback; never sent)
=====  ==========================================================================

A write refused with ``StorageFull`` (507) or ``StorageError`` (503) was not applied (a
batch: not on that shard), so it may be retried as is; the node keeps serving reads and
takes writes again by itself once its disk can take them. 507 Insufficient Storage says
exactly that the server cannot store what the request needs (RFC 4918); an I/O error is
503, a temporary condition of the service worth retrying later, not 500 (kept for the
gateway's own bugs) nor 502 (the cluster failing on the request). A write refused with
``OutOfMemory`` (507, the same "cannot store it") changed nothing either; it succeeds once
keys are deleted, the limit raised or an evicting policy chosen.
"""

from zkv.http.app import create_app, serve
from zkv.http.openapi import openapi_document

__all__ = ["create_app", "openapi_document", "serve"]
