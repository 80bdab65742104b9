"""Secret values in the registry, encrypted at rest (Fernet: AES-128-CBC + HMAC-SHA256, from ``cryptography``).

Each secret is a name in a namespace (``team/hf``); every ``put`` is a new version (rotation), ``get`` returns the
latest, ``delete`` removes every version's ciphertext. Who may do what: the namespace's owner (the principal or a
team it belongs to) everything; a grant on the secret (``share``) gives ``read`` (get the values), ``write``
(rotate) or ``owner`` (share, delete). Grants live in the registry's grants table under the name
``secret:<name>``, apart from services of the same name, and a namespace-wide ``*`` grant does not reach secrets.

The key never sits in the database: ``TETHER_VAULT_KEY`` (a Fernet key), else a 0600 file beside a SQLite
database (``<db>.vault-key``, made on first use); a PostgreSQL registry needs ``TETHER_VAULT_KEY``. Configs,
versions and grants hold names only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine

from tether.errors import AuthError, ConfigError, NotFound
from tether.registry import schema
from tether.registry.access import teams_of
from tether.registry.engine import create_schema, database_url, make_engine, transaction
from tether.registry.models import ACCESS_LEVELS
from tether.registry.names import Ref

__all__ = ["Vault", "vault_key"]

_metadata = MetaData()
secret_values = Table(
    "tether_secret_values",
    _metadata,
    Column("namespace", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("ciphertext", Text, nullable=False),
    Column("saved_by", String(256), nullable=False),
    Column("saved_at", Float, nullable=False),
    PrimaryKeyConstraint("namespace", "name", "version", name="pk_tether_secret_values"),
)


def vault_key(url: str) -> bytes:
    """The Fernet key for the registry at ``url`` (see the module doc)."""
    env = os.environ.get("TETHER_VAULT_KEY")
    if env:
        return env.encode()
    if not url.startswith("sqlite:///"):
        raise ConfigError("a registry on a database server keeps secrets only with TETHER_VAULT_KEY set",
                          hint="generate one: python -c 'from cryptography.fernet import Fernet; "
                               "print(Fernet.generate_key().decode())'")
    path = Path(url.removeprefix("sqlite:///") + ".vault-key")
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        key = Fernet.generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key


def _grant_name(name: str) -> str:
    return f"secret:{name}"


class Vault:
    """Encrypted secret values over the registry's database (``engine``)."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError("the vault key is not a Fernet key (32 url-safe base64-encoded bytes)") from None
        create_schema(engine)
        with transaction(engine) as conn:
            _metadata.create_all(conn)

    @classmethod
    def open(cls, db: str | Path) -> Vault:
        """The vault of the registry database ``db`` (a path or a database URL)."""
        url = database_url(db)
        return cls(make_engine(url), vault_key(url))

    # -- access ---------------------------------------------------------------------------------------------------

    def _level(self, conn: Connection, principal: str | None, ref: Ref) -> str | None:
        if principal is None:
            return "owner"
        ids = {principal} | teams_of(conn, principal)
        if ref.namespace in ids:
            return "owner"
        g = schema.grants.c
        rows = conn.execute(select(g.level).where(g.namespace == ref.namespace, g.name == _grant_name(ref.name),
                                                  g.principal.in_(ids)))
        levels = [r.level for r in rows]
        return max(levels, key=ACCESS_LEVELS.index) if levels else None

    def _require(self, conn: Connection, principal: str | None, ref: Ref, need: str) -> None:
        have = self._level(conn, principal, ref)
        if have is None or ACCESS_LEVELS.index(have) < ACCESS_LEVELS.index(need):
            raise AuthError(f"{principal!r} lacks {need!r} access to secret {ref.full!r}"
                            + (f" (has {have!r})" if have else ""),
                            hint=f"ask an owner of {ref.full!r} to share it with {need!r} access",
                            details={"secret": ref.full, "principal": principal, "needed": need, "has": have})

    def _latest(self, conn: Connection, ref: Ref) -> int:
        v = secret_values.c
        return int(conn.execute(select(func.max(v.version)).where(v.namespace == ref.namespace,
                                                                  v.name == ref.name)).scalar() or 0)

    # -- values ---------------------------------------------------------------------------------------------------

    def put(self, ref: Ref, values: dict[str, str], provider: str | None, *, by: str,
            principal: str | None = None) -> int:
        """Store a new version (the first, or a rotation: needs ``write``); returns its number."""
        blob = self._fernet.encrypt(json.dumps({"values": values, "provider": provider}).encode()).decode()
        with transaction(self.engine) as conn:
            self._require(conn, principal, ref, "write")
            number = self._latest(conn, ref) + 1
            conn.execute(secret_values.insert().values(namespace=ref.namespace, name=ref.name, version=number,
                                                       ciphertext=blob, saved_by=by, saved_at=time.time()))
            return number

    def get(self, ref: Ref, *, principal: str | None = None) -> dict[str, Any]:
        """``{"values", "provider", "version"}`` of the latest version (needs ``read``)."""
        with transaction(self.engine) as conn:
            self._require(conn, principal, ref, "read")
            number = self._latest(conn, ref)
            if not number:
                raise NotFound(f"no secret {ref.full!r} in the registry", details={"secret": ref.full})
            v = secret_values.c
            blob = conn.execute(select(v.ciphertext).where(v.namespace == ref.namespace, v.name == ref.name,
                                                           v.version == number)).scalar_one()
        try:
            data = json.loads(self._fernet.decrypt(blob.encode()))
        except InvalidToken:
            raise AuthError(f"secret {ref.full!r} cannot be decrypted with this registry's vault key",
                            hint="the key changed: set TETHER_VAULT_KEY to the key it was stored with") from None
        return {"values": data["values"], "provider": data.get("provider"), "version": number}

    def delete(self, ref: Ref, *, principal: str | None = None) -> int:
        """Remove every version's ciphertext and the secret's grants (needs ``owner``); how many versions."""
        with transaction(self.engine) as conn:
            self._require(conn, principal, ref, "owner")
            v, g = secret_values.c, schema.grants.c
            n = conn.execute(delete(secret_values).where(v.namespace == ref.namespace, v.name == ref.name)).rowcount
            conn.execute(delete(schema.grants).where(g.namespace == ref.namespace, g.name == _grant_name(ref.name)))
            return int(n or 0)

    def share(self, ref: Ref, to: str, level: str, *, principal: str | None = None) -> None:
        """Give ``to`` (a user or team) ``read``, ``write`` or ``owner`` on the secret (needs ``owner``)."""
        if level not in ACCESS_LEVELS:
            raise ConfigError(f"unknown access level {level!r}", hint=f"use one of {', '.join(ACCESS_LEVELS)}")
        with transaction(self.engine) as conn:
            self._require(conn, principal, ref, "owner")
            if not self._latest(conn, ref):
                raise NotFound(f"no secret {ref.full!r} in the registry", details={"secret": ref.full})
            g = schema.grants.c
            conn.execute(delete(schema.grants).where(g.namespace == ref.namespace,
                                                     g.name == _grant_name(ref.name), g.principal == to))
            conn.execute(schema.grants.insert().values(namespace=ref.namespace, name=_grant_name(ref.name),
                                                       principal=to, level=level, granted_by=principal or "local",
                                                       granted_at=time.time()))
