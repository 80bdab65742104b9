"""Same call id, runs once — also across a daemon crash (SIGKILL, then a restart on the same state dir).

A restarted daemon knows every call id it had (its call journal, ``daemon/journal.py``): a call that finished
before the crash answers with its result (big results too: their ``/dev/shm`` files are adopted), a call that was
running is *lost* — a typed, retryable ``WorkerDied`` naming the call id — and its worker is dead (it dies with
the daemon, or the restarted daemon kills it), so a retry with the same id runs it again exactly once, never
beside the orphan.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import tether
from tests.core import services as svc
from tests.reliability.daemons import ROOT, DaemonProc, kill_quietly, start_daemon, wait_for_text, worker_pid
from tether.client import AsyncClient
from tether.client.loop import run_sync
from tether.daemon import protocol as p
from tether.daemon.calls import Call, CallTable
from tether.daemon.journal import Journal, kill_orphans

pool = ThreadPoolExecutor(4)
MiB = 1024 * 1024


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _post(d: DaemonProc, name: str, call_id: str, *args: object) -> requests.Response:
    return d.post(f"/{name}/call", json={"args": list(args)}, headers={**d.headers, "X-Tether-Call-Id": call_id})


def _post_quietly(d: DaemonProc, name: str, call_id: str, *args: object) -> requests.Response | None:
    """A call whose daemon is about to be killed (its connection drops)."""
    try:
        return _post(d, name, call_id, *args)
    except requests.ConnectionError:
        return None


def _assert_lost(r: requests.Response, call_id: str) -> None:
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["type"] == "WorkerDied" and err["retryable"] is True, err
    assert err["details"]["call_id"] == call_id and err["details"]["lost_in"] == "daemon_restart", err
    assert call_id in err["message"] and "daemon restart" in err["message"], err


def test_a_call_running_when_the_daemon_dies_is_lost_typed_and_its_retry_runs_once(tmp_path):
    state, marker = tmp_path / "state", tmp_path / "marker"
    d = start_daemon(state)
    orphans: list[int] = []
    try:
        d.deploy("slow", "sleep_then")
        for i in range(3):
            assert _post(d, "slow", f"warm-{i}", 0).json()["result"] == 0
        orphans.append(worker := worker_pid(d, "default"))
        first = pool.submit(_post_quietly, d, "slow", "c1", 30, str(marker))
        wait_for_text(marker, "start")
        d.kill(signal.SIGKILL)
        assert first.result(30) is None
        assert _wait_dead(worker, 5), "the worker outlived its daemon: it would finish the call beside a retry"

        d = start_daemon(state)  # same state dir, new process
        summary = d.get("/calls/c1?wait=0")
        assert summary.status_code == 200, summary.text
        assert summary.json()["state"] == "failed" and summary.json()["service"] == "slow"
        _assert_lost(d.get("/calls/c1"), "c1")
        assert d.get("/calls/warm-2?wait=0").json()["state"] == "succeeded"  # finished calls are known too

        # three retries at once with the lost call's id: it runs again exactly once, and only once
        retries = [pool.submit(_post, d, "slow", "c1", 0.5, str(marker)) for _ in range(3)]
        for r in retries:
            assert r.result(60).json()["result"] == 0.5
        assert _post(d, "slow", "c1", 0.5, str(marker)).json()["result"] == 0.5  # attached, not run
        assert marker.read_text().split() == ["start", "start", "end"]  # the orphan never finished its run
        orphans.append(worker_pid(d, "default"))
    finally:
        d.kill()
        kill_quietly(*orphans)


def test_calls_finished_before_the_crash_answer_from_the_restarted_daemon(tmp_path):
    state, marker = tmp_path / "state", tmp_path / "marker"
    d = start_daemon(state)
    orphans: list[int] = []
    try:
        d.deploy("slow", "sleep_then")
        d.deploy("make", "make_bytes")
        d.deploy("boom", "raises_value_error")
        assert _post(d, "slow", "f1", 0.05, str(marker)).json()["result"] == 0.05
        client = AsyncClient(d.endpoint, d.token)
        big = run_sync(client.call("make", None, (3 * MiB, 9), {}, call_id="big-1"))  # a /dev/shm result file
        assert big == bytes([9]) * (3 * MiB)
        failed = _post(d, "boom", "e1", "no good")
        assert failed.status_code == 422 and "no good" in failed.text, failed.text
        orphans.append(worker_pid(d, "default"))
        d.kill(signal.SIGKILL)
        for name in os.listdir("/dev/shm"):  # what a reboot, or another tether process's sweep, does
            if name.startswith(f"tether-{d.proc.pid}-"):
                os.unlink(f"/dev/shm/{name}")

        d = start_daemon(state)
        r = _post(d, "slow", "f1", 0.05, str(marker))  # the same id again: answered, not run again
        assert r.status_code == 200 and r.json()["result"] == 0.05, r.text
        assert marker.read_text().split() == ["start", "end"]
        assert d.get("/calls/f1?wait=0").json()["state"] == "succeeded"
        again = AsyncClient(d.endpoint, d.token)
        for attempt in (again.attach("big-1"), again.call("make", None, (3 * MiB, 9), {}, call_id="big-1")):
            with pytest.raises(tether.NotFound) as info:  # it ran once; its result is gone; it does not run again
                run_sync(attempt)
            assert info.value.details["result_gone"] and info.value.details["call_id"] == "big-1"
        r = d.get("/calls/e1")
        assert r.status_code == failed.status_code and r.json() == failed.json()
    finally:
        d.kill()
        kill_quietly(*orphans)


async def block_loop(seconds, marker):
    """An async function that blocks its worker's event loop (it never sees its link to the daemon close)."""
    with open(marker, "a") as f:
        f.write("start\n")
    time.sleep(seconds)
    with open(marker, "a") as f:
        f.write("end\n")
    return seconds


BIG_RESULT = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from tests.reliability.daemons import start_daemon
    from tether.client import AsyncClient
    from tether.client.loop import run_sync

    state = Path(sys.argv[1])
    d = start_daemon(state)
    d.deploy("make", "make_bytes")
    data = run_sync(AsyncClient(d.endpoint, d.token).call("make", None, (3 << 20, 9), {}, call_id="big-1"))
    assert data == bytes([9]) * (3 << 20)
    d.kill(signal.SIGKILL)
    d = start_daemon(state)
    again = AsyncClient(d.endpoint, d.token)
    assert run_sync(again.attach("big-1")) == data
    assert run_sync(again.call("make", None, (3 << 20, 9), {}, call_id="big-1")) == data
    d.kill()
    print("big result kept")
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_a_big_result_survives_the_crash_in_its_shared_memory_file(tmp_path):
    """A result of 1 MiB or more lives in a /dev/shm file; the restarted daemon adopts it. Run with a private
    /dev/shm: another tether process on this host sweeps a dead daemon's files (see the known limits)."""
    script = tmp_path / "big_result.py"
    script.write_text(BIG_RESULT)
    mount = f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} {script} {tmp_path / 'state'}"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "big result kept" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


WRAPPER = """#!/bin/sh
# a python launcher that does not exec (like some env managers' shims): the worker's parent is this shell
"{python}" "$@"
"""


def test_a_worker_that_outlives_its_daemon_is_killed_by_the_restarted_daemon(tmp_path):
    """The worker's parent is a launcher shell, not the daemon, so it does not die with the daemon; its loop is
    blocked by the call, so it does not notice the closed link either. The restarted daemon finds it in
    the journal (pid and start time) and kills it before serving any call."""
    state, marker = tmp_path / "state", tmp_path / "marker"
    launcher = tmp_path / "python-launcher"
    launcher.write_text(WRAPPER.format(python=sys.executable))
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    d = start_daemon(state)
    orphans: list[int] = []
    try:
        spec = {"name": "slow", "env": {"name": "wrapped", "python": str(launcher)},
                "code": {"root": str(ROOT), "import_path": "tests.reliability.test_crash_recovery",
                         "qualname": "block_loop"}}
        assert d.post("/deploy", json=spec).status_code == 200
        pids = subprocess.run(["pgrep", "-f", "tether.daemon.worker"], capture_output=True, text=True).stdout.split()
        launched = int(worker_pid(d, "wrapped"))
        worker = next(int(p) for p in pids if _parent(int(p)) == launched)
        orphans += [launched, worker]
        pool.submit(_post_quietly, d, "slow", "c2", 30, str(marker))
        wait_for_text(marker, "start")
        d.kill(signal.SIGKILL)
        time.sleep(0.5)
        assert _alive(worker)  # orphaned, still running the call

        d = start_daemon(state)
        assert _wait_dead(worker, 5), "the restarted daemon left the orphaned worker running"
        _assert_lost(d.get("/calls/c2"), "c2")
        assert _post(d, "slow", "c2", 0.2, str(marker)).json()["result"] == 0.2
        assert marker.read_text().split() == ["start", "start", "end"]
    finally:
        d.kill()
        kill_quietly(*orphans)


def _parent(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])
    return 0


def test_tether_call_after_a_local_cluster_daemon_crash(tether_home, tmp_path):
    """The public API: ``tether.call(id)`` after the local daemon was SIGKILLed and brought back by
    ``up_if_not()`` raises the typed, retryable error (not NotFound); the same id runs again, once."""
    marker = tmp_path / "marker"
    c = tether.cluster(name="crash-journal").up_if_not()
    try:
        slow = tether.function(svc.sleep_then).to(c)
        handle = slow.spawn(30, str(marker))
        wait_for_text(marker, "start")
        worker = next(w["pid"] for w in c.client.sync.daemon_status()["workers"] if w["alive"])
        os.kill(c.handle.pid, signal.SIGKILL)
        assert _wait_dead(worker, 5)
        c.up_if_not()
        with pytest.raises(tether.WorkerDied) as info:
            tether.call(handle.call_id, c).result(30)
        assert info.value.retryable and info.value.details["call_id"] == handle.call_id
        assert info.value.details["lost_in"] == "daemon_restart"
        assert slow.call((0.2, str(marker)), call_id=handle.call_id) == 0.2
        assert slow.call((0.2, str(marker)), call_id=handle.call_id) == 0.2  # once
        assert marker.read_text().split() == ["start", "start", "end"]
    finally:
        c.teardown()


def test_the_journal_replays_across_segments_and_drops_what_the_table_let_go(tmp_path):
    """The journal on its own (no daemon): small segments, a table that keeps 50 finished calls, a torn last
    record, a recorded worker that still runs."""
    directory = tmp_path / "calls"
    journal = Journal(directory, mode="batched", segment_bytes=4096)
    journal.replay()
    table = CallTable(max_finished=50, journal=journal)
    for i in range(300):
        call = Call(f"c{i}", "svc", None, False)
        table.add(call)
        call.add(p.LOG, {}, b'{"stream": "stdout", "text": "hi\\n"}')
        call.add(p.RESULT, {}, f"r{i}".encode())
    table.add(Call("running-1", "svc", "m", True))
    dropped = Call("dropped-1", "svc", None, False)
    table.add(dropped)
    table.discard(dropped)
    orphan = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["sleep", "60"])
    journal.worker_started("env", [orphan.pid])
    journal.worker_started("env", [gone.pid])
    journal.worker_stopped(gone.pid)
    segments = sorted(directory.iterdir())
    assert 2 <= len(segments) <= 5, segments  # the segments of evicted calls are deleted
    journal.close()
    with open(segments[-1], "ab") as f:  # a record torn by a crash mid-write
        f.write(b"\x00\x00\x10\x00\x12\x34\x56\x78S\x01")

    again = Journal(directory, mode="batched", segment_bytes=4096)
    replayed = again.replay()
    assert kill_orphans(replayed.workers) == [orphan.pid]
    assert orphan.wait(5) == -signal.SIGKILL and gone.poll() is None
    gone.kill()
    restored = CallTable(max_finished=50, journal=again)
    restored.restore(replayed)
    finished = [c for c in restored.calls.values() if not c.lost]
    # the table keeps 50 finished calls: the lost one is the newest of them
    assert sorted(int(c.call_id[1:]) for c in finished) == list(range(251, 300))
    assert restored.get("c299").frames == [(p.LOG, {}, b'{"stream": "stdout", "text": "hi\\n"}'),
                                           (p.RESULT, {}, b"r299")]
    assert restored.get("c299").state == "succeeded" and restored.attachable("c299") is not None
    lost = restored.get("running-1")
    assert lost is not None and lost.lost and lost.json_mode and lost.method == "m"
    assert lost.frames[-1][1]["error"]["type"] == "WorkerDied" and restored.attachable("running-1") is None
    assert restored.get("dropped-1") is None and "c10" not in restored.calls
    assert restored.get("c10").summary()["result_gone"]  # its tombstone: the id is not run again
    again.close()
