"""Database engines for the registry: SQLite (a file path) or PostgreSQL (a URL, through psycopg 3)."""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from tether.registry import schema

__all__ = ["create_schema", "database_url", "make_engine"]

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (Airflow task, multiprocessing) must not reuse the parent's pooled connections."""
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def database_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL: file paths become SQLite, ``postgresql://`` uses psycopg 3."""
    text = str(url_or_path)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE so concurrent writers queue, not fail."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
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
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
