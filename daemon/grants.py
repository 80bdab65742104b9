"""Grants made over HTTP: the owner shares a live service with a principal (``handle.share(users=[...])``).

``POST /grants`` ``{"principal", "services": {name: level}, "allow_pickle", "rotate"}`` adds the levels to the
principal's grant in the daemon's access file (only the token's hash is kept) and answers ``{"principal",
"token"}``: a new token when the principal had none or ``rotate`` is set, else ``null`` (their token is unchanged).
``POST /grants/revoke`` ``{"principal", "service"}`` removes that service from the grant (the whole grant when
no service is named or none is left), ``GET /grants`` lists the grants without their hashes. All three need owner
access on ``*`` (auth.py's default for routes it does not list). A daemon started without ``--access-file`` keeps
its grants in ``<state dir>/access.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from tether.daemon.auth import _RANK, AccessPolicy, hash_token, new_token
from tether.errors import AuthError, ConfigError
from tether.specs import validate_name

__all__ = ["routes"]


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return []
    grants = data.get("grants", []) if isinstance(data, dict) else []
    return [g for g in grants if isinstance(g, dict)]


def _write(path: Path, grants: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".access.")
    with os.fdopen(fd, "w") as f:
        json.dump({"grants": grants}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _principal(data: Any) -> str:
    principal = data.get("principal") if isinstance(data, dict) else None
    if not isinstance(principal, str) or not principal.strip() or len(principal) > 200 or principal == "owner":
        raise ConfigError("a grant needs a principal (a user or team name, up to 200 characters, not 'owner')")
    return principal


def _services(data: dict[str, Any]) -> dict[str, str]:
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise ConfigError("a grant needs services: {name: 'read' | 'write' | 'owner'}")
    for name, level in services.items():
        if name != "*":
            try:
                validate_name(name, "service name")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if level not in _RANK:
            raise ConfigError(f"unknown access level {level!r}: use read, write or owner", details={"level": level})
    return dict(services)


def routes(policy: AccessPolicy, default_file: Path) -> list[web.RouteDef]:
    """The grant routes of a daemon whose access rules are ``policy`` (its access file: ``default_file`` when the
    daemon was started without one)."""
    if policy.access_file is None:
        policy.access_file = default_file

    def access_file() -> Path:
        if not policy.enabled:
            raise AuthError("this daemon runs without a token: anyone who reaches it may call everything",
                            hint="start it with a token (the default for tether's backends) to share services")
        assert policy.access_file is not None
        return policy.access_file

    async def add(request: web.Request) -> web.Response:
        data = await request.json()
        principal, services = _principal(data), _services(data)
        path = access_file()
        grants = _read(path)
        mine = next((g for g in grants if g.get("principal") == principal), None)
        token = None
        if mine is None:
            mine = {"principal": principal, "services": {}, "allow_pickle": False, "allow_code": False}
            grants.append(mine)
        if mine is not None and (data.get("rotate") or not mine.get("token_sha256")):
            token = new_token()
            mine["token_sha256"] = hash_token(token)
        mine["services"] = {**mine.get("services", {}), **services}
        mine["allow_pickle"] = bool(mine.get("allow_pickle")) or bool(data.get("allow_pickle"))
        _write(path, grants)
        policy._mtime = None  # read again now: the file's mtime may not have moved within its clock's tick
        return web.json_response({"principal": principal, "token": token, "services": mine["services"]})

    async def revoke(request: web.Request) -> web.Response:
        data = await request.json()
        principal, service = _principal(data), data.get("service")
        path = access_file()
        grants = _read(path)
        remaining: dict[str, str] = {}
        for grant in grants:
            if grant.get("principal") == principal:
                if isinstance(service, str):
                    grant.get("services", {}).pop(service, None)
                    remaining = dict(grant.get("services", {}))
                else:
                    grant["services"] = {}
        _write(path, [g for g in grants if g.get("principal") != principal or g.get("services")])
        policy._mtime = None  # a revoked token stops working at once, whatever the file clock's resolution
        return web.json_response({"principal": principal, "remaining": remaining})

    async def listing(request: web.Request) -> web.Response:
        grants = _read(access_file())
        return web.json_response({"grants": [
            {"principal": g.get("principal"), "services": g.get("services", {}),
             "allow_pickle": bool(g.get("allow_pickle")), "allow_code": bool(g.get("allow_code"))} for g in grants]})

    return [web.post("/grants", add), web.post("/grants/revoke", revoke), web.get("/grants", listing)]
