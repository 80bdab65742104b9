"""Making API objects by name: ``tether.load``, and ``tether.cluster`` / ``function`` / ``module`` that load a saved
resource when given only a name. The API's one edge to the registry for reading. (``tether.function`` and
``tether.load`` ask :mod:`tether.api.saved` first: your own plain saved function is called without these handles'
models, and built here, from the same record, when anything more is asked of it.)"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.api.clusters import Cluster, new_cluster
from tether.api.compat import resource_name
from tether.api.envs import Env
from tether.api.module import Module
from tether.api.saved import reader_of
from tether.api.services import Function, service_from_config
from tether.compute.state import saved_spec
from tether.errors import AuthError, ConfigError, NotFound
from tether.home import tether_home
from tether.registry import get_registry

__all__ = ["cluster", "from_config", "from_record", "function", "load", "module", "try_load"]

log = logging.getLogger("tether.load")


def from_config(config: dict[str, Any], version: int | None = None, *, loaded: bool = False,
                own: bool = False) -> Any:
    """Rebuild the right resource type from a config dict. ``loaded=True``: the config came from the registry,
    so its cluster is bound to this user's own state (``Cluster.from_config(..., loaded=True)``: a saved
    config never chooses where this user's token goes: its first use raises AuthError naming the cluster).
    ``own``: this user saved it."""
    kind = config.get("kind")
    if kind == "cluster":
        return Cluster.from_config(config, loaded=loaded, own=own)
    if kind == "env":
        return Env.from_config(config)
    if kind in ("function", "module", "instance"):
        bound = Cluster.from_config(config["cluster"], loaded=True, own=own) \
            if loaded and isinstance(config.get("cluster"), dict) else None
        resource = service_from_config(config, version=version)
        if bound is not None:
            resource.cluster = bound
        return resource
    raise ConfigError(f"unknown resource kind {kind!r}", details={"field": "kind"})


def _show_writer(resource: Any, record: Any, reader: str | None) -> None:
    """``handle.saved_by``: who wrote the version about to run; a warning when it is not the reader."""
    saved_by = getattr(record, "saved_by", None)
    with contextlib.suppress(AttributeError):
        resource.saved_by = saved_by
    if saved_by is not None and reader is not None and saved_by != reader:
        log.warning("%s version %s was saved by %r, not by you (%r): loading runs their code with your access",
                    record.name, record.version, saved_by, reader)


def _code_on_load(config: dict[str, Any]) -> list[str]:
    """The fields of a service config that make whoever deploys it run code they cannot review by name:
    by-value (pickled) code or init arguments, and a python program of the writer's choosing."""
    service = config.get("service") if isinstance(config.get("service"), dict) else {}
    assert isinstance(service, dict)
    code, env = service.get("code") or {}, service.get("env") or {}
    found = []
    if isinstance(code, dict) and code.get("pickled_b64"):
        found.append("service.code.pickled_b64")
    if service.get("init_pickled_b64"):
        found.append("service.init_pickled_b64")
    if isinstance(env, dict) and env.get("python"):
        found.append("service.env.python")
    cluster = config if config.get("kind") == "cluster" else config.get("cluster")
    if isinstance(cluster, dict) and isinstance(cluster.get("image"), dict) and cluster["image"].get("steps"):
        found.append("cluster.image")  # its setup steps (run_bash, installs) run on your hosts at up
    return found


def _own_snapshot(resource: Any) -> None:
    """Drop a saved code snapshot path that is not in this user's own ``$TETHER_HOME/code``: a path another user
    wrote into a config would be synced to (and imported on) this user's cluster."""
    spec = getattr(resource, "spec", None)
    metadata = getattr(spec, "metadata", None)
    snapshot = metadata.get("snapshot") if isinstance(metadata, dict) else None
    if not snapshot:
        return
    mine = (tether_home() / "code").resolve()
    if not Path(str(snapshot)).resolve().is_relative_to(mine):
        log.warning("ignoring the code snapshot %r of a loaded config: not in your %s", snapshot, mine)
        assert isinstance(metadata, dict)
        metadata.pop("snapshot", None)


def load(name: str, *, trust: bool = False) -> Any:
    """``tether.load("team/embed@2")``: the saved cluster, env, function, class or instance.

    A pinned version (``@2``, ``@prod``) of a service runs under its own daemon name (``embed.v2``), so it never
    replaces the latest version that other callers use. The handle's ``saved_by`` says who wrote the version (a
    warning is logged when it is not you). Its cluster is bound to your own state: a config never chooses where
    your token goes (see ``Cluster.from_config``). A version someone else saved that carries by-value code,
    pickled init arguments or an ``env.python`` raises AuthError unless ``trust=True`` (after reviewing it).
    """
    name = resource_name(name)
    registry = get_registry()
    record = registry.get(name)
    reader = reader_of(registry)
    own = reader is not None and record.saved_by == reader
    if not own and not trust and (fields := _code_on_load(record.config)):
        raise AuthError(
            f"{record.name} version {record.version} was saved by {record.saved_by!r} and carries code that would "
            f"run when you use it ({', '.join(fields)})",
            hint=f"review it (tether.registry.get({name!r}).config), then tether.load({name!r}, trust=True)",
            details={"name": record.name, "version": record.version, "saved_by": record.saved_by,
                     "fields": fields})
    return from_record(name, record, reader=reader, own=own)


def from_record(name: str, record: Any, *, reader: str | None, own: bool) -> Any:
    """The resource of a registry ``record`` (a ``Version``, or the plain ``SavedVersion``) loaded as ``name``,
    past the trust check: bound to ``reader``'s own state, named for a pinned version."""
    resource = from_config(record.config, getattr(record, "version", None), loaded=True, own=own)
    if not own:
        _own_snapshot(resource)
    _show_writer(resource, record, reader)
    spec = getattr(resource, "spec", None)
    if spec is not None and hasattr(resource, "registry_name"):
        resource.registry_name = record.name
        if "@" in name:
            resource.name = spec.name = f"{spec.name}.v{record.version}"
    return resource


def try_load(name: str, kind: str) -> Any:
    """The saved resource ``name`` when it exists and is of ``kind``; else None."""
    try:
        record = get_registry().get(name)
    except (NotFound, ImportError):
        return None
    if record.config.get("kind") != kind:
        return None
    reader = reader_of(get_registry())
    resource = from_config(record.config, getattr(record, "version", None), loaded=True,
                           own=reader is not None and record.saved_by == reader)
    _show_writer(resource, record, reader)
    return resource


def cluster(name: str | None = None, *, instance_type: str | None = None, provider: str | list[str] | None = None,
            host: str | list[str] | None = None, ssh_creds: dict[str, str] | None = None,
            autostop_mins: float | None = None, **kwargs: Any) -> Cluster:
    """Describe a cluster. No arguments: the embedded local daemon. ``tether.cluster(name="lab")`` alone loads a
    saved cluster of that name when one exists. ``endpoint=URL, token=...`` attaches to a daemon run elsewhere."""
    name = resource_name(name) if name else name
    if name and instance_type is None and host is None and provider is None and not kwargs:
        saved = try_load(name, "cluster")
        if saved is not None:
            return saved  # type: ignore[no-any-return]
        brought_up = saved_spec(name)  # a cluster of that name brought up here, whatever its backend
        if brought_up is not None:  # this user's own state: its token too (an endpoint's lives there)
            return Cluster.from_config({"kind": "cluster", **brought_up}, loaded=True, own=True)
    return new_cluster(name, instance_type=instance_type, provider=provider, host=host, ssh_creds=ssh_creds,
                       autostop_mins=autostop_mins, **kwargs)


def function(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Function:
    """Wrap ``fn`` to deploy it (``.to(cluster)``), or load a saved service: ``tether.function(name="embed")``."""
    if isinstance(fn, str):
        raise ConfigError(f"tether.function({fn!r}) got a string, not a function",
                          hint=f"load a saved service with tether.function(name={fn!r}), or pass the function itself")
    if fn is None:
        if not name:
            raise ConfigError("pass a function or name=")
        loaded = load(name)
        if not isinstance(loaded, Function):
            raise ConfigError(f"{name!r} is a {type(loaded).__name__}, not a function", hint="use tether.load(name)")
        return loaded
    return Function(fn, name=name)


def module(cls: Any = None, *, name: str | None = None, system: Cluster | None = None, env: Any = None) -> Any:
    """Wrap a class to deploy it, or load a saved class/instance by name. ``system=`` (Runhouse's spelling):
    deploy it there at once (``env`` as for ``.to``)."""
    if isinstance(cls, str):
        raise ConfigError(f"tether.module({cls!r}) got a string, not a class",
                          hint=f"load a saved class or instance with tether.module(name={cls!r})")
    if cls is None:
        if not name:
            raise ConfigError("pass a class or name=")
        return load(name)
    if system is not None:
        return Module(cls, name=name).to(system, env=env)
    return Module(cls, name=name)
