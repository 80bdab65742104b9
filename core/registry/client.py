"""``Registry``: the one API over the local store (a SQLite file) or the team server (HTTP), by name strings."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tether.errors import ConfigError
from tether.registry.names import Ref, current_user, parse_ref
from tether.registry.openlineage import emitter_from_env
from tether.registry.plain import PlainCall, as_records
from tether.registry.usage import CallWriter, Resolve

if TYPE_CHECKING:
    from tether.registry.models import (
        Artifact,
        CallRecord,
        Grant,
        LineageCall,
        LineageGraph,
        ServiceEntry,
        UsageRow,
        Version,
    )

__all__ = ["RegistryBackend", "Registry"]


class RegistryBackend(Protocol):
    """What a registry needs from storage: :class:`~tether.registry.store.Store` or the HTTP client."""

    def save(self, ref: Ref, config: dict[str, Any], *, by: str, code_hash: str | None = None) -> Version: ...
    def get(self, ref: Ref) -> Version: ...
    def history(self, ref: Ref) -> builtins.list[Version]: ...
    def rollback(self, ref: Ref, version: int, *, by: str) -> Version: ...
    def tag(self, ref: Ref, version: int, tag: str, *, by: str) -> Version: ...
    def share(self, ref: Ref, to: str, level: str, *, by: str) -> Grant: ...
    def grants(self, ref: Ref) -> builtins.list[Grant]: ...
    def unshare(self, ref: Ref, to: str, *, by: str) -> int: ...
    def record_calls(self, records: builtins.list[CallRecord]) -> int: ...  # PlainCall too where plain_calls is True
    def usage(self, ref: Ref) -> builtins.list[UsageRow]: ...
    def calls(self, ref: Ref, *, limit: int = 100) -> builtins.list[CallRecord]: ...
    def list(self, namespace: str | None = None) -> builtins.list[ServiceEntry]: ...
    def lineage(self, artifact: Artifact, *, depth: int = 20) -> LineageGraph: ...
    def dependents(self, ref: Ref, *, depth: int = 20) -> LineageGraph: ...
    def call(self, ref: Ref, call_id: str) -> LineageCall: ...
    def close(self) -> None: ...


class Registry:
    """Names → versioned configs, with tags, rollback, sharing and call records.

    ``where`` says what it talks to (a database URL or a server URL). Bare names live in ``namespace``
    (``TETHER_NAMESPACE``, else the user's own); ``team/embed`` names another namespace.
    """

    def __init__(
        self,
        backend: RegistryBackend,
        *,
        where: str,
        user: str | None = None,
        namespace: str | None = None,
        whoami: Callable[[], str] | None = None,
    ):
        self.backend = backend
        self.where = where
        self._user = user
        self._namespace = namespace or os.environ.get("TETHER_NAMESPACE") or None
        self._whoami = (
            whoami  # the team server says who the token is: asked on first need, not at construction
        )
        self._writer = CallWriter(self._write_calls)

    @property
    def user(self) -> str:
        """Who acts: the token's principal on a team server, else ``TETHER_USER`` / the OS user."""
        if self._user is None:
            self._user = self._whoami() if self._whoami is not None else current_user()
        return self._user

    @property
    def namespace(self) -> str:
        """Where bare names live: ``TETHER_NAMESPACE``, else the user's own namespace."""
        return self._namespace or self.user

    def __repr__(self) -> str:
        return f"Registry({self.where!r}, user={self.user!r}, namespace={self.namespace!r})"

    def ref(self, name: str, *, allow_selector: bool = True) -> Ref:
        """Parse ``name`` in this registry's namespace."""
        return parse_ref(name, namespace=self.namespace, allow_selector=allow_selector)

    def save(self, name: str, config: dict[str, Any], *, code_hash: str | None = None) -> Version:
        """Record a new immutable version of ``name``; a corrupt or foreign config raises ConfigError, saves nothing."""
        from tether.registry.configs import check_config  # the config models: a load-and-call never saves

        check_config(config)  # client-side too: registered validators run here, not on the server
        return self.backend.save(
            self.ref(name, allow_selector=False), config, by=self.user, code_hash=code_hash
        )

    def get(self, name: str) -> Version:
        """``"embed"`` (latest), ``"embed@2"``, ``"embed@prod"``, ``"team/embed"``; NotFound lists close matches."""
        return self.backend.get(self.ref(name))

    def history(self, name: str) -> builtins.list[Version]:
        """Every version of ``name``, oldest first."""
        return self.backend.history(self.ref(name, allow_selector=False))

    def rollback(self, name: str, version: int) -> Version:
        """Make ``version`` the latest again: records a new version copying it (``copied_from`` says which)."""
        return self.backend.rollback(self.ref(name, allow_selector=False), int(version), by=self.user)

    def tag(self, name: str, version: int, tag: str) -> Version:
        """Point ``tag`` at ``version``; ``name@tag`` then loads it."""
        return self.backend.tag(self.ref(name, allow_selector=False), int(version), tag, by=self.user)

    def share(self, name: str, principal: str, access_level: str = "read") -> Grant:
        """Give a user or team access: read = call/load, write = save/redeploy/tag/rollback, owner = share.

        ``name`` may be ``"team/*"`` to share a whole namespace.
        """
        if name.endswith("/*") or name == "*":
            ns = name[:-2] if name.endswith("/*") else self.namespace
            ref = Ref(parse_ref(f"{ns}/x").namespace, "*")
        else:
            ref = self.ref(name, allow_selector=False)
        return self.backend.share(ref, principal, access_level, by=self.user)

    def unshare(self, name: str, principal: str) -> int:
        """Remove ``principal``'s grant on ``name`` (``"team/*"``: the namespace grant); owner access needed.
        How many grants were removed (0: there was none)."""
        if name.endswith("/*") or name == "*":
            ns = name[:-2] if name.endswith("/*") else self.namespace
            ref = Ref(parse_ref(f"{ns}/x").namespace, "*")
        else:
            ref = self.ref(name, allow_selector=False)
        return self.backend.unshare(ref, principal, by=self.user)

    def grants(self, name: str) -> builtins.list[Grant]:
        """Who has access to ``name`` (and to its namespace)."""
        return self.backend.grants(self.ref(name, allow_selector=False))

    def record_call(self, record: CallRecord | PlainCall, resolve: Resolve | None = None) -> None:
        """Queue a call record for the background writer: no I/O here, never raises for storage trouble.
        ``resolve`` completes it on the writer's thread (see :class:`tether.registry.usage.CallWriter`)."""
        self._writer.put(record, resolve)

    def _write_calls(self, batch: builtins.list[CallRecord | PlainCall]) -> int:
        """The writer's sink: resolve names and callers (off the caller's thread), then store."""
        resolved = []
        for record in batch:
            try:
                full = self.ref(record.name).full
            except ConfigError:
                continue  # a bad name on a record must not sink the batch
            resolved.append(record.model_copy(update={"name": full, "caller": record.caller or self.user}))
        if not resolved:
            return 0
        stored = self.backend.record_calls(resolved if getattr(self.backend, "plain_calls", False)
                                           else as_records(resolved))
        exporter = emitter_from_env()  # OpenLineage run events when TETHER_OPENLINEAGE says where
        if exporter is not None:
            exporter.emit(as_records(resolved))
        return stored

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until queued call records are written; False on timeout."""
        return self._writer.flush(timeout)

    def usage(self, name: str) -> builtins.list[UsageRow]:
        """Calls of ``name`` per caller and version: counts, errors, total/mean/max seconds. Flushes first."""
        self.flush()
        return self.backend.usage(self.ref(name, allow_selector=False))

    def calls(self, name: str, *, limit: int = 100) -> builtins.list[CallRecord]:
        """The latest call records of ``name``, newest first. Flushes first."""
        self.flush()
        return self.backend.calls(self.ref(name, allow_selector=False), limit=limit)

    def list(self, namespace: str | None = None) -> builtins.list[ServiceEntry]:
        """Every name you can read (optionally in one namespace), with latest version and tags."""
        return self.backend.list(namespace)

    def lineage(self, uri: str, version: str | int | None = None, *, depth: int = 20) -> LineageGraph:
        """What produced ``uri`` (at ``version``), with which code version, from which inputs — transitively.
        ``graph.producers_of(uri)`` are the calls that wrote it; each call's ``inputs`` lead further up. Flushes
        first."""
        self.flush()
        from tether.registry.models import Artifact

        return self.backend.lineage(Artifact(uri=uri, version=version), depth=depth)  # type: ignore[arg-type]

    def dependents(self, name: str, *, depth: int = 20) -> LineageGraph:
        """What depends on ``name`` (``"embed@3"``: that version; ``"embed"``: any): the calls that read what its
        calls wrote, and so on down. Flushes first."""
        self.flush()
        return self.backend.dependents(self.ref(name), depth=depth)

    def call(self, name: str, call_id: str) -> LineageCall:
        """One recorded call of ``name``: code version, cluster, caller, duration, inputs, outputs. Flushes first."""
        self.flush()
        return self.backend.call(self.ref(name, allow_selector=False), call_id)

    def close(self) -> None:
        """Flush call records and release connections."""
        self._writer.close()
        self.backend.close()
