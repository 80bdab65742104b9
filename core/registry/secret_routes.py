"""The team registry's secret routes (:mod:`tether.registry.vault`): store a version, read the latest, delete,
share. Registered by :func:`tether.registry.server.make_app` with the server's auth and JSON errors; the tuples in
:data:`ROUTES` have the server's shape, so the OpenAPI document lists them too. A value travels only in the
bodies of ``PUT`` and ``GET`` (TLS in front of the server for anything but loopback) and never in a log line."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from tether.registry.bodies import read_body
from tether.registry.names import parse_ref
from tether.registry.store import Store
from tether.registry.vault import Vault, vault_key

__all__ = ["ROUTES", "SecretBody", "SecretValues", "add_routes"]


class SecretBody(BaseModel):
    values: dict[str, str] = Field(description="the secret's values (stored encrypted)")
    provider: str | None = Field(None, max_length=64)


class SecretVersion(BaseModel):
    name: str
    version: int


class SecretValues(BaseModel):
    name: str
    version: int
    provider: str | None = None
    values: dict[str, str]


class SecretShare(BaseModel):
    principal: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")
    access_level: str = Field("read", pattern="^(read|write|owner)$")


class Deleted(BaseModel):
    deleted: int


_PATH = "/v1/secrets/{namespace}/{name}"
ROUTES: list[tuple[str, str, str, str, type[BaseModel] | None, type[BaseModel] | None, bool]] = [
    ("PUT", _PATH, "put_secret", "Store a new version of a secret, encrypted at rest (write; the first: owner "
     "of the namespace)", SecretBody, SecretVersion, False),
    ("GET", _PATH, "get_secret", "The latest version's values (read on the secret)", None, SecretValues, False),
    ("DELETE", _PATH, "delete_secret", "Delete every version and grant of a secret (owner)", None, Deleted, False),
    ("POST", _PATH + "/grants", "share_secret", "Give a user or team read, write or owner on a secret (owner)",
     SecretShare, SecretVersion, False),
]


class _Handlers:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._vault: Vault | None = None

    def vault(self) -> Vault:
        if self._vault is None:  # the key is needed only once a secret route is used
            self._vault = Vault(self.store.engine, vault_key(self.store.url))
        return self._vault

    @staticmethod
    def _ref(request: web.Request) -> Any:
        return parse_ref(f"{request.match_info['namespace']}/{request.match_info['name']}", allow_selector=False)

    async def put_secret(self, request: web.Request) -> web.Response:
        body = await read_body(request, SecretBody)
        ref, who = self._ref(request), request["principal"]
        number = await asyncio.to_thread(self.vault().put, ref, body.values, body.provider, by=who, principal=who)
        return web.json_response(SecretVersion(name=ref.full, version=number).model_dump(), status=200)

    async def get_secret(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        data = await asyncio.to_thread(self.vault().get, ref, principal=request["principal"])
        return web.json_response(SecretValues(name=ref.full, **data).model_dump())

    async def delete_secret(self, request: web.Request) -> web.Response:
        n = await asyncio.to_thread(self.vault().delete, self._ref(request), principal=request["principal"])
        return web.json_response(Deleted(deleted=n).model_dump())

    async def share_secret(self, request: web.Request) -> web.Response:
        body = await read_body(request, SecretShare)
        ref = self._ref(request)
        await asyncio.to_thread(self.vault().share, ref, body.principal, body.access_level,
                                principal=request["principal"])
        return web.json_response(SecretVersion(name=ref.full, version=0).model_dump())


def add_routes(app: web.Application, store: Store) -> None:
    """Add the secret routes to the registry server's ``app``."""
    handlers: Any = _Handlers(store)
    for method, path, handler, *_ in ROUTES:
        app.router.add_route(method, path, getattr(handlers, handler))
