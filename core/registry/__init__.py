"""Named, versioned resources and their call records: ``tether.registry``.

``get_registry()`` is the local SQLite file ``$TETHER_HOME/registry.db`` (or ``TETHER_REGISTRY_DB``, a path or a
database URL), or the team server when ``TETHER_REGISTRY_URL`` is set (token from ``TETHER_TOKEN``). The module
functions (``history``, ``rollback``, ``tag``, ``usage`` …) act on that default registry.
"""

from __future__ import annotations

import builtins
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.home import tether_home
from tether.registry.client import Registry
from tether.registry.lean import LocalStore
from tether.registry.names import Ref, current_user, parse_ref
from tether.registry.plain import PlainCall

if TYPE_CHECKING:
    from tether.registry.configs import register_validator
    from tether.registry.models import (
        ACCESS_LEVELS,
        KINDS,
        CallRecord,
        Grant,
        ServiceEntry,
        UsageRow,
        Version,
    )

__all__ = [
    "ACCESS_LEVELS",
    "KINDS",
    "CallRecord",
    "Grant",
    "PlainCall",
    "Ref",
    "Registry",
    "ServiceEntry",
    "UsageRow",
    "Version",
    "calls",
    "flush",
    "get",
    "get_registry",
    "history",
    "list",
    "open_registry",
    "parse_ref",
    "record_call",
    "register_validator",
    "rollback",
    "save",
    "share",
    "tag",
    "usage",
]

_CACHE: dict[tuple[Any, ...], Registry] = {}
_LOCK = threading.Lock()


def open_registry(
    *,
    url: str | None = None,
    token: str | None = None,
    db: str | Path | None = None,
    namespace: str | None = None,
) -> Registry:
    """A new registry: the team server at ``url`` with ``token``, else the store at ``db`` (a path or URL)."""
    if url:
        from tether.registry.remote import RemoteBackend, require_token

        remote = RemoteBackend(url, require_token(token, url))
        return Registry(remote, where=url, namespace=namespace, whoami=remote.whoami)
    where = db or tether_home() / "registry.db"
    if "://" not in str(where):  # a local file: read and record calls without the ORM (tether.registry.lean)
        local = LocalStore(where)
        return Registry(local, where=local.url, namespace=namespace)
    from tether.registry.store import Store

    store = Store(where)
    return Registry(store, where=store.url, namespace=namespace)


def get_registry() -> Registry:
    """The registry the environment selects; one per process and configuration (re-made after a fork)."""
    url = os.environ.get("TETHER_REGISTRY_URL") or None
    token = os.environ.get("TETHER_TOKEN") or None
    db = os.environ.get("TETHER_REGISTRY_DB") or str(tether_home() / "registry.db")
    key = (os.getpid(), url, token, None if url else db, current_user(), os.environ.get("TETHER_NAMESPACE"))
    with _LOCK:
        reg = _CACHE.get(key)
        if reg is None:
            reg = _CACHE[key] = open_registry(url=url, token=token, db=db)
        return reg


def save(name: str, config: dict[str, Any], *, code_hash: str | None = None) -> Version:
    """Save a new version of ``name`` in the default registry."""
    return get_registry().save(name, config, code_hash=code_hash)


def get(name: str) -> Version:
    """Resolve ``name`` / ``name@2`` / ``name@prod`` / ``team/name`` in the default registry."""
    return get_registry().get(name)


def history(name: str) -> builtins.list[Version]:
    """Every version of ``name``, oldest first."""
    return get_registry().history(name)


def rollback(name: str, version: int) -> Version:
    """Make ``version`` the latest again (recorded as a new version copying it)."""
    return get_registry().rollback(name, version)


def tag(name: str, version: int, tag: str) -> Version:
    """Point ``tag`` (e.g. 'prod') at ``version``."""
    return get_registry().tag(name, version, tag)


def share(name: str, principal: str, access_level: str = "read") -> Grant:
    """Give a user or team read / write / owner access to ``name``."""
    return get_registry().share(name, principal, access_level)


def record_call(record: CallRecord | PlainCall) -> None:
    """Queue a call record (never blocks the call)."""
    get_registry().record_call(record)


def flush(timeout: float | None = 30.0) -> bool:
    """Wait until queued call records are written."""
    return get_registry().flush(timeout)


def usage(name: str) -> builtins.list[UsageRow]:
    """Calls of ``name`` per caller and version."""
    return get_registry().usage(name)


def calls(name: str, *, limit: int = 100) -> builtins.list[CallRecord]:
    """The latest call records of ``name``."""
    return get_registry().calls(name, limit=limit)


def _list(namespace: str | None = None) -> builtins.list[ServiceEntry]:
    """Every name you can read, with its latest version and tags."""
    return get_registry().list(namespace)


list = _list  # noqa: A001 - ``tether.registry.list()`` is the documented name


_MODELS = {"ACCESS_LEVELS", "KINDS", "CallRecord", "Grant", "ServiceEntry", "UsageRow", "Version"}


def __getattr__(name: str) -> Any:
    """The record models (:mod:`tether.registry.models`) and ``register_validator`` on first use: pydantic is
    not what loading a saved service and calling it once needs."""
    if name in _MODELS:
        import tether.registry.models as models

        return getattr(models, name)
    if name == "register_validator":
        from tether.registry.configs import register_validator

        return register_validator
    raise AttributeError(f"module 'tether.registry' has no attribute {name!r}")
