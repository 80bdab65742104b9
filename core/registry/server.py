"""The team registry server (``tether registry serve``): aiohttp in front of a :class:`Store`.

Every request but ``/health`` and ``/openapi.json`` needs ``Authorization: Bearer <token>``; tokens are stored
hashed. The token's principal is who saves, shares and calls — clients cannot claim another identity.
Every error is a JSON body from ``TetherError.to_wire()`` with the error's HTTP status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DataError

from tether.console.routes import add_console, is_console_path
from tether.errors import AuthError, ConfigError, NotFound, TetherError
from tether.logging import configure_logging
from tether.protocol.serving import Runner, input_error, mark_authenticated, serve_until_signalled
from tether.registry import lineage_routes, secret_routes
from tether.registry.bodies import read_body
from tether.registry.models import MAX_INT, AccessLevel, CallRecord, Grant, ServiceEntry, UsageRow, Version
from tether.registry.names import Ref, parse_ref
from tether.registry.store import Store

__all__ = ["make_app", "serve"]

log = structlog.get_logger("tether.registry.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORE: web.AppKey[Store] = web.AppKey("store", Store)


class SaveBody(BaseModel):
    config: dict[str, Any] = Field(description="the resource config, with 'kind'")
    code_hash: str | None = None


class VersionBody(BaseModel):
    version: int = Field(ge=1, le=MAX_INT)


class ShareBody(BaseModel):
    principal: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$", description="user or team")
    access_level: AccessLevel = "read"


class CallsBody(BaseModel):
    records: list[CallRecord]


class Stored(BaseModel):
    stored: int


class WhoAmI(BaseModel):
    principal: str


class Removed(BaseModel):
    removed: int = Field(description="grants removed (0: there was none)")


class Revoked(BaseModel):
    revoked: int = Field(description="tokens revoked")


#: (method, path, handler name, summary, request body model, response model, response is a list)
ROUTES: list[tuple[str, str, str, str, type[BaseModel] | None, type[BaseModel] | None, bool]] = [
    ("GET", "/v1/whoami", "whoami", "The token's principal", None, WhoAmI, False),
    (
        "GET",
        "/v1/services",
        "list_services",
        "Names the caller can read (?namespace=)",
        None,
        ServiceEntry,
        True,
    ),
    (
        "POST",
        "/v1/services/{namespace}/{name}/versions",
        "save",
        "Save a new version (write)",
        SaveBody,
        Version,
        False,
    ),
    (
        "GET",
        "/v1/services/{namespace}/{name}/versions",
        "history",
        "All versions (read)",
        None,
        Version,
        True,
    ),
    (
        "GET",
        "/v1/services/{namespace}/{name}/versions/{selector}",
        "get",
        "A version: N, tag or 'latest' (read)",
        None,
        Version,
        False,
    ),
    (
        "POST",
        "/v1/services/{namespace}/{name}/rollback",
        "rollback",
        "Copy an old version as the latest (write)",
        VersionBody,
        Version,
        False,
    ),
    (
        "PUT",
        "/v1/services/{namespace}/{name}/tags/{tag}",
        "tag",
        "Point a tag at a version (write)",
        VersionBody,
        Version,
        False,
    ),
    (
        "GET",
        "/v1/services/{namespace}/{name}/grants",
        "grants",
        "Grants on the name and namespace (read)",
        None,
        Grant,
        True,
    ),
    (
        "POST",
        "/v1/services/{namespace}/{name}/grants",
        "share",
        "Share; name '*' = namespace (owner)",
        ShareBody,
        Grant,
        False,
    ),
    (
        "DELETE",
        "/v1/services/{namespace}/{name}/grants/{principal}",
        "unshare",
        "Remove a principal's grant; name '*' = namespace (owner)",
        None,
        Removed,
        False,
    ),
    (
        "DELETE",
        "/v1/tokens/self",
        "revoke_self",
        "Revoke the token of this request (it stops working at once)",
        None,
        Revoked,
        False,
    ),
    (
        "GET",
        "/v1/services/{namespace}/{name}/usage",
        "usage",
        "Calls per caller and version (read)",
        None,
        UsageRow,
        True,
    ),
    (
        "GET",
        "/v1/services/{namespace}/{name}/calls",
        "calls",
        "Latest call records (read)",
        None,
        CallRecord,
        True,
    ),
    (
        "POST",
        "/v1/calls",
        "record_calls",
        "Store call records (read on each service)",
        CallsBody,
        Stored,
        False,
    ),
]


def _json(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    return web.json_response(data, status=status)


def _error(exc: TetherError) -> web.Response:
    return web.json_response(exc.to_wire(), status=exc.status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TetherError as exc:
        return _error(exc)
    except DataError as exc:
        detail = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
        return _error(ConfigError(f"value refused by the database: {detail}", details={"field": "body"}))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(
            ConfigError(f"invalid request: field {field!r}: {first['msg']}", details={"field": field})
        )
    except web.HTTPException as exc:
        if exc.status == 404:
            return _error(NotFound(f"no route {request.method} {request.path}", hint="see /openapi.json"))
        err = TetherError(f"{exc.status} {exc.reason}: {request.method} {request.path}")
        return web.json_response(err.to_wire(), status=exc.status)
    except Exception as exc:  # noqa: BLE001 - every error leaves as JSON
        typed = input_error(exc)  # the request's own bytes: a broken chunked body, JSON too deep, ...
        if typed is not None:
            return _error(typed)
        log.exception("registry_internal_error", path=request.path)
        return _error(TetherError(f"internal error: {type(exc).__name__}: {exc}"))


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in ("/health", "/openapi.json") or is_console_path(request.path):  # the console: own auth
        return await handler(request)
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not token:
        raise AuthError("missing bearer token", hint="set TETHER_TOKEN", details={"needed": "token"})
    principal = await asyncio.to_thread(request.app[STORE].principal_for, token)
    if principal is None:
        raise AuthError(
            "unknown, revoked or expired token", hint="ask the registry admin for a token",
            details={"needed": "token"},
        )
    request["principal"] = principal
    request["token"] = token
    mark_authenticated(request)
    return await handler(request)


def _ref(request: web.Request, *, namespace_wide: bool = False) -> Ref:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    if name == "*" and namespace_wide:
        return Ref(parse_ref(f"{ns}/x").namespace, "*")
    return parse_ref(f"{ns}/{name}", allow_selector=False)


class Handlers:
    """Route handlers; each runs the blocking store call in a thread, as the token's principal."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def whoami(self, request: web.Request) -> web.Response:
        return _json(WhoAmI(principal=request["principal"]))

    async def list_services(self, request: web.Request) -> web.Response:
        ns = request.query.get("namespace") or None
        return _json(await self._run(self.store.list, ns, principal=request["principal"]))

    async def save(self, request: web.Request) -> web.Response:
        body = await read_body(request, SaveBody)
        p = request["principal"]
        v = await self._run(
            self.store.save, _ref(request), body.config, by=p, code_hash=body.code_hash, principal=p
        )
        return _json(v, status=201)

    async def history(self, request: web.Request) -> web.Response:
        return _json(await self._run(self.store.history, _ref(request), principal=request["principal"]))

    async def get(self, request: web.Request) -> web.Response:
        ns, name, sel = (request.match_info[k] for k in ("namespace", "name", "selector"))
        ref = parse_ref(f"{ns}/{name}@{sel}")
        return _json(await self._run(self.store.get, ref, principal=request["principal"]))

    async def rollback(self, request: web.Request) -> web.Response:
        body = await read_body(request, VersionBody)
        p = request["principal"]
        return _json(
            await self._run(self.store.rollback, _ref(request), body.version, by=p, principal=p), 201
        )

    async def tag(self, request: web.Request) -> web.Response:
        body = await read_body(request, VersionBody)
        p, tag = request["principal"], request.match_info["tag"]
        return _json(await self._run(self.store.tag, _ref(request), body.version, tag, by=p, principal=p))

    async def grants(self, request: web.Request) -> web.Response:
        return _json(await self._run(self.store.grants, _ref(request), principal=request["principal"]))

    async def share(self, request: web.Request) -> web.Response:
        body = await read_body(request, ShareBody)
        p = request["principal"]
        grant = await self._run(
            self.store.share,
            _ref(request, namespace_wide=True),
            body.principal,
            body.access_level,
            by=p,
            principal=p,
        )
        return _json(grant, 201)

    async def unshare(self, request: web.Request) -> web.Response:
        removed = await self._run(self.store.unshare, _ref(request, namespace_wide=True),
                                  request.match_info["principal"], principal=request["principal"])
        return _json(Removed(removed=removed))

    async def revoke_self(self, request: web.Request) -> web.Response:
        revoked = await self._run(self.store.revoke_tokens, token=request["token"])
        return _json(Revoked(revoked=revoked))

    async def usage(self, request: web.Request) -> web.Response:
        return _json(await self._run(self.store.usage, _ref(request), principal=request["principal"]))

    async def calls(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 10_000))
        except ValueError:
            raise ConfigError("limit must be an integer", details={"field": "limit"}) from None
        return _json(
            await self._run(self.store.calls, _ref(request), principal=request["principal"], limit=limit)
        )

    async def record_calls(self, request: web.Request) -> web.Response:
        body = await read_body(request, CallsBody)
        stored = await self._run(self.store.record_calls, body.records, principal=request["principal"])
        return _json(Stored(stored=stored))


def make_app(store: Store) -> web.Application:
    """The aiohttp app serving ``store``."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=16 * 1024 * 1024)
    app[STORE] = store
    h = Handlers(store)
    app.router.add_get("/health", h.health)
    app.router.add_get("/openapi.json", h.openapi)
    for method, path, handler, *_ in ROUTES:
        app.router.add_route(method, path, getattr(h, handler))
    lineage_routes.add_routes(app, store)
    secret_routes.add_routes(app, store)
    return app


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 description of every route, with pydantic JSON schemas for bodies and responses."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {
        "description": "a tether error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    paths: dict[str, Any] = {
        "/health": {
            "get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}
        },
        "/openapi.json": {
            "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "ok"}}}
        },
    }
    for method, path, handler, summary, body, resp, many in ROUTES + lineage_routes.ROUTES + secret_routes.ROUTES:
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in ("namespace", "name", "selector", "tag", "principal", "call_id")
            if "{" + p + "}" in path
        ]
        params += [
            {"name": q, "in": "query", "required": needed, "schema": {"type": kind}}
            for q, kind, needed in lineage_routes.QUERY_PARAMS.get(handler, [])
        ]
        if handler == "list_services":
            params.append(
                {"name": "namespace", "in": "query", "required": False, "schema": {"type": "string"}}
            )
        if handler == "calls":
            params.append({"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}})
        ok = "201" if handler in ("save", "rollback", "share") else "200"
        resp_schema: dict[str, Any] = ref(resp) if resp else {}
        if many:
            resp_schema = {"type": "array", "items": resp_schema}
        op: dict[str, Any] = {
            "operationId": handler,
            "summary": summary,
            "parameters": params,
            "responses": {
                ok: {"description": "ok", "content": {"application/json": {"schema": resp_schema}}},
                "default": error,
            },
        }
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
        paths.setdefault(path, {})[method.lower()] = op
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "hint": {"type": ["string", "null"]},
                    "retryable": {"type": "boolean"},
                    "details": {"type": "object"},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tether registry", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def serve(db: str, *, host: str = "127.0.0.1", port: int = 0, ready_file: str | None = None) -> None:
    """Run the server until SIGTERM/SIGINT; with ``port=0`` a free port is chosen and written to ``ready_file``."""
    configure_logging()  # one JSON event per line, credentials redacted (tether.logging)
    store = Store(db)

    async def main() -> None:
        app = make_app(store)
        add_console(app, store)  # the web console under /console (tether.console)

        def bound(port: int) -> dict[str, Any]:
            log.info("registry_serving", host=host, port=port, db=store.url.split("@")[-1])
            return {}

        await serve_until_signalled(Runner(app), host, port, ready_file, bound)

    try:
        asyncio.run(main())
    finally:
        store.close()
