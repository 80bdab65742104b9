"""Glue between resources (cluster, env, function, module) and the registry: save, load by name, usage."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tether.errors import ConfigError, NotFound

__all__ = ["load", "record_call", "save_resource", "try_load"]


def _registry() -> Any:
    from tether.registry import get_registry

    return get_registry()


def save_resource(name: str, config: dict[str, Any], *, code_hash: str | None = None) -> Any:
    """Save ``config`` as a new version of ``name``; returns the registry's version record."""
    return _registry().save(name, config, code_hash=code_hash)


def from_config(config: dict[str, Any], version: int | None = None) -> Any:
    """Rebuild the right resource type from a config dict."""
    from tether.api.clusters import Cluster
    from tether.api.envs import Env
    from tether.api.services import Function

    kind = config.get("kind")
    if kind == "cluster":
        return Cluster.from_config(config)
    if kind == "env":
        return Env.from_config(config)
    if kind in ("function", "module", "instance"):
        svc = Function.from_config(config)
        if svc.spec is not None and version is not None:
            svc.spec.version = version
        return svc
    raise ConfigError(f"unknown resource kind {kind!r}", details={"field": "kind"})


def load(name: str) -> Any:
    """``tether.load("team/embed@2")``: the saved cluster, env, function, class or instance.

    A pinned version (``@2``, ``@prod``) of a service runs under its own daemon name (``embed.v2``), so it never
    replaces the latest version that other callers use.
    """
    record = _registry().get(name)
    resource = from_config(record.config, getattr(record, "version", None))
    spec = getattr(resource, "spec", None)
    if spec is not None and hasattr(resource, "registry_name"):
        resource.registry_name = record.name
        if "@" in name:
            resource.name = spec.name = f"{spec.name}.v{record.version}"
    return resource


def snapshot_code(root: Path, code_hash: str) -> Path:
    """A content-addressed copy of the Python files under ``root`` in ``$TETHER_HOME/code/`` (kept per version)."""
    from tether.api.codesync import python_files
    from tether.home import tether_home

    dest = tether_home() / "code" / code_hash[:24]
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    for rel in python_files(root):
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def try_load(name: str, kind: str) -> Any:
    """The saved resource ``name`` when it exists and is of ``kind``; else None."""
    try:
        record = _registry().get(name)
    except (NotFound, ImportError):
        return None
    if record.config.get("kind") != kind:
        return None
    return from_config(record.config, getattr(record, "version", None))


def record_call(service: Any, *, call_id: str, method: str | None, seconds: float, outcome: str) -> None:
    """Record one call of a saved service (non-blocking: the registry batches writes)."""
    try:
        from tether.registry import CallRecord
    except ImportError:
        return
    handle = service.cluster._handle if service.cluster is not None else None
    record = CallRecord(
        service=service.registry_name or service.name, version=service.spec.version, call_id=call_id, method=method, seconds=seconds,
        outcome=outcome, run_id=service.caller or os.environ.get("TETHER_RUN_ID"),
        instance_type=getattr(handle, "instance_type", None),
    )
    _registry().record_call(record)
