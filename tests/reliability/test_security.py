"""Security: who may bind, where tokens live, TLS pinning, secrets in output, code roots, access levels."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

import tether
from tests.core import services as svc
from tests.reliability.daemons import ROOT, DaemonProc, daemon_cmd, start_daemon
from tether.client import AsyncClient
from tether.client.loop import run_sync
from tether.daemon.auth import add_grant


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_non_loopback_bind_without_token_exits_with_a_clear_message(state_dir, host):
    ready = state_dir.parent / "ready.json"
    cmd = [*daemon_cmd(state_dir), "--ready-file", str(ready)]
    cmd[cmd.index("127.0.0.1")] = host
    log = state_dir.parent / "daemon.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 30  # the check comes before any socket is opened: the exit comes at once
    while proc.poll() is None and not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"the daemon kept running on {host} without a token (serving: {ready.exists()})")
    stderr = log.read_text()
    assert not ready.exists(), f"the daemon served on {host} without a token before exiting"
    assert proc.returncode == 1, (proc.returncode, stderr)
    assert f"refusing to bind {host} without auth: pass --token-file (or bind 127.0.0.1)" in stderr, stderr


def test_daemon_keeps_only_the_token_hash(tether_home):
    c = tether.cluster(name="sec-hash").up_if_not()
    try:
        tether.function(svc.add).to(c)
        state_dir = tether_home / "clusters" / "sec-hash"
        token_file = state_dir / "token"
        assert token_file.read_text().startswith("sha256:")
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        for path in state_dir.rglob("*"):
            if path.is_file():
                assert c.token.encode() not in path.read_bytes(), path
        # the client-side state file holds the token, readable by its owner only
        assert oct((tether_home / "clusters" / "sec-hash.json").stat().st_mode & 0o777) == "0o600"
        with open(f"/proc/{c.handle.pid}/cmdline", "rb") as f:
            assert c.token.encode() not in f.read()
    finally:
        c.teardown()


def test_a_plain_token_file_still_works_and_wrong_tokens_are_refused(state_dir):
    d = start_daemon(state_dir, token="plain-secret-token-42", hashed_token_file=False)
    try:
        assert d.get("/status").status_code == 200
        r = d.get("/status", headers={"Authorization": "Bearer plain-secret-token-4"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthError"
        assert d.get("/status", headers={}).status_code == 401
        assert d.get("/health", headers={}).status_code == 200
    finally:
        d.kill()


def test_tls_cluster_pins_its_self_signed_certificate(tether_home):
    c = tether.cluster(name="sec-tls", server_connection_type="tls").up_if_not()
    try:
        h = c.handle
        assert h.endpoint.startswith("https://") and h.tls_fingerprint and len(h.tls_fingerprint) == 64
        add = tether.function(svc.add).to(c)
        assert add(2, 3) == 5
        # not a CA-signed certificate: clients that do not pin it fail
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(h.endpoint + "/health", timeout=10)
        with pytest.raises(requests.exceptions.ConnectionError):  # and plain HTTP is not served
            requests.get(h.endpoint.replace("https", "http") + "/health", timeout=10)
        wrong = AsyncClient(h.endpoint, h.token, "ab" * 32)
        with pytest.raises(tether.AuthError, match="pinned") as info:
            run_sync(wrong.request("GET", "/status"))
        assert h.tls_fingerprint in str(info.value) and h.token not in str(info.value)
        with pytest.raises(tether.AuthError, match="pinned"):
            run_sync(wrong.call("add", None, (1, 2), {}, call_id="pinned-1"))
        # the certificate and key stay in the state dir; the key is private
        key = tether_home / "clusters" / "sec-tls" / "tls" / "key.pem"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
    finally:
        c.teardown()


def test_secrets_stay_out_of_logs_configs_and_errors(tether_home):
    c = tether.cluster(name="sec-leak").up_if_not()
    try:
        token = c.token
        assert token
        add = tether.function(svc.add).to(c)
        assert add(1, 1) == 2
        texts = [repr(c.config()), repr(add.config()), repr(c), repr(add)]
        wrong = AsyncClient(c.endpoint, token[:-2] + "xx")
        with pytest.raises(tether.AuthError) as info:
            run_sync(wrong.request("GET", "/status"))
        texts.append(str(info.value))
        with pytest.raises(tether.NotFound) as info2:
            run_sync(c.client.request("GET", "/objects/nope"))
        texts.append(str(info2.value))
        gone = AsyncClient("http://127.0.0.1:9", token)
        with pytest.raises(tether.ClusterUnavailable) as info3:
            run_sync(gone.request("GET", "/status"))
        texts.append(str(info3.value))
        for text in texts:
            assert token not in text and token[:-2] not in text
        log = (tether_home / "clusters" / "sec-leak" / "daemon.log").read_text()
        assert log and token not in log
    finally:
        c.teardown()


def _write_pkg(root: Path, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("def hello():\n    return 'hi from " + name + "'\n")


def test_deploy_only_from_allowed_roots(tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    _write_pkg(allowed, "okpkg")
    _write_pkg(other, "badpkg")
    (allowed / "escape").symlink_to(other)
    d = start_daemon(tmp_path / "state", "--allowed-roots", str(allowed))
    try:
        ok = d.post(
            "/deploy",
            json={
                "name": "hello",
                "code": {"root": str(allowed), "import_path": "okpkg", "qualname": "hello"},
            },
        )
        assert ok.status_code == 200, ok.text
        assert d.call("hello").json()["result"] == "hi from okpkg"
        for code in (
            {"root": str(other), "import_path": "badpkg", "qualname": "hello"},
            {"root": str(allowed / "escape"), "import_path": "badpkg", "qualname": "hello"},
            {"root": str(allowed / ".." / "other"), "import_path": "badpkg", "qualname": "hello"},
            {"import_path": "os", "qualname": "getcwd"},
            {"pickled_b64": "gAVLAS4="},
        ):
            r = d.post("/deploy", json={"name": "bad", "code": code})
            assert r.status_code == 401, (code, r.text)
            err = r.json()["error"]
            assert err["type"] == "AuthError" and "allowed roots" in err["message"]
        r = d.post(
            "/deploy",
            json={
                "name": "bad2",
                "env": {"name": "e2", "python": "/usr/bin/python3"},
                "code": {"root": str(allowed), "import_path": "okpkg", "qualname": "hello"},
            },
        )
        assert r.status_code == 401 and "env python" in r.json()["error"]["message"]
        assert sorted(d.get("/objects").json()["keys"]) == ["hello"]
    finally:
        d.kill()


def test_path_traversal_in_object_routes_is_refused(daemon: DaemonProc):
    h = {**daemon.headers, "Content-Type": "application/x-tether-pickle"}
    probes = [
        "..%2F..%2Fescaped",
        "%2e%2e",
        "..",
        ".hidden",
        "a%2F..%2F..%2Fescaped",
        "%2Fetc%2Fpasswd",
        "a%00b",
        "x" * 200,
    ]
    for key in probes:
        url = f"{daemon.endpoint}/objects/{key}"
        for r in (
            requests.put(url, data=b"\x80\x05K\x01.", headers=h, timeout=10),
            requests.get(url, headers=daemon.headers, timeout=10),
            requests.delete(url, headers=daemon.headers, timeout=10),
        ):
            assert 400 <= r.status_code < 500, (key, r.status_code, r.text)
            assert r.json()["error"]["message"]
    for env in ("../../escaped", "..", "a/b"):
        r = requests.put(
            f"{daemon.endpoint}/objects/k1",
            params={"env": env},
            data=b"\x80\x05K\x01.",
            headers=h,
            timeout=10,
        )
        assert r.status_code == 422, (env, r.text)
    assert daemon.post("/objects/k1/rename", json={"to": "../../escaped"}).status_code in (404, 422)
    r = daemon.post("/deploy", json={"name": "../x", "code": {"import_path": "os"}})
    assert r.status_code == 422
    r = daemon.post(
        "/deploy", json={"name": "x", "env": {"name": "../../escaped"}, "code": {"import_path": "os"}}
    )
    assert r.status_code == 422
    base = daemon.state_dir.parent.parent
    assert not [p for p in base.rglob("*") if "escaped" in p.name or p.name in ("passwd", ".hidden.pkl")]
    assert {p.name for p in (daemon.state_dir / "objects").iterdir()} <= {"k1.pkl", "big.pkl"}


def test_per_service_access_levels(tmp_path):
    access = tmp_path / "access.json"
    d = start_daemon(tmp_path / "state", "--access-file", str(access))
    try:
        d.deploy("add", "add")
        d.deploy("echo", "echo")
        reader = add_grant(access, "alice", {"add": "read"})
        writer = add_grant(access, "bob", {"add": "write"}, allow_pickle=True)
        assert reader not in access.read_text() and "alice" in access.read_text()
        as_alice = {"Authorization": f"Bearer {reader}"}
        as_bob = {"Authorization": f"Bearer {writer}"}
        spec = {
            "name": "add",
            "code": {"root": str(ROOT), "import_path": "tests.core.services", "qualname": "add"},
        }

        r = d.post("/add/call", json={"args": [1, 2]}, headers=as_alice)
        assert r.status_code == 200 and r.json()["result"] == 3  # read = call
        for method, path, kw in (
            ("post", "/echo/call", {"json": {"args": [1]}}),  # no grant on echo
            ("post", "/deploy", {"json": spec}),  # read cannot deploy
            ("delete", "/services/add", {}),
            ("post", "/shutdown", {}),
        ):
            r = getattr(requests, method)(d.endpoint + path, headers=as_alice, timeout=10, **kw)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["type"] == "AuthError" and "alice" in r.json()["error"]["message"]
        # JSON only without allow_pickle: unpickling a caller's bytes would run the caller's code
        r = d.post(
            "/add/call",
            data=b"\x80\x05K\x01.",
            headers={**as_alice, "Content-Type": "application/x-tether-pickle"},
        )
        assert r.status_code == 401 and "JSON" in r.json()["error"]["message"]

        assert d.post("/deploy", json=spec, headers=as_bob).status_code == 200  # write = deploy
        assert d.post("/deploy", json={**spec, "name": "echo"}, headers=as_bob).status_code == 401
        assert d.post("/envs/default", headers=as_bob).status_code in (401, 405)
        assert requests.delete(d.endpoint + "/envs/default", headers=as_bob, timeout=10).status_code == 401
        # a call id of someone else's service is not readable either
        r = d.post("/echo/call", json={"args": [7]}, headers={**d.headers, "X-Tether-Call-Id": "echo-call-1"})
        assert r.json()["result"] == 7
        assert d.get("/calls/echo-call-1?wait=0", headers=as_alice).status_code == 401
        assert requests.delete(d.endpoint + "/services/add", headers=as_bob, timeout=10).status_code == 200
        # revoking = removing the grant from the file; the daemon re-reads it
        access.write_text('{"grants": []}')
        os.utime(access, ns=(1, 1))
        assert d.get("/status", headers=as_alice).status_code == 401
    finally:
        d.kill()
