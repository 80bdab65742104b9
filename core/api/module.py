"""``tether.Module``, both ways Runhouse users write it, and stubs of services already running on a cluster.

- ``tether.Module(Counter).to(cluster)``: a class to deploy, as ``tether.module(Counter)`` (a
  :class:`~tether.api.services.RemoteClass`; calling it makes named remote instances).
- ``class BERT(tether.Module): ...``: a class whose instances are built here and sent with
  ``BERT(...).to(cluster, name=...)``. The instance's state (its ``__dict__``, as it is when ``.to`` is called)
  travels with it: the worker rebuilds the object from that state without running ``__init__`` again. The
  handle's methods run remotely, its other attributes and properties are read remotely, and ``handle.local`` is
  the object it was sent from.
- ``cluster.get(name, remote=True)``: a stub of the live service ``name``, whatever made it.
"""

from __future__ import annotations

import base64
import functools
import inspect
from typing import Any

from tether.api.clusters import Cluster
from tether.api.compat import placement
from tether.api.envs import Env
from tether.api.services import Function, RemoteClass, RemoteInstance
from tether.errors import ConfigError, NotFound, SerializationError
from tether.specs import CodeRef, EnvSpec, ServiceSpec

__all__ = ["LiveClass", "LiveFunction", "LiveInstance", "Module", "ModuleInstance", "live_stub"]

#: the keyword the worker's ``cls(**{STATE_KEYWORD: state})`` carries a sent instance's state in
STATE_KEYWORD = "__tether_state__"


def _pickled_state(obj: Any) -> str:
    """The instance's ``__dict__`` as the worker's init arguments; an attribute that cannot travel is named."""
    import cloudpickle  # here: off a fresh process's imports
    state = dict(vars(obj))
    try:
        return base64.b64encode(cloudpickle.dumps(((), {STATE_KEYWORD: state}))).decode()
    except Exception as exc:  # noqa: BLE001 - find the attribute to name, then raise the typed error
        bad = []
        for key, value in state.items():
            try:
                cloudpickle.dumps(value)
            except Exception:  # noqa: BLE001
                bad.append(key)
        raise SerializationError(
            f"{type(obj).__name__} cannot be sent with its state: {', '.join(map(repr, bad)) or 'its state'} "
            f"cannot be pickled ({type(exc).__name__}: {exc})",
            hint="make those attributes lazily (in a method or property that runs remotely) or drop them before "
                 ".to()", details={"attributes": bad}) from None


class Module:
    """``tether.Module(cls)``: a class to deploy with ``.to(cluster)``. Subclassed (``class M(tether.Module)``):
    instances are built locally and sent, state and all, with ``M(...).to(cluster, name=...)``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = object.__new__(cls)
        state = kwargs.get(STATE_KEYWORD)
        if cls is not Module and isinstance(state, dict):  # the worker rebuilding a sent instance
            obj.__dict__.update(state)
        return obj

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__") or cls.__init__  # its own, or one of a base that is no Module
        if init is Module.__init__ or getattr(init, "_tether_rebuilds", False):
            return

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kw: Any) -> None:
            if STATE_KEYWORD in kw:  # rebuilt from a sent state: __init__ ran where the instance was made
                return
            init(self, *args, **kw)

        __init__._tether_rebuilds = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, cls: Any = None, name: str | None = None, **kwargs: Any) -> None:
        if STATE_KEYWORD in kwargs or type(self) is not Module:
            return  # a subclass's super().__init__(): nothing of ours goes into the user's object
        if not inspect.isclass(cls):
            raise ConfigError(f"{cls!r} is not a class", hint="use tether.function for functions, or subclass "
                                                              "tether.Module")
        self.cls = cls
        self.name = name or cls.__name__

    def to(self, cluster: Cluster | None = None, env: Env | str | None = None, name: str | None = None, *,
           replace_env: bool = False, system: Any = None, process: Any = None) -> Any:
        """Deploy: the wrapped class (a :class:`RemoteClass`), or this subclass instance with its state (a
        :class:`ModuleInstance`). ``env``/``replace_env`` as for ``Function.to``; Runhouse's ``system=`` and
        ``process=`` are the cluster and the env."""
        cluster, env = placement(cluster, env, system=system, process=process)
        if type(self) is Module:
            remote = RemoteClass(self.cls, name=name or self.name)
            remote._deploy(cluster, env, name or self.name, replace_env=replace_env)
            return remote
        return send(self, cluster, env, name, replace_env=replace_env)

    def get_or_to(self, system: Cluster, name: str | None = None, process: Any = None, env: Any = None) -> Any:
        """The live service ``name`` on ``system`` when it runs there (its state as it is), else this deployed."""
        name = name or (self.name if type(self) is Module else type(self).__name__)
        try:
            return system.up_if_not().get(name, remote=True)
        except NotFound:
            return self.to(system, name=name, env=env, process=process)


class ModuleInstance(RemoteInstance):
    """A ``tether.Module`` subclass instance on a cluster (or any live instance reached by name): methods run
    remotely, other attributes are read remotely; ``.local`` is the object it was sent from."""

    _local_obj: Any = None
    _init: str | None = None  # the pickled (args, kwargs) that rebuild the sent state in the worker

    def _build_spec(self, cluster: Cluster, env: Env, name: str) -> ServiceSpec:
        spec = super()._build_spec(cluster, env, name)
        if self._init is not None:
            spec.init_pickled_b64 = self._init
        return spec


def send(obj: Any, cluster: Cluster | None, env: Env | str | None, name: str | None, *,
         replace_env: bool = False) -> ModuleInstance:
    """Deploy the instance ``obj`` under ``name`` (default: its class's name) with its current state."""
    cls = type(obj)
    handle = ModuleInstance(cls, name=name or cls.__name__)
    handle._init = _pickled_state(obj)
    handle._local_obj = obj
    handle._deploy(cluster, env, name or cls.__name__, replace_env=replace_env)
    return handle


class _Live:
    """A stub of a service someone deployed: this handle holds no code of it, so it never redeploys it."""

    name: str | None

    def _redeploy_spec(self) -> None:
        raise NotFound(f"{self.name!r} is no longer on its cluster, and this stub holds no code to deploy again",
                       hint="deploy it again with tether.function(fn)/tether.module(cls).to(cluster, name=...)",
                       details={"name": self.name})


class LiveFunction(_Live, Function):
    """A live function reached by name."""


class LiveClass(_Live, RemoteClass):
    """A live class reached by name (calling it makes instances of the class the daemon holds)."""


class LiveInstance(_Live, ModuleInstance):
    """A live object reached by name."""


def live_stub(cluster: Cluster, name: str) -> Any:
    """A handle of the service ``name`` running on ``cluster`` as it is now (no code of ours is deployed; if the
    daemon loses it, calls fail with ``NotFound``). Raises ``NotFound`` when nothing of that name runs there."""
    rows = {row["name"]: row for row in cluster.up_if_not().ls()}
    row = rows.get(name)
    if row is None or row.get("kind") == "object":
        services = sorted(n for n, r in rows.items() if r.get("kind") != "object")
        raise NotFound(f"no service {name!r} on cluster {cluster.name!r}",
                       hint="deploy it with .to(cluster, name=...), or read an object with cluster.get(name)",
                       details={"name": name, "services": services})
    kinds: dict[str, type[Any]] = {"function": LiveFunction, "module": LiveClass, "instance": LiveInstance}
    handle = kinds[row["kind"]](None, name=name)
    handle.spec = ServiceSpec(name=name, kind=row["kind"], env=EnvSpec(name=row.get("env") or "default"),
                              code=CodeRef(), version=row.get("version"))
    handle.cluster, handle.env = cluster, Env(handle.spec.env)
    handle.methods = dict(row.get("methods") or {})
    return handle


Cluster.live_stub = staticmethod(live_stub)
