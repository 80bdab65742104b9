"""A call id means one run for good: after its result's retention window, after its big result's ``/dev/shm`` file
is gone, and after a daemon restart (who started it is remembered too). Real daemon processes, real sockets.

- A finished call leaves a tombstone in the call journal (``daemon/tombstones.py``, kept 7 days by default): a
  retry with its id after the result was let go answers ``NotFound`` with ``details["reason"] == "result_gone"``
  and never runs the call again (the side-effect file proves it), also after a restart.
- A big result whose ``/dev/shm`` file another process removed answers the same typed ``NotFound``, over TCP and
  over the unix socket (where the client maps the file itself); the daemon keeps serving.
- The principal that started a call is in the journal: after a restart another principal still may not read,
  attach to or cancel it.
"""

from __future__ import annotations

import glob
import os
import signal
import time

import pytest

from tests.reliability.daemons import DaemonProc, start_daemon
from tether.client import AsyncClient
from tether.client.loop import run_sync
from tether.daemon.auth import add_grant
from tether.daemon.tombstones import Tombstones
from tether.errors import NotFound

MiB = 1024 * 1024


def _post(d: DaemonProc, name: str, call_id: str, *args: object, headers: dict[str, str] | None = None):
    return d.post(f"/{name}/call", json={"args": list(args)},
                  headers={**(headers if headers is not None else d.headers), "X-Tether-Call-Id": call_id})


def _until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def _assert_result_gone(r, call_id: str) -> dict:
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["type"] == "NotFound" and err["hint"], err
    assert err["details"]["reason"] == "result_gone" and err["details"]["call_id"] == call_id, err
    return err


def test_a_retry_after_the_result_expired_never_runs_the_call_again(tmp_path, monkeypatch):
    """Retention shrunk to 1 s (``TETHER_CALL_RETENTION_SECONDS``): the result is let go, its id is not."""
    monkeypatch.setenv("TETHER_CALL_RETENTION_SECONDS", "1")
    state, marker = tmp_path / "state", tmp_path / "runs"
    d = start_daemon(state)
    try:
        d.deploy("paid", "sleep_then")
        r = _post(d, "paid", "gpu-job-1", 0, str(marker))
        assert r.status_code == 200 and r.json()["result"] == 0, r.text
        finished = d.get("/calls/gpu-job-1?wait=0").json()["finished"]
        _until(lambda: d.get("/calls/gpu-job-1?wait=0").json().get("result_gone"), "the result expiring")
        summary = d.get("/calls/gpu-job-1?wait=0").json()
        assert summary["state"] == "succeeded" and summary["finished"] == finished, summary  # what it was

        err = _assert_result_gone(_post(d, "paid", "gpu-job-1", 0, str(marker)), "gpu-job-1")
        assert err["details"]["finished_at"] == finished, err
        assert marker.read_text().split() == ["start", "end"]  # not run again
        assert _post(d, "paid", "gpu-job-2", 0, str(marker)).json()["result"] == 0  # a new id runs

        d.kill(signal.SIGKILL)  # the tombstone is durable
        d = start_daemon(state)
        _assert_result_gone(_post(d, "paid", "gpu-job-1", 0, str(marker)), "gpu-job-1")
        _assert_result_gone(d.get("/calls/gpu-job-1"), "gpu-job-1")
        assert marker.read_text().split() == ["start", "end", "start", "end"]  # gpu-job-1 once, gpu-job-2 once
    finally:
        d.kill()


def test_tombstones_are_bounded_compacted_and_expire(tmp_path):
    path = tmp_path / "tombstones.log"
    stones = Tombstones(path, keep_seconds=3600, max_count=100)
    stones.load()
    now = time.time()
    for i in range(1000):
        stones.add(f"c{i}", {"service": "s", "method": None, "json": False, "state": "succeeded",
                             "started": now - 1, "finished": now})
    assert len(stones) == 100 and stones.get("c999") is not None and stones.get("c0") is None
    assert path.stat().st_size < 100 * 400  # compacted: about the live ones, not every record ever written
    stones.add("old", {"service": "s", "method": None, "json": False, "state": "succeeded",
                       "started": now - 7200, "finished": now - 7200})
    stones.close()
    again = Tombstones(path, keep_seconds=3600, max_count=100)
    again.load()
    assert again.get("c999") is not None and again.get("old") is None and len(again) == 100
    torn = path.read_bytes()
    path.write_bytes(torn + b'{"id": "half')  # a crash mid-write
    third = Tombstones(path, keep_seconds=3600, max_count=100)
    third.load()
    assert len(third) == 100
    third.close()


def _worker_pid(d: DaemonProc) -> int:
    return next(w["pid"] for w in d.get("/status").json()["workers"] if w["alive"])


def _result_files(d: DaemonProc) -> list[str]:
    return glob.glob(f"/dev/shm/tether-{_worker_pid(d)}-*") + glob.glob(f"/dev/shm/tether-{d.proc.pid}-*")


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_a_big_result_whose_shm_file_was_removed_answers_result_gone(tmp_path):
    sock = tmp_path / "d.sock"
    d = start_daemon(tmp_path / "state", "--unix-socket", str(sock))
    try:
        d.deploy("make", "make_bytes")
        tcp = AsyncClient(d.endpoint, d.token)
        data = run_sync(tcp.call("make", None, (3 * MiB, 9), {}, call_id="big-1"))
        assert data == bytes([9]) * (3 * MiB)
        files = _result_files(d)
        assert files, "the big result is in a /dev/shm file"
        for f in files:
            os.unlink(f)  # a reboot, or another daemon's sweep
        with pytest.raises(NotFound) as info:  # over TCP: the daemon reads the file
            run_sync(tcp.attach("big-1", on_log=None))
        assert info.value.details["reason"] == "result_gone" and info.value.details["call_id"] == "big-1"
        with pytest.raises(NotFound) as info:  # a retry with the id: typed, and not run again
            run_sync(tcp.call("make", None, (3 * MiB, 9), {}, call_id="big-1"))
        assert info.value.details["reason"] == "result_gone"
        assert not _result_files(d)

        local = AsyncClient("http://localhost", d.token, unix_socket=str(sock))  # maps the file itself
        assert run_sync(local.call("make", None, (3 * MiB, 5), {}, call_id="big-2")) == bytes([5]) * (3 * MiB)
        for f in _result_files(d):
            os.unlink(f)
        with pytest.raises(NotFound) as info:
            run_sync(local.attach("big-2", on_log=None))
        assert info.value.details["reason"] == "result_gone" and info.value.details["call_id"] == "big-2"
        assert d.get("/health").status_code == 200  # the daemon keeps serving
        assert run_sync(tcp.call("make", None, (10, 1), {}, call_id="small-1")) == bytes([1]) * 10
    finally:
        d.kill()


def test_who_started_a_call_is_remembered_across_a_restart(tmp_path):
    access = tmp_path / "access.json"
    state = tmp_path / "state"
    d = start_daemon(state, "--access-file", str(access))
    try:
        d.deploy("add", "add")
        reader = {"Authorization": f"Bearer {add_grant(access, 'reader', {'add': 'read'})}"}
        other = {"Authorization": f"Bearer {add_grant(access, 'other', {'add': 'write'})}"}
        assert _post(d, "add", "readers-1", 1, 2, headers=reader).json()["result"] == 3
        assert d.get("/calls/readers-1?wait=0", headers=other).status_code == 401  # before the restart

        d.kill(signal.SIGKILL)
        d = start_daemon(state, "--access-file", str(access))
        assert d.get("/calls/readers-1?wait=0", headers=reader).status_code == 200
        r = d.get("/calls/readers-1?wait=0", headers=other)
        assert r.status_code == 401 and "another principal" in r.text, r.text
        assert d.get("/calls/readers-1", headers=other).status_code == 401
        assert d.post("/calls/readers-1/cancel", headers=other).status_code == 401
        assert _post(d, "add", "readers-1", 5, 5, headers=other).status_code == 401  # no attach either
        assert _post(d, "add", "readers-1", 1, 2, headers=reader).json()["result"] == 3  # its starter attaches
    finally:
        d.kill()
