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
from tests.reliability.fuzzing import CI_SEED, dump, fuzz, grouped

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
    print(f"\n{name}: {dump(report)}\n{_replay(report)}")
    if REPORT_DIR:
        Path(REPORT_DIR, f"{name}.json").write_text(json.dumps(report.summary()))


def _replay(report: Any) -> str:
    return f"fuzz seed {report.seed} (cases {report.digest}): replay with TETHER_FUZZ_SEED={report.seed}"


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
        assert not report.problems, _replay(report) + "\n" + json.dumps(grouped(report.problems), indent=1)
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
    # revoking its own token (DELETE /v1/tokens/self) turns every later case into a 401: that operation runs last
    report = fuzz(url + "/openapi.json", url, headers=headers, max_examples=15,
                  order=lambda label: label.startswith("DELETE /v1/tokens/self"))
    _save("registry", report)
    assert report.cases > 200
    assert not report.problems, _replay(report) + "\n" + "\n".join(report.problems[:20])
    assert proc.poll() is None and requests.get(url + "/health", timeout=10).status_code == 200


TINY_API = {
    "openapi": "3.0.3",
    "info": {"title": "tiny", "version": "1"},
    "paths": {
        "/items/{key}": {
            "post": {
                "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["n"],
                        "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
                    }}},
                },
                "responses": {"200": {"description": "ok"}},
            }
        }
    },
}


@pytest.fixture
def tiny_server() -> Any:
    """An HTTP server on 127.0.0.1 serving TINY_API's schema and answering every POST with 200."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(json.dumps(TINY_API).encode())

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_fuzz_run_is_replayed_exactly_from_its_seed(tiny_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(seed: int | None, examples: int = 25) -> Any:
        return fuzz(tiny_server + "/openapi.json", tiny_server, headers={}, max_examples=examples, seed=seed)

    def seed_of(_: int) -> int:  # which seed a run without one chooses: one case each is enough to tell
        return int(run(None, examples=1).seed)

    first, again, other = run(1234), run(1234), run(1235)
    assert first.seed == 1234 and first.cases >= 25 and not first.problems
    assert first.summary()["seed"] == 1234 and first.summary()["cases_digest"] == first.digest
    assert (again.digest, again.cases) == (first.digest, first.cases)  # the same seed sent the same cases
    assert other.digest != first.digest
    monkeypatch.setenv("TETHER_FUZZ_SEED", "1234")
    assert run(None).digest == first.digest  # TETHER_FUZZ_SEED replays a run that chose no seed
    monkeypatch.delenv("TETHER_FUZZ_SEED")
    monkeypatch.delenv("CI", raising=False)
    assert len({seed_of(i) for i in range(3)}) == 3  # without it, every run draws a seed of its own
    monkeypatch.setenv("CI", "true")
    assert {seed_of(i) for i in range(2)} == {CI_SEED}  # ... except in CI: one fixed seed
    monkeypatch.setenv("TETHER_FUZZ_SEED", "random")
    assert len({seed_of(i) for i in range(2)}) == 2  # unless asked for fresh ones
