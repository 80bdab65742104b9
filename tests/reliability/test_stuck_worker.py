"""A SIGSTOPped worker: calls and deploys to it end in a typed WorkerDied (reason unresponsive) instead of
hanging, /status shows it, the other envs keep serving, and the env comes back on its next call."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from tests.reliability.daemons import ROOT, DaemonProc, start_daemon

GATES = "tests.reliability.gates"


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _unresponsive(r, env: str) -> None:
    assert r.status_code == 502, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["type"] == "WorkerDied" and err["retryable"], err
    assert err["details"]["reason"] == "unresponsive" and err["details"]["env"] == env, err
    assert err["hint"]


def _deploy(d: DaemonProc, name: str, qualname: str, env: str, module: str = "tests.core.services") -> None:
    d.deploy(name, qualname, env=env, module=module, root=ROOT)


def test_a_stopped_worker_answers_a_typed_error_and_the_others_keep_serving(tmp_path: Path):
    # the liveness deadline is short here so the test is quick; the daemon's default is 30 s
    d = start_daemon(tmp_path / "state", env={"TETHER_WORKER_DEADLINE": "2"})
    stopped: list[int] = []
    try:
        _deploy(d, "pid", "worker_pid", "stuck", GATES)
        _deploy(d, "add", "add", "stuck")
        _deploy(d, "other_add", "add", "other")
        pid = d.call("pid").json()["result"]
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

        _unresponsive(d.call("add", 1, 2), "stuck")  # within the requests timeout (30 s), not forever
        assert d.call("other_add", 2, 3).json()["result"] == 5  # another env is untouched
        row = next(w for w in d.get("/status").json()["workers"] if w["env"] == "stuck")
        assert row["state"] == "unresponsive" and not row["alive"], row
        assert row["error"]["details"]["reason"] == "unresponsive", row

        assert d.call("add", 1, 2).json()["result"] == 3  # the env restarts on its next call, services restored
        new_pid = d.call("pid").json()["result"]
        assert new_pid != pid
        row = next(w for w in d.get("/status").json()["workers"] if w["env"] == "stuck")
        assert row["state"] == "running" and row["alive"], row

        os.kill(new_pid, signal.SIGSTOP)  # a deploy to a stopped worker ends too
        stopped.append(new_pid)
        r = d.post("/deploy", json={"name": "echo", "env": {"name": "stuck"},
                                     "code": {"root": str(ROOT), "import_path": "tests.core.services",
                                              "qualname": "echo"}})
        _unresponsive(r, "stuck")
        assert d.call("other_add", 1, 1).json()["result"] == 2
        assert d.proc.poll() is None
    finally:
        for pid in stopped:
            _resume(pid)
        d.kill()
