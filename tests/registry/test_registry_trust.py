"""A registry whose readers are safe from its writers (issue 14): a version saved by someone else never chooses
where the reader's token goes, the registry client never unpickles what a server sends, and the reader sees
who wrote the version they load.

The "malicious" daemon and registry here are small HTTP servers in the test that record what they receive and
answer with a pickle that would create a marker file if the reader's process unpickled it."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tether
from tether.api.clusters import Cluster, endpoint_bindings, remember_endpoint
from tether.compute.state import save_state
from tether.errors import AuthError, NotFound
from tether.registry import open_registry
from tether.registry.cli import registry
from tether.registry.names import Ref
from tether.registry.remote import RemoteBackend
from tether.registry.store import Store

TeamServer = Any


class _Plant:
    """Unpickling this creates ``path``: proof that the reader's process ran the sender's code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


class Recorder:
    """A tiny HTTP server: every request's method, path and Authorization header; answers as a daemon would."""

    def __init__(self, marker: Path, *, registry_error: bool = False) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        plant = pickle.dumps(_Plant(marker))
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                recorder.seen.append((self.command, self.path, self.headers.get("Authorization")))
                if registry_error:
                    body = json.dumps({"error": {"type": "NotFound", "message": "no such service",
                                                 "exc": base64.b64encode(plant).decode()}}).encode()
                    self.send_response(404)
                    ctype = "application/json"
                elif self.path.split("?")[0].endswith("/call"):
                    body, ctype = struct.pack("!BI", ord("R"), len(plant)) + plant, "application/x-tether-frames"
                    self.send_response(200)
                else:  # /health, /envs, /deploy: a daemon that says yes
                    body, ctype = b'{"status": "ok", "envs": [], "services": []}', "application/json"
                    self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "planted"


@pytest.fixture
def evil(marker: Path) -> Iterator[Recorder]:
    rec = Recorder(marker)
    yield rec
    rec.close()


def service_config(cluster: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "function", "name": "embed",
            "service": {"name": "embed", "kind": "function",
                        "code": {"import_path": "examples.services.embed", "qualname": "embed"}},
            "methods": {}, "cluster": {"kind": "cluster", **cluster}, "on_oom": None}


def as_reader(server: TeamServer, who: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_REGISTRY_URL", server.url)
    monkeypatch.setenv("TETHER_TOKEN", server.tokens[who])
    monkeypatch.setattr("tether.registry._CACHE", {})


def writer_saves(server: TeamServer, cluster: dict[str, Any]) -> None:
    """alice owns alice/embed and gives bob write; bob saves a version of his own."""
    alice = open_registry(url=server.url, token=server.tokens["alice"])
    alice.save("embed", service_config({"name": "gpu", "endpoint": "http://127.0.0.1:9", "backend": "endpoint"}))
    alice.share("embed", "bob", "write")
    open_registry(url=server.url, token=server.tokens["bob"]).save("alice/embed", service_config(cluster))


def test_a_loaded_endpoint_never_gets_the_readers_token(
        team_server: TeamServer, evil: Recorder, marker: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: bob's endpoint got alice's TETHER_CLUSTER_TOKEN and her arguments, and its pickled reply ran in
    her process. Now the load fails with an AuthError naming the cluster, and nothing reaches bob's server."""
    writer_saves(team_server, {"name": "gpu", "endpoint": evil.url, "backend": "endpoint"})
    as_reader(team_server, "alice", monkeypatch)
    monkeypatch.setenv("TETHER_CLUSTER_TOKEN", "alice-cluster-token")
    with pytest.raises(AuthError) as err:
        try:
            tether.load("alice/embed")(40, 2)
        finally:
            print("evil server saw:", evil.seen, "marker planted:", marker.exists())
    assert err.value.details["cluster"] == "gpu" and "gpu" in str(err.value)
    assert err.value.details["endpoint"] == evil.url
    assert evil.seen == [] and not marker.exists()


def test_a_saved_endpoint_cannot_redirect_a_cluster_the_reader_knows(
        team_server: TeamServer, evil: Recorder, marker: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """alice connected to cluster 'gpu' at her own daemon; bob's version names 'gpu' at his endpoint."""
    remember_endpoint("gpu", "http://127.0.0.1:9", "alice-gpu-token")  # what her own .up() records
    writer_saves(team_server, {"name": "gpu", "endpoint": evil.url, "backend": "endpoint"})
    as_reader(team_server, "alice", monkeypatch)
    with pytest.raises(AuthError) as err:
        tether.load("alice/embed")(40, 2)
    assert err.value.details["cluster"] == "gpu" and err.value.details["endpoint"] == evil.url
    assert err.value.details["fields"] == ["endpoint"] and err.value.details["reason"] == "redirect"
    assert evil.seen == [] and not marker.exists()


def test_a_saved_ssh_cluster_cannot_move_the_readers_cluster_to_other_hosts(
        team_server: TeamServer, monkeypatch: pytest.MonkeyPatch) -> None:
    save_state("lab", {"backend": "ssh", "token": "alice-lab-token", "hosts": ["10.0.0.5"], "remote_port": 1,
                       "spec": {"name": "lab", "backend": "ssh", "host": ["10.0.0.5"]}})
    writer_saves(team_server, {"name": "lab", "host": ["203.0.113.66"], "backend": "ssh"})
    as_reader(team_server, "alice", monkeypatch)
    loaded = tether.load("alice/embed")  # loads, to look at; its first use is refused
    with pytest.raises(AuthError) as err:
        loaded.cluster.up_if_not()
    assert err.value.details["cluster"] == "lab" and err.value.details["fields"] == ["host"]


def test_the_readers_own_binding_is_used_and_the_writer_is_shown(
        team_server: TeamServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Same endpoint as alice's own state: the token is hers, looked up by the cluster's name (a token in the
    config is ignored), and the handle says bob wrote the version, with a warning."""
    remember_endpoint("gpu", "http://127.0.0.1:9", "alice-gpu-token")  # what her own .up() records
    writer_saves(team_server, {"name": "gpu", "endpoint": "http://127.0.0.1:9/", "backend": "endpoint"})
    as_reader(team_server, "alice", monkeypatch)
    with caplog.at_level(logging.WARNING):
        fn = tether.load("alice/embed")
    assert fn.cluster.spec.token.get_secret_value() == "alice-gpu-token"
    assert fn.saved_by == "bob"
    assert any("saved by 'bob'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    as_reader(team_server, "bob", monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert tether.load("alice/embed").saved_by == "bob"
    assert not any("saved by" in r.getMessage() for r in caplog.records)


def test_registry_error_payloads_are_never_unpickled(marker: Path) -> None:
    """Before: a registry server's error with an ``exc`` field was cloudpickle-loaded by the client."""
    rec = Recorder(marker, registry_error=True)
    try:
        with pytest.raises(NotFound) as err:
            RemoteBackend(rec.url, "t").get(Ref("alice", "embed"))
    finally:
        rec.close()
    assert "no such service" in str(err.value)
    assert not marker.exists()


def test_someone_elses_by_value_code_or_python_is_not_loaded_unreviewed(
        team_server: TeamServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: bob's version with pickled code, pickled init arguments or ``env.python=<any program>`` loaded
    silently (and ran on alice's cluster with her token at its first call); a snapshot path of his choosing was
    synced from alice's disk. Now: AuthError naming the fields and bob, unless alice passes ``trust=True``;
    a snapshot outside her own ``$TETHER_HOME/code`` is dropped."""
    local = {"name": "local", "backend": "local"}
    cfg = service_config(local)
    cfg["service"]["code"] = {"pickled_b64": base64.b64encode(b"not reviewed").decode()}
    cfg["service"]["env"] = {"name": "default", "python": str(tmp_path / "evil-python")}
    cfg["service"]["metadata"] = {"snapshot": str(tmp_path)}
    alice = open_registry(url=team_server.url, token=team_server.tokens["alice"])
    alice.save("embed", service_config(local))
    alice.share("embed", "bob", "write")
    open_registry(url=team_server.url, token=team_server.tokens["bob"]).save("alice/embed", cfg)
    as_reader(team_server, "alice", monkeypatch)
    with pytest.raises(AuthError) as err:
        tether.load("alice/embed")
    assert err.value.details["saved_by"] == "bob"
    assert err.value.details["fields"] == ["service.code.pickled_b64", "service.env.python"]
    trusted = tether.load("alice/embed", trust=True)
    assert trusted.saved_by == "bob" and "snapshot" not in trusted.spec.metadata
    as_reader(team_server, "bob", monkeypatch)  # his own version: as before
    assert tether.load("alice/embed").spec.metadata["snapshot"] == str(tmp_path)


def _status(server: TeamServer, method: str, path: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(server.url + path, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_tokens_expire_and_are_revoked_at_once(team_server: TeamServer) -> None:
    """Before: a token worked forever; there was no way to revoke one but editing the database by hand."""
    store = Store(team_server.db)
    try:
        short = store.create_token("dave", expires_in=1.0)
        spare = store.create_token("dave")
    finally:
        store.close()
    assert _status(team_server, "GET", "/v1/whoami", short) == (200, {"principal": "dave"})
    time.sleep(1.2)
    code, body = _status(team_server, "GET", "/v1/whoami", short)
    assert code == 401 and body["error"]["type"] == "AuthError" and "expired" in body["error"]["message"]

    assert _status(team_server, "DELETE", "/v1/tokens/self", spare) == (200, {"revoked": 1})
    assert _status(team_server, "GET", "/v1/whoami", spare)[0] == 401

    out = CliRunner().invoke(registry, ["revoke", "bob", "--db", team_server.db])
    assert out.exit_code == 0 and "revoked 1 token" in out.output
    assert _status(team_server, "GET", "/v1/whoami", team_server.tokens["bob"])[0] == 401
    assert _status(team_server, "GET", "/v1/whoami", team_server.tokens["alice"])[0] == 200

    out = CliRunner().invoke(registry, ["token", "erin", "--db", team_server.db, "--expires-in", "30d"])
    assert out.exit_code == 0
    assert _status(team_server, "GET", "/v1/whoami", out.output.strip()) == (200, {"principal": "erin"})
    bad = CliRunner().invoke(registry, ["token", "erin", "--db", team_server.db, "--expires-in", "-1"])
    assert bad.exit_code != 0


def test_a_grant_is_removed_by_its_owner_only(team_server: TeamServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a grant, once given, could not be taken back (no route, no CLI)."""
    alice = open_registry(url=team_server.url, token=team_server.tokens["alice"])
    carol = open_registry(url=team_server.url, token=team_server.tokens["carol"])
    alice.save("embed", service_config({"name": "local", "backend": "local"}))
    alice.share("embed", "carol", "write")
    assert carol.get("alice/embed").version == 1
    with pytest.raises(AuthError) as err:
        carol.unshare("alice/embed", "carol")  # write is not owner
    assert err.value.details["needed"] == "owner"
    assert alice.unshare("embed", "carol") == 1
    with pytest.raises(AuthError):
        carol.get("alice/embed")
    assert alice.unshare("embed", "carol") == 0

    alice.share("alice/*", "carol", "read")
    as_reader(team_server, "alice", monkeypatch)
    out = CliRunner().invoke(registry, ["unshare", "alice/*", "carol"])
    assert out.exit_code == 0 and "removed carol's grant" in out.output
    with pytest.raises(AuthError):
        carol.get("alice/embed")
    doc = json.loads(urllib.request.urlopen(team_server.url + "/openapi.json", timeout=30).read())
    assert "delete" in doc["paths"]["/v1/services/{namespace}/{name}/grants/{principal}"]
    assert "delete" in doc["paths"]["/v1/tokens/self"]


def test_connecting_to_an_endpoint_yourself_binds_its_token_without_taking_the_name(
        monkeypatch: pytest.MonkeyPatch, tether_env: Path) -> None:
    """An endpoint cluster brought up by its user records (endpoint, token) for its name in a 0600 file of its own:
    no backend's state file is written, so the name (even 'local') stays free for the local daemon."""
    monkeypatch.setattr("tether.compute.endpoint.probe_health", lambda *a, **k: {"status": "ok"})
    Cluster.from_config({"kind": "cluster", "endpoint": "http://127.0.0.1:9/", "token": "t0k", "name": "local"}).up()
    assert endpoint_bindings() == {"local": {"endpoint": "http://127.0.0.1:9", "token": "t0k"}}
    assert not (tether_env / "clusters" / "local.json").exists()
    assert (tether_env / "clusters" / "endpoints.json").stat().st_mode & 0o077 == 0
