"""The local registry file without the ORM: what a fresh process on a caller's path needs, in stdlib ``sqlite3``.

An orchestrator task is a new process that loads a service by name, calls it and records the call. Importing
SQLAlchemy for that costs ~0.2 s, more than the call. :class:`LocalStore` reads a version (``get``) and writes call
records (``record_calls``) of the local SQLite file with ``sqlite3`` (the same tables and the same answers as
:class:`tether.registry.store.Store`, a missing name's NotFound included: ``tether.cluster(name=X)`` of a cluster
brought up but never saved asks for X first), and hands everything else — saves, history, tags, sharing,
listings, and the rarer error paths (a missing version or tag, a file without the tables) — to a ``Store`` it
opens on first need. The fork gate (:data:`FORK_GATE`) is here too: both kinds of connection hold it.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.registry.names import Ref, not_found
from tether.registry.plain import PlainCall, as_records

if TYPE_CHECKING:
    from tether.registry.models import CallRecord, Grant, ServiceEntry, UsageRow, Version
    from tether.registry.store import Store

__all__ = ["FORK_GATE", "ForkGate", "LocalStore", "SavedVersion", "sqlite_url"]


class ForkGate:
    """Transactions hold the gate shared; ``os.fork`` waits until none is open.

    SQLite keeps its file-lock bookkeeping in process memory: a child forked while a thread of the parent held a
    write transaction would believe that lock is still held and wait forever. Airflow and multiprocessing fork.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._forking = False
        self._in_child: list[Callable[[], None]] = []

    def in_child(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in a forked child, after the gate reopened (drop the parent's pooled connections)."""
        self._in_child.append(hook)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()
        self._forking = True
        self._cond.wait_for(lambda: self._active == 0, timeout=30)  # a transaction in the forking thread: go on

    def after_fork(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        self._active = 0
        self.after_fork()
        for hook in self._in_child:
            hook()


FORK_GATE = ForkGate()
os.register_at_fork(
    before=FORK_GATE.before_fork,
    after_in_parent=FORK_GATE.after_fork,
    after_in_child=FORK_GATE.after_fork_in_child,
)


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file (what ``Store.url`` says for it)."""
    return f"sqlite:///{Path(path).expanduser()}"


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


#: the call record fields written here: the ``tether_calls`` columns, the cluster (``tether_call_context``) and
#: what the call read and wrote (``tether_lineage``); a record that sets any other field is written by the full
#: store, which knows where that goes
_KNOWN_FIELDS = frozenset({"name", "version", "call_id", "method", "caller", "run_id", "duration_s", "outcome",
                           "error_type", "instance_type", "started_at", "cluster", "inputs", "outputs"})


def _known(record: CallRecord | PlainCall) -> bool:
    """Whether ``record`` says nothing beyond :data:`_KNOWN_FIELDS` (every other field at its default)."""
    if isinstance(record, PlainCall):
        return record.valid()  # its fields are those; outside the model's bounds, the store's validation says so
    fields = type(record).model_fields
    return all(getattr(record, f) == fields[f].get_default(call_default_factory=True)
               for f in fields if f not in _KNOWN_FIELDS)


def _edges(record: Any) -> list[tuple[str, str, str, str, str]]:
    """``tether_lineage`` rows of a record, each edge once (as ``tether.registry.lineage.edge_rows``)."""
    out: dict[tuple[str, str, str], tuple[str, str, str, str, str]] = {}
    for direction, items in (("in", getattr(record, "inputs", ())), ("out", getattr(record, "outputs", ()))):
        for a in items:
            out.setdefault((direction, a.uri, a.version or ""),
                           (record.name, record.call_id, direction, a.uri, a.version or ""))
    return list(out.values())


@dataclass(frozen=True)
class SavedVersion:
    """A saved version as the file holds it: :class:`~tether.registry.models.Version`'s fields, without the model
    (``saved_at`` in seconds since the epoch)."""

    name: str
    version: int
    kind: str
    config: dict[str, Any]
    code_hash: str | None
    import_path: str | None
    saved_by: str
    saved_at: float
    tags: list[str]
    copied_from: int | None


class _Missing(Exception):
    """The lean reader cannot answer (no such file, table, name, version or tag): the full store answers."""


class LocalStore:
    """A :class:`tether.registry.client.RegistryBackend` over one local SQLite file: ``get`` and
    ``record_calls`` in ``sqlite3``, the rest through a :class:`tether.registry.store.Store` made on first need.
    Principals are not checked (the local file is trusted, as ``Store`` with ``principal=None``).
    ``record_calls`` takes :class:`~tether.registry.plain.PlainCall` records as well (``plain_calls``)."""

    plain_calls = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.url = sqlite_url(self.path)
        self._full: Store | None = None
        self._lock = threading.Lock()

    # -- the full store, for everything else -------------------------------------------------------------------
    def store(self) -> Store:
        """The ORM store of the same file (imports SQLAlchemy; creates the file and its tables if missing)."""
        with self._lock:
            if self._full is None:
                from tether.registry.store import Store

                self._full = Store(self.path)
            return self._full

    def close(self) -> None:
        if self._full is not None:
            self._full.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.store(), name)  # save, history, rollback, tag, share, grants, unshare, usage, ...

    # -- sqlite3 ------------------------------------------------------------------------------------------------
    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction on a fresh connection (a read sees one snapshot; a write takes the lock up front)."""
        if self._full is not None:
            raise _Missing  # the ORM is loaded anyway: one kind of connection is enough
        if not self.path.is_file():
            raise _Missing
        with FORK_GATE.held():
            try:
                conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=60, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.OperationalError:
                raise _Missing from None
            try:
                conn.execute("PRAGMA busy_timeout=60000")
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    raise _Missing from None
                raise
            finally:
                conn.close()

    def get(self, ref: Ref, *, principal: str | None = None) -> Version:
        """The version ``ref`` names (a number, a tag, or the latest), as ``Store.get``."""
        if principal is None:
            try:
                saved = self._get_saved(ref)
            except _Missing:
                pass
            else:
                from tether.registry.models import Version  # pydantic: a caller of saved() never builds it

                return Version(name=saved.name, version=saved.version, kind=saved.kind, config=saved.config,
                               code_hash=saved.code_hash, import_path=saved.import_path, saved_by=saved.saved_by,
                               saved_at=_ts(saved.saved_at), tags=saved.tags, copied_from=saved.copied_from)
        return self.store().get(ref, principal=principal)

    def _get_saved(self, ref: Ref) -> SavedVersion:
        """:meth:`get` without the model (principals unchecked, as ``get``'s). Raises ``_Missing`` where only the
        full store can answer; a missing name is NotFound, as ``Store.get`` says it."""
        with self._connect(write=False) as conn:
            svc = conn.execute("SELECT id, namespace, name FROM tether_services WHERE namespace = ? AND name = ?",
                               (ref.namespace, ref.name)).fetchone()
            if svc is None:  # as Store._service says it (every name is readable to the local file's user)
                names = [f"{ns}/{n}" for ns, n in conn.execute("SELECT namespace, name FROM tether_services")]
                raise not_found("registry entry", ref.full, names)
            service_id = svc[0]
            if ref.version is not None:
                number = ref.version
            elif ref.tag is not None:
                row = conn.execute("SELECT version FROM tether_tags WHERE service_id = ? AND tag = ?",
                                   (service_id, ref.tag)).fetchone()
                if row is None:
                    raise _Missing
                number = row[0]
            else:
                number = conn.execute("SELECT max(version) FROM tether_versions WHERE service_id = ?",
                                      (service_id,)).fetchone()[0]
            row = conn.execute(
                "SELECT version, kind, config, code_hash, import_path, saved_by, saved_at, copied_from "
                "FROM tether_versions WHERE service_id = ? AND version = ?", (service_id, number)).fetchone()
            if row is None:
                raise _Missing
            tags = [r[0] for r in conn.execute(
                "SELECT tag FROM tether_tags WHERE service_id = ? AND version = ? ORDER BY tag", (service_id, number))]
        version, kind, config, code_hash, import_path, saved_by, saved_at, copied_from = row
        return SavedVersion(name=f"{svc[1]}/{svc[2]}", version=version, kind=kind, config=json.loads(config),
                            code_hash=code_hash, import_path=import_path, saved_by=saved_by, saved_at=saved_at,
                            tags=tags, copied_from=copied_from)

    def saved(self, ref: Ref) -> SavedVersion | None:
        """:meth:`get` without the model, or None where only the full store can answer (a missing version or tag,
        a file without the tables, the ORM already loaded): the caller then asks :meth:`get`."""
        try:
            return self._get_saved(ref)
        except _Missing:
            return None

    def record_calls(self, records: Iterable[CallRecord | PlainCall], *, principal: str | None = None) -> int:
        """Store call records; a (service, call id) already stored counts once (as ``Store.record_calls``)."""
        records = builtins.list(records)
        if not records:
            return 0
        if principal is None and all(_known(r) for r in records):
            rows = [(r.name, r.version, r.call_id, r.method, r.caller or "unknown", r.run_id, r.duration_s, r.outcome,
                     r.error_type, r.instance_type, r.started_at.timestamp()) for r in records]
            contexts = [(r.name, r.call_id, r.cluster) for r in records if getattr(r, "cluster", None)]
            edges = [edge for r in records for edge in _edges(r)]
            try:
                with self._connect(write=True) as conn:
                    before = conn.total_changes
                    conn.executemany(
                        "INSERT INTO tether_calls (service, version, call_id, method, caller, run_id, duration_s, "
                        "outcome, error_type, instance_type, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (service, call_id) DO NOTHING", rows)
                    stored = conn.total_changes - before
                    if contexts:
                        conn.executemany("INSERT INTO tether_call_context (service, call_id, cluster) "
                                         "VALUES (?, ?, ?) ON CONFLICT (service, call_id) DO NOTHING", contexts)
                    if edges:
                        conn.executemany(
                            "INSERT INTO tether_lineage (service, call_id, direction, uri, version) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (service, call_id, direction, uri, version) "
                            "DO NOTHING", edges)
                    return stored
            except _Missing:  # a file made before those tables: the store adds them (create_all) and writes
                pass
        return self.store().record_calls(as_records(records), principal=principal)

    # -- the rest of RegistryBackend, typed (each opens the full store) ------------------------------------------
    def save(self, ref: Ref, config: dict[str, Any], *, by: str, code_hash: str | None = None) -> Version:
        return self.store().save(ref, config, by=by, code_hash=code_hash)

    def history(self, ref: Ref) -> builtins.list[Version]:
        return self.store().history(ref)

    def rollback(self, ref: Ref, version: int, *, by: str) -> Version:
        return self.store().rollback(ref, version, by=by)

    def tag(self, ref: Ref, version: int, tag: str, *, by: str) -> Version:
        return self.store().tag(ref, version, tag, by=by)

    def share(self, ref: Ref, to: str, level: str, *, by: str) -> Grant:
        return self.store().share(ref, to, level, by=by)

    def grants(self, ref: Ref) -> builtins.list[Grant]:
        return self.store().grants(ref)

    def unshare(self, ref: Ref, to: str, *, by: str) -> int:
        return self.store().unshare(ref, to, by=by)

    def usage(self, ref: Ref) -> builtins.list[UsageRow]:
        return self.store().usage(ref)

    def calls(self, ref: Ref, *, limit: int = 100) -> builtins.list[CallRecord]:
        return self.store().calls(ref, limit=limit)

    def list(self, namespace: str | None = None) -> builtins.list[ServiceEntry]:
        return self.store().list(namespace)

    def lineage(self, *args: Any, **kwargs: Any) -> Any:
        full: Any = self.store()  # (lineage: what the full store adds; typed loosely on purpose)
        return full.lineage(*args, **kwargs)

    def dependents(self, *args: Any, **kwargs: Any) -> Any:
        full: Any = self.store()  # (lineage: what the full store adds; typed loosely on purpose)
        return full.dependents(*args, **kwargs)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        full: Any = self.store()  # (lineage: what the full store adds; typed loosely on purpose)
        return full.call(*args, **kwargs)
