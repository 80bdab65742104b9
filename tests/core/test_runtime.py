"""The core runtime against a real daemon subprocess on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

import tether
from tests.core import services as svc
from tests.processes import assert_sigkill_is_worker_died, host_oom_kills

ROOT = Path(__file__).resolve().parents[2]


def test_function_round_trip_and_kwargs(local_cluster):
    radd = tether.function(svc.add).to(local_cluster)
    assert radd(1, 2) == 3
    assert radd(a="x", b="y") == "xy"
    assert radd([1], b=[2]) == [1, 2]


def test_json_call_for_non_python_callers(local_cluster):
    tether.function(svc.add).to(local_cluster)
    headers = {"Authorization": f"Bearer {local_cluster.token}"}
    r = requests.post(f"{local_cluster.endpoint}/add/call", json={"args": [1, 2]}, headers=headers, timeout=10)
    assert r.status_code == 200 and r.json()["result"] == 3
    r = requests.post(f"{local_cluster.endpoint}/add/call", data=b"not json", headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "SerializationError"


def test_wrong_or_missing_token_is_refused(local_cluster):
    r = requests.post(f"{local_cluster.endpoint}/add/call", json={"args": [1, 2]}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "AuthError"
    r = requests.get(f"{local_cluster.endpoint}/status", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401


def test_class_instance_state_env_and_attributes(local_cluster):
    RCounter = tether.module(svc.Counter).to(local_cluster, env=tether.env(name="counter", env_vars={"X": "1"}))
    ctr = RCounter(start=5, name="ctr")
    assert ctr.incr() == 6 and ctr.incr(by=2) == 8
    assert ctr.remote.n == 8
    assert ctr.read_x() == "1"
    assert ctr.method("env")() == "method named env"  # names that clash with the stub's own attributes
    assert asyncio.run(ctr.aincr(by=10)) == 18
    assert asyncio.run(ctr.incr.remote_async()) == 19
    other = RCounter(name="ctr2")
    assert other.incr() == 1 and ctr.remote.n == 19


def test_async_function_is_awaitable(local_cluster):
    radd = tether.function(svc.aadd).to(local_cluster)
    assert asyncio.run(radd(2, 3)) == 5
    plain = tether.function(svc.add).to(local_cluster)
    assert asyncio.run(plain.remote_async(4, 5)) == 9


def test_generator_items_arrive_while_it_runs(local_cluster, tmp_path):
    gen = tether.function(svc.count_up).to(local_cluster)
    assert list(gen(4)) == [0, 1, 2, 3]
    # the first item must reach us before the generator has finished producing (delay 0.3 s each)
    it = iter(gen(3, 0.3))
    first = next(it)
    handle_done = threading.Event()
    rest = []

    def drain():
        rest.extend(it)
        handle_done.set()

    t = threading.Thread(target=drain)
    t.start()
    assert first == 0 and not handle_done.is_set()
    t.join(10)
    assert rest == [1, 2]


def test_async_generator_streams(local_cluster):
    agen = tether.function(svc.acount).to(local_cluster)

    async def collect():
        return [x async for x in agen(3)]

    assert asyncio.run(collect()) == [0, 10, 20]


def test_print_and_logging_stream_back_without_mixing(local_cluster, capsys, caplog):
    shout = tether.function(svc.shout).to(local_cluster)
    with caplog.at_level(logging.INFO, logger="tests.services"):
        assert shout("solo", 2) == 2
    out = capsys.readouterr().out
    assert "solo 0\nsolo 1\n" in out
    assert [r.getMessage() for r in caplog.records if r.name == "tests.services"] == ["logged solo 0", "logged solo 1"]
    def run(tag):
        shout.call((tag, 5), on_log=lambda e: seen[tag].append(e.get("text") or e.get("msg")))

    tags = [f"caller{i}" for i in range(8)]
    seen = {tag: [] for tag in tags}
    threads = [threading.Thread(target=run, args=(t,)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for tag in tags:  # complete, in order, and only this caller's lines
        printed = [line for line in seen[tag] if line.endswith("\n")]
        logged = [line for line in seen[tag] if not line.endswith("\n")]
        assert printed == [f"{tag} {i}\n" for i in range(5)]
        assert logged == [f"logged {tag} {i}" for i in range(5)]


def test_exceptions_keep_type_and_remote_traceback(local_cluster):
    boom = tether.function(svc.raises_value_error).to(local_cluster)
    with pytest.raises(ValueError, match="bad input") as info:
        boom("bad input")
    assert any("remote traceback" in n and "raises_value_error" in n for n in info.value.__notes__)
    unpicklable = tether.function(svc.raises_unpicklable).to(local_cluster)
    with pytest.raises(tether.RemoteError) as info2:
        unpicklable()
    assert "UnpicklableError" in info2.value.remote_type and "cannot travel" in str(info2.value)


def test_unpicklable_argument_and_result_are_typed_errors(local_cluster):
    echo = tether.function(svc.echo).to(local_cluster)
    with pytest.raises(tether.SerializationError, match="arguments"):
        echo(threading.Lock())
    with pytest.raises(tether.SerializationError, match="result"):
        tether.function(svc.returns_lock).to(local_cluster)()
    assert echo("still serving") == "still serving"


def test_missing_service_names_close_matches(local_cluster):
    tether.function(svc.add).to(local_cluster)
    r = requests.post(f"{local_cluster.endpoint}/ad/call", json={"args": []}, timeout=10,
                      headers={"Authorization": f"Bearer {local_cluster.token}"})
    assert r.status_code == 404
    body = r.json()["error"]
    assert body["type"] == "NotFound" and "add" in body["details"]["close_matches"]


def test_object_store(local_cluster):
    local_cluster.put("cfg", {"lr": 0.1})
    assert local_cluster.get("cfg") == {"lr": 0.1}
    assert "cfg" in local_cluster.keys()
    local_cluster.rename("cfg", "cfg2")
    assert local_cluster.get("cfg2") == {"lr": 0.1} and local_cluster.get("cfg", None) is None
    local_cluster.delete("cfg2")
    with pytest.raises(tether.NotFound):
        local_cluster.get("cfg2")


def test_delete_service_and_env(local_cluster):
    tether.function(svc.add).to(local_cluster, env=tether.env(name="doomed"), name="add_doomed")
    local_cluster.delete("add_doomed")
    assert "add_doomed" not in local_cluster.keys()
    f = tether.function(svc.add).to(local_cluster, env=tether.env(name="doomed2"), name="add_doomed2")
    assert f(1, 1) == 2
    local_cluster.delete("doomed2")
    assert "add_doomed2" not in local_cluster.keys()


def test_spawn_cancel_logs_and_reattach(local_cluster, tmp_path):
    sleeper = tether.function(svc.sleep_then).to(local_cluster)
    h = sleeper.spawn(0.2)
    assert h.result(timeout=20) == 0.2
    assert h.status()["state"] == "succeeded"
    marker = tmp_path / "marker"
    h2 = sleeper.spawn(30, str(marker))
    deadline = time.time() + 10
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    h2.cancel()
    with pytest.raises(tether.CallCancelled):
        h2.result(timeout=20)
    assert "end" not in marker.read_text()
    shout = tether.function(svc.shout).to(local_cluster)
    h3 = shout.spawn_with(("hey", 2), on_log=None)
    h3.result(10)
    assert [e["text"] for e in h3.logs() if "text" in e] == ["hey 0\n", "hey 1\n"]
    # another process re-attaches by call id and gets the same result
    code = (
        "import tether, sys; c = tether.cluster(name='test-local'); "
        f"print(tether.call({h.call_id!r}, c).result(10))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0.2", out.stderr


def test_same_call_id_runs_once(local_cluster, tmp_path):
    sleeper = tether.function(svc.sleep_then).to(local_cluster)
    marker = tmp_path / "once"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        sleeper.call((0.3, str(marker)), call_id="fixed-id-1"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [0.3, 0.3, 0.3]
    assert marker.read_text().count("start") == 1
    assert sleeper.call((0.3, str(marker)), call_id="fixed-id-1") == 0.3
    assert marker.read_text().count("start") == 1


def test_worker_crash_gives_typed_error_and_env_restarts(local_cluster):
    env = tether.env(name="crashy")
    crash = tether.function(svc.crash).to(local_cluster, env=env)
    add = tether.function(svc.add).to(local_cluster, env=env)
    other = tether.function(svc.add).to(local_cluster, name="add_elsewhere")
    with pytest.raises(tether.WorkerDied):
        crash()
    assert other(2, 2) == 4  # other envs keep serving
    assert add(1, 1) == 2  # the env restarted and its services were restored


def test_redeploy_after_editing_source(local_cluster, tmp_path, monkeypatch):
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text("[project]\nname='proj'\n")
    (pkg / "editme.py").write_text("def version():\n    return 1\n")
    monkeypatch.syspath_prepend(str(pkg))
    import importlib

    editme = importlib.import_module("editme")
    f = tether.function(editme.version).to(local_cluster)
    assert f() == 1
    time.sleep(0.01)
    (pkg / "editme.py").write_text("def version():\n    return 2\n")
    importlib.reload(editme)
    f = tether.function(editme.version).to(local_cluster)
    assert f() == 2


def test_main_module_functions_go_by_value_with_warning(local_cluster):
    ns: dict = {"__name__": "__main__"}
    exec("def triple(x):\n    return 3 * x\n", ns)
    with pytest.warns(UserWarning, match="by value"):
        f = tether.function(ns["triple"]).to(local_cluster)
    assert f(3) == 9


def test_configs_round_trip(local_cluster):
    f = tether.function(svc.add).to(local_cluster)
    cfg = f.config()
    again = tether.Function.from_config(cfg)
    assert again.config() == cfg
    assert again(5, 6) == 11
    assert tether.Cluster.from_config(local_cluster.config()).config() == local_cluster.config()
    e = tether.env(name="x", env_vars={"A": "1"})
    assert tether.Env.from_config(e.config()) == e
    with pytest.raises(tether.ConfigError):
        tether.Cluster.from_config({"kind": "env"})


def test_openapi_document_lists_routes(local_cluster):
    doc = requests.get(f"{local_cluster.endpoint}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    for path in ("/deploy", "/{name}/call", "/calls/{call_id}/cancel", "/objects/{key}", "/envs/{env}"):
        assert path in doc["paths"]


def test_object_store_across_envs_and_env_var_isolation(local_cluster):
    a = tether.env(name="iso_a", env_vars={"ISO": "a"})
    b = tether.env(name="iso_b", env_vars={"ISO": "b"})
    fa = tether.function(svc.env_var).to(local_cluster, env=a, name="env_var_a")
    fb = tether.function(svc.env_var).to(local_cluster, env=b, name="env_var_b")
    fd = tether.function(svc.env_var).to(local_cluster, name="env_var_default")
    assert (fa("ISO"), fb("ISO"), fd("ISO")) == ("a", "b", None)
    local_cluster.put("in_a", "A", env="iso_a")
    local_cluster.put("in_b", {"b": 2}, env="iso_b")
    assert local_cluster.get("in_a") == "A" and local_cluster.get("in_b") == {"b": 2}
    assert {"in_a", "in_b"} <= set(local_cluster.keys())


def test_worker_sigkilled_mid_call(local_cluster, tmp_path):
    import os
    import signal

    oom_kills = host_oom_kills()  # before the worker starts, as the daemon's own baseline
    env = tether.env(name="victim")
    sleeper = tether.function(svc.sleep_then).to(local_cluster, env=env, name="victim_sleep")
    marker = tmp_path / "started"
    h = sleeper.spawn(60, str(marker))
    deadline = time.time() + 20
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    pid = next(w["pid"] for w in local_cluster.daemon_status()["workers"] if w["env"] == "victim")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(tether.TetherError) as info:
        h.result(timeout=30)
    assert_sigkill_is_worker_died(info.value, oom_kills)
    assert info.value.retryable
    assert local_cluster.daemon_status()["pid"]  # the daemon survived
    assert sleeper(0.01) == 0.01  # the env restarted and the service was restored


def test_32_threads_on_one_stateful_object(local_cluster):
    ctr = tether.module(svc.Counter).to(local_cluster)(name="shared_ctr")
    errors = []

    def hammer():
        try:
            for _ in range(25):
                ctr.incr()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert ctr.remote.n == 32 * 25


def test_big_payloads_travel_through_shared_memory_on_the_daemons_host(local_cluster, monkeypatch):
    from tether.client import slabs as shm

    if not local_cluster.client.unix_socket or shm.SHM_DIR is None:
        pytest.skip("needs the local cluster's unix socket and /dev/shm")
    lent: list[tuple[str, str]] = []
    real_end = shm.Lease.end

    def end(lease, finished):
        lent.append((lease.args.path if lease.args else "", lease.result.path if lease.result else ""))
        real_end(lease, finished)

    monkeypatch.setattr(shm.Lease, "end", end)
    payload = os.urandom(3 * 1024 * 1024)
    echo = tether.function(svc.echo).to(local_cluster)

    assert echo(payload) == payload  # sync API
    assert asyncio.run(echo.remote_async(payload)) == payload  # async API
    assert echo(b"small") == b"small"  # small values keep the socket

    assert len(lent) == 2  # both big calls lent an arguments slab and a result slab ...
    assert lent[0] == lent[1] and all(lent[0])  # ... the same two files both times
    assert all(os.path.exists(path) for path in lent[0])  # kept for the next big call
    assert set(lent[0]) <= set(shm.pool().idle())
