"""``tether.function`` and ``tether.module``: deploy a callable or a class to a cluster and call it remotely.

Handles are immutable: ``.to()``, :meth:`~_Service.with_cluster` and :meth:`~_Service.with_options` return new
handles, so one handle can be shared by threads, cached by an orchestrator, or passed around without any caller
changing where or how another one's calls run. What belongs to one call lives in its
:class:`~tether.api.invocation.Invocation`.
"""

from __future__ import annotations

import base64
import copy
import inspect
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether import escalation
from tether.api.calls import CallHandle
from tether.api.clusters import Cluster, new_cluster
from tether.api.codesync import code_ref, content_hash
from tether.api.compat import CALL_KEYWORDS, call_keywords, placement
from tether.api.envs import Env
from tether.api.invocation import Invocation
from tether.api.options import ServiceOptions
from tether.api.placement import code_root_on, place_env, resolve_env
from tether.api.records import save_resource, snapshot_code
from tether.api.secrets import deliver_for_deploy
from tether.api.sharing import json_call, refuses_pickle
from tether.api.spellings import FunctionSpellings, InstanceSpellings, ServiceSpellings
from tether.client import AsyncClient, LogSink
from tether.errors import AuthError, ConfigError
from tether.protocol.deployments import deployment_id, runs_version
from tether.specs import ServiceSpec, build

if TYPE_CHECKING:  # the policy and its runner load on first use (tether.escalation is lazy)
    from tether.escalation import Attempt, Escalation, Ladder, Step

__all__ = ["Function", "RemoteClass", "RemoteInstance", "ServiceOptions", "service_from_config"]

_UNCHANGED: Any = object()


class _Placement:
    """Where an escalating handle's calls run now: the rung an earlier call succeeded on (shared by the copies
    :meth:`_Service.with_options` makes, so every one of them starts there)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.index = 0
        self.cluster: Cluster | None = None
        self.target: _Service | None = None


_FIELDS = frozenset({"obj", "name", "cluster", "env", "spec", "methods", "root", "options", "loaded",
                     "registry_name"})


class _Service(ServiceSpellings):
    """What functions, classes and instances share: a deployed spec on a cluster, and calls to it."""

    kind = "function"
    _json_only = False  # this user's grant takes JSON arguments only (found on the first refused call)

    def __init__(self, obj: Any = None, *, name: str | None = None) -> None:
        self.obj = obj
        self.name = name or (getattr(obj, "__name__", None) if obj is not None else None)
        self.cluster: Cluster | None = None
        self.env: Env | None = None
        self.spec: ServiceSpec | None = None
        self.methods: dict[str, str] = {}
        self.root: Path | None = None
        self.options = ServiceOptions()
        self.loaded = False  # made from a registry record (its version is deployed before the first call)
        self.registry_name: str | None = None  # the full registry name ('team/embed') usage is recorded under
        self._verified = False
        self._placement = _Placement()

    # -- new handles ------------------------------------------------------------------------------------------------
    def _copy(self, **fields: Any) -> Any:
        new = copy.copy(self)
        new.methods = dict(self.methods)
        for key, value in fields.items():
            setattr(new, key, value)
        return new

    def with_cluster(self, cluster: Cluster, env: Env | str | None = None, *, replace_env: bool = False) -> Any:
        """A new handle of this service deployed on ``cluster`` (brought up if needed); this one is unchanged.
        ``env``: as for :meth:`Function.to`."""
        new = self._copy(_placement=_Placement(), _verified=False)
        new._deploy(cluster, env, None, replace_env=replace_env)
        return new

    def with_options(self, *, caller: str | None = _UNCHANGED, on_oom: Any = _UNCHANGED,
                     cancel_on_interrupt: bool = _UNCHANGED, on_log: LogSink | None = _UNCHANGED,
                     on_attempt: Callable[[Attempt], Any] | None = _UNCHANGED,
                     replayable: bool = _UNCHANGED) -> Any:
        """A new handle of the same deployed service whose calls are made with these options (see
        :class:`ServiceOptions`; ``on_oom=None`` turns escalation off)."""
        changes: dict[str, Any] = {k: v for k, v in {
            "caller": caller, "cancel_on_interrupt": cancel_on_interrupt, "on_log": on_log,
            "on_attempt": on_attempt, "replayable": replayable}.items() if v is not _UNCHANGED}
        fields: dict[str, Any] = {}
        if on_oom is not _UNCHANGED:
            changes["on_oom"] = None if on_oom is None else escalation.Escalation.coerce(on_oom)
            fields["_placement"] = _Placement()
        return self._copy(options=replace(self.options, **changes), **fields)

    @property
    def on_oom(self) -> Escalation | None:
        return self.options.on_oom

    @property
    def caller(self) -> str | None:
        return self.options.caller

    @property
    def expects(self) -> str | None:
        """The deployment this handle's calls expect (``v3``, ``h:<code hash>``): the daemon answers them only
        from that code, and the handle redeploys it when the name holds other code (a teammate's ad-hoc deploy)."""
        return deployment_id(self.spec)

    @property
    def saved_version(self) -> int | None:
        """The registry version this handle stands for (its calls are recorded under it); None: not saved."""
        return self.spec.version if self.spec is not None else None

    @property
    def current_cluster(self) -> Cluster | None:
        """Where the next call runs: the deployed cluster, or the rung an OOM escalation moved its calls to."""
        return self._placement.cluster or self.cluster

    # -- deploy -----------------------------------------------------------------------------------------------------
    def _build_spec(self, cluster: Cluster, env: Env, name: str) -> ServiceSpec:
        if self.obj is None:
            if self.spec is None:
                raise ConfigError(f"{name!r} has no local code to deploy", hint="load it by name or pass the object")
            spec = self.spec.model_copy(deep=True, update={"name": name, "env": env.spec})
            snapshot = spec.metadata.get("snapshot")
            if snapshot and Path(snapshot).is_dir():  # a saved version's code travels from its snapshot
                spec.code.root = cluster.sync(Path(snapshot))
            return spec
        ref, root = code_ref(self.obj)
        if root is not None:
            ref.root = cluster.sync(root)
        self.root = root
        return ServiceSpec(name=name, kind=self.kind, env=env.spec, code=ref)  # type: ignore[arg-type]

    def _deploy(self, cluster: Cluster | None, env: Env | str | None, name: str | None, *,
                replace_env: bool = False) -> None:
        """Deploy this (new, not yet shared) handle's service; called only on handles made for that."""
        cluster = (cluster or self.cluster or new_cluster()).up_if_not()
        resolved = resolve_env(cluster, env if env is not None else self.env)
        if resolved.spec.compute or resolved.spec.node not in (None, 0):  # checked on its node, given its GPUs
            resolved = place_env(cluster, resolved)
        env = resolved
        deliver_for_deploy(cluster, env)  # the env's secrets into the cluster's store (values never in the spec)
        name = name or self.name
        if not name:
            raise ConfigError("this service needs a name", hint="pass name=... to .to()")
        spec = self._build_spec(cluster, env, name)
        if self.spec is not None and self.spec.version is not None:
            spec.version = self.spec.version
        spec.code.root = code_root_on(cluster, spec.env.node, spec.code.root)
        out = cluster.node_client(spec.env.node).sync.deploy(spec, replace_env=replace_env)
        self.cluster, self.env, self.spec, self.name = cluster, env, spec, name
        self.methods = dict(out.get("methods", {}))

    def client_on(self, cluster: Cluster) -> AsyncClient:
        """The client of the daemon this service lives on in ``cluster``: the head's, or that of the node its env
        was placed on (``tether.env(node=k)``)."""
        return cluster.node_client(self.node)

    @property
    def node(self) -> int | str | None:
        """The node this service's env was placed on (``None``: the head)."""
        return self.spec.env.node if self.spec is not None else None

    def _needs_preparing(self) -> bool:
        """Whether :meth:`_ensure_deployed` has work to do (a launch or a version check), i.e. may block."""
        return self.cluster is None or self.cluster._handle is None or (self.loaded and not self._verified)

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
        if not runs_version(self.client_on(self.cluster).sync.services(), self.spec.name, self.spec.version):
            self._redeploy_spec()
        self._verified = True

    def _redeploy_spec(self) -> None:
        """Deploy the spec we hold; a saved version's code comes from its snapshot, synced to the cluster."""
        assert self.spec is not None and self.cluster is not None
        snapshot = self.spec.metadata.get("snapshot")
        if snapshot and Path(snapshot).is_dir():
            self.spec.code.root = code_root_on(self.cluster, self.spec.env.node, self.cluster.sync(Path(snapshot)))
        out = self.client_on(self.cluster).sync.deploy(self.spec)
        self.methods.update(out.get("methods", {}))

    def _relaunch(self) -> bool:
        """The daemon did not answer: bring the cluster back (it may have autostopped); whether it was tried."""
        if self.spec is None or self.cluster is None or self.cluster.spec.backend == "endpoint":
            return False
        self.cluster._handle = None
        self.cluster.forget_nodes()
        self.cluster.up_if_not()  # a relaunched daemon restores its services from its manifest
        return True

    # -- escalation ----------------------------------------------------------------------------------------------
    def _ladder(self) -> Ladder:
        """A fresh ladder for one call, starting where an earlier call of this handle succeeded."""
        assert self.options.on_oom is not None and self.cluster is not None
        place = self._placement
        with place.lock:
            start, cluster = place.index, place.cluster
        return escalation.Ladder(self.options.on_oom, self.cluster, start=start, start_cluster=cluster,
                      on_attempt=self.options.on_attempt)

    def _on_rung(self, step: Step) -> _Service:
        """The handle a ladder step runs on (deployed there), itself without escalation."""
        if step.cluster is self.cluster:
            return self.with_options(on_oom=None) if self.options.on_oom is not None else self
        place = self._placement
        with place.lock:
            if place.target is not None and place.cluster is step.cluster:
                return place.target
        step.cluster.up_if_not()
        return self.with_options(on_oom=None).with_cluster(step.cluster, env=self.env)

    def _remember(self, ladder: Ladder, step: Step, target: _Service) -> None:
        """Later calls start on the rung that worked."""
        place = self._placement
        with place.lock:
            place.index = ladder.rung_index(step)
            place.cluster = None if step.cluster is self.cluster else step.cluster
            place.target = None if step.cluster is self.cluster else target

    # -- calls ------------------------------------------------------------------------------------------------------
    def _invoke(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                call_id: str | None = None, on_log: LogSink | None = None) -> Invocation:
        return Invocation(self, method, args, kwargs, call_id=call_id, on_log=on_log)

    def _dispatch(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        kind = self.methods.get(method or "__call__", "sync")
        on_log = None
        default_async = getattr(self, "_default_async", None)
        if default_async is not None or not CALL_KEYWORDS.isdisjoint(kwargs):  # run_async=, stream_logs=: ours
            kind, kwargs, on_log = call_keywords(kind, kwargs, default_async)
        inv = self._invoke(method, args, kwargs, on_log=on_log)
        if kind == "async":
            return inv.run_async()
        if kind == "gen":
            return inv.stream_sync()
        if kind == "agen":
            return inv.stream_async()
        if self._json_only:
            return json_call(self, method, args, kwargs)
        try:
            return inv.run_sync()
        except AuthError as exc:  # a teammate whose grant takes JSON only (a pickle runs code): arguments as JSON
            if not refuses_pickle(exc):
                raise
            self._json_only = True
            return json_call(self, method, args, kwargs)

    def _remote_async(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        inv = self._invoke(method, args, kwargs)
        if self.methods.get(method or "__call__") in ("gen", "agen"):
            return inv.stream_async()
        return inv.run_async()

    def _stream_sync(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        return self._invoke(method, args, kwargs).stream_sync()

    def _stream_async(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        return self._invoke(method, args, kwargs).stream_async()

    # -- config & registry ----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        if self.spec is None or self.cluster is None:
            raise ConfigError(f"{self.name!r} is not deployed", hint="call .to(cluster) before config()/save()")
        on_oom = self.options.on_oom
        return {"kind": self.kind, "name": self.name, "service": self.spec.model_dump(mode="json"),
                "methods": self.methods, "cluster": self.cluster.config(),
                "on_oom": on_oom.model_dump(mode="json") if on_oom is not None else None}

    def save(self, name: str | None = None) -> Any:
        """Save this service in the registry as a new version; returns the version record. This handle then
        stands for that version (its calls are recorded under it)."""
        config = self.config()
        code_hash = None
        if self.root is not None:  # freeze the code of this version: loading it later runs exactly this code
            code_hash = content_hash(self.root)
            config["service"]["metadata"]["snapshot"] = str(snapshot_code(self.root, code_hash))
        record = save_resource(name or self.name or "", config, code_hash=code_hash)
        if self.spec is not None and self.cluster is not None:
            self.spec.version = record.version
            self.spec.metadata["snapshot"] = config["service"]["metadata"].get("snapshot")
            self.client_on(self.cluster).sync.deploy(self.spec)
        self.registry_name = getattr(record, "name", None)
        return record

    def distribute(self, kind: str, **options: Any) -> Any:
        """Hand this deployed service to ``"pool"``, ``"pytorch"``, ``"ray"`` or ``"dask"`` over the cluster's nodes
        (options: ``num_replicas``, ``replicas_per_node``; see :mod:`tether.api.distribute`)."""
        from tether.api.distribute import distribute

        return distribute(self, kind, **options)

    def delete(self) -> None:
        """Delete the service from its cluster."""
        cluster = self._ensure_deployed()
        if self.spec is not None and self.spec.env.node not in (None, 0):
            self.client_on(cluster).sync.delete_object(self.name or "")
        else:
            cluster.delete(self.name or "")

    def __repr__(self) -> str:
        where = self.cluster.name if self.cluster else "not deployed"
        return f"{type(self).__name__}({self.name!r} on {where})"


def service_from_config(config: dict[str, Any], *, version: int | None = None,
                        cls: type[_Service] | None = None) -> Any:
    """A service handle from its saved config (``cls``: only that kind is accepted)."""
    kinds: dict[str, type[_Service]] = {"function": Function, "module": RemoteClass, "instance": RemoteInstance}
    target = kinds.get(config.get("kind", ""))
    if target is None or (cls is not None and not issubclass(target, cls)):
        raise ConfigError(f"not a service config (kind={config.get('kind')!r})")
    if "service" not in config or "cluster" not in config:
        raise ConfigError("service config lacks 'service' or 'cluster'", details={"fields": ["service", "cluster"]})
    svc = target.__new__(target)
    _Service.__init__(svc, None, name=config["name"])
    svc.spec = build(ServiceSpec, config["service"])
    if version is not None:
        svc.spec.version = version
    svc.methods = dict(config.get("methods") or {})
    svc.cluster = Cluster.from_config(config["cluster"])
    svc.env = Env(svc.spec.env)
    if config.get("on_oom"):
        svc.options = replace(svc.options, on_oom=escalation.Escalation.model_validate(config["on_oom"]))
    if isinstance(svc, RemoteClass):
        svc.cls = None
    svc.loaded = True
    return svc


class Function(FunctionSpellings, _Service):
    """A function as a service: ``tether.function(fn).to(cluster)``, then call it like the function."""

    kind = "function"

    def to(self, cluster: Cluster | None = None, env: Env | str | None = None, name: str | None = None,
           on_oom: Any = None, *, replace_env: bool = False, system: Any = None, process: Any = None) -> Function:
        """A new handle of this function deployed on ``cluster``; ``on_oom`` takes a ``tether.Escalation`` policy.

        ``env``: a ``tether.env(...)``, or the name of an env on the cluster, used as it is (none: ``"default"``
        as it is). An env name means one spec: deploying another spec under a name the cluster knows is a
        ``ConfigError`` showing the difference, unless ``replace_env=True`` (the env restarts with the new spec
        once its running calls end). Deploying again under the same service name replaces the service.
        Runhouse's ``system=`` (the cluster) and ``process=`` (the env) are accepted."""
        cluster, env = placement(cluster, env, system=system, process=process)
        if self.obj is not None and inspect.isclass(self.obj):
            raise ConfigError(f"{self.obj.__name__} is a class", hint="use tether.module(cls) for classes")
        new: Function = self._copy(_placement=_Placement(), _verified=False)
        new._deploy(cluster, env, name, replace_env=replace_env)
        if on_oom is not None:
            new.options = replace(new.options, on_oom=escalation.Escalation.coerce(on_oom))
        return new

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Any saved service kind (what ``tether.function(name=...)`` loads)."""
        return service_from_config(config)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch(None, args, kwargs)

    def remote_async(self, *args: Any, **kwargs: Any) -> Any:
        """Call without blocking: a coroutine (or async iterator for generators)."""
        return self._remote_async(None, args, kwargs)

    def spawn(self, *args: Any, **kwargs: Any) -> CallHandle:
        """Start the call and return its handle at once."""
        return self._invoke(None, args, kwargs).spawn()

    def call(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *, call_id: str | None = None,
             on_log: LogSink | None = None) -> Any:
        """Explicit form for integrations: a chosen call id (same id twice runs once) and a log sink."""
        return self._invoke(None, tuple(args), dict(kwargs or {}), call_id=call_id, on_log=on_log).run_sync()

    def spawn_with(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
                   call_id: str | None = None, on_log: LogSink | None = None) -> CallHandle:
        return self._invoke(None, tuple(args), dict(kwargs or {}), call_id=call_id, on_log=on_log).spawn()


class _Method:
    """A method of a remote instance: call it, ``.remote_async`` it, or ``.spawn`` it."""

    def __init__(self, owner: _Service, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner._dispatch(self.name, args, kwargs)

    def remote_async(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner._remote_async(self.name, args, kwargs)

    def spawn(self, *args: Any, **kwargs: Any) -> CallHandle:
        return self.owner._invoke(self.name, args, kwargs).spawn()


class _Attributes:
    """``instance.remote.attr`` reads an attribute of the remote object; ``instance.remote.attr = v`` sets it
    (needs write access to the service)."""

    def __init__(self, owner: _Service) -> None:
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str) -> Any:
        return self._owner._invoke("__getattr__", (name,), {}).run_sync()

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise AttributeError(f"cannot set the private attribute {name!r} of a remote object")
        self._owner._invoke("__setattr__", (name, value), {}).run_sync()

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete {name!r} of a remote object; set it instead")


class RemoteInstance(InstanceSpellings, _Service):
    """A stateful remote object: ``ctr.incr()`` runs ``incr`` on the instance living in the worker; ``ctr.n`` reads
    an attribute (or property) that is not a method, by value."""

    kind = "instance"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in _Service.__dict__ or name in _FIELDS:
            raise AttributeError(name)
        if self.methods and name not in self.methods:  # an attribute or property of the remote object, by value
            return self._invoke("__getattr__", (name,), {}).run_sync()
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
        import cloudpickle  # here: off a fresh process's imports
        if self.spec is None or self.cluster is None:
            raise ConfigError(f"class {self.name!r} is not deployed", hint="call tether.module(cls).to(cluster)")
        inst_name = name or f"{self.name}-{uuid.uuid4().hex[:8]}"
        inst = RemoteInstance(None, name=inst_name)
        init = base64.b64encode(cloudpickle.dumps((args, kwargs))).decode()
        inst.spec = self.spec.model_copy(update={"name": inst_name, "kind": "instance", "init_pickled_b64": init,
                                                 "of": self.name, "version": None})
        inst.cluster, inst.env, inst.root, inst.options = self.cluster, self.env, self.root, self.options
        out = self.client_on(self.cluster).sync.deploy(inst.spec)
        inst.methods = dict(out.get("methods", {}))
        return inst

