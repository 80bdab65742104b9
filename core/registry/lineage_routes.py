"""The team registry's lineage routes: what produced an artifact, what depends on a service version, one call.

Registered by :func:`tether.registry.server.make_app` (same auth and JSON errors as every route); the tuples in
:data:`ROUTES` have the server's shape, so the OpenAPI document lists them too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from tether.errors import ConfigError
from tether.registry.models import Artifact, LineageCall, LineageGraph
from tether.registry.names import parse_ref
from tether.registry.store import Store

__all__ = ["QUERY_PARAMS", "ROUTES", "add_routes"]

ROUTES: list[tuple[str, str, str, str, type[BaseModel] | None, type[BaseModel] | None, bool]] = [
    (
        "GET",
        "/v1/lineage",
        "lineage",
        "What produced an artifact (?uri=&version=&depth=), with which code version, from which inputs, "
        "transitively (read on each call's service; others are counted in 'hidden')",
        None,
        LineageGraph,
        False,
    ),
    (
        "GET",
        "/v1/services/{namespace}/{name}/dependents",
        "dependents",
        "What depends on this service (?version=N|tag&depth=): calls that read what its calls wrote, "
        "transitively (read)",
        None,
        LineageGraph,
        False,
    ),
    (
        "GET",
        "/v1/services/{namespace}/{name}/calls/{call_id}",
        "call",
        "One recorded call: code version, cluster, caller, inputs and outputs (read)",
        None,
        LineageCall,
        False,
    ),
]

#: query parameters per handler, for the OpenAPI document
QUERY_PARAMS: dict[str, list[tuple[str, str, bool]]] = {
    "lineage": [("uri", "string", True), ("version", "string", False), ("depth", "integer", False)],
    "dependents": [("version", "string", False), ("depth", "integer", False)],
}


def _json(model: BaseModel) -> web.Response:
    return web.json_response(model.model_dump(mode="json"))


def _depth(request: web.Request) -> int:
    try:
        return max(0, min(int(request.query.get("depth", "20")), 100))
    except ValueError:
        raise ConfigError("depth must be an integer", details={"field": "depth"}) from None


class _Handlers:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def lineage(self, request: web.Request) -> web.Response:
        uri = request.query.get("uri", "")
        if not uri:
            raise ConfigError("lineage needs ?uri=", hint="e.g. /v1/lineage?uri=s3://bucket/ckpt&version=3",
                              details={"field": "uri"})
        artifact = Artifact(uri=uri, version=request.query.get("version") or None)
        graph = await asyncio.to_thread(
            self.store.lineage, artifact, principal=request["principal"], depth=_depth(request)
        )
        return _json(graph)

    async def dependents(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        selector = request.query.get("version")
        ref = parse_ref(f"{ns}/{name}@{selector}" if selector else f"{ns}/{name}")
        graph = await asyncio.to_thread(
            self.store.dependents, ref, principal=request["principal"], depth=_depth(request)
        )
        return _json(graph)

    async def call(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        ref = parse_ref(f"{ns}/{name}", allow_selector=False)
        found = await asyncio.to_thread(
            self.store.call, ref, request.match_info["call_id"], principal=request["principal"]
        )
        return _json(found)


def add_routes(app: web.Application, store: Store) -> None:
    """Add the lineage routes to the registry server's ``app``."""
    handlers: Any = _Handlers(store)
    for method, path, handler, *_ in ROUTES:
        app.router.add_route(method, path, getattr(handlers, handler))
