"""Compute backends: ``local`` (embedded default), ``ssh`` (static hosts), ``sky`` (SkyPilot)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.compute.base import Backend, ClusterHandle, ClusterStatus

__all__ = ["BACKENDS", "Backend", "ClusterHandle", "ClusterStatus", "get_backend"]

#: backend name -> "module:Class"; a new backend is a new file plus one line here.
BACKENDS: dict[str, str] = {
    "local": "tether.compute.local:LocalBackend",
    "ssh": "tether.compute.ssh:SSHBackend",
    "sky": "tether.compute.sky:SkyBackend",
    "endpoint": "tether.compute.endpoint:EndpointBackend",
}


def get_backend(name: str) -> Backend:
    """Instantiate the backend registered under ``name`` (imported lazily: sky is an optional extra)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown compute backend {name!r}", hint=f"use one of {sorted(BACKENDS)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    """``Backend``, ``ClusterHandle``, ``ClusterStatus`` from :mod:`tether.compute.base` on first use: its models
    are not what a package's plain helpers (``tether.compute.state``, ``.daemons``) need."""
    if name in ("Backend", "ClusterHandle", "ClusterStatus"):
        return getattr(importlib.import_module("tether.compute.base"), name)
    raise AttributeError(f"module 'tether.compute' has no attribute {name!r}")
