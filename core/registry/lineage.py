"""Lineage in the registry store: a call's edges (what it read and wrote) and the walks over them.

Edges are written with their call record (``Store.record_calls``). An artifact is ``(uri, version)``; the version
is optional. Linking an input to the call that produced it: a versioned input matches the outputs of that uri at
that version; an unversioned one matches the latest output of that uri written by a call that started before the
reading call did. Walks are breadth first, bounded by ``depth`` (call hops) and ``limit`` (calls); calls of
services the asker may not read are left out and counted.
"""

from __future__ import annotations

import builtins
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, select

from tether.registry import schema
from tether.registry.access import effective_level
from tether.registry.models import Artifact, CallRecord, LineageCall, LineageGraph

__all__ = ["call_node", "calls_of", "edge_rows", "walk_downstream", "walk_upstream"]

_C, _L, _X = schema.calls.c, schema.lineage.c, schema.call_context.c
_S, _V = schema.services.c, schema.versions.c


def edge_rows(rec: CallRecord) -> tuple[builtins.list[dict[str, Any]], dict[str, Any] | None]:
    """The lineage rows and the call-context row (None: nothing to say) of one call record."""
    edges = _edges(rec)
    context = dict(service=rec.name, call_id=rec.call_id, cluster=rec.cluster) if rec.cluster else None
    return edges, context


def _edges(rec: CallRecord) -> builtins.list[dict[str, Any]]:
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for direction, items in (("in", rec.inputs), ("out", rec.outputs)):
        for a in items:
            row = dict(service=rec.name, call_id=rec.call_id, direction=direction, uri=a.uri, version=a.version or "")
            out.setdefault((direction, a.uri, a.version or ""), row)
    return list(out.values())


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class _Walk:
    """State of one walk: readable-service cache, calls found, artifacts seen."""

    def __init__(self, conn: Connection, principal: str | None, limit: int) -> None:
        self.conn = conn
        self.principal = principal
        self.limit = limit
        self.readable: dict[str, bool] = {}
        self.calls: dict[tuple[str, str], LineageCall] = {}
        self.artifacts: dict[tuple[str, str], Artifact] = {}
        self.hidden: set[tuple[str, str]] = set()
        self.truncated = False

    def may_read(self, service: str) -> bool:
        if service not in self.readable:
            ns, _, name = service.partition("/")
            self.readable[service] = effective_level(self.conn, self.principal, ns, name) is not None
        return self.readable[service]

    def add_artifact(self, a: Artifact) -> None:
        self.artifacts.setdefault(a.key, a)

    def node(self, service: str, call_id: str) -> LineageCall | None:
        """The call as a node (cached), or None if hidden from the asker or unknown."""
        key = (service, call_id)
        if key in self.calls:
            return self.calls[key]
        if key in self.hidden:
            return None
        if not self.may_read(service):
            self.hidden.add(key)
            return None
        found = call_node(self.conn, service, call_id)
        if found is None:
            return None
        if len(self.calls) >= self.limit:
            self.truncated = True
            return None
        self.calls[key] = found
        for a in (*found.inputs, *found.outputs):
            self.add_artifact(a)
        return found

    def graph(self, root: str, direction: str) -> LineageGraph:
        return LineageGraph(
            root=root, direction=direction,  # type: ignore[arg-type]
            calls=list(self.calls.values()), artifacts=list(self.artifacts.values()),
            hidden=len(self.hidden), truncated=self.truncated,
        )


def call_node(conn: Connection, service: str, call_id: str) -> LineageCall | None:
    """One recorded call with its code version, cluster and edges; None if no such record."""
    query = (
        select(schema.calls, _X.cluster)
        .select_from(schema.calls.outerjoin(schema.call_context, and_(_X.service == _C.service, _X.call_id == _C.call_id)))
        .where(_C.service == service, _C.call_id == call_id)
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    code_hash = import_path = None
    if row.version is not None:
        ns, _, name = service.partition("/")
        code = conn.execute(
            select(_V.code_hash, _V.import_path)
            .select_from(schema.versions.join(schema.services, _S.id == _V.service_id))
            .where(_S.namespace == ns, _S.name == name, _V.version == row.version)
        ).first()
        if code is not None:
            code_hash, import_path = code.code_hash, code.import_path
    inputs: builtins.list[Artifact] = []
    outputs: builtins.list[Artifact] = []
    edges = conn.execute(
        select(_L.direction, _L.uri, _L.version).where(_L.service == service, _L.call_id == call_id).order_by(_L.id)
    )
    for e in edges:
        (inputs if e.direction == "in" else outputs).append(Artifact(uri=e.uri, version=e.version or None))
    return LineageCall(
        service=row.service, version=row.version, call_id=row.call_id, method=row.method, caller=row.caller,
        run_id=row.run_id, cluster=row.cluster, instance_type=row.instance_type, duration_s=row.duration_s,
        outcome=row.outcome, started_at=_ts(row.started_at), code_hash=code_hash, import_path=import_path,
        inputs=inputs, outputs=outputs,
    )


def _producers(conn: Connection, a: Artifact, before: float | None) -> builtins.list[tuple[str, str]]:
    """(service, call_id) of the calls that wrote ``a``: every writer of that version, or for an unversioned
    artifact the latest writer that started before ``before`` (every writer, newest first, at the root)."""
    query = (
        select(_L.service, _L.call_id, _C.started_at)
        .select_from(schema.lineage.join(schema.calls, and_(_C.service == _L.service, _C.call_id == _L.call_id)))
        .where(_L.uri == a.uri, _L.direction == "out")
    )
    if a.version:
        query = query.where(_L.version == a.version)
    elif before is not None:
        query = query.where(_C.started_at <= before)
    rows = conn.execute(query.order_by(_C.started_at.desc(), _C.id.desc()).limit(200)).all()
    if not a.version and before is not None:
        rows = rows[:1]
    return [(r.service, r.call_id) for r in rows]


def _consumers(conn: Connection, a: Artifact, after: float) -> builtins.list[tuple[str, str]]:
    """(service, call_id) of the calls that read ``a``: naming its version, or naming none and started after
    ``after`` (when the producing call started)."""
    query = (
        select(_L.service, _L.call_id, _L.version, _C.started_at)
        .select_from(schema.lineage.join(schema.calls, and_(_C.service == _L.service, _C.call_id == _L.call_id)))
        .where(_L.uri == a.uri, _L.direction == "in")
        .order_by(_C.started_at, _C.id)
        .limit(1000)
    )
    out = []
    for r in conn.execute(query):
        if (r.version and r.version == a.version) or (not r.version and r.started_at >= after):
            out.append((r.service, r.call_id))
    return out


def walk_upstream(
    conn: Connection, root: Artifact, *, principal: str | None, depth: int = 20, limit: int = 500
) -> LineageGraph:
    """What produced ``root``, with which code version, from which inputs — and so on up, ``depth`` calls deep."""
    walk = _Walk(conn, principal, limit)
    walk.add_artifact(root)
    queue: deque[tuple[Artifact, float | None, int]] = deque([(root, None, 0)])
    seen: set[tuple[tuple[str, str], float | None]] = set()
    while queue:
        art, before, level = queue.popleft()
        if (art.key, before) in seen:
            continue
        seen.add((art.key, before))
        if level >= depth:
            walk.truncated = True
            continue
        for service, call_id in _producers(conn, art, before):
            known = (service, call_id) in walk.calls
            node = walk.node(service, call_id)
            if node is None or known:
                continue
            started = node.started_at.timestamp()
            queue.extend((i, started, level + 1) for i in node.inputs)
    return walk.graph(str(root), "upstream")


def walk_downstream(
    conn: Connection, starts: Iterable[tuple[str, str]], root: str, *, principal: str | None, depth: int = 20,
    limit: int = 500,
) -> LineageGraph:
    """What read the outputs of the calls ``starts`` (service, call_id), what read theirs, … ``depth`` deep."""
    walk = _Walk(conn, principal, limit)
    queue: deque[tuple[str, str, int]] = deque((s, c, 0) for s, c in starts)
    expanded: set[tuple[str, str]] = set()
    while queue:
        service, call_id, level = queue.popleft()
        if (service, call_id) in expanded:
            continue
        expanded.add((service, call_id))
        node = walk.node(service, call_id)
        if node is None:
            continue
        if level >= depth:
            walk.truncated = walk.truncated or bool(node.outputs)
            continue
        started = node.started_at.timestamp()
        for out in node.outputs:
            for consumer in _consumers(conn, out, started):
                if consumer not in expanded:
                    queue.append((*consumer, level + 1))
    return walk.graph(root, "downstream")


def calls_of(conn: Connection, service: str, version: int | None, limit: int = 1000) -> builtins.list[tuple[str, str]]:
    """(service, call_id) of the recorded calls of ``service`` (at ``version``), newest first."""
    query = select(_C.service, _C.call_id).where(_C.service == service)
    if version is not None:
        query = query.where(_C.version == version)
    return [(r.service, r.call_id) for r in conn.execute(query.order_by(_C.id.desc()).limit(limit))]
