"""Secrets kept in the registry, encrypted at rest: the local registry file and the team server (``tether registry
serve`` as a real process, tokens for alice, bob in team ml-platform, carol). Readable only with the access level
that grants it; rotate makes a new version; delete removes every version; no value in the database file, the
server's log or a registry version."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import tether
from tests.processes import issue_team_tokens, issue_tokens, registry_server
from tether.errors import AuthError, NotFound

FIRST = "vault-first-" + "value-a1b2"
SECOND = "vault-second-" + "value-c3d4"


@pytest.fixture
def as_alice(tether_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TETHER_USER", "alice")
    for key in ("TETHER_REGISTRY_URL", "TETHER_TOKEN", "TETHER_REGISTRY_DB", "TETHER_NAMESPACE", "TETHER_VAULT_KEY"):
        monkeypatch.delenv(key, raising=False)
    return tether_home


def _holds(path: Path, value: str) -> bool:
    return any(value.encode() in p.read_bytes() for p in [path, *path.parent.glob(path.name + "-*")] if p.exists())


def test_the_local_registry_keeps_secrets_encrypted_with_versions_and_delete(as_alice):
    s = tether.secret("db", values={"DB_PASSWORD": FIRST}).save(registry=True)
    assert s.registry_version == 1
    assert not (as_alice / "secrets" / "db.json").exists()  # not in the private file store: in the registry
    found = tether.secret("db")
    assert found.values == {"DB_PASSWORD": FIRST} and found.registry_version == 1
    found.rotate({"DB_PASSWORD": SECOND}, registry=True)
    assert tether.secret("db").values == {"DB_PASSWORD": SECOND} and tether.secret("db").registry_version == 2
    db = as_alice / "registry.db"
    assert not _holds(db, FIRST) and not _holds(db, SECOND)  # ciphertext only
    key = Path(str(db) + ".vault-key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    found.delete(registry=True)
    with pytest.raises(NotFound):
        tether.secret("db")


def test_the_team_server_grants_reading_and_rotating_by_access_level(as_alice, tmp_path, monkeypatch):
    db = str(tmp_path / "team.db")
    tokens = issue_team_tokens(db)
    with registry_server(db, tmp_path) as (url, _proc):
        monkeypatch.setenv("TETHER_REGISTRY_URL", url)

        def act(who: str) -> None:
            monkeypatch.setenv("TETHER_USER", who)
            monkeypatch.setenv("TETHER_TOKEN", tokens[who])

        act("alice")
        mine = tether.secret("huggingface", values={"token": FIRST}).save(registry=True)
        assert mine.registry_version == 1 and tether.secret("alice/huggingface").values == {"token": FIRST}

        act("bob")
        with pytest.raises(AuthError) as refused:
            tether.secret("alice/huggingface")
        assert "read" in str(refused.value) and FIRST not in str(refused.value)
        act("alice")
        mine.share("bob", "read")
        act("bob")
        theirs = tether.secret("alice/huggingface")
        assert theirs.values == {"token": FIRST} and theirs.provider == "huggingface"
        with pytest.raises(AuthError):  # read is not write: no rotation
            _put_as("alice/huggingface", {"token": "bob-was-here"})
        act("alice")
        mine.share("ml-platform", "write")  # the team bob is in
        act("bob")
        _put_as("alice/huggingface", {"token": SECOND})
        act("alice")
        assert tether.secret("alice/huggingface").values == {"token": SECOND}
        act("carol")
        with pytest.raises(AuthError):
            tether.secret("alice/huggingface")
        act("bob")
        with pytest.raises(AuthError):  # write is not owner: no delete
            _delete_as("alice/huggingface")
        act("alice")
        mine.delete(registry=True)
        with pytest.raises(NotFound):
            tether.secret("alice/huggingface")
        log = (tmp_path / "registry-server.log").read_text()
        listed = json.dumps([e.model_dump(mode="json") for e in tether.registry.get_registry().list()])
    for value in (FIRST, SECOND):
        assert value not in log and value not in listed and not _holds(Path(db), value)


def _put_as(name: str, values: dict[str, str]) -> None:
    from tether.registry.vault_client import open_vault, secret_ref

    open_vault().put(secret_ref(name), values, "huggingface", by=os.environ["TETHER_USER"])


def _delete_as(name: str) -> None:
    from tether.registry.vault_client import open_vault, secret_ref

    open_vault().delete(secret_ref(name))


def test_bad_bodies_on_the_secret_routes_are_typed_errors_and_store_nothing(as_alice, tmp_path):
    """Bytes that are not UTF-8, not JSON, or JSON nested past the spec limit: a typed JSON error (422 ConfigError,
    400 SerializationError; the fuzzer found a 500 UnicodeDecodeError), nothing stored, the server keeps serving."""
    import requests

    db = str(tmp_path / "team.db")
    token = issue_tokens(db, "alice")["alice"]
    with registry_server(db, tmp_path) as (url, _proc):
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for body in (b"\xa31\x80\x05K\xb5/", b"{not json", b"[" * 5000 + b"]" * 5000):
            for route in ("/v1/secrets/alice/db", "/v1/secrets/alice/db/grants"):
                method = requests.put if route.endswith("/db") else requests.post
                r = method(url + route, data=body, headers=auth, timeout=30)
                assert r.status_code in (400, 422), (route, body[:10], r.status_code, r.text[:300])
                err = r.json()["error"]
                assert err["type"] in ("ConfigError", "SerializationError") and err["message"]
        r = requests.get(url + "/v1/secrets/alice/db", headers=auth, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"  # nothing was stored
