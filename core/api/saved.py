"""What ``tether.function(name=...)`` returns: a saved function, called at once without building its models.

An orchestrator task is a new process that loads a service by name and calls it. Building the full handle — the
pydantic models of its spec, env and cluster, the backend that brings the cluster up — costs a fresh process
~0.15 s of imports, more than the call. In the plain case — your own saved function, on a local cluster whose
daemon runs, with no image, no escalation policy, on the head's env, with a plain ``__call__`` — a
:class:`SavedFunction` is returned instead: its calls go through the one call path
(:class:`~tether.api.invocation.Invocation`) on a :class:`PlainService`, which holds only what a call needs (the
daemon's address from this user's own state, the version the call expects) and checks, as the full handle does
before its first call, that the daemon runs that version.

Anything else asked of it (an attribute, another method, ``isinstance``, pickling) builds the full
:class:`~tether.api.services.Function` from the same record, once, exactly as ``tether.load`` would, and hands
everything over to it; so does every recovery a call needs (a redeploy, a restarted or stopped daemon). In every
other case ``tether.load`` runs as it is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tether.api.compat import CALL_KEYWORDS, resource_name
from tether.api.invocation import Invocation
from tether.api.options import ServiceOptions
from tether.api.sharing import refuses_pickle
from tether.client import AsyncClient, routes
from tether.compute.daemons import ANSWER_TIMEOUT, local_address
from tether.compute.state import load_state, state_backend
from tether.errors import AuthError
from tether.home import clusters_dir
from tether.protocol.deployments import expected, runs_version
from tether.registry import get_registry
from tether.registry.lean import LocalStore, SavedVersion

if TYPE_CHECKING:
    from tether.api.services import Function

__all__ = ["PlainService", "SavedFunction", "function", "load", "reader_of"]


def reader_of(registry: Any) -> str | None:
    """Who reads ``registry`` (for the writer check of a load); None when that cannot be said."""
    try:
        return str(registry.user)
    except Exception:  # noqa: BLE001 - who reads is for the writer check only; never fail a load over it
        return None


def function(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Function:
    """Wrap ``fn`` to deploy it (``.to(cluster)``), or load a saved service: ``tether.function(name="embed")``."""
    if fn is None and name:
        saved = plain_load(name)
        if saved is not None:
            return saved  # type: ignore[return-value]  # a Function to every check (see SavedFunction)
    from tether.api.loading import function as full_function  # the full handles and their models

    return full_function(fn, name=name)


def load(name: str, *, trust: bool = False) -> Any:
    """``tether.load("team/embed@2")``: the saved cluster, env, function, class or instance (see
    :func:`tether.api.loading.load`); your own plain saved function as a :class:`SavedFunction`."""
    saved = plain_load(name)
    if saved is not None:
        return saved
    from tether.api.loading import load as full_load  # as in function

    return full_load(name, trust=trust)


def plain_load(name: str) -> SavedFunction | None:
    """The saved function ``name`` as a :class:`SavedFunction` when the plain case holds; None: load it the full
    way. A missing name raises the registry's NotFound, as the full load does."""
    if not isinstance(name, str) or os.environ.get("TETHER_REGISTRY_URL"):
        return None
    name = resource_name(name)
    registry = get_registry()
    if not isinstance(registry.backend, LocalStore):
        return None
    record = registry.backend.saved(registry.ref(name))
    if record is None or record.saved_by != reader_of(registry):  # someone else's: the full load checks it
        return None
    service = PlainService.of(name, record)
    return SavedFunction(service) if service is not None else None


class _Address:
    """A plain cluster's handle: what a call record asks of it."""

    __slots__ = ("instance_type",)

    def __init__(self, instance_type: str) -> None:
        self.instance_type = instance_type


class PlainCluster:
    """The cluster of a :class:`PlainService`, as an :class:`Invocation` and a call record see it. ``refresh``
    (a daemon restarted by another process) hands over to the full handle."""

    def __init__(self, owner: PlainService, name: str, instance_type: str) -> None:
        self.owner = owner
        self.name = name
        self._handle = _Address(instance_type)

    def refresh(self) -> bool:
        return self.owner.full().cluster.refresh()


class PlainService:
    """What an :class:`Invocation` needs of a service, for a saved function read in plain form; once anything
    needs more (a recovery), the full Function, which it then stands in front of."""

    kind = "function"
    node = None  # the head's env (the plain case)
    options = ServiceOptions()  # a loaded function's options: the defaults (escalation is not the plain case)

    def __init__(self, loaded_as: str, name: str, spec_name: str, record: SavedVersion, cluster: str,
                 instance_type: str, client: AsyncClient) -> None:
        self.loaded_as = loaded_as  # the name given to the load (``embed@2``)
        self.name = name
        self.spec_name = spec_name
        self.record = record
        self.registry_name = record.name
        self.saved_version: int | None = record.version
        self.expects = expected("function", record.version, None)
        self.caller: str | None = None
        self._cluster = PlainCluster(self, cluster, instance_type)
        self._client = client
        self._verified = False
        self._full: Function | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, name: str, record: SavedVersion) -> PlainService | None:
        """The plain service of ``record`` loaded as ``name``; None when it is not the plain case."""
        config = record.config
        service, cluster = config.get("service"), config.get("cluster")
        if record.kind != "function" or config.get("kind") != "function" or config.get("on_oom") \
                or not isinstance(service, dict) or not isinstance(cluster, dict):
            return None
        methods = config.get("methods") or {}
        env = service.get("env") or {}
        handle_name, spec_name, cluster_name = config.get("name"), service.get("name"), cluster.get("name")
        if not isinstance(methods, dict) or methods.get("__call__", "sync") != "sync" \
                or service.get("kind", "function") != "function" or not isinstance(env, dict) \
                or env.get("node") not in (None, 0) or not isinstance(handle_name, str) \
                or not isinstance(spec_name, str) or not isinstance(cluster_name, str) \
                or cluster.get("backend") != "local" or cluster.get("image") is not None:
            return None
        state = load_state(cluster_name)  # this user's own state: where the daemon is and its token
        if state is None or state_backend(state) != "local" or state.get("image_hash"):
            return None
        address = local_address(state, clusters_dir() / cluster_name)
        if address is None:  # not running: the full handle brings it up
            return None
        if "@" in name:  # a pinned version runs under its own daemon name, as tether.load names it
            handle_name = spec_name = f"{spec_name}.v{record.version}"
        instance_type = cluster.get("instance_type")
        client = AsyncClient(address.endpoint, address.token, address.tls_fingerprint, address.unix_socket)
        return cls(name, handle_name, spec_name, record, cluster_name,
                   instance_type if isinstance(instance_type, str) and instance_type else "local", client)

    # -- the full handle, once something needs it ------------------------------------------------------------
    def full(self) -> Function:
        """The full Function of the same record, built once, as ``tether.load`` builds it."""
        with self._lock:
            if self._full is None:
                from tether.api.loading import from_record  # the full handles and their models

                self._full = from_record(self.loaded_as, self.record, reader=self.record.saved_by, own=True)
            return self._full

    # -- what an Invocation asks ----------------------------------------------------------------------------
    @property
    def cluster(self) -> Any:
        return self._full.cluster if self._full is not None else self._cluster

    def client_on(self, cluster: Any) -> AsyncClient:
        if self._full is not None and cluster is not self._cluster:
            return self._full.client_on(cluster)
        return self._client

    def _needs_preparing(self) -> bool:
        return self._full._needs_preparing() if self._full is not None else not self._verified

    def _ensure_deployed(self) -> Any:
        """The daemon runs the loaded version (asked once, as the full handle asks before its first call);
        otherwise — another version, no answer — the full handle takes over (it redeploys, or relaunches)."""
        if self._full is not None:
            return self._full._ensure_deployed()
        if not self._verified:
            try:  # in the time the full handle's bring-up gives a daemon to answer its health probe
                answer = self._client.sync.send(replace(routes.services(), timeout=ANSWER_TIMEOUT))
                current = runs_version(answer, self.spec_name, self.saved_version)
            except Exception:  # noqa: BLE001 - hung, gone, refused: the full handle's bring-up deals with it
                return self.full()._ensure_deployed()
            if not current:
                return self.full()._ensure_deployed()
            self._verified = True
        return self._cluster

    def _redeploy_spec(self) -> None:
        full = self.full()
        full._ensure_deployed()
        full._redeploy_spec()

    def _relaunch(self) -> bool:
        return self.full()._relaunch()


class SavedFunction:
    """A saved function loaded by name (see the module's doc): called in plain form; for everything else, the
    full :class:`~tether.api.services.Function`, which it stands for (``isinstance(f, tether.Function)`` holds)."""

    __slots__ = ("_plain",)

    def __init__(self, plain: PlainService) -> None:
        object.__setattr__(self, "_plain", plain)

    def _full(self) -> Function:
        return self._plain.full()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        plain = self._plain
        if plain._full is not None or not CALL_KEYWORDS.isdisjoint(kwargs):
            return self._full()(*args, **kwargs)  # run_async=, stream_logs=: the full handle's dispatch
        try:
            return Invocation(plain, None, args, kwargs).run_sync()
        except AuthError as exc:  # a grant that takes JSON arguments only: the full handle sends them so
            if not refuses_pickle(exc):
                raise
            return self._full()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._full(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._full(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._full(), attr)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._full())

    def __dir__(self) -> list[str]:
        return dir(self._full())

    def __repr__(self) -> str:
        return repr(self._full())

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self._full().__reduce_ex__(protocol)

