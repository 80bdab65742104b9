"""What a fresh process pays to load a saved service by name and call it: only the modules that path needs.

An orchestrator task is a new process each time. Loading by name from the local registry and calling a plain-HTTP
(or TLS) daemon needs neither aiohttp (the lean transports speak HTTP/1.1 and TLS themselves), nor SQLAlchemy (the
local registry file is read, and the call recorded, with stdlib ``sqlite3``: ``tether.registry.lean``), nor
structlog (nothing is logged), nor cloudpickle (plain arguments take the C pickler, and cloudpickle's output loads
with ``pickle``), nor tenacity (nothing is retried). Checked in a subprocess through ``sys.modules``; the times are in
``bench/overheads.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tests.core import services as svc
from tether.errors import NotFound
from tether.registry import open_registry
from tether.registry.lean import LocalStore
from tether.registry.models import CallRecord
from tether.registry.names import Ref
from tether.registry.store import Store

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("aiohttp", "sqlalchemy", "structlog", "rich", "cloudpickle", "tenacity",
         # tether's own modules that a plain call by name does not use: the router and its catalog, OOM
         # escalation (policy and runner), the distributed engines
         "tether.compute.routing", "tether.compute.catalog", "tether.escalation.policy", "tether.escalation.runner",
         "tether.api.distribute")

PROGRAM = """
import asyncio, json, sys
import tether
f = tether.function(name=sys.argv[1])
result = f(1, 2) if sys.argv[2] == "sync" else asyncio.run(f.remote_async(1, 2))
tether.registry.flush()  # the call record is written (by the background writer) before we look
print(json.dumps({"result": result, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def _fresh_process(home: Path, name: str, mode: str) -> dict[str, object]:
    env = {**os.environ, "TETHER_HOME": str(home)}
    env.pop("TETHER_REGISTRY_URL", None)
    out = subprocess.run([sys.executable, "-c", PROGRAM, name, mode], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_load_by_name_and_call_imports_no_aiohttp_orm_or_structlog(local_cluster, module_home: Path,
                                                                   mode: str) -> None:
    tether.function(svc.add).to(local_cluster, name="addsvc").save()
    before = sum(u.calls for u in tether.registry.usage("addsvc"))
    got = _fresh_process(module_home, "addsvc", mode)
    assert got == {"result": 3, "heavy": []}
    # the fresh process recorded its call (through sqlite3): usage, read through the ORM store, counts it
    assert sum(u.calls for u in tether.registry.usage("addsvc")) == before + 1


def test_a_tls_daemon_needs_no_aiohttp_either(tether_home: Path) -> None:
    c = tether.cluster(name="lean-tls", server_connection_type="tls").up_if_not()
    try:
        assert c.handle.endpoint.startswith("https://")
        tether.function(svc.add).to(c, name="addtls").save()
        for mode in ("sync", "async"):
            assert _fresh_process(tether_home, "addtls", mode) == {"result": 3, "heavy": []}
    finally:
        c.teardown()


def _saved(db: Path) -> None:
    reg = open_registry(db=db)
    config = {"kind": "env", "name": "e", "reqs": []}
    for _ in range(3):
        reg.save("embed", config)
    reg.tag("embed", 2, "prod")
    reg.close()


@pytest.mark.parametrize("name", ["alice/embed", "alice/embed@1", "alice/embed@prod", "alice/embed@latest"])
def test_the_sqlite3_reader_answers_as_the_orm_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     name: str) -> None:
    monkeypatch.setenv("TETHER_USER", "alice")
    db = tmp_path / "r.db"
    _saved(db)
    reg = open_registry(db=db)
    lean = reg.get(name)
    assert isinstance(reg.backend, LocalStore) and reg.backend._full is None  # answered without the ORM
    assert lean == open_registry(db=f"sqlite:///{db}").get(name)


@pytest.mark.parametrize("name, message", [("alice/embedd", "close matches: alice/embed"),
                                           ("alice/embed@9", "has no version 9"),
                                           ("alice/embed@staging", "staging")])
def test_what_the_reader_cannot_answer_the_store_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                      message: str) -> None:
    monkeypatch.setenv("TETHER_USER", "alice")
    db = tmp_path / "r.db"
    _saved(db)
    with pytest.raises(NotFound, match=message):
        open_registry(db=db).get(name)


def test_a_missing_name_is_answered_by_the_reader_as_by_the_store(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``tether.cluster(name=X)`` of a cluster brought up but never saved asks the registry for X first: the
    reader says NotFound itself (the same message, hint and close matches as the store), without the ORM."""
    monkeypatch.setenv("TETHER_USER", "alice")
    db = tmp_path / "r.db"
    _saved(db)
    reg = open_registry(db=db)
    with pytest.raises(NotFound) as lean:
        reg.get("alice/embedd")
    assert isinstance(reg.backend, LocalStore) and reg.backend._full is None
    with pytest.raises(NotFound) as orm:
        open_registry(db=f"sqlite:///{db}").get("alice/embedd")
    assert (str(lean.value), lean.value.hint, lean.value.details) == (str(orm.value), orm.value.hint,
                                                                      orm.value.details)
    assert lean.value.details["suggestions"] == ["alice/embed"]


def test_a_cluster_brought_up_here_loads_by_name_without_the_orm(local_cluster, module_home: Path) -> None:
    program = ("import sys, tether; c = tether.cluster(name=sys.argv[1]); "
               "print(c.status(), 'sqlalchemy' in sys.modules)")
    env = {**os.environ, "TETHER_HOME": str(module_home)}
    env.pop("TETHER_REGISTRY_URL", None)
    out = subprocess.run([sys.executable, "-c", program, local_cluster.name], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["up", "False"]


def test_a_registry_file_not_made_yet_is_made_by_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_USER", "alice")
    db = tmp_path / "new" / "r.db"
    with pytest.raises(NotFound):
        open_registry(db=db).get("embed")
    assert oct(db.stat().st_mode & 0o777) == "0o600"


def test_call_records_written_by_sqlite3_count_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_USER", "alice")
    db = tmp_path / "r.db"
    _saved(db)
    lean = LocalStore(db)
    records = [CallRecord(name="alice/embed", version=1, call_id=f"c{i}", seconds=0.5, caller="bob") for i in range(3)]
    assert lean.record_calls(records) == 3
    assert lean.record_calls(records[:2]) == 0  # re-sent records (a retried flush) count once
    assert lean._full is None
    store = Store(db)
    rows = store.usage(Ref("alice", "embed"))
    assert [(r.caller, r.version, r.calls, r.total_s) for r in rows] == [("bob", 1, 3, 1.5)]


def test_call_records_with_cluster_and_lineage_are_written_by_sqlite3_as_by_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_USER", "alice")
    lean_db, orm_db = tmp_path / "lean.db", tmp_path / "orm.db"
    for db in (lean_db, orm_db):
        _saved(db)
    record = CallRecord.model_validate({
        "name": "alice/embed", "version": 1, "call_id": "c1", "seconds": 0.5, "caller": "bob", "cluster": "gpu",
        "inputs": [{"uri": "s3://in", "version": "1"}, {"uri": "s3://in", "version": "1"}],
        "outputs": [{"uri": "s3://out"}]})
    lean = LocalStore(lean_db)
    assert lean.record_calls([record]) == 1 and lean._full is None
    assert Store(orm_db).record_calls([record]) == 1
    tables = ("tether_calls", "tether_call_context", "tether_lineage")
    dump = {db: {t: sorted(map(tuple, sqlite3.connect(db).execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
            for db in (lean_db, orm_db)}
    assert dump[lean_db] == dump[orm_db] and dump[lean_db]["tether_lineage"]

