"""Runhouse's methods on tether's service handles (mixed into :mod:`tether.api.services`' classes).

Each is a thin spelling of something tether does already: ``endpoint()`` is the URL a non-Python caller posts
to, ``map``/``starmap`` fan calls out (:mod:`tether.api.mapping`), ``fetch`` reads remote state by value,
``resolve()`` passes the remote object itself into another call, ``set_async`` sets an attribute from async
code, ``get_or_to`` reuses a live service, ``share``/``revoke``/``shared_with`` reach the daemon's per-service
access (:mod:`tether.api.sharing`), ``history`` lists saved versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tether.api import sharing
from tether.api.mapping import map_calls, zip_args
from tether.errors import ConfigError, NotFound
from tether.registry import get_registry

__all__ = ["FunctionSpellings", "InstanceSpellings", "Resolved", "ServiceSpellings"]

_NO_VALUE: Any = object()


class ServiceSpellings:
    """On every service handle."""

    name: str | None
    registry_name: str | None

    def endpoint(self, external: bool = False) -> str:
        """The service's URL: POST ``<endpoint>/call`` (JSON ``{"args", "kwargs"}``) or GET ``<endpoint>?a=1``
        (query parameters as keyword arguments), with ``Authorization: Bearer <token>``. ``external`` is
        accepted; the URL is the one this client reaches (a tunnel's local end for ssh clusters)."""
        cluster = self._ensure_deployed()  # type: ignore[attr-defined]
        return f"{cluster.endpoint.rstrip('/')}/{self.name}"

    def share(self, users: str | list[str] | None = None, access_level: str = "read", notify_users: bool = False,
              *, allow_pickle: bool = False) -> dict[str, str]:
        """Give ``users`` access to this live service (and to its saved versions in the registry); returns each
        user's token for this cluster's daemon. See :func:`tether.api.sharing.share`."""
        return sharing.share(self, users, access_level, notify_users=notify_users, allow_pickle=allow_pickle)

    def revoke(self, users: str | list[str] | None = None) -> None:
        """Take back what :meth:`share` gave ``users``."""
        sharing.revoke(self, users)

    def shared_with(self) -> list[dict[str, Any]]:
        """Who else the daemon lets use this service, at which level."""
        return sharing.shared_with(self)

    def history(self) -> list[Any]:
        """The saved versions of this service, oldest first (``tether.registry.history``)."""
        return list(get_registry().history(self.registry_name or self.name or ""))

    def set_async(self, key: Any, value: Any = _NO_VALUE) -> Any:
        """``await handle.set_async("attr", value)``: set a remote attribute from async code (write access).
        ``handle.set_async(True)`` alone: a handle whose calls return coroutines (``False``: values)."""
        if value is _NO_VALUE:
            if not isinstance(key, bool):
                raise ConfigError("set_async(key, value) sets an attribute; set_async(True) makes calls async")
            return self._copy(_default_async=key)  # type: ignore[attr-defined]
        if not isinstance(key, str) or key.startswith("_"):
            raise ConfigError(f"cannot set {key!r} of a remote object", hint="set a public attribute by name")
        return self._invoke("__setattr__", (key, value), {}).run_async()  # type: ignore[attr-defined]

    def get_or_to(self, system: Any, name: str | None = None, process: Any = None, env: Any = None) -> Any:
        """The live service ``name`` on ``system`` when there is one (a stub of it, its state as it is), else
        this handle deployed there under that name."""
        name = name or self.name
        if not name:
            raise ConfigError("get_or_to needs a name", hint="get_or_to(cluster, name='...')")
        try:
            return system.up_if_not().get(name, remote=True)
        except NotFound:
            return self.to(system, name=name, env=env, process=process)  # type: ignore[attr-defined]


class FunctionSpellings:
    """On function handles."""

    obj: Any
    name: str | None

    @property
    def local(self) -> Callable[..., Any]:
        """The function itself, to run in this process: ``remote.local(1, 2)``."""
        if self.obj is None:
            raise ConfigError(f"{self.name!r} was loaded by name: there is no local copy to run",
                              hint="import the function and wrap it with tether.function(fn)")
        return self.obj  # type: ignore[no-any-return]

    def map(self, *iterables: Iterable[Any], **kwargs: Any) -> list[Any]:
        """``fn.map(xs, ys)``: ``[fn(x, y) for x, y in zip(xs, ys)]``, the calls running concurrently, results in
        order; ``kwargs`` go to every call."""
        return map_calls(self, None, zip_args(iterables), kwargs)

    def starmap(self, args_lists: Iterable[Iterable[Any]], **kwargs: Any) -> list[Any]:
        """``fn.starmap([(1, 2), (3, 4)])``: ``[fn(1, 2), fn(3, 4)]``, concurrently, in order."""
        return map_calls(self, None, args_lists, kwargs)


class Resolved:
    """What ``instance.resolve()`` returns: passed into a remote call, it arrives as the remote object itself
    (fetched by value when the call's arguments are pickled), not as a handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _identity, (self.handle.fetch(),)


def _identity(value: Any) -> Any:
    return value


class InstanceSpellings:
    """On handles of remote objects (instances)."""

    name: str | None

    def fetch(self, item: str | None = None) -> Any:
        """A remote attribute by value (``fetch("n")``), or the whole remote object (``fetch()``: a copy;
        changing it changes nothing remotely; needs owner access, since it holds private state too)."""
        if item is not None:
            return self._invoke("__getattr__", (item,), {}).run_sync()  # type: ignore[attr-defined]
        return self._ensure_deployed().get(self.name)  # type: ignore[attr-defined]

    async def fetch_async(self, item: str) -> Any:
        return await self._invoke("__getattr__", (item,), {}).run_async()  # type: ignore[attr-defined]

    def resolve(self) -> Resolved:
        """This remote object, to pass into another remote call as the object itself."""
        return Resolved(self)

    @property
    def local(self) -> Any:
        """The local copy this handle was sent from (``tether.Module`` subclasses sent with ``.to``)."""
        obj = getattr(self, "_local_obj", None)
        if obj is None:
            raise ConfigError(f"{self.name!r} was made on the cluster: it has no local copy",
                              hint="read its state with .fetch() or .remote.<attr>")
        return obj

