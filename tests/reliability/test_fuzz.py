"""Fuzz the daemon's and the registry's HTTP APIs from their own /openapi.json: no 5xx, no crash, every error JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.reliability.daemons import DaemonProc, start_daemon
from tests.reliability.fuzzing import dump, fuzz, grouped

REPORT_DIR = os.environ.get("TETHER_FUZZ_REPORT_DIR")


def _deploy_safely(case: Any) -> None:
    """Deploys go to one env and install nothing: random requirement names must never reach pip."""
    if isinstance(case.body, dict) and isinstance(case.body.get("env"), dict):
        case.body["env"]["reqs"] = []
        case.body["env"]["name"] = "fuzz"


def _autostop_paused(case: Any) -> None:
    """Autostop stays paused so a fuzzed ``mins`` cannot stop the daemon under test."""
    if isinstance(case.body, dict):
        case.body["paused"] = True


def _save(name: str, report: Any) -> None:
    print(f"\n{name}: {dump(report)}")
    if REPORT_DIR:
        Path(REPORT_DIR, f"{name}.json").write_text(json.dumps(report.summary()))


def test_daemon_api_fuzz(tmp_path):
    d: DaemonProc = start_daemon(tmp_path / "state", "--max-body", "1MB")
    try:
        d.deploy("add", "add")
        report = fuzz(
            d.endpoint + "/openapi.json",
            d.endpoint,
            headers=d.headers,
            max_examples=20,
            per_operation={"POST /deploy": 15, "DELETE /envs/{env}": 10},
            prepare={"POST /deploy": _deploy_safely, "POST /autostop": _autostop_paused},
            path_parameters={
                "POST /{name}/call": {"name": "add"},
                "POST /{name}/{method}/call": {"name": "add"},
            },
        )
        _save("daemon", report)
        assert report.cases > 500
        assert not report.problems, json.dumps(grouped(report.problems), indent=1)
        assert d.proc.poll() is None and d.get("/health").status_code == 200
        assert d.call("add", 2, 2).json()["result"] == 4  # still serving what it held
    finally:
        d.kill()


@pytest.fixture
def registry_server(tmp_path):
    db = tmp_path / "registry.db"
    env = {**os.environ, "TETHER_HOME": str(tmp_path / "home")}
    from tether.registry.store import Store

    store = Store(str(db))
    try:
        token = store.create_token("fuzzer")
    finally:
        store.close()
    ready = tmp_path / "ready.json"
    serve = ["serve", "--db", str(db), "--port", "0", "--ready-file", str(ready)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.registry", *serve],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "registry server did not start"
        time.sleep(0.05)
    url = json.loads(ready.read_text())["url"]
    yield proc, url, token
    proc.terminate()
    proc.wait(15)


def test_registry_api_fuzz(registry_server):
    proc, url, token = registry_server
    headers = {"Authorization": f"Bearer {token}"}
    report = fuzz(url + "/openapi.json", url, headers=headers, max_examples=15)
    _save("registry", report)
    assert report.cases > 200
    assert not report.problems, "\n".join(report.problems[:20])
    assert proc.poll() is None and requests.get(url + "/health", timeout=10).status_code == 200
