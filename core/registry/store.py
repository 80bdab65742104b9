"""The registry store: versions, tags, grants, tokens and call records in SQLite (default) or PostgreSQL.

Every write is one transaction; version numbers come from ``max+1`` under a row lock (PostgreSQL) or an
immediate write lock (SQLite), and the ``(service, version)`` primary key turns any remaining race into an
IntegrityError that is retried, so concurrent savers in many processes never lose or duplicate a version.
Methods take ``principal``: ``None`` means trusted (the local file), a name means checked against grants.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError, OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from tether.errors import ConfigError, NotFound
from tether.registry import configs, lineage, schema
from tether.registry.access import effective_level, require
from tether.registry.engine import create_schema, database_url, make_engine, transaction
from tether.registry.models import (
    ACCESS_LEVELS,
    AccessLevel,
    Artifact,
    CallRecord,
    Grant,
    LineageCall,
    LineageGraph,
    ServiceEntry,
    UsageRow,
    Version,
)
from tether.registry.names import Ref, not_found, validate_tag

__all__ = ["Store", "database_url"]

#: conflicts a retry resolves: unique violations from a concurrent saver, SQLite "locked", PG serialization
_retry_write = retry(
    retry=retry_if_exception_type((IntegrityError, OperationalError)),
    wait=wait_random_exponential(multiplier=0.01, max=0.5),
    stop=stop_after_attempt(60),
    reraise=True,
)


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """Registry storage behind SQLAlchemy; safe to share between threads and processes."""

    def __init__(self, url: str | Path) -> None:
        self.url = database_url(url)
        self.engine = make_engine(self.url)
        create_schema(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _readable_names(self, conn: Connection, principal: str | None) -> builtins.list[str]:
        s = schema.services.c
        names = [f"{r.namespace}/{r.name}" for r in conn.execute(select(s.namespace, s.name))]
        if principal is None:
            return names
        return [n for n in names if effective_level(conn, principal, *n.split("/", 1)) is not None]

    def _require_owner(self, conn: Any, ref: Ref, principal: str | None) -> None:
        """Owner access to ``ref``: its namespace for ``name='*'`` (a namespace grant), else the service."""
        if ref.name == "*":
            require(conn, principal, ref, "owner")
        else:
            self._service(conn, ref, principal, "owner")

    def _service(
        self, conn: Connection, ref: Ref, principal: str | None, need: str, lock: bool = False
    ) -> Row:
        """The service row of ``ref``, after checking access; NotFound with close matches when missing."""
        s = schema.services.c
        query = select(schema.services).where(s.namespace == ref.namespace, s.name == ref.name)
        row = conn.execute(query.with_for_update() if lock else query).first()
        require(conn, principal, ref, need if row is not None else "read")
        if row is None:
            raise not_found("registry entry", ref.full, self._readable_names(conn, principal))
        return row

    # ---------------------------------------------------------------- versions
    def _version(self, conn: Connection, svc: Row, number: int) -> Version:
        v, t = schema.versions.c, schema.tags.c
        row = conn.execute(select(schema.versions).where(v.service_id == svc.id, v.version == number)).first()
        if row is None:
            have = [r.version for r in conn.execute(select(v.version).where(v.service_id == svc.id))]
            raise NotFound(
                f"{svc.namespace}/{svc.name} has no version {number}",
                hint=f"versions: {min(have)}..{max(have)}" if have else None,
                details={"name": f"{svc.namespace}/{svc.name}", "version": number},
            )
        tag_rows = conn.execute(
            select(t.tag).where(t.service_id == svc.id, t.version == number).order_by(t.tag)
        )
        return self._to_version(svc, row, [r.tag for r in tag_rows])

    @staticmethod
    def _to_version(svc: Row, row: Row, tag_names: list[str]) -> Version:
        return Version(
            name=f"{svc.namespace}/{svc.name}",
            version=row.version,
            kind=row.kind,
            config=json.loads(row.config),
            code_hash=row.code_hash,
            import_path=row.import_path,
            saved_by=row.saved_by,
            saved_at=_ts(row.saved_at),
            tags=tag_names,
            copied_from=row.copied_from,
        )

    def _latest_number(self, conn: Connection, service_id: int) -> int:
        v = schema.versions.c
        return conn.execute(select(func.max(v.version)).where(v.service_id == service_id)).scalar() or 0

    def _insert_version(
        self,
        conn: Connection,
        svc: Row,
        kind: str,
        config: dict[str, Any],
        code_hash: str | None,
        by: str,
        copied_from: int | None = None,
    ) -> int:
        number = self._latest_number(conn, svc.id) + 1
        code_hash, import_path = configs.code_fields(config, code_hash)
        for field, value, limit in (("code_hash", code_hash, 256), ("import_path", import_path, 512)):
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise ConfigError(
                    f"invalid config: field {field!r}: not a string of at most {limit} characters",
                    details={"field": field},
                )
        conn.execute(
            schema.versions.insert().values(
                service_id=svc.id,
                version=number,
                kind=kind,
                config=configs.dumps(config),
                code_hash=code_hash,
                import_path=import_path,
                saved_by=by,
                saved_at=time.time(),
                copied_from=copied_from,
            )
        )
        return number

    @_retry_write
    def save(
        self,
        ref: Ref,
        config: dict[str, Any],
        *,
        by: str,
        code_hash: str | None = None,
        principal: str | None = None,
    ) -> Version:
        """Record a new immutable version of ``ref`` (created on first save); nothing is written if invalid."""
        kind = configs.check_config(config)
        s = schema.services.c
        with transaction(self.engine) as conn:
            query = select(schema.services).where(s.namespace == ref.namespace, s.name == ref.name)
            svc = conn.execute(query.with_for_update()).first()
            require(conn, principal, ref, "write")
            if svc is None:
                conn.execute(
                    schema.services.insert().values(
                        namespace=ref.namespace,
                        name=ref.name,
                        kind=kind,
                        created_by=by,
                        created_at=time.time(),
                    )
                )
                svc = conn.execute(query).one()
            elif svc.kind != kind:
                raise ConfigError(
                    f"invalid config: field 'kind': {ref.full!r} holds a {svc.kind}, not a {kind}",
                    hint="nothing was saved; pick another name for a different kind of resource",
                    details={"field": "kind", "expected": svc.kind, "got": kind},
                )
            number = self._insert_version(conn, svc, kind, config, code_hash, by)
            return self._version(conn, svc, number)

    def get(self, ref: Ref, *, principal: str | None = None) -> Version:
        """The version ``ref`` names: a number, a tag, or the latest."""
        with transaction(self.engine) as conn:
            svc = self._service(conn, ref, principal, "read")
            if ref.version is not None:
                return self._version(conn, svc, ref.version)
            if ref.tag is not None:
                t = schema.tags.c
                number = conn.execute(
                    select(t.version).where(t.service_id == svc.id, t.tag == ref.tag)
                ).scalar()
                if number is None:
                    have = conn.execute(select(t.tag).where(t.service_id == svc.id)).scalars().all()
                    raise not_found(f"tag of {ref.full!r} called", ref.tag, have)
                return self._version(conn, svc, number)
            return self._version(conn, svc, self._latest_number(conn, svc.id))

    def history(self, ref: Ref, *, principal: str | None = None) -> builtins.list[Version]:
        """Every version of ``ref``, oldest first."""
        with transaction(self.engine) as conn:
            svc = self._service(conn, ref, principal, "read")
            v, t = schema.versions.c, schema.tags.c
            tag_map: dict[int, list[str]] = {}
            for r in conn.execute(select(t.tag, t.version).where(t.service_id == svc.id).order_by(t.tag)):
                tag_map.setdefault(r.version, []).append(r.tag)
            rows = conn.execute(select(schema.versions).where(v.service_id == svc.id).order_by(v.version))
            return [self._to_version(svc, r, tag_map.get(r.version, [])) for r in rows]

    @_retry_write
    def rollback(self, ref: Ref, version: int, *, by: str, principal: str | None = None) -> Version:
        """Make ``version`` current again by recording a new version that copies it (history stays linear)."""
        with transaction(self.engine) as conn:
            svc = self._service(conn, ref, principal, "write", lock=True)
            old = self._version(conn, svc, version)
            number = self._insert_version(
                conn, svc, old.kind, old.config, old.code_hash, by, copied_from=version
            )
            return self._version(conn, svc, number)

    @_retry_write
    def tag(self, ref: Ref, version: int, tag: str, *, by: str, principal: str | None = None) -> Version:
        """Point ``tag`` (e.g. 'prod') at ``version``; a tag moves, versions never change."""
        validate_tag(tag)
        with transaction(self.engine) as conn:
            svc = self._service(conn, ref, principal, "write", lock=True)
            self._version(conn, svc, version)
            t = schema.tags.c
            conn.execute(schema.tags.delete().where(t.service_id == svc.id, t.tag == tag))
            conn.execute(
                schema.tags.insert().values(
                    service_id=svc.id, tag=tag, version=version, tagged_by=by, tagged_at=time.time()
                )
            )
            return self._version(conn, svc, version)

    def list(
        self, namespace: str | None = None, *, principal: str | None = None
    ) -> builtins.list[ServiceEntry]:
        """Names the principal can read (optionally in one namespace), with their latest version and tags."""
        s, v, t = schema.services.c, schema.versions.c, schema.tags.c
        with transaction(self.engine) as conn:
            latest = (
                select(v.service_id, func.max(v.version).label("latest")).group_by(v.service_id).subquery()
            )
            query = select(schema.services, latest.c.latest).join(latest, latest.c.service_id == s.id)
            if namespace:
                query = query.where(s.namespace == namespace)
            out = []
            for r in conn.execute(query.order_by(s.namespace, s.name)):
                if principal is not None and effective_level(conn, principal, r.namespace, r.name) is None:
                    continue
                last = conn.execute(
                    select(v.saved_at, v.saved_by).where(v.service_id == r.id, v.version == r.latest)
                ).one()
                tag_map = {
                    x.tag: x.version
                    for x in conn.execute(select(t.tag, t.version).where(t.service_id == r.id))
                }
                out.append(
                    ServiceEntry(
                        name=f"{r.namespace}/{r.name}",
                        kind=r.kind,
                        latest=r.latest,
                        tags=tag_map,
                        updated_at=_ts(last.saved_at),
                        updated_by=last.saved_by,
                    )
                )
            return out

    # ---------------------------------------------------------------- sharing
    @_retry_write
    def share(self, ref: Ref, to: str, level: str, *, by: str, principal: str | None = None) -> Grant:
        """Grant ``to`` (user or team) ``level`` on ``ref`` (name '*' = the whole namespace); owner access needed."""
        if level not in ACCESS_LEVELS:
            raise ConfigError(
                f"invalid access level {level!r}",
                hint=f"one of {list(ACCESS_LEVELS)}",
                details={"field": "access_level", "value": level},
            )
        if not to or not isinstance(to, str):
            raise ConfigError("share needs a principal (a user or team name)", details={"field": "principal"})
        with transaction(self.engine) as conn:
            self._require_owner(conn, ref, principal)
            g = schema.grants.c
            conn.execute(
                schema.grants.delete().where(
                    g.namespace == ref.namespace, g.name == ref.name, g.principal == to
                )
            )
            now = time.time()
            conn.execute(
                schema.grants.insert().values(
                    namespace=ref.namespace,
                    name=ref.name,
                    principal=to,
                    level=level,
                    granted_by=by,
                    granted_at=now,
                )
            )
            return Grant(
                name=ref.full,
                principal=to,
                access_level=cast(AccessLevel, level),
                granted_by=by,
                granted_at=_ts(now),
            )

    def grants(self, ref: Ref, *, principal: str | None = None) -> builtins.list[Grant]:
        """Grants on ``ref`` and on its namespace."""
        g = schema.grants.c
        with transaction(self.engine) as conn:
            self._service(conn, ref, principal, "read")
            rows = conn.execute(
                select(schema.grants).where(g.namespace == ref.namespace, g.name.in_([ref.name, "*"]))
            )
            return [
                Grant(
                    name=f"{r.namespace}/{r.name}",
                    principal=r.principal,
                    access_level=cast(AccessLevel, r.level),
                    granted_by=r.granted_by,
                    granted_at=_ts(r.granted_at),
                )
                for r in rows
            ]

    @_retry_write
    def unshare(self, ref: Ref, to: str, *, by: str | None = None, principal: str | None = None) -> int:
        """Remove ``to``'s grant on ``ref`` (name '*' = the namespace grant); owner access needed. How many grants
        were removed (0: there was none)."""
        with transaction(self.engine) as conn:
            self._require_owner(conn, ref, principal)
            g = schema.grants.c
            result = conn.execute(
                schema.grants.delete().where(g.namespace == ref.namespace, g.name == ref.name, g.principal == to)
            )
            return int(result.rowcount or 0)

    # ---------------------------------------------------------------- tokens and teams (server admin)
    @_retry_write
    def create_token(self, principal: str, *, token: str | None = None, expires_in: float | None = None) -> str:
        """A new bearer token for ``principal``; only its sha256 is stored, the plain token is returned once.
        ``expires_in`` (seconds): the server refuses it after that."""
        if expires_in is not None and not expires_in > 0:
            raise ConfigError("expires_in must be a positive number of seconds", details={"field": "expires_in"})
        token = token or "tt_" + secrets.token_urlsafe(32)
        now = time.time()
        with transaction(self.engine) as conn:
            conn.execute(
                schema.tokens.insert().values(token_hash=hash_token(token), principal=principal, created_at=now)
            )
            if expires_in is not None:
                conn.execute(
                    schema.token_expiry.insert().values(token_hash=hash_token(token), expires_at=now + expires_in)
                )
        return token

    def principal_for(self, token: str) -> str | None:
        """Who a bearer token belongs to (None if unknown, revoked or expired)."""
        with transaction(self.engine) as conn:
            c, e = schema.tokens.c, schema.token_expiry.c
            row = conn.execute(
                select(c.principal, e.expires_at)
                .select_from(schema.tokens.outerjoin(schema.token_expiry, e.token_hash == c.token_hash))
                .where(c.token_hash == hash_token(token))
            ).first()
        if row is None or (row.expires_at is not None and row.expires_at <= time.time()):
            return None
        return str(row.principal)

    @_retry_write
    def revoke_tokens(self, *, token: str | None = None, principal: str | None = None) -> int:
        """Revoke one token, or every token of ``principal``; how many were revoked. Takes effect at once (the
        server looks every request's token up)."""
        if (token is None) == (principal is None):
            raise ConfigError("revoke one token or one principal's tokens", details={"field": "token"})
        c, e = schema.tokens.c, schema.token_expiry.c
        with transaction(self.engine) as conn:
            if token is not None:
                hashes = [hash_token(token)]
            else:
                hashes = [r[0] for r in conn.execute(select(c.token_hash).where(c.principal == principal))]
            if not hashes:
                return 0
            conn.execute(schema.token_expiry.delete().where(e.token_hash.in_(hashes)))
            return int(conn.execute(schema.tokens.delete().where(c.token_hash.in_(hashes))).rowcount or 0)

    @_retry_write
    def add_member(self, team: str, principal: str) -> None:
        """Put ``principal`` in ``team``: it owns namespace ``team`` and receives what is shared with the team."""
        with transaction(self.engine) as conn:
            m = schema.members.c
            if conn.execute(select(m.team).where(m.team == team, m.principal == principal)).first() is None:
                conn.execute(schema.members.insert().values(team=team, principal=principal))

    # ---------------------------------------------------------------- calls and usage
    @_retry_write
    def record_calls(self, records: Iterable[CallRecord], *, principal: str | None = None) -> int:
        """Store call records (each needs read access to its service); a call id already stored counts once."""
        records = list(records)
        if not records:
            return 0
        with transaction(self.engine) as conn:
            rows = []
            edge_rows: builtins.list[dict[str, Any]] = []
            context_rows: builtins.list[dict[str, Any]] = []
            for rec in records:
                ns, _, name = rec.name.partition("/")
                if principal is not None:
                    require(conn, principal, Ref(ns, name), "read")
                rows.append(
                    dict(
                        service=rec.name,
                        version=rec.version,
                        call_id=rec.call_id,
                        method=rec.method,
                        caller=(rec.caller if principal is None else principal) or "unknown",
                        run_id=rec.run_id,
                        duration_s=rec.duration_s,
                        outcome=rec.outcome,
                        error_type=rec.error_type,
                        instance_type=rec.instance_type,
                        started_at=rec.started_at.timestamp(),
                    )
                )
                edges, context = lineage.edge_rows(rec)
                edge_rows.extend(edges)
                if context is not None:
                    context_rows.append(context)
            stored = self._insert_ignoring_duplicates(conn, rows)
            if context_rows:
                self._insert_ignoring(conn, schema.call_context, context_rows, ["service", "call_id"])
            if edge_rows:
                self._insert_ignoring(
                    conn, schema.lineage, edge_rows, ["service", "call_id", "direction", "uri", "version"]
                )
            return stored

    @staticmethod
    def _insert_ignoring(
        conn: Connection, table: Any, rows: builtins.list[dict[str, Any]], keys: builtins.list[str]
    ) -> None:
        insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(insert(table).on_conflict_do_nothing(index_elements=keys), rows)

    def _insert_ignoring_duplicates(self, conn: Connection, rows: builtins.list[dict[str, Any]]) -> int:
        insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(schema.calls).on_conflict_do_nothing(index_elements=["service", "call_id"])
        result = conn.execute(stmt, rows)  # executemany: one cached statement, batched by the driver
        return result.rowcount if result.rowcount >= 0 else len(rows)

    def usage(self, ref: Ref, *, principal: str | None = None) -> builtins.list[UsageRow]:
        """Calls of ``ref`` aggregated per (caller, version): counts, errors, durations, last call, runs."""
        c = schema.calls.c
        with transaction(self.engine) as conn:
            self._service(conn, ref, principal, "read")
            errors = func.sum(case((c.outcome != "ok", 1), else_=0))
            query = (
                select(
                    c.caller,
                    c.version,
                    func.count().label("calls"),
                    errors.label("errors"),
                    func.sum(c.duration_s).label("total"),
                    func.max(c.duration_s).label("max"),
                    func.max(c.started_at).label("last"),
                    func.count(func.distinct(c.run_id)).label("runs"),
                )
                .where(c.service == ref.full)
                .group_by(c.caller, c.version)
                .order_by(c.caller, c.version)
            )
            return [
                UsageRow(
                    caller=r.caller,
                    version=r.version,
                    calls=r.calls,
                    errors=int(r.errors or 0),
                    total_s=float(r.total or 0),
                    mean_s=float(r.total or 0) / r.calls,
                    max_s=float(r.max or 0),
                    last_at=_ts(r.last) if r.last is not None else None,
                    run_ids=r.runs,
                )
                for r in conn.execute(query)
            ]

    def calls(self, ref: Ref, *, principal: str | None = None, limit: int = 100) -> builtins.list[CallRecord]:
        """The most recent call records of ``ref``, newest first."""
        c = schema.calls.c
        with transaction(self.engine) as conn:
            self._service(conn, ref, principal, "read")
            rows = conn.execute(
                select(schema.calls).where(c.service == ref.full).order_by(c.id.desc()).limit(limit)
            )
            return [
                CallRecord(
                    name=r.service,
                    version=r.version,
                    call_id=r.call_id,
                    method=r.method,
                    caller=r.caller,
                    run_id=r.run_id,
                    duration_s=r.duration_s,
                    outcome=r.outcome,
                    error_type=r.error_type,
                    instance_type=r.instance_type,
                    started_at=_ts(r.started_at),
                )
                for r in rows
            ]

    # ---------------------------------------------------------------- lineage
    def lineage(
        self, artifact: Artifact, *, principal: str | None = None, depth: int = 20, limit: int = 500
    ) -> LineageGraph:
        """What produced ``artifact``, with which code version, from which inputs — transitively (upstream)."""
        with transaction(self.engine) as conn:
            return lineage.walk_upstream(conn, artifact, principal=principal, depth=depth, limit=limit)

    def dependents(
        self, ref: Ref, *, principal: str | None = None, depth: int = 20, limit: int = 500
    ) -> LineageGraph:
        """What depends on ``ref`` (at ``ref.version``, or any version): the calls that read what its calls wrote,
        and theirs, transitively (downstream). Read access to ``ref`` needed."""
        with transaction(self.engine) as conn:
            svc = self._service(conn, ref, principal, "read")
            number = ref.version
            if number is None and ref.tag is not None:
                t = schema.tags.c
                number = conn.execute(select(t.version).where(t.service_id == svc.id, t.tag == ref.tag)).scalar()
                if number is None:
                    raise not_found(f"tag of {ref.full!r} called", ref.tag, [])
            starts = lineage.calls_of(conn, ref.full, number)
            root = f"{ref.full}@{number}" if number is not None else ref.full
            return lineage.walk_downstream(conn, starts, root, principal=principal, depth=depth, limit=limit)

    def call(self, ref: Ref, call_id: str, *, principal: str | None = None) -> LineageCall:
        """One recorded call of ``ref`` with its code version, cluster, inputs and outputs."""
        with transaction(self.engine) as conn:
            self._service(conn, ref, principal, "read")
            found = lineage.call_node(conn, ref.full, call_id)
            if found is None:
                raise NotFound(
                    f"no recorded call {call_id!r} of {ref.full!r}",
                    hint="calls are recorded when they end; see the service's recent calls",
                    details={"name": ref.full, "call_id": call_id},
                )
            return found

    def recent_calls(
        self, *, principal: str | None = None, namespace: str | None = None, limit: int = 100
    ) -> builtins.list[CallRecord]:
        """The latest call records of every service the principal can read (optionally in one namespace)."""
        readable = set(self._names_readable(principal))
        if namespace:
            readable = {n for n in readable if n.split("/", 1)[0] == namespace}
        if not readable:
            return []
        c = schema.calls.c
        with transaction(self.engine) as conn:
            rows = conn.execute(
                select(schema.calls).where(c.service.in_(sorted(readable))).order_by(c.id.desc()).limit(limit)
            )
            return [self._to_record(r) for r in rows]

    def _names_readable(self, principal: str | None) -> builtins.list[str]:
        with transaction(self.engine) as conn:
            return self._readable_names(conn, principal)

    @staticmethod
    def _to_record(r: Row) -> CallRecord:
        return CallRecord(
            name=r.service, version=r.version, call_id=r.call_id, method=r.method, caller=r.caller,
            run_id=r.run_id, duration_s=r.duration_s, outcome=r.outcome, error_type=r.error_type,
            instance_type=r.instance_type, started_at=_ts(r.started_at),
        )

    def access_level(self, ref: Ref, *, principal: str | None = None) -> str | None:
        """``principal``'s effective level on ``ref`` ('read' | 'write' | 'owner' | None)."""
        with transaction(self.engine) as conn:
            return effective_level(conn, principal, ref.namespace, ref.name)
