"""Database engines for the registry: SQLite (a file path) or PostgreSQL (a URL, through psycopg 3). The fork gate
their transactions hold is :data:`tether.registry.lean.FORK_GATE` (shared with the ORM-free reader)."""

from __future__ import annotations

import contextlib
import os
import stat
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from tether.registry import schema
from tether.registry.lean import FORK_GATE

__all__ = ["FORK_GATE", "create_schema", "database_url", "make_engine", "transaction"]

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _dispose_in_child() -> None:
    for engine in list(_ENGINES):  # the child must not reuse the parent's pooled connections
        engine.dispose(close=False)


FORK_GATE.in_child(_dispose_in_child)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` inside the fork gate: commit on success, roll back on error."""
    with FORK_GATE.held(), engine.begin() as conn:
        yield conn


def database_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL: file paths become SQLite, ``postgresql://`` uses psycopg 3."""
    text = str(url_or_path)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def _private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (it holds saved env vars, i.e. API keys); SQLite gives
    its -wal, -shm and -journal files the database file's mode. An existing one is opened as it is (it may be a
    file another user shares with us), except that one of ours loses its world bits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for each in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        with contextlib.suppress(OSError):
            st = os.stat(each)
            if st.st_uid == os.geteuid() and st.st_mode & 0o007:
                os.chmod(each, stat.S_IMODE(st.st_mode) & ~0o007)


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE so concurrent writers queue, not fail."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        path = path.split("?", 1)[0]  # URL parameters (?mode=ro) are not part of the file name
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_sqlite_file(Path(path))
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see below
            dbapi_conn.execute("PRAGMA busy_timeout=60000")
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks

    else:
        engine = create_engine(url, pool_pre_ping=True)
    _ENGINES.add(engine)
    return engine


@retry(
    retry=retry_if_exception_type(DBAPIError),
    wait=wait_random_exponential(multiplier=0.02, max=0.5),
    stop=stop_after_attempt(30),
    reraise=True,
)
def create_schema(engine: Engine) -> None:
    """Create the tables if missing; concurrent creators (several processes at once) retry until one wins."""
    with transaction(engine) as conn:
        schema.metadata.create_all(conn)
