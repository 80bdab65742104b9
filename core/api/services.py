"""``tether.function`` and ``tether.module``: deploy a callable or a class to a cluster and call it remotely."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle

from tether.api.calls import CallHandle
from tether.api.clusters import Cluster
from tether.api.codesync import code_ref, content_hash
from tether.api.envs import Env
from tether.client import LogSink, default_log_sink
from tether.client.loop import background_loop, iterate_sync, run_sync
from tether.errors import ClusterUnavailable, ConfigError, NotFound
from tether.specs import ServiceSpec, build

__all__ = ["Function", "Module", "RemoteClass", "RemoteInstance", "function", "module"]


def _new_call_id() -> str:
    return os.urandom(16).hex()  # as unique as uuid4().hex, a few µs cheaper per call


class _Service:
    """What functions, classes and instances share: a deployed spec on a cluster, and calls to it."""

    kind = "function"

    def __init__(self, obj: Any = None, *, name: str | None = None) -> None:
        self.obj = obj
        self.name = name or (getattr(obj, "__name__", None) if obj is not None else None)
        self.cluster: Cluster | None = None
        self.env: Env | None = None
        self.spec: ServiceSpec | None = None
        self.methods: dict[str, str] = {}
        self.root: Path | None = None
        self.on_oom: Any = None
        self.attempts: list[Any] = []
        self.caller: str | None = None
        self.loaded = False  # made from a registry record (its version is deployed before the first call)
        self._verified = False
        self.registry_name: str | None = None  # the full registry name ('team/embed') usage is recorded under

    # -- deploy ---------------------------------------------------------------------------------------------------
    def _build_spec(self, cluster: Cluster, env: Env, name: str) -> ServiceSpec:
        if self.obj is None:
            if self.spec is None:
                raise ConfigError(f"{name!r} has no local code to deploy", hint="load it by name or pass the object")
            return self.spec.model_copy(update={"name": name, "env": env.spec})
        ref, root = code_ref(self.obj)
        if root is not None:
            ref.root = cluster.sync(root)
        self.root = root
        return ServiceSpec(name=name, kind=self.kind, env=env.spec, code=ref)  # type: ignore[arg-type]

    def _deploy(self, cluster: Cluster | None, env: Env | str | None, name: str | None) -> None:
        cluster = (cluster or self.cluster or _default_cluster()).up_if_not()
        if isinstance(env, str):
            env = Env.from_config({"name": env})
        env = env or self.env or Env.from_config({})
        name = name or self.name
        if not name:
            raise ConfigError("this service needs a name", hint="pass name=... to .to()")
        spec = self._build_spec(cluster, env, name)
        if self.spec is not None and self.spec.version is not None:
            spec.version = self.spec.version
        out = run_sync(cluster.client.request("POST", "/deploy", json_body=spec.model_dump(mode="json"),
                                              timeout=600))
        self.cluster, self.env, self.spec, self.name = cluster, env, spec, name
        self.methods = dict(out.get("methods", {}))

    def _ensure_deployed(self) -> Cluster:
        if self.spec is None or self.cluster is None:
            raise ConfigError(f"{self.name or self.obj!r} is not deployed", hint="call .to(cluster) first")
        if self.cluster._handle is None:  # loaded by name, or stopped: (re)launch from the spec
            self.cluster.up_if_not()
        if self.loaded and not self._verified:
            self._deploy_saved_version()
        return self.cluster

    def _deploy_saved_version(self) -> None:
        """A service loaded from the registry: make the daemon run exactly the loaded version (once)."""
        assert self.spec is not None and self.cluster is not None
        running = {r["name"]: r.get("version") for r in self.cluster.ls()}
        if running.get(self.spec.name, -1) != self.spec.version:
            self._redeploy_spec()
        self._verified = True

    def _redeploy_spec(self) -> None:
        """Deploy the spec we hold; a saved version's code comes from its snapshot, synced to the cluster."""
        assert self.spec is not None and self.cluster is not None
        snapshot = self.spec.metadata.get("snapshot")
        if snapshot and Path(snapshot).is_dir():
            self.spec.code.root = self.cluster.sync(Path(snapshot))
        out = run_sync(self.cluster.client.request("POST", "/deploy", json_body=self.spec.model_dump(mode="json"),
                                                   timeout=600))
        self.methods = dict(out.get("methods", {})) or self.methods

    def _relaunch(self) -> bool:
        """The daemon did not answer: bring the cluster back (it may have autostopped) and redeploy."""
        if self.spec is None or self.cluster is None or self.cluster.spec.backend == "endpoint":
            return False
        self.cluster._handle = None
        self.cluster.up_if_not()  # a relaunched daemon restores its services from its manifest
        return True

    def _redeploy_after(self, exc: NotFound) -> bool:
        """The daemon lost our service (torn down and relaunched): deploy it again once."""
        if self.spec is None or self.cluster is None or not self.name or self.name not in str(exc):
            return False
        self._redeploy_spec()
        return True

    # -- calls ----------------------------------------------------------------------------------------------------
    def _call_sync(self, method: str | None, args: tuple, kwargs: dict, *, call_id: str | None = None,
                   on_log: LogSink | None = default_log_sink) -> Any:
        self._ensure_deployed()
        lend = call_id is None  # an id nobody else knows: a big result may come back in a slab of ours
        call_id = call_id or _new_call_id()
        started = time.perf_counter()
        outcome = "ok"
        try:
            recovered = set()
            while True:
                try:
                    return self.cluster.client.call_sync(  # type: ignore[union-attr]
                        self.name or "", method, args, kwargs, call_id=call_id, on_log=on_log, caller=self.caller,
                        lend=lend)
                except NotFound as exc:  # the daemon lost our service (torn down, fresh state): deploy again
                    if "deploy" in recovered or not self._redeploy_after(exc):
                        raise
                    recovered.add("deploy")
                except ClusterUnavailable as exc:  # nothing answers (e.g. autostopped): relaunch from the spec
                    if "launch" in recovered or not exc.details.get("unreachable") or not self._relaunch():
                        raise
                    recovered.add("launch")
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._record(call_id, method, time.perf_counter() - started, outcome)

    async def _call_async(self, method: str | None, args: tuple, kwargs: dict, *, call_id: str | None = None,
                          on_log: LogSink | None = default_log_sink) -> Any:
        cluster = self._ensure_deployed()
        return await cluster.client.call(self.name or "", method, args, kwargs, call_id=call_id or _new_call_id(),
                                         on_log=on_log, caller=self.caller, lend=call_id is None)

    def _stream_sync(self, method: str | None, args: tuple, kwargs: dict) -> Iterator[Any]:
        cluster = self._ensure_deployed()
        return iterate_sync(cluster.client.stream(self.name or "", method, args, kwargs, call_id=_new_call_id()))

    def _stream_async(self, method: str | None, args: tuple, kwargs: dict) -> AsyncIterator[Any]:
        cluster = self._ensure_deployed()
        return cluster.client.stream(self.name or "", method, args, kwargs, call_id=_new_call_id())

    def _spawn(self, method: str | None, args: tuple, kwargs: dict, *, call_id: str | None = None,
               on_log: LogSink | None = default_log_sink) -> CallHandle:
        cluster = self._ensure_deployed()
        call_id = call_id or _new_call_id()
        coro = cluster.client.call(self.name or "", method, args, kwargs, call_id=call_id, on_log=on_log,
                                   caller=self.caller)
        future = asyncio.run_coroutine_threadsafe(coro, background_loop())
        return CallHandle(cluster.client, call_id, future, on_log).wait_started()

    def _dispatch(self, method: str | None, args: tuple, kwargs: dict) -> Any:
        kind = self.methods.get(method or "__call__", "sync")
        if kind == "async":
            return self._call_async(method, args, kwargs)
        if kind == "gen":
            return self._stream_sync(method, args, kwargs)
        if kind == "agen":
            return self._stream_async(method, args, kwargs)
        if self.on_oom is not None and self.kind == "function":
            from tether.escalation import run_with_escalation

            return run_with_escalation(self, args, kwargs, self.on_oom, base_cluster=self.cluster)
        return self._call_sync(method, args, kwargs)

    def _record(self, call_id: str, method: str | None, seconds: float, outcome: str) -> None:
        if self.spec is None or self.spec.version is None:
            return
        from tether.api.loading import record_call

        record_call(self, call_id=call_id, method=method, seconds=seconds, outcome=outcome)

    # -- config & registry ----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        if self.spec is None or self.cluster is None:
            raise ConfigError(f"{self.name!r} is not deployed", hint="call .to(cluster) before config()/save()")
        return {"kind": self.kind, "name": self.name, "service": self.spec.model_dump(mode="json"),
                "methods": self.methods, "cluster": self.cluster.config(),
                "on_oom": self.on_oom.model_dump(mode="json") if self.on_oom is not None else None}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        kinds = {"function": Function, "module": RemoteClass, "instance": RemoteInstance}
        target = kinds.get(config.get("kind", ""))
        # _Service and Function (behind ``tether.function(name=...)``) load any saved kind; other classes their own.
        if target is None or not (cls in (_Service, Function) or issubclass(target, cls)):
            raise ConfigError(f"not a service config (kind={config.get('kind')!r})")
        svc = target.__new__(target)
        _Service.__init__(svc, None, name=config["name"])
        if "service" not in config or "cluster" not in config:
            raise ConfigError("service config lacks 'service' or 'cluster'", details={"fields": ["service", "cluster"]})
        svc.spec = build(ServiceSpec, config["service"])
        svc.methods = dict(config.get("methods") or {})
        svc.cluster = Cluster.from_config(config["cluster"])
        svc.env = Env(svc.spec.env)
        if config.get("on_oom"):
            from tether.escalation import Escalation

            svc.on_oom = Escalation.model_validate(config["on_oom"])
        if isinstance(svc, RemoteClass):
            svc.cls = None
        svc.loaded = True
        return svc

    def save(self, name: str | None = None) -> Any:
        """Save this service in the registry as a new version; returns the version record."""
        from tether.api.loading import save_resource, snapshot_code

        config = self.config()
        code_hash = None
        if self.root is not None:  # freeze the code of this version: loading it later runs exactly this code
            code_hash = content_hash(self.root)
            config["service"]["metadata"]["snapshot"] = str(snapshot_code(self.root, code_hash))
        record = save_resource(name or self.name or "", config, code_hash=code_hash)
        if self.spec is not None:
            self.spec.version = record.version
            self.spec.metadata["snapshot"] = config["service"]["metadata"].get("snapshot")
            run_sync(self.cluster.client.request(  # type: ignore[union-attr]
                "POST", "/deploy", json_body=self.spec.model_dump(mode="json"), timeout=600))
        self.registry_name = getattr(record, "name", None)
        return record

    def share(self, principal: str, access_level: str = "read") -> None:
        """Give a user or team access: read = call, write = redeploy/save, owner = share."""
        from tether.registry import get_registry

        get_registry().share(self.name or "", principal, access_level)

    def delete(self) -> None:
        """Delete the service from its cluster."""
        cluster = self._ensure_deployed()
        cluster.delete(self.name or "")

    def __repr__(self) -> str:
        where = self.cluster.name if self.cluster else "not deployed"
        return f"{type(self).__name__}({self.name!r} on {where})"


def _default_cluster() -> Cluster:
    from tether.api.clusters import cluster

    return cluster()


class Function(_Service):
    """A function as a service: ``tether.function(fn).to(cluster)``, then call it like the function."""

    kind = "function"

    def to(self, cluster: Cluster | None = None, env: Env | str | None = None, name: str | None = None,
           on_oom: Any = None) -> Function:
        """Deploy (or redeploy in place) on ``cluster``; ``on_oom`` takes a ``tether.Escalation`` policy."""
        if self.obj is not None and inspect.isclass(self.obj):
            raise ConfigError(f"{self.obj.__name__} is a class", hint="use tether.module(cls) for classes")
        self._deploy(cluster, env, name)
        if on_oom is not None:
            from tether.escalation import Escalation

            self.on_oom = Escalation.coerce(on_oom)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch(None, args, kwargs)

    def remote_async(self, *args: Any, **kwargs: Any) -> Any:
        """Call without blocking: a coroutine (or async iterator for generators)."""
        if self.methods.get("__call__") in ("gen", "agen"):
            return self._stream_async(None, args, kwargs)
        return self._call_async(None, args, kwargs)

    def spawn(self, *args: Any, **kwargs: Any) -> CallHandle:
        """Start the call and return its handle at once."""
        return self._spawn(None, args, kwargs)

    def call(self, args: tuple = (), kwargs: dict | None = None, *, call_id: str | None = None,
             on_log: LogSink | None = default_log_sink) -> Any:
        """Explicit form for integrations: a chosen call id (same id twice runs once) and a log sink."""
        return self._call_sync(None, tuple(args), dict(kwargs or {}), call_id=call_id, on_log=on_log)

    def spawn_with(self, args: tuple = (), kwargs: dict | None = None, *, call_id: str | None = None,
                   on_log: LogSink | None = default_log_sink) -> CallHandle:
        return self._spawn(None, tuple(args), dict(kwargs or {}), call_id=call_id, on_log=on_log)


class _Method:
    """A method of a remote instance: call it, ``.remote_async`` it, or ``.spawn`` it."""

    def __init__(self, owner: _Service, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner._dispatch(self.name, args, kwargs)

    def remote_async(self, *args: Any, **kwargs: Any) -> Any:
        if self.owner.methods.get(self.name) in ("gen", "agen"):
            return self.owner._stream_async(self.name, args, kwargs)
        return self.owner._call_async(self.name, args, kwargs)

    def spawn(self, *args: Any, **kwargs: Any) -> CallHandle:
        return self.owner._spawn(self.name, args, kwargs)


class _Attributes:
    """``instance.remote.attr`` reads an attribute of the remote object."""

    def __init__(self, owner: _Service) -> None:
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str) -> Any:
        return self._owner._call_sync("__getattr__", (name,), {})


class RemoteInstance(_Service):
    """A stateful remote object: ``ctr.incr()`` runs ``incr`` on the instance living in the worker."""

    kind = "instance"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in _Service.__dict__ or name in {"obj", "name", "cluster", "env", "spec",
                                                                            "methods", "root", "on_oom", "attempts",
                                                                            "caller"}:
            raise AttributeError(name)
        if self.methods and name not in self.methods:
            raise AttributeError(f"remote object {self.name!r} has no method {name!r} "
                                 f"(methods: {sorted(self.methods)}); read attributes with .remote.{name}")
        return _Method(self, name)

    def method(self, name: str) -> _Method:
        """The remote method ``name`` (for names that clash with this stub's own attributes, e.g. ``env``)."""
        return _Method(self, name)

    @property
    def remote(self) -> _Attributes:
        return _Attributes(self)


class RemoteClass(_Service):
    """A deployed class; calling it creates a named remote instance."""

    kind = "module"

    def __init__(self, cls: Any = None, *, name: str | None = None) -> None:
        super().__init__(cls, name=name)
        self.cls = cls

    def __call__(self, *args: Any, name: str | None = None, **kwargs: Any) -> RemoteInstance:
        assert self.spec is not None and self.cluster is not None, "deploy the class first"
        inst_name = name or f"{self.name}-{uuid.uuid4().hex[:8]}"
        inst = RemoteInstance(None, name=inst_name)
        init = base64.b64encode(cloudpickle.dumps((args, kwargs))).decode()
        inst.spec = self.spec.model_copy(update={"name": inst_name, "kind": "instance", "init_pickled_b64": init,
                                                 "of": self.name, "version": None})
        inst.cluster, inst.env, inst.root = self.cluster, self.env, self.root
        out = run_sync(self.cluster.client.request("POST", "/deploy", json_body=inst.spec.model_dump(mode="json"),
                                                   timeout=600))
        inst.methods = dict(out.get("methods", {}))
        return inst


class Module:
    """A class to deploy: ``tether.module(Counter).to(cluster, env=...)`` returns a :class:`RemoteClass`."""

    def __init__(self, cls: Any, name: str | None = None) -> None:
        if not inspect.isclass(cls):
            raise ConfigError(f"{cls!r} is not a class", hint="use tether.function for functions")
        self.cls = cls
        self.name = name or cls.__name__

    def to(self, cluster: Cluster | None = None, env: Env | str | None = None, name: str | None = None
           ) -> RemoteClass:
        remote = RemoteClass(self.cls, name=name or self.name)
        remote._deploy(cluster, env, name or self.name)
        return remote


def function(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Function:
    """Wrap ``fn`` to deploy it (``.to(cluster)``), or load a saved service: ``tether.function(name="embed")``."""
    if fn is None:
        if not name:
            raise ConfigError("pass a function or name=")
        from tether.api.loading import load

        loaded = load(name)
        if not isinstance(loaded, Function):
            raise ConfigError(f"{name!r} is a {type(loaded).__name__}, not a function", hint="use tether.load(name)")
        return loaded
    return Function(fn, name=name)


def module(cls: Any = None, *, name: str | None = None) -> Any:
    """Wrap a class to deploy it, or load a saved class/instance by name."""
    if cls is None:
        if not name:
            raise ConfigError("pass a class or name=")
        from tether.api.loading import load

        return load(name)
    return Module(cls, name=name)
