"""Who may do what: a principal's effective access level on a name, from namespaces, teams and grants.

Your own namespace and your teams' namespaces are yours (owner); elsewhere the highest grant on the name or on
the whole namespace (``name='*'``) to you or one of your teams counts. ``principal=None`` is the trusted local file.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from tether.errors import AuthError
from tether.registry import schema
from tether.registry.models import ACCESS_LEVELS, level_at_least
from tether.registry.names import Ref

__all__ = ["effective_level", "require", "teams_of"]


def teams_of(conn: Connection, principal: str) -> set[str]:
    """Teams ``principal`` is a member of."""
    rows = conn.execute(select(schema.members.c.team).where(schema.members.c.principal == principal))
    return {r.team for r in rows}


def effective_level(conn: Connection, principal: str | None, namespace: str, name: str) -> str | None:
    """``principal``'s access on ``namespace/name`` ('read' | 'write' | 'owner'), or None."""
    if principal is None:
        return "owner"
    ids = {principal} | teams_of(conn, principal)
    if namespace in ids:
        return "owner"
    g = schema.grants.c
    rows = conn.execute(
        select(g.level).where(g.namespace == namespace, g.name.in_([name, "*"]), g.principal.in_(ids))
    )
    levels = [r.level for r in rows]
    return max(levels, key=ACCESS_LEVELS.index) if levels else None


def require(conn: Connection, principal: str | None, ref: Ref, need: str) -> None:
    """Raise AuthError naming the missing level unless ``principal`` has at least ``need`` on ``ref``."""
    have = effective_level(conn, principal, ref.namespace, ref.name)
    if not level_at_least(have, need):
        raise AuthError(
            f"{principal!r} lacks {need!r} access to {ref.full!r}" + (f" (has {have!r})" if have else ""),
            hint=f"ask an owner of {ref.full!r} to run: share({ref.full!r}, {principal!r}, {need!r})",
            details={"name": ref.full, "principal": principal, "needed": need, "has": have},
        )
