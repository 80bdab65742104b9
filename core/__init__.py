"""tether: turn any function or class into a named service on compute you own, and call it from anywhere.

    import tether
    c = tether.cluster().up_if_not()            # the embedded local daemon
    radd = tether.function(add).to(c)           # deployed by import path
    radd(1, 2)                                  # runs remotely

Names are imported lazily so ``import tether`` stays cheap in worker processes.
"""

import importlib as _importlib
import typing as _typing

from tether._version import __version__
from tether.errors import (
    AuthError,
    CallCancelled,
    CallTimeout,
    CapacityError,
    ClusterUnavailable,
    ConfigError,
    NotFound,
    OutOfMemory,
    PayloadTooLarge,
    QuotaError,
    RemoteError,
    SerializationError,
    StorageFull,
    TetherError,
    WorkerDied,
)

if _typing.TYPE_CHECKING:
    from tether import registry, runs
    from tether.api.calls import CallHandle, call
    from tether.api.clusters import Cluster
    from tether.api.envs import Env, env
    from tether.api.factories import kubernetes_cluster, ondemand_cluster
    from tether.api.images import Image
    from tether.api.loading import cluster, module
    from tether.api.module import Module
    from tether.api.report import report
    from tether.api.saved import function, load
    from tether.api.secrets import Secret, secret
    from tether.api.services import Function, RemoteClass, RemoteInstance
    from tether.compute.routing import RoutingPolicy
    from tether.escalation import Escalation

__all__ = [
    "AuthError",
    "CallCancelled",
    "CallHandle",
    "CallTimeout",
    "CapacityError",
    "Cluster",
    "ClusterUnavailable",
    "ConfigError",
    "Env",
    "Escalation",
    "Function",
    "Image",
    "Module",
    "NotFound",
    "OutOfMemory",
    "PayloadTooLarge",
    "QuotaError",
    "RemoteClass",
    "RemoteError",
    "RemoteInstance",
    "RoutingPolicy",
    "Secret",
    "SerializationError",
    "StorageFull",
    "TetherError",
    "WorkerDied",
    "__version__",
    "call",
    "cluster",
    "env",
    "function",
    "here",
    "kubernetes_cluster",
    "load",
    "module",
    "ondemand_cluster",
    "registry",
    "report",
    "runs",
    "secret",
]

_LAZY = {
    "CallHandle": "tether.api.calls", "call": "tether.api.calls",
    "Cluster": "tether.api.clusters", "cluster": "tether.api.loading",
    "Env": "tether.api.envs", "env": "tether.api.envs",
    "Escalation": "tether.escalation",
    "Image": "tether.api.images", "Secret": "tether.api.secrets", "secret": "tether.api.secrets",
    "Function": "tether.api.services", "Module": "tether.api.module", "RemoteClass": "tether.api.services",
    "RemoteInstance": "tether.api.services", "function": "tether.api.saved", "module": "tether.api.loading",
    "load": "tether.api.saved", "report": "tether.api.report",
    "RoutingPolicy": "tether.compute.routing",
    "kubernetes_cluster": "tether.api.factories", "ondemand_cluster": "tether.api.factories",
}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in ("registry", "runs", "catalog", "routing", "escalation", "oom", "lineage"):
        return _importlib.import_module(f"tether.{name}")
    if name == "here":
        value = _importlib.import_module("tether.api.loading").cluster()
        globals()["here"] = value
        return value
    raise AttributeError(f"module 'tether' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
