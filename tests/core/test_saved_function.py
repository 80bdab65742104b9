"""``tether.function(name=...)`` of your own plain saved function: called without building its models
(``tether.api.saved``), and the full handle for everything else, with every recovery of a call.

The fresh process is checked through ``sys.modules`` (no pydantic at all); the rest in this process, against a
real local daemon: what a call does, what it records, and that each way a call can need more than the plain
path (another version on the daemon, a restarted daemon, a pinned version, an interrupted call, a JSON-only
grant) ends as it does on the full handle.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import socket
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import pytest

import tether
from tests.core import services as svc
from tests.core.test_invocation import _Interrupt, _wait_no_running
from tether.api.saved import SavedFunction
from tether.api.services import Function
from tether.client import AsyncClient
from tether.registry.models import CallRecord
from tether.registry.plain import PlainCall

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json, sys
import tether
f = tether.function(name=sys.argv[1])
result = f(1, 2)
plain = type(f).__name__
tether.registry.flush()  # the call record is written (by the background writer) before we look
print(json.dumps({"result": result, "type": plain, "pydantic": sorted(m for m in sys.modules if m.startswith("pydantic")),
                  "asyncio": "asyncio" in sys.modules}))
"""


def _fresh(home: Path, name: str) -> dict[str, object]:
    env = {**os.environ, "TETHER_HOME": str(home)}
    env.pop("TETHER_REGISTRY_URL", None)
    out = subprocess.run([sys.executable, "-c", PROGRAM, name], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _calls(home: Path, name: str) -> list[tuple[object, ...]]:
    tether.registry.flush()
    with sqlite3.connect(home / "registry.db") as db:
        return db.execute("SELECT c.version, c.method, c.caller, c.outcome, c.error_type, c.instance_type, x.cluster "
                          "FROM tether_calls c LEFT JOIN tether_call_context x ON x.service = c.service AND "
                          "x.call_id = c.call_id WHERE c.service = ? ORDER BY c.id", (name,)).fetchall()


@pytest.fixture
def saved_add(local_cluster: object, monkeypatch: pytest.MonkeyPatch) -> Function:
    """``plainadd`` saved; then a registry of this process that has not opened the ORM store (a process that has,
    the saving one, pays nothing more for the full handle: it loads that)."""
    f = tether.function(svc.add).to(local_cluster, name="plainadd")
    f.save()
    tether.registry.flush()
    monkeypatch.setattr(tether.registry, "_CACHE", {})
    return f


def test_a_fresh_process_loads_and_calls_without_pydantic_or_asyncio(saved_add: Function, module_home: Path) -> None:
    before = len(_calls(module_home, f"{tether.registry.get_registry().namespace}/plainadd"))
    # nor asyncio: a sync call takes the blocking transport, and the async side loads at its first use
    assert _fresh(module_home, "plainadd") == {"result": 3, "type": "SavedFunction", "pydantic": [], "asyncio": False}
    rows = _calls(module_home, f"{tether.registry.get_registry().namespace}/plainadd")
    assert len(rows) == before + 1


def test_the_plain_call_records_what_the_full_handle_records(saved_add: Function, module_home: Path) -> None:
    name = f"{tether.registry.get_registry().namespace}/plainadd"
    plain = tether.function(name="plainadd")
    assert type(plain) is SavedFunction
    assert plain(2, 3) == 5
    full = tether.api.loading.load("plainadd")  # the full handle, as before this module existed
    assert type(full) is Function
    assert full(2, 3) == 5
    with pytest.raises(TypeError):
        plain(1)  # a remote error: recorded as such on both paths
    with pytest.raises(TypeError):
        full(1)
    rows = _calls(module_home, name)[-4:]
    assert rows[0] == rows[1] and rows[2] == rows[3], rows
    assert rows[0][3] == "ok" and rows[2][3] == "error" and rows[0][6] == "test-local"


def test_it_is_the_full_function_to_everything_but_a_call(saved_add: Function) -> None:
    f = tether.function(name="plainadd")
    assert type(f) is SavedFunction and f._plain._full is None
    assert f(1, 2) == 3 and f._plain._full is None  # a call builds nothing
    assert isinstance(f, tether.Function) and isinstance(f, Function)
    assert f.spec.version == saved_add.spec.version and f.registry_name.endswith("/plainadd")
    assert f.cluster.name == "test-local" and repr(f) == repr(f._plain.full())
    f.note = "set"  # set on the full handle, which every later use is
    assert f._plain.full().note == "set" and f.note == "set" and f(2, 2) == 4
    again = copy.copy(f)
    assert type(again) is Function and again(3, 4) == 7
    for handle in (f, f._plain.full()):  # pickled as the full handle is: not at all (it holds a lock)
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps(handle)
    assert type(tether.load("plainadd")) is SavedFunction


def test_another_version_on_the_daemon_is_replaced_by_the_saved_one(saved_add: Function, local_cluster: object) -> None:
    f = tether.function(name="plainadd")
    tether.function(svc.echo).to(local_cluster, name="plainadd")  # a teammate's ad-hoc deploy under the name
    assert f(1, 2) == 3  # the saved version (add), redeployed by the full handle
    assert f._plain._full is not None


def test_a_daemon_restarted_by_another_process_is_adopted(saved_add: Function, local_cluster: object) -> None:
    f = tether.function(name="plainadd")
    assert f(1, 1) == 2
    old = local_cluster.handle.token  # type: ignore[attr-defined]
    local_cluster.restart_server()  # type: ignore[attr-defined]
    assert local_cluster.handle.token != old  # type: ignore[attr-defined]
    assert f._plain._full is None
    assert f(2, 5) == 7  # the plain client's address is stale: the full handle adopts the new daemon
    assert f._plain._full is not None and f._plain.full().cluster.handle.token == local_cluster.handle.token  # type: ignore[attr-defined]


def test_ctrl_c_in_a_plain_call_cancels_the_remote_call(local_cluster: object, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    tether.function(svc.sleep_then).to(local_cluster, name="plainsleep").save()
    tether.registry.flush()
    monkeypatch.setattr(tether.registry, "_CACHE", {})
    f = tether.function(name="plainsleep")
    marker = tmp_path / "marker"
    with _Interrupt(marker), pytest.raises(KeyboardInterrupt):
        f(30, str(marker))
    assert type(f) is SavedFunction and f._plain._full is None  # cancelled through the plain client
    assert _wait_no_running(local_cluster) == []


def test_a_daemon_that_does_not_answer_is_left_to_the_full_handle(saved_add: Function) -> None:
    """A daemon alive but hung (its pid runs, nothing answers): the plain check gives it the full handle's health
    probe time, not the transport's 60 s read timeout, then hands over (the full bring-up replaces such a daemon)."""
    f = tether.function(name="plainadd")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        plain = f._plain
        plain._client = AsyncClient(f"http://127.0.0.1:{silent.getsockname()[1]}", "t")
        handed: list[bool] = []

        class Full:
            def _ensure_deployed(self) -> str:
                handed.append(True)
                return "full"

        plain.full = lambda: Full()  # type: ignore[method-assign]
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(plain._ensure_deployed()), daemon=True)
        worker.start()
        worker.join(30)  # a liveness bound (the transport's read timeout is 60 s), not a measurement
    assert done == ["full"] and handed == [True]


def test_a_pinned_version_runs_under_its_own_name(saved_add: Function) -> None:
    version = saved_add.spec.version
    f = tether.function(name=f"plainadd@{version}")
    assert type(f) is SavedFunction and f._plain.name == f"plainadd.v{version}"
    assert f(4, 5) == 9  # not on the daemon yet: the full handle deploys it under that name
    g = tether.function(name=f"plainadd@{version}")
    assert g(5, 5) == 10 and g._plain._full is None  # now it is: the plain path calls it


def test_not_the_plain_case_is_the_full_handle(local_cluster: object) -> None:
    f = tether.function(svc.add).to(local_cluster, name="plainoom", on_oom=tether.Escalation(ladder=["local:256MB", "local:512MB"]))
    f.save()
    assert type(tether.function(name="plainoom")) is Function
    g = tether.function(svc.count_up).to(local_cluster, name="plaingen")
    g.save()
    loaded = tether.function(name="plaingen")
    assert type(loaded) is Function and list(loaded(3)) == [0, 1, 2]


@pytest.mark.parametrize("fields", [
    {}, {"version": 0}, {"version": 2**31}, {"version": 2**31 - 1}, {"call_id": ""}, {"call_id": "x" * 257},
    {"method": "m" * 129}, {"caller": "c" * 257}, {"run_id": "r" * 513}, {"run_id": "r" * 512},
    {"duration_s": -1.0}, {"duration_s": math.inf}, {"duration_s": math.nan}, {"duration_s": 3}, {"outcome": "bogus"},
    {"error_type": "e" * 257}, {"instance_type": "i" * 129}, {"cluster": "k" * 257}, {"cluster": "k" * 256},
])
def test_a_plain_call_is_valid_where_the_model_is(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"name": "ns/x", "call_id": "ab" * 16, "version": 3, "started_at": datetime.now(UTC)}
    plain = PlainCall.of(**{**base, **fields})
    try:
        CallRecord(**{**base, **fields})
        valid = True
    except pydantic.ValidationError:
        valid = False
    assert plain.valid() is valid  # the same bounds (what the model would coerce, bool or "3", goes to the model)
    if valid:
        assert plain.to_record() == CallRecord(**{**base, **fields})


@pytest.mark.parametrize("outcome", ["ok", "error", "OutOfMemory", "CallCancelled", "CallTimeout", "ValueError"])
def test_a_plain_call_takes_an_exception_name_as_the_model_does(outcome: str) -> None:
    plain = PlainCall.of(name="ns/x", call_id="c1", outcome=outcome)
    model = CallRecord(name="ns/x", call_id="c1", outcome=outcome)
    assert (plain.outcome, plain.error_type) == (model.outcome, model.error_type)


@pytest.mark.parametrize("fields", [{"version": True}, {"version": "3"}, {"duration_s": "1.5"}])
def test_what_the_model_would_coerce_is_recorded_through_the_model(fields: dict[str, object]) -> None:
    plain = PlainCall(name="ns/x", call_id="c1", **fields)  # type: ignore[arg-type]
    assert not plain.valid()  # record_call then builds the CallRecord (which coerces it) instead
    CallRecord(name="ns/x", call_id="c1", **fields)
