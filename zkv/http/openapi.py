"""The OpenAPI 3.1 document of the HTTP gateway, served at ``/openapi.json``.

It describes exactly the routes ``zkv.http.app.create_app`` registers (a test walks the
app's router and this document's paths both ways). Every operation but the page, its files
and this document carries the bearer-token requirement and its 401 and 403 answers.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import zkv

__all__ = ["openapi_document"]

_REF: Final = "$ref"
#: Operations open without a token (they hold no data): ``zkv.http.app.PUBLIC``'s routes.
_PUBLIC_OPERATIONS: Final = frozenset({"openapi", "statusPage", "staticFile"})


def _schema(name: str) -> dict[str, Any]:
    return {_REF: f"#/components/schemas/{name}"}


def _param(name: str) -> dict[str, Any]:
    return {_REF: f"#/components/parameters/{name}"}


def _response(name: str) -> dict[str, Any]:
    return {_REF: f"#/components/responses/{name}"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    """The error responses ``statuses`` (plus the ones every cluster call can give)."""
    names = {
        "400": "BadRequest",
        "404": "NotFound",
        "409": "Conflict",
        "413": "TooLarge",
        "429": "TooManyRequests",
        "502": "BadGateway",
        "503": "Unavailable",
        "504": "Timeout",
        "507": "InsufficientStorage",
    }
    return {s: _response(names[s]) for s in sorted({*statuses, "429", "502", "503", "504"})}


def _write_errors(*statuses: str) -> dict[str, Any]:
    """The error responses of a write: ``_errors(statuses)``, and the node refusing it for
    its disk or its memory limit (507 ``StorageFull``, ``OutOfMemory``; 503 covers
    ``StorageError`` too)."""
    return {**_errors(*statuses, "507"), "503": _response("WriteUnavailable")}


_SET_BODY: Final = {
    "required": True,
    "content": {"application/json": {"schema": _schema("SetRequest")}},
}


def _set_operation(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": (
            'Creates the key (201) or overwrites it (200). With `"create": true` an existing '
            "key is left alone and the answer is 409 `KeyExists`. The gateway tries a create "
            "first and overwrites on `KeyExists`, so the created/overwritten distinction is "
            "best-effort when other writers touch the key at the same moment."
        ),
        "tags": ["keys"],
        "requestBody": _SET_BODY,
        "responses": {
            "201": _json_body(_schema("Message"), "The key was created."),
            "200": _json_body(_schema("Message"), "The key existed and was overwritten."),
            **_write_errors("400", "409", "413"),
        },
    }


def _get_operation(operation_id: str, key_param: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": "Read a key",
        "tags": ["keys"],
        "parameters": [_param(key_param), _param("consistency")],
        "responses": {
            "200": _json_body(_schema("Entry"), "The key and its value."),
            **_errors("400", "404", "413"),
        },
    }


def _delete_operation(operation_id: str, key_param: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": "Delete a key",
        "tags": ["keys"],
        "parameters": [_param(key_param), _param("consistency")],
        "responses": {
            "200": _json_body(_schema("Message"), "The key was deleted."),
            **_write_errors("400", "404", "413"),
        },
    }


_TTL_SCHEMA: Final = {
    "type": ["number", "null"],
    "exclusiveMinimum": 0,
    "description": "Seconds until the key expires; absent or null: no expiry (a TTL the key "
    "had is removed).",
}
_CONSISTENCY_SCHEMA: Final = {
    "type": ["string", "null"],
    "enum": ["strong", "eventual", None],
    "description": "`strong` (default of the cluster's config) or `eventual`; see the README.",
}

_SCHEMAS: Final[dict[str, Any]] = {
    "Value": {
        "description": (
            'Any JSON value. Bytes travel as `{"$b64": "<base64>"}` in both directions, at '
            "any depth; non-finite floats stored by other clients come out as the strings "
            '`"NaN"`, `"Infinity"`, `"-Infinity"`. Integers must fit 64 bits.'
        ),
    },
    "Bytes": {
        "type": "object",
        "properties": {"$b64": {"type": "string", "contentEncoding": "base64"}},
        "required": ["$b64"],
        "additionalProperties": False,
    },
    "Key": {"type": "string", "minLength": 1, "description": "A key (UTF-8)."},
    "Message": {
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
    },
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {
                        "type": "string",
                        "description": (
                            "`KeyNotFound`, `KeyExists`, `KeyTooLarge`, `ValueTooLarge`, "
                            "`InvalidRequest`, `Unavailable`, `Timeout`, `StorageFull`, "
                            "`StorageError`, `OutOfMemory`, `Unauthorized`, `PermissionDenied`, "
                            "`NotFound`, `MethodNotAllowed`, "
                            "`RequestTooLarge`, `InternalError`, or another zkv error class "
                            "name."
                        ),
                    },
                    "message": {"type": "string"},
                },
                "required": ["code", "message"],
            }
        },
        "required": ["error"],
    },
    "Entry": {
        "type": "object",
        "properties": {"key": _schema("Key"), "value": _schema("Value")},
        "required": ["key", "value"],
    },
    "SetRequest": {
        "type": "object",
        "properties": {
            "key": _schema("Key"),
            "value": _schema("Value"),
            "ttl": _TTL_SCHEMA,
            "consistency": _CONSISTENCY_SCHEMA,
            "create": {
                "type": ["boolean", "null"],
                "description": "Only create: 409 if the key exists.",
            },
        },
        "required": ["key", "value"],
        "additionalProperties": False,
    },
    "KeyPage": {
        "type": "object",
        "properties": {
            "keys": {
                "type": "array",
                "items": {"oneOf": [{"type": "string"}, _schema("Bytes")]},
                "description": "Keys in listing order; a key that is not UTF-8 as bytes.",
            },
            "cursor": {
                "type": ["string", "null"],
                "description": "Pass it as `cursor` for the next page; null: the listing ended.",
            },
        },
        "required": ["keys", "cursor"],
    },
    "BatchRequest": {
        "type": "object",
        "properties": {
            "items": {"type": "object", "additionalProperties": _schema("Value")},
            "ttl": _TTL_SCHEMA,
            "consistency": _CONSISTENCY_SCHEMA,
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    "BatchResult": {
        "type": "object",
        "properties": {"message": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["message", "count"],
    },
    "MgetRequest": {
        "type": "object",
        "properties": {
            "keys": {"type": "array", "items": _schema("Key")},
            "consistency": _CONSISTENCY_SCHEMA,
        },
        "required": ["keys"],
        "additionalProperties": False,
    },
    "MgetResult": {
        "type": "object",
        "properties": {
            "values": {
                "type": "object",
                "additionalProperties": _schema("Value"),
                "description": "Each key present, with its value; missing keys are left out.",
            }
        },
        "required": ["values"],
    },
    "ClusterStatus": {
        "type": "object",
        "description": "The broker's view, as `zkv status` shows it.",
        "properties": {
            "cluster": {"type": "string"},
            "slots": {"type": "integer"},
            "shards": {"type": "object", "additionalProperties": {"type": "object"}},
            "broker": {"type": "object"},
            "nodes": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["shards", "broker", "nodes"],
    },
}

_PARAMETERS: Final[dict[str, Any]] = {
    "key": {
        "name": "key",
        "in": "path",
        "required": True,
        "description": (
            "The key, percent-encoded; it may contain `/` (the rest of the path is the key). "
            "Keys with `.`/`..` segments or `//` are best passed to `/get?key=` and "
            "`/delete?key=`, since HTTP clients may normalise such paths."
        ),
        "schema": {"type": "string", "minLength": 1},
    },
    "keyQuery": {
        "name": "key",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    },
    "consistency": {
        "name": "consistency",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["strong", "eventual"]},
    },
    "ttl": {
        "name": "ttl",
        "in": "query",
        "required": False,
        "description": "Seconds until the key expires; absent: no expiry.",
        "schema": {"type": "number", "exclusiveMinimum": 0},
    },
    "prefix": {
        "name": "prefix",
        "in": "query",
        "required": False,
        "description": "Only keys that start with it (default: every key).",
        "schema": {"type": "string"},
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
    },
    "staticName": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "A file name of the page's folder (`status.css`, `status.js`, ...).",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
    },
    "cursor": {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": (
            "The `cursor` of the previous page (opaque). It carries the prefix: `prefix` may "
            "be left out, and a different one is refused (400)."
        ),
        "schema": {"type": "string"},
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return _json_body(_schema("Error"), description)


_RESPONSES: Final[dict[str, Any]] = {
    "BadRequest": _error_response(
        "Not JSON, a missing or unknown field, a wrong type or value (`InvalidRequest`)."
    ),
    "NotFound": _error_response("The key is absent or expired (`KeyNotFound`)."),
    "Conflict": _error_response("`create` on a key that exists (`KeyExists`)."),
    "TooLarge": _error_response(
        "A key or value over the cluster's limits (`KeyTooLarge`, `ValueTooLarge`), or a "
        "request body over the gateway's (`RequestTooLarge`)."
    ),
    "BadGateway": _error_response("The cluster failed on the request (e.g. `ServerError`)."),
    "Unavailable": _error_response(
        "The key's shard has no live node, or the broker cannot be reached (`Unavailable`)."
    ),
    "WriteUnavailable": _error_response(
        "The key's shard has no live node, or the broker cannot be reached (`Unavailable`); "
        "or the node could not log the write to its disk, an I/O error (`StorageError`): the "
        "write was not applied, and the node takes writes again by itself once it can."
    ),
    "InsufficientStorage": _error_response(
        "The node's disk is full, or under its `storage.min_free_bytes` free (`StorageFull`): "
        "the write was not applied. Reads go on; the node takes writes again by itself once "
        "space is freed. Or the write would take the node's data past its `memory.max_bytes` "
        "and its `memory.policy` could not make room (`OutOfMemory`: `noeviction`, or a "
        "`volatile-*` policy with no key that has a TTL): nothing was changed; reads and "
        "deletes go on. Delete keys, raise the limit or choose an evicting policy."
    ),
    "TooManyRequests": _error_response(
        "The broker already holds `limits.max_inflight_per_client` of the gateway's requests "
        "unanswered (`TooManyRequests`): this one was refused and changed nothing; retry later."
    ),
    "Timeout": _error_response(
        "No answer from the cluster in time (`Timeout`); a write may or may not have been applied."
    ),
    "Unauthorized": {
        **_error_response(
            "The gateway asks for bearer tokens (its config has `http.tokens`) and the request "
            "carries none, or one it does not know (`Unauthorized`)."
        ),
        "headers": {
            "WWW-Authenticate": {
                "description": '`Bearer realm="zkv"`',
                "schema": {"type": "string"},
            }
        },
    },
    "Forbidden": _error_response(
        "The token's role or key prefixes do not allow this request (`PermissionDenied`); it "
        "was refused whole before the cluster was asked (a batch or mget with one key "
        "outside the prefixes changes nothing). Also the broker refusing the gateway's own key."
    ),
}

_SECURITY_SCHEMES: Final[dict[str, Any]] = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "A token of the gateway's `http.tokens` (made by `zkv token`), sent as "
            "`Authorization: Bearer TOKEN`; it grants a role (`read`, `write`, `admin`) and "
            "optionally key prefixes. Asked for only when the config has `http.tokens`."
        ),
    }
}


def _guarded(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with each operation's security requirement, and 401 and 403 on those that
    need a token."""
    for item in paths.values():
        for operation in item.values():
            if operation["operationId"] in _PUBLIC_OPERATIONS:
                operation["security"] = []
                continue
            operation["security"] = [{"bearerToken": []}]
            operation["responses"]["401"] = _response("Unauthorized")
            operation["responses"]["403"] = _response("Forbidden")
    return paths


_PATHS: Final[dict[str, Any]] = {
    "/api/kv": {
        "post": _set_operation("setKey", "Create or overwrite a key"),
        "get": {
            "operationId": "listKeys",
            "summary": "List keys, a page at a time",
            "description": (
                "Keys starting with `prefix`, up to `limit` per page, and a `cursor` for the "
                "next page (null at the end). A page may hold fewer than `limit` keys while "
                "the cursor is not null (a sparse prefix over many keys): only a null cursor "
                "ends the listing. The cursor resumes the cluster's walk where the page "
                "ended, without reading the listing again. Keys present for the whole "
                "listing are listed exactly once; keys added or removed meanwhile may or may "
                "not be. The order is the cluster's (by shard and slot), not alphabetical."
            ),
            "tags": ["keys"],
            "parameters": [
                _param("prefix"),
                _param("limit"),
                _param("cursor"),
                _param("consistency"),
            ],
            "responses": {
                "200": _json_body(_schema("KeyPage"), "One page of keys."),
                **_errors("400"),
            },
        },
    },
    "/api/kv/{key}": {
        "put": {
            "operationId": "putKey",
            "summary": "Store a key; the body is the value",
            "tags": ["keys"],
            "parameters": [_param("key"), _param("ttl"), _param("consistency")],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _schema("Value")}},
            },
            "responses": {
                "200": _json_body(_schema("Message"), "The key was stored."),
                **_write_errors("400", "413"),
            },
        },
        "get": _get_operation("getKey", "key"),
        "delete": _delete_operation("deleteKey", "key"),
    },
    "/api/kv/batch": {
        "post": {
            "operationId": "batchPut",
            "summary": "Store many keys",
            "description": (
                "Applied atomically per shard; if a shard fails part-way, other shards may "
                "hold their part and the error is answered. A key or value over a limit "
                "stores nothing."
            ),
            "tags": ["keys"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _schema("BatchRequest")}},
            },
            "responses": {
                "200": _json_body(_schema("BatchResult"), "Every key was stored."),
                **_write_errors("400", "413"),
            },
        }
    },
    "/api/kv/mget": {
        "post": {
            "operationId": "multiGet",
            "summary": "Read many keys",
            "tags": ["keys"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _schema("MgetRequest")}},
            },
            "responses": {
                "200": _json_body(_schema("MgetResult"), "The keys present and their values."),
                **_errors("400", "413"),
            },
        }
    },
    "/put": {"post": _set_operation("setKeyPut", "Create or overwrite a key (as POST /api/kv)")},
    "/set": {"post": _set_operation("setKeySet", "Create or overwrite a key (as POST /api/kv)")},
    "/get": {"get": _get_operation("getKeyQuery", "keyQuery")},
    "/delete": {"delete": _delete_operation("deleteKeyQuery", "keyQuery")},
    "/api/status": {
        "get": {
            "operationId": "clusterStatus",
            "summary": "The cluster's status (nodes, shards, broker counters)",
            "tags": ["cluster"],
            "responses": {
                "200": _json_body(_schema("ClusterStatus"), "The broker's view of the cluster."),
                **_errors(),
            },
        }
    },
    "/api/watch": {
        "get": {
            "operationId": "watch",
            "summary": "A change feed of the keys under a prefix, as Server-Sent Events",
            "description": (
                "Events `put`, `delete`, `expire`, `evict`, `ttl`, `clear`, `state` and "
                "`resync`; each event's `id` is the cursor after it, so a reconnecting "
                "EventSource resumes with `Last-Event-ID` (see zkv.http.watch)."
            ),
            "tags": ["keys"],
            "parameters": [
                _param("prefix"),
                _param("cursor"),
                {"name": "values", "in": "query", "schema": {"type": "boolean"}},
                {"name": "snapshot", "in": "query", "schema": {"type": "boolean"}},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The events, until the reader goes away.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors("400"),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["meta"],
            "responses": {"200": {"description": "The OpenAPI document."}},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Metrics in the Prometheus text format",
            "description": (
                "The gateway's request counts and latencies, and per-node gauges and "
                "counters read from the cluster's status at each scrape (see "
                "`zkv.http.metrics`). OpenMetrics if the Accept header asks for it."
            ),
            "tags": ["meta"],
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/": {
        "get": {
            "operationId": "statusPage",
            "summary": "The cluster's status page (HTML)",
            "description": (
                "A page that polls `/api/status` every second: each shard and node (role, "
                "alive, epoch, sequence, lag, in-sync, keys, slots, disk: free bytes and "
                "storage state), the cluster's operations per second, and a form to get, "
                "put and delete a key. It loads only files from `/static/` (no CDN)."
            ),
            "tags": ["page"],
            "responses": {
                "200": {
                    "description": "The page.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/static/{name}": {
        "get": {
            "operationId": "staticFile",
            "summary": "A file of the status page (CSS, JavaScript)",
            "description": (
                "Only the files directly in the gateway's `static` folder; any other name "
                "(a path, `..`, a hidden file) is 404 `NotFound`."
            ),
            "tags": ["page"],
            "parameters": [_param("staticName")],
            "responses": {
                "200": {
                    "description": "The file.",
                    "content": {
                        "text/css": {"schema": {"type": "string"}},
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                "404": _json_body(_schema("Error"), "No such file (`NotFound`)."),
            },
        }
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway (a fresh copy each call)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "zkv HTTP gateway",
                "version": zkv.__version__,
                "description": (
                    "A JSON API over a zkv cluster. Errors are "
                    '`{"error": {"code": "KeyNotFound", "message": "..."}}`. When the '
                    "gateway's config has `http.tokens`, every route but `/`, `/static/*` "
                    "and this document needs `Authorization: Bearer TOKEN`: 401 without one "
                    "it knows, 403 where its role or key prefixes refuse the request."
                ),
            },
            "tags": [
                {"name": "keys", "description": "Reading and writing keys."},
                {"name": "cluster", "description": "The cluster's state."},
                {"name": "meta", "description": "This document and the metrics."},
                {"name": "page", "description": "The status page and its files."},
            ],
            "paths": _guarded(copy.deepcopy(_PATHS)),
            "components": {
                "schemas": _SCHEMAS,
                "parameters": _PARAMETERS,
                "responses": _RESPONSES,
                "securitySchemes": _SECURITY_SCHEMES,
            },
        }
    )
