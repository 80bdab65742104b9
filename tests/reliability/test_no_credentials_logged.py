"""Credentials never reach a log or an error body: a daemon and a registry server get good, wrong, over-long
and malformed ``Authorization`` headers, and neither the tokens nor the header values appear in what they wrote
(log files, stderr) or answered."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.reliability import rawhttp
from tests.reliability.daemons import start_daemon
from tests.reliability.registries import start_registry
from tether.logging import redact_credentials

OWNER = "owner-secret-4f9c2a7b1e"
WRONG = "wrong-secret-8d3e6f0a5c"
LONG = "long-secret-" + "x7" * 5_000  # past aiohttp's 8,190-byte header field limit
PARTS = (OWNER, WRONG, "long-secret-", "x7x7x7x7x7x7x7x7", "nul-secret-93b1", "tab-secret-55e0")


def _headers_sent(endpoint: str, path: str, method: str = "GET") -> list[bytes]:
    """Raw requests carrying credentials in every shape; returns every answer body."""
    bodies = []
    shapes = [
        f"Bearer {OWNER}", f"Bearer {WRONG}", f"Bearer {LONG}", f"bearer  {WRONG}  ", OWNER, f"Basic {WRONG}",
        "Bearer nul-secret-93b1\x00", "Bearer tab-secret-55e0\x01\x7f",
    ]
    for value in shapes:
        data = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {value}\r\n"
                "Content-Length: 0\r\n\r\n").encode("latin-1")
        bodies.append(rawhttp.exchange(endpoint, data).body)
    data = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {OWNER}\r\n"
            f"X-Bad\x00Header: {WRONG}\r\n\r\n").encode("latin-1")
    bodies.append(rawhttp.exchange(endpoint, data).body)
    return bodies


def _leaks(texts: dict[str, bytes]) -> list[str]:
    return [f"{part[:20]} in {where}" for where, text in texts.items() for part in PARTS if part.encode() in text]


def test_the_daemon_logs_and_answers_no_credentials(tmp_path: Path):
    d = start_daemon(tmp_path / "state", token=OWNER)
    try:
        d.deploy("add", "add")
        assert d.call("add", 1, 2).json()["result"] == 3
        bodies = []
        for path, method in (("/status", "GET"), ("/add/call", "POST"), ("/deploy", "POST"), ("/nope", "GET")):
            bodies += _headers_sent(d.endpoint, path, method)
        for token in (WRONG, LONG):
            r = requests.post(d.endpoint + "/add/call", json={"args": [1, 2]},
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert r.status_code in (400, 401), r.text[:200]
            bodies.append(r.content)
        assert d.get("/health").status_code == 200
    finally:
        d.kill()
    texts = {f"answer {i}": b for i, b in enumerate(bodies)}
    texts["daemon stderr/log"] = d.log.read_bytes()
    for f in d.state_dir.rglob("*.log"):
        texts[str(f)] = f.read_bytes()
    assert not _leaks(texts), _leaks(texts)


def test_the_registry_server_logs_and_answers_no_credentials(tmp_path: Path):
    registry = start_registry(tmp_path)
    try:
        bodies = []
        for path, method in (("/v1/whoami", "GET"), ("/v1/services/fuzzer/x/versions", "POST"),
                             ("/v1/tokens/self", "GET")):
            bodies += _headers_sent(registry.url, path, method)
        r = requests.get(registry.url + "/v1/whoami", headers={"Authorization": f"Bearer {WRONG}"}, timeout=30)
        assert r.status_code == 401
        bodies.append(r.content)
    finally:
        registry.stop()
    texts = {f"answer {i}": b for i, b in enumerate(bodies)}
    texts["registry log"] = registry.log.read_bytes()
    assert not _leaks(texts), _leaks(texts)


def test_the_log_processor_redacts_credentials():
    event = {"event": "x", "token": OWNER, "Authorization": f"Bearer {OWNER}", "header": f"Bearer {WRONG}",
             "exception": f"Traceback ... ValueError: bad header 'Authorization: Bearer {WRONG}'", "n": 3}
    out = redact_credentials(None, "info", dict(event))
    assert not any(secret in str(out) for secret in (OWNER, WRONG)), out
    assert out["n"] == 3 and out["event"] == "x" and "Bearer <redacted>" in out["exception"]
