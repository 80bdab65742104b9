"""Registry fixtures: isolated TETHER_HOME, the local cluster, a real PostgreSQL server, databases of both kinds, the team server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.processes import issue_team_tokens, registry_server

PG_BIN = Path(os.environ.get("TETHER_PG_BIN", "/usr/lib/postgresql/15/bin"))
ENV_KEYS = ("TETHER_REGISTRY_URL", "TETHER_TOKEN", "TETHER_REGISTRY_DB", "TETHER_NAMESPACE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def tether_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own TETHER_HOME and acts as user 'alice' on the local registry."""
    home = tmp_path / "tether-home"
    home.mkdir()
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.setenv("TETHER_USER", "alice")
    monkeypatch.setenv("COLUMNS", "200")
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return home


@pytest.fixture
def local() -> Iterator[Any]:
    """The embedded local cluster of this test's TETHER_HOME; torn down afterwards."""
    c = tether.cluster()
    try:
        yield c
    finally:
        tether.cluster().teardown()


def _as_postgres(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary as the ``postgres`` OS user (initdb/pg_ctl refuse root)."""
    cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


@dataclass
class PostgresServer:
    port: int
    datadir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server in a temp dir on a free port; stopped and removed at the end. Fails if absent."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            pytest.fail(
                f"PostgreSQL binary {PG_BIN / tool} missing: run scripts/system-deps.sh (Debian postgresql)"
            )
    root = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
    data, port = root / "data", free_port()
    try:
        _as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        _as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start"]
        )
        yield PostgresServer(port=port, datadir=data)
    finally:
        if (data / "postmaster.pid").exists():
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry database: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@dataclass
class TeamServer:
    url: str
    db: str
    tokens: dict[str, str]
    proc: subprocess.Popen[bytes]


@pytest.fixture
def team_server(db_url: str, tmp_path: Path) -> Iterator[TeamServer]:
    """``tether registry serve`` as a subprocess on 127.0.0.1, with tokens for alice, bob (team ml-platform), carol."""
    tokens = issue_team_tokens(db_url)
    with registry_server(db_url, tmp_path) as (url, proc):
        yield TeamServer(url=url, db=db_url, tokens=tokens, proc=proc)
