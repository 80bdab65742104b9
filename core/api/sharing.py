"""Sharing a live service: ``handle.share(users=[...], access_level="read")`` gives each user a token of their own
that the service's daemon accepts (its per-service access), and records the grant in the registry when the
service is saved there; ``revoke`` takes both back; ``shared_with`` lists the daemon's grants on the service.

The daemon keeps only the tokens' hashes (``POST /grants``, owner only). The tokens this user handed out are kept,
by cluster name, in ``$TETHER_HOME/clusters/issued-tokens.json`` (0600) so that sharing a second service with the
same user returns the token they already hold instead of replacing it. There is no mail: ``notify_users`` is
accepted and the returned tokens are what you hand over.
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

__all__ = ["LEVELS", "grant", "json_call", "refuses_pickle", "revoke", "share", "shared_with", "ungrant"]

LEVELS = ("read", "write", "owner")


def _issued_path() -> Path:
    return clusters_dir() / "issued-tokens.json"


def _issued() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_issued_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(cluster: str, principal: str, token: str | None) -> None:
    data = _issued()
    tokens = data.setdefault(cluster, {})
    if token is None:
        tokens.pop(principal, None)
    else:
        tokens[principal] = token
    write_private(_issued_path(), json.dumps(data, indent=1).encode())


def _users(users: str | list[str] | None) -> list[str]:
    names = [users] if isinstance(users, str) else list(users or [])
    if not names or not all(isinstance(u, str) and u.strip() for u in names):
        raise ConfigError("share needs the users to share with",
                          hint="share(users=['alice@team'], access_level='read')")
    return names


def _level(access_level: str) -> str:
    if access_level not in LEVELS:
        raise ConfigError(f"unknown access_level {access_level!r}", hint=f"use one of {', '.join(LEVELS)}",
                          details={"access_level": access_level})
    return access_level


def grant(cluster: Any, service: str, users: str | list[str] | None, access_level: str = "read", *,
          allow_pickle: bool = False) -> dict[str, str]:
    """Give ``users`` ``access_level`` on ``service`` (``"*"``: every service) of ``cluster``'s daemon; returns
    ``{user: token}`` (the token a user already holds from this machine, else a new one)."""
    level, names = _level(access_level), _users(users)
    where = cluster.name  # not its endpoint: a local daemon's port changes when it restarts, its grants stay
    issued = _issued().get(where, {})
    out: dict[str, str] = {}
    for user in names:
        body = {"principal": user, "services": {service: level}, "allow_pickle": allow_pickle,
                "rotate": user not in issued}
        answer = cluster.client.sync.send(routes.raw("POST", "/grants", json_body=body))
        token = answer.get("token") or issued.get(user)
        if token is None:  # the daemon knows the user but this machine lost the token: a new one
            answer = cluster.client.sync.send(routes.raw("POST", "/grants", json_body={**body, "rotate": True}))
            token = answer["token"]
        _remember(where, user, token)
        out[user] = token
    return out


def ungrant(cluster: Any, service: str, users: str | list[str] | None) -> None:
    """Take ``service`` out of ``users``' grants on ``cluster``'s daemon (a grant left empty goes, with its token)."""
    for user in _users(users):
        answer = cluster.client.sync.send(routes.raw("POST", "/grants/revoke", json_body={
            "principal": user, "service": service}))
        if not answer.get("remaining"):
            _remember(cluster.name, user, None)


def _registry(name: str, users: list[str], level: str | None) -> None:
    """The registry side of a share (``level``) or a revoke (None); a name never saved has no record."""
    for user in users:
        with contextlib.suppress(NotFound):
            if level is None:
                get_registry().unshare(name, user)
            else:
                get_registry().share(name, user, level)


def share(handle: Any, users: str | list[str] | None, access_level: str = "read", *, notify_users: bool = False,
          allow_pickle: bool = False) -> dict[str, str]:
    """Give ``users`` ``access_level`` on the live service of ``handle`` (and on its saved versions in the
    registry); returns ``{user: token}``.

    read = call it, write = also redeploy and set attributes, owner = everything. A principal without
    ``allow_pickle`` calls with JSON arguments (a pickle would run the sender's code as the daemon's user); the
    Python stubs do that by themselves (:func:`json_call`)."""
    tokens = grant(handle._ensure_deployed(), handle.name, users, access_level, allow_pickle=allow_pickle)
    _registry(handle.registry_name or handle.name or "", list(tokens), access_level)
    return tokens


def revoke(handle: Any, users: str | list[str] | None) -> None:
    """Take back what :func:`share` gave ``users`` on this service (their token stops working for it at once;
    a user left with no service loses the token)."""
    ungrant(handle._ensure_deployed(), handle.name, users)
    _registry(handle.registry_name or handle.name or "", _users(users), None)


def shared_with(handle: Any) -> list[dict[str, Any]]:
    """``[{"principal", "access_level", "allow_pickle"}]``: who the daemon lets use this service, besides its owner."""
    cluster = handle._ensure_deployed()
    grants = cluster.client.sync.send(routes.raw("GET", "/grants"))["grants"]
    out = []
    for entry in grants:
        level = entry["services"].get(handle.name) or entry["services"].get("*")
        if level:
            out.append({"principal": entry["principal"], "access_level": level,
                        "allow_pickle": entry.get("allow_pickle", False)})
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
    answer = handle.client_on(cluster).sync.send(op)
    return answer["items"] if "items" in answer else answer.get("result")
