"""Compute backends: ``local`` (embedded default), ``ssh`` (static hosts), ``sky`` (SkyPilot)."""

from __future__ import annotations

import importlib

from tether.compute.base import Backend, ClusterHandle, ClusterStatus
from tether.errors import ConfigError

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
    return getattr(importlib.import_module(module), cls)()
