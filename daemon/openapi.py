"""The daemon's OpenAPI document, built from the same pydantic models the routes validate with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tether._version import __version__
from tether.daemon.auth import required_access
from tether.specs import ServiceSpec

_ERROR = {"description": "a tether error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON_OK = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}


def _op(summary: str, *, params: Sequence[str] = (), body: dict[str, Any] | None = None,
        ok: dict[str, Any] | None = None, codes: tuple[int, ...] = (400, 401, 404, 422)) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok or _JSON_OK, **{str(c): _ERROR for c in codes}}}
    if params:
        op["parameters"] = [
            {"name": n, "in": "path", "required": True,
             "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"}
             if n != "call_id" else {"type": "string", "maxLength": 200}}
            for n in params
        ]
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


_CALL_BODY = {
    "application/json": {"schema": {"type": "object", "properties": {
        "args": {"type": "array", "items": {}}, "kwargs": {"type": "object"}}}},
    "application/x-tether-pickle": {"schema": {"type": "string", "format": "binary"}},
}
_SPAWNED = {"description": "with Prefer: respond-async: the call is registered (re-attach with GET /calls/{id})",
            "content": {"application/json": {"schema": {"type": "object", "required": ["call_id", "state"],
                                                        "properties": {"call_id": {"type": "string"},
                                                                       "state": {"type": "string"}}}}}}


def _call_op(summary: str, params: list[str]) -> dict[str, Any]:
    """A call route: its frames (200), or with ``Prefer: respond-async`` the spawned call's id (202)."""
    op = _op(summary, params=params, body=_CALL_BODY)
    op["responses"]["202"] = _SPAWNED
    op["parameters"] += [
        {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "respond-async: spawn the call (answer 202 once it is registered, not its result)"},
    ]
    return op


def _get_call_op(summary: str, params: list[str]) -> dict[str, Any]:
    """A GET call route: its query parameters are the keyword arguments (each a JSON value when it parses as one,
    else the string), Runhouse's ``curl "$ENDPOINT/fn?a=1"`` spelling."""
    op = _op(summary, params=params)
    op["parameters"] += [
        {"name": "kwargs", "in": "query", "required": False, "style": "form", "explode": True,
         "schema": {"type": "object", "additionalProperties": {}},
         "description": "each query parameter is one keyword argument of the call"},
    ]
    return op


_PRINCIPAL = {"type": "string", "minLength": 1, "maxLength": 200, "not": {"enum": ["owner"]}}
_GRANT_BODY = {"application/json": {"schema": {"type": "object", "required": ["principal", "services"], "properties": {
    "principal": _PRINCIPAL,
    "services": {"type": "object", "minProperties": 1,
                 "additionalProperties": {"type": "string", "enum": ["read", "write", "owner"]},
                 "description": "service name (or '*') -> level, added to the principal's grant"},
    "allow_pickle": {"type": "boolean"}, "rotate": {"type": "boolean", "description": "issue a new token"}}}}}
_GRANTED = {"description": "the grant; token: a new one when the principal had none or rotate was set, else null",
            "content": {"application/json": {"schema": {"type": "object", "properties": {
                "principal": {"type": "string"}, "token": {"type": "string", "nullable": True},
                "services": {"type": "object"}}}}}}
_REVOKE_BODY = {"application/json": {"schema": {"type": "object", "required": ["principal"], "properties": {
    "principal": _PRINCIPAL,
    "service": {"type": "string", "description": "the one service to take away (none: the whole grant)"}}}}}


_KEY_BODY = {"application/x-tether-pickle": {"schema": {"type": "string", "format": "binary"}}}


ACCESS = (
    "Access (--access-file principals; the owner token may do everything): read = call, read public attributes, "
    "re-attach, list what it is granted; write = also deploy, put, delete, rename, set public attributes; owner = "
    "also private attributes, a service's pickled state, deleting an env whose every name it owns. Daemon-wide "
    "routes (autostop, shutdown, deleting an empty env, the grant routes) need owner on '*'. A GET call (query "
    "parameters as kwargs) is a call: read, JSON only. Without allow_pickle a principal sends "
    "JSON only and may not PUT objects (they are pickles, whatever the label); without --allowed-roots a deploy "
    "runs any code, so it needs allow_code or allow_pickle; replace_env needs write on everything in the env, an "
    "instance's 'of' and a rename's 'to' need write too; new env requirements need allow_code. "
    "x-tether-access on each operation: the level on the service the route names."
)


def _with_access(paths: dict[str, Any]) -> dict[str, Any]:
    for path, ops in paths.items():
        for method, op in ops.items():
            level, source = required_access(method.upper(), path)
            op["x-tether-access"] = "none" if level is None else f"{level} on '*'" if source == "*" else level
    return paths


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 description of every daemon route."""
    service_schema = ServiceSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = service_schema.pop("$defs", {})
    return {
        "openapi": "3.0.3",
        "info": {"title": "tether daemon", "version": __version__, "description": ACCESS},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "ServiceSpec": service_schema, **defs,
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                                   "hint": {"type": "string", "nullable": True},
                                   "retryable": {"type": "boolean"}, "details": {"type": "object"}}}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": _with_access({
            "/health": {"get": {**_op("liveness", codes=()), "security": []}},
            "/status": {"get": _op("services, workers, running calls, autostop", codes=(401,))},
            "/deploy": {"post": {**_op("deploy a function, class or instance (another spec under a known env name is "
                                       "a 422 unless ?replace_env=1)", body={
                "application/json": {"schema": {"$ref": "#/components/schemas/ServiceSpec"}}}),
                "parameters": [{"name": "replace_env", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["0", "1"]}}]}},
            "/envs": {"get": _op("the spec of every env the daemon knows", codes=(401,))},
            "/autostop": {"post": _op("set autostop minutes or pause it", body={"application/json": {"schema": {
                "type": "object", "properties": {"mins": {"type": "number", "nullable": True},
                                                 "paused": {"type": "boolean"}}}}})},
            "/{name}/call": {"post": _call_op("call a function service", ["name"]),
                             "get": _get_call_op("call a function service, query parameters as kwargs", ["name"])},
            "/{name}/{method}/call": {"post": _call_op("call a method of an instance", ["name", "method"]),
                                      "get": _get_call_op("call a method, query parameters as kwargs",
                                                          ["name", "method"])},
            "/{name}": {"get": _get_call_op("call a function service: GET /{name}?a=1 (query parameters as kwargs)",
                                            ["name"])},
            "/grants": {"post": {**_op("share services with a principal (its grant in the daemon's access file)",
                                       body=_GRANT_BODY, codes=(400, 401, 422)), "responses": {
                "200": _GRANTED, **{str(c): _ERROR for c in (400, 401, 422)}}},
                "get": _op("every grant: principal, services and levels, allow_pickle, allow_code (no token hashes)",
                           codes=(401,))},
            "/grants/revoke": {"post": _op("take a service (or the whole grant) away from a principal",
                                           body=_REVOKE_BODY, codes=(400, 401, 422))},
            "/calls/{call_id}": {"get": _op("re-attach to a call (frames) or its state with ?wait=0",
                                            params=["call_id"])},
            "/calls/{call_id}/logs": {"get": {**_op("a call's logs so far (from event ?since=N)", params=["call_id"]),
                                              "parameters": [*_op("", params=["call_id"])["parameters"],
                                                             {"name": "since", "in": "query", "required": False,
                                                              "schema": {"type": "integer", "minimum": 0}}]}},
            "/calls/{call_id}/cancel": {"post": _op("cancel a running call", params=["call_id"])},
            "/objects": {"get": _op("names of services and objects", codes=(401,))},
            "/objects/{key}": {
                "get": _op("an object, cloudpickled", params=["key"]),
                "put": _op("store an object", params=["key"], body=_KEY_BODY),
                "delete": _op("delete an object or service", params=["key"]),
            },
            "/objects/{key}/rename": {"post": _op("rename an object or service", params=["key"], body={
                "application/json": {"schema": {"type": "object", "required": ["to"],
                                                "properties": {"to": {"type": "string"}}}}})},
            "/services/{key}": {"delete": _op("delete a service", params=["key"])},
            "/envs/{env}": {"delete": _op("delete an env, its worker and its services", params=["env"])},
        }),
    }
