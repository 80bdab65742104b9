"""Spawning a call: ``POST /{name}/call`` with ``Prefer: respond-async`` answers 202 with the call id as soon as the
daemon registered the call; status, re-attach, logs and cancel then work on that id from anywhere."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import tether
from tests.reliability.daemons import DaemonProc, start_daemon
from tether.client import DaemonClient
from tether.client.loop import run_sync
from tether.client.syncwire import SyncTransport
from tether.daemon.auth import add_grant
from tether.protocol.headers import PICKLE
from tether.protocol.shm import SHM_DIR

SPAWN = {"Prefer": "respond-async"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    base = tmp_path_factory.mktemp("spawn")
    d = start_daemon(base / "state", "--unix-socket", str(base / "d.sock"))
    d.extra["unix_socket"] = str(base / "d.sock")
    d.deploy("log_wait_count", "log_wait_count")
    d.deploy("add", "add")
    yield d
    d.kill()


@pytest.fixture
def client(daemon: DaemonProc) -> DaemonClient:
    return DaemonClient(daemon.endpoint, daemon.token)


def _spawn(daemon: DaemonProc, name: str, *args: object, call_id: str) -> requests.Response:
    return daemon.post(f"/{name}/call", json={"args": list(args)},
                       headers={**daemon.headers, **SPAWN, "X-Tether-Call-Id": call_id})


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_spawn_answers_with_the_call_id_before_the_call_finishes(daemon: DaemonProc, tmp_path: Path) -> None:
    r = _spawn(daemon, "log_wait_count", str(tmp_path), call_id="spawn-early")
    assert r.status_code == 202, r.text
    assert r.json()["call_id"] == "spawn-early" and r.json()["state"] == "running"
    assert r.headers["X-Tether-Call-Id"] == "spawn-early" and r.headers["Preference-Applied"] == "respond-async"
    assert daemon.get("/calls/spawn-early", params={"wait": "0"}).json()["state"] == "running"
    _wait_for(tmp_path / "started")
    (tmp_path / "release").touch()
    done = daemon.get("/calls/spawn-early").json()  # re-attach: a JSON call answers in JSON
    assert done["result"] == 1 and {"stream": "stdout", "text": "before the wait\n"} in done["logs"]


def test_the_same_call_id_twice_runs_once(client: DaemonClient, tmp_path: Path) -> None:
    first = client.sync.spawn("log_wait_count", None, (str(tmp_path),), {}, call_id="spawn-twice")
    second = client.sync.spawn("log_wait_count", None, (str(tmp_path),), {}, call_id="spawn-twice")
    assert first == second == "spawn-twice"
    _wait_for(tmp_path / "started")
    (tmp_path / "release").touch()
    assert client.sync.attach("spawn-twice", on_log=None) == 1  # one run
    assert (tmp_path / "runs").read_text().splitlines() == ["run"]
    again = client.sync.spawn("log_wait_count", None, (str(tmp_path),), {}, call_id="spawn-twice")  # finished
    assert again == "spawn-twice" and client.sync.status(again)["state"] == "succeeded"
    assert (tmp_path / "runs").read_text().splitlines() == ["run"]


def test_status_logs_attach_and_cancel_work_on_a_spawned_call(client: DaemonClient, tmp_path: Path) -> None:
    call_id = "spawn-cancel"
    assert client.sync.spawn("log_wait_count", None, (str(tmp_path),), {}, call_id=call_id) == call_id
    _wait_for(tmp_path / "started")
    status = client.sync.status(call_id)
    assert status["state"] == "running" and status["service"] == "log_wait_count"
    deadline = time.monotonic() + 10
    while not client.sync.logs(call_id):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.sync.logs(call_id) == [{"stream": "stdout", "text": "before the wait\n"}]
    assert client.sync.logs(call_id, since=1) == []
    client.sync.cancel(call_id)
    with pytest.raises(tether.CallCancelled):
        client.sync.attach(call_id, on_log=None)
    assert client.sync.status(call_id)["state"] == "cancelled"


def test_a_spawn_from_the_async_client_attaches_with_its_result(client: DaemonClient) -> None:
    async def go() -> tuple[str, int]:
        call_id = await client.spawn("add", None, (20, 22), {}, call_id="spawn-async")
        return call_id, await client.attach(call_id, on_log=None)

    assert run_sync(go()) == ("spawn-async", 42)


def test_a_bad_spawn_gets_a_typed_4xx_and_the_daemon_keeps_serving(daemon: DaemonProc) -> None:
    headers = {**daemon.headers, **SPAWN, "X-Tether-Call-Id": "spawn-bad"}
    r = daemon.post("/add/call", data=b"not a pickle",
                    headers={**headers, "Content-Type": "application/x-tether-pickle"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "SerializationError"
    r = daemon.post("/add/call", data=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "SerializationError"
    r = daemon.post("/nope/call", json={"args": []}, headers=headers)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
    r = daemon.post("/add/call", headers={**headers, "X-Tether-Result-Slab": "/dev/shm/tether-1-x"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "ConfigError"  # slabs: unix socket only
    assert daemon.get("/calls/spawn-bad", params={"wait": "0"}).status_code == 404  # nothing was registered
    assert daemon.get("/health").json()["status"] == "ok"
    assert _spawn(daemon, "add", 1, 2, call_id="spawn-after-bad").status_code == 202
    assert daemon.get("/calls/spawn-after-bad").json()["result"] == 3


@pytest.mark.skipif(SHM_DIR is None, reason="needs a writable /dev/shm")
def test_a_spawn_lends_no_slab(daemon: DaemonProc) -> None:
    transport = SyncTransport(daemon.endpoint, daemon.extra["unix_socket"])
    headers = {**daemon.headers, **SPAWN, "X-Tether-Call-Id": "spawn-slab", "Content-Type": PICKLE,
               "X-Tether-Result-Slab": f"{SHM_DIR}/tether-1-spawn"}
    resp = transport.send("POST", "/add/call", headers, pickle.dumps(((1, 2), {})))
    error = json.loads(resp.read())["error"]
    assert resp.status == 422 and error["type"] == "ConfigError" and "lends no slab" in error["message"]
    assert daemon.get("/calls/spawn-slab", params={"wait": "0"}).status_code == 404


def test_spawn_needs_the_same_access_as_a_call(tmp_path: Path) -> None:
    access = tmp_path / "access.json"
    d = start_daemon(tmp_path / "state", "--access-file", str(access))
    try:
        d.deploy("add", "add")
        d.deploy("echo", "echo")
        alice = {"Authorization": f"Bearer {add_grant(access, 'alice', {'add': 'read'})}", **SPAWN}
        r = requests.post(d.endpoint + "/add/call", json={"args": [1, 2]}, headers=alice, timeout=10)
        assert r.status_code == 202, r.text  # read = call = spawn
        for path, kw in (("/echo/call", {"json": {"args": [1]}}),  # no grant on echo
                         ("/add/call", {"data": b"\x80\x05K\x01.",  # JSON only without allow_pickle
                                        "headers": {**alice, "Content-Type": "application/x-tether-pickle"}})):
            r = requests.post(d.endpoint + path, headers=kw.pop("headers", alice), timeout=10, **kw)
            assert r.status_code == 401 and r.json()["error"]["type"] == "AuthError", (path, r.text)
        r = requests.post(d.endpoint + "/add/call", json={"args": [1, 2]}, headers=SPAWN, timeout=10)
        assert r.status_code == 401  # no token
    finally:
        d.kill()
