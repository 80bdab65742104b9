"""Sharing a live service: ``handle.share(users=[...], access_level="read")`` gives each user a token of their own
that the service's daemon accepts (its per-service access), and records the grant in the registry when the
service is saved there; ``revoke`` takes both back; ``shared_with`` lists the daemon's grants on the service.

The daemon keeps only the tokens' hashes (``POST /grants``, owner only). The tokens this user handed out are kept
in ``$TETHER_HOME/clusters/issued-tokens.json`` (0600) so that sharing a second service with the same user returns
the token they already hold instead of replacing it. There is no mail: ``notify_users`` is accepted and the
returned tokens are what you hand over.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from tether.client import routes
from tether.compute.state import write_private
from tether.errors import AuthError, ConfigError, NotFound, SerializationError
from tether.home import clusters_dir
from tether.registry import get_registry

__all__ = ["LEVELS", "json_call", "refuses_pickle", "revoke", "share", "shared_with"]

LEVELS = ("read", "write", "owner")


def _issued_path() -> Path:
    return clusters_dir() / "issued-tokens.json"


def _issued() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_issued_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(endpoint: str, principal: str, token: str | None) -> None:
    data = _issued()
    tokens = data.setdefault(endpoint, {})
    if token is None:
        tokens.pop(principal, None)
    else:
        tokens[principal] = token
    write_private(_issued_path(), json.dumps(data, indent=1).encode())


def _users(users: str | list[str] | None) -> list[str]:
    names = [users] if isinstance(users, str) else list(users or [])
    if not names or not all(isinstance(u, str) and u.strip() for u in names):
        raise ConfigError("share needs the users to share with", hint="share(users=['alice@team'], access_level='read')")
    return names


def _live(handle: Any) -> Any:
    return handle._ensure_deployed()


def share(handle: Any, users: str | list[str] | None, access_level: str = "read", *, notify_users: bool = False,
          allow_pickle: bool = False) -> dict[str, str]:
    """Give ``users`` ``access_level`` on the live service of ``handle``; returns ``{user: token}``.

    read = call it, write = also redeploy and set attributes, owner = everything. A principal without
    ``allow_pickle`` calls with JSON arguments (a pickle would run the sender's code as the daemon's user); the
    Python stub of ``cluster.get(name, remote=True)`` does that by itself."""
    if access_level not in LEVELS:
        raise ConfigError(f"unknown access_level {access_level!r}", hint=f"use one of {', '.join(LEVELS)}",
                          details={"access_level": access_level})
    names = _users(users)
    cluster = _live(handle)
    endpoint = cluster.endpoint.rstrip("/")
    issued = _issued().get(endpoint, {})
    out: dict[str, str] = {}
    for user in names:
        body = {"principal": user, "services": {handle.name: access_level}, "allow_pickle": allow_pickle,
                "rotate": user not in issued}
        answer = cluster.client.sync.send(routes.raw("POST", "/grants", json_body=body))
        token = answer.get("token") or issued.get(user)
        if token is None:  # the daemon knows the user but this machine lost the token: a new one
            answer = cluster.client.sync.send(routes.raw("POST", "/grants", json_body={**body, "rotate": True}))
            token = answer["token"]
        _remember(endpoint, user, token)
        out[user] = token
        with contextlib.suppress(NotFound):  # a live service that was never saved has no registry record
            get_registry().share(handle.registry_name or handle.name or "", user, access_level)
    return out


def revoke(handle: Any, users: str | list[str] | None) -> None:
    """Take back what :func:`share` gave ``users`` on this service (their token stops working for it at once;
    a user left with no service loses the token)."""
    cluster = _live(handle)
    endpoint = cluster.endpoint.rstrip("/")
    for user in _users(users):
        answer = cluster.client.sync.send(routes.raw("POST", "/grants/revoke", json_body={
            "principal": user, "service": handle.name}))
        if not answer.get("remaining"):
            _remember(endpoint, user, None)
        with contextlib.suppress(NotFound):
            get_registry().unshare(handle.registry_name or handle.name or "", user)


def shared_with(handle: Any) -> list[dict[str, Any]]:
    """``[{"principal", "access_level", "allow_pickle"}]``: who the daemon lets use this service, besides its owner."""
    cluster = _live(handle)
    grants = cluster.client.sync.send(routes.raw("GET", "/grants"))["grants"]
    out = []
    for grant in grants:
        level = grant["services"].get(handle.name) or grant["services"].get("*")
        if level:
            out.append({"principal": grant["principal"], "access_level": level,
                        "allow_pickle": grant.get("allow_pickle", False)})
    return out


def refuses_pickle(exc: AuthError) -> bool:
    """Whether the daemon refused a call only because this principal may send JSON arguments, not pickles."""
    return "JSON bodies only" in str(exc)


def json_call(handle: Any, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One call with JSON arguments and result (what a grant without ``allow_pickle`` may send)."""
    cluster = handle._ensure_deployed()
    path = f"/{handle.name}/{method}/call" if method else f"/{handle.name}/call"
    try:
        op = routes.raw("POST", path, json_body={"args": list(args), "kwargs": kwargs}, timeout=None)
    except TypeError as exc:
        raise SerializationError(f"your grant on {handle.name!r} takes JSON arguments only, and these are not JSON: "
                                 f"{exc}", hint="pass JSON values (numbers, strings, lists, dicts), or ask the "
                                               "owner to share with allow_pickle=True") from None
    answer = cluster.client.sync.send(op)
    return answer["items"] if "items" in answer else answer.get("result")
