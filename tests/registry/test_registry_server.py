"""The team registry server as a real subprocess: tokens, namespaces, access levels, JSON errors, OpenAPI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

import tether.registry as treg
from tether.errors import AuthError, ConfigError, NotFound
from tether.registry import CallRecord, Registry, open_registry

TeamServer = Any  # the conftest fixture's dataclass

CONFIG = {
    "kind": "function",
    "code": {"import_path": "examples.services.embed", "qualname": "embed", "code_hash": "h1"},
}


def as_user(server: TeamServer, who: str) -> Registry:
    return open_registry(url=server.url, token=server.tokens[who])


def raw(
    server: TeamServer, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    req = urllib.request.Request(
        server.url + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_round_trip_through_the_server(team_server: TeamServer) -> None:
    alice = as_user(team_server, "alice")
    assert alice.user == "alice" and alice.namespace == "alice"
    v1 = alice.save("embed", CONFIG)
    alice.save("embed", {**CONFIG, "code": {**CONFIG["code"], "code_hash": "h2"}})
    assert (v1.name, v1.version, v1.saved_by, v1.import_path) == (
        "alice/embed",
        1,
        "alice",
        "examples.services.embed:embed",
    )
    assert alice.get("embed@1").config == CONFIG
    assert alice.get("embed").code_hash == "h2"
    alice.tag("embed", 1, "prod")
    assert alice.get("alice/embed@prod").version == 1
    assert alice.rollback("embed", 1).copied_from == 1
    assert [(v.version, v.code_hash, v.tags) for v in alice.history("embed")] == [
        (1, "h1", ["prod"]),
        (2, "h2", []),
        (3, "h1", []),
    ]
    assert [e.name for e in alice.list()] == ["alice/embed"]


def test_second_token_is_refused_what_it_may_not_do(team_server: TeamServer) -> None:
    alice, carol = as_user(team_server, "alice"), as_user(team_server, "carol")
    alice.save("embed", CONFIG)

    with pytest.raises(AuthError) as err:
        carol.get("alice/embed")
    assert err.value.details["needed"] == "read" and "'read'" in str(err.value)
    assert carol.list() == []

    alice.share("embed", "carol", "read")
    assert carol.get("alice/embed").version == 1
    with pytest.raises(AuthError) as err:
        carol.save("alice/embed", CONFIG)
    assert (err.value.details["needed"], err.value.details["has"]) == ("write", "read")
    with pytest.raises(AuthError) as err:
        carol.tag("alice/embed", 1, "prod")
    assert err.value.details["needed"] == "write"
    with pytest.raises(AuthError) as err:
        carol.share("alice/embed", "carol", "owner")
    assert err.value.details["needed"] == "owner"
    assert len(alice.history("embed")) == 1  # nothing changed by the refused calls

    alice.share("embed", "carol", "write")
    assert carol.save("alice/embed", CONFIG).saved_by == "carol"
    with pytest.raises(AuthError):
        carol.share("alice/embed", "bob", "read")


def test_team_namespace_and_sharing_with_a_team(team_server: TeamServer) -> None:
    alice, bob, carol = (as_user(team_server, u) for u in ("alice", "bob", "carol"))
    # bob is in ml-platform: he owns that namespace, and can share it
    bob.save("ml-platform/embed", CONFIG)
    with pytest.raises(AuthError):
        alice.save("ml-platform/embed", CONFIG)
    bob.share("ml-platform/*", "alice", "write")
    assert alice.save("ml-platform/embed", CONFIG).version == 2
    assert alice.get("ml-platform/embed").saved_by == "alice"
    with pytest.raises(AuthError):
        carol.get("ml-platform/embed")
    # sharing with a team reaches its members
    alice.save("ranker", CONFIG)
    with pytest.raises(AuthError):
        bob.get("alice/ranker")
    alice.share("ranker", "ml-platform", "read")
    assert bob.get("alice/ranker").version == 1
    assert {(g.principal, g.access_level) for g in alice.grants("ranker")} == {("ml-platform", "read")}


def test_unknown_name_suggests_only_what_the_caller_may_read(team_server: TeamServer) -> None:
    alice, carol = as_user(team_server, "alice"), as_user(team_server, "carol")
    alice.save("embed", CONFIG)
    carol.save("embedder", CONFIG)
    with pytest.raises(NotFound) as err:
        carol.get("embeder")
    assert err.value.details["suggestions"] == ["carol/embedder"]
    with pytest.raises(NotFound):
        alice.get("alice/embd")


def test_bad_config_via_server_names_the_field_and_saves_nothing(team_server: TeamServer) -> None:
    alice = as_user(team_server, "alice")
    status, body = raw(
        team_server,
        "POST",
        "/v1/services/alice/embed/versions",
        team_server.tokens["alice"],
        {"config": {"kind": "cluster", "name": "lab", "use_spot": "sometimes"}},
    )
    assert status == 422
    assert body["error"]["type"] == "ConfigError" and body["error"]["details"]["field"] == "use_spot"
    with pytest.raises(ConfigError):
        alice.save("embed", {"kind": "no-such-kind"})
    with pytest.raises(NotFound):
        alice.get("embed")


def test_every_error_is_a_json_wire_error(team_server: TeamServer) -> None:
    token = team_server.tokens["alice"]
    assert raw(team_server, "GET", "/v1/services")[0] == 401
    status, body = raw(team_server, "GET", "/v1/services", "not-a-token")
    assert (status, body["error"]["type"]) == (401, "AuthError")
    status, body = raw(team_server, "GET", "/nope", token)
    assert (status, body["error"]["type"]) == (404, "NotFound")
    status, body = raw(team_server, "PUT", "/v1/services/alice/x/tags/prod", token, {"version": "one"})
    assert (status, body["error"]["type"]) == (422, "ConfigError")
    status, body = raw(team_server, "GET", "/v1/services/alice/missing/versions/latest", token)
    assert (status, body["error"]["type"]) == (404, "NotFound")
    assert set(body["error"]) == {"type", "message", "hint", "retryable", "details"}


def test_tokens_are_stored_hashed(team_server: TeamServer) -> None:
    from sqlalchemy import select

    from tether.registry import schema
    from tether.registry.store import Store, hash_token

    store = Store(team_server.db)
    try:
        with store.engine.connect() as conn:
            stored = {r.token_hash: r.principal for r in conn.execute(select(schema.tokens))}
    finally:
        store.close()
    assert stored == {hash_token(t): who for who, t in team_server.tokens.items()}
    assert not set(team_server.tokens.values()) & set(stored)


def test_openapi_describes_the_routes(team_server: TeamServer) -> None:
    status, doc = raw(team_server, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("POST", "/v1/services/{namespace}/{name}/versions") in ops
    assert ("GET", "/v1/services/{namespace}/{name}/usage") in ops
    assert ("POST", "/v1/calls") in ops
    assert "Version" in doc["components"]["schemas"]


def test_usage_via_server_counts_calls_and_caller_is_the_token(team_server: TeamServer) -> None:
    alice, carol = as_user(team_server, "alice"), as_user(team_server, "carol")
    alice.save("embed", CONFIG)
    alice.share("embed", "carol", "read")
    for i in range(3):
        alice.record_call(CallRecord(name="embed", version=1, call_id=f"a{i}", duration_s=1.0))
    for i in range(2):  # carol claims to be someone else: the server records the token's principal
        carol.record_call(
            CallRecord(
                name="alice/embed",
                version=1,
                call_id=f"c{i}",
                caller="mallory",
                outcome="error" if i else "ok",
                run_id="flow/run-7",
                duration_s=3.0,
            )
        )
    carol.flush()
    rows = {(r.caller, r.version): r for r in alice.usage("embed")}
    assert {k: (r.calls, r.errors) for k, r in rows.items()} == {("alice", 1): (3, 0), ("carol", 1): (2, 1)}
    assert rows["carol", 1].run_ids == 1 and rows["carol", 1].mean_s == 3.0
    assert carol.usage("alice/embed")  # read access is enough to see usage


def test_calls_without_read_access_are_not_recorded(team_server: TeamServer) -> None:
    alice, carol = as_user(team_server, "alice"), as_user(team_server, "carol")
    alice.save("embed", CONFIG)
    carol.record_call(CallRecord(name="alice/embed", version=1, call_id="x", duration_s=1.0))
    carol.flush()
    assert alice.usage("embed") == []
    assert carol._writer.failed == 1


def test_environment_selects_the_team_server(
    team_server: TeamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_REGISTRY_URL", team_server.url)
    monkeypatch.setenv("TETHER_TOKEN", team_server.tokens["bob"])
    reg = treg.get_registry()
    assert reg.where == team_server.url and reg.user == "bob"
    assert treg.save("embed", CONFIG).name == "bob/embed"
    monkeypatch.delenv("TETHER_TOKEN")
    with pytest.raises(AuthError, match="TETHER_TOKEN"):
        treg.get_registry()


def test_openapi_lists_exactly_the_routes_the_app_serves(tmp_path: Any) -> None:
    from tether.registry.server import make_app, openapi_document
    from tether.registry.store import Store

    store = Store(tmp_path / "r.db")
    try:
        app = make_app(store)
        served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    finally:
        store.close()
    documented = {(m.upper(), p) for p, item in openapi_document()["paths"].items() for m in item}
    assert served == documented


def test_out_of_range_input_is_a_422_on_both_databases(team_server: TeamServer) -> None:
    token = team_server.tokens["alice"]
    assert raw(team_server, "POST", "/v1/services/alice/embed/versions", token, {"config": CONFIG})[0] == 201
    bad = [
        ("POST", "/v1/services/alice/embed/grants", {"principal": "x" * 300, "access_level": "read"}),
        ("POST", "/v1/services/alice/embed/grants", {"principal": "a\u0000b", "access_level": "read"}),
        ("POST", "/v1/services/alice/embed/rollback", {"version": 2**40}),
        ("POST", "/v1/calls", {"records": [{"name": "alice/embed", "call_id": "c" * 300}]}),
        ("POST", "/v1/calls", {"records": [{"name": "alice/embed", "call_id": "c", "version": 2**40}]}),
        ("POST", "/v1/services/alice/*/versions", {"config": CONFIG}),
        ("POST", "/v1/services/alice/embed/versions", {"config": {**CONFIG, "code_hash": "h" * 300}}),
    ]
    for method, path, body in bad:
        status, reply = raw(team_server, method, path, token, body)
        assert status == 422 and reply["error"]["type"] == "ConfigError", (path, body, status, reply)
    assert [v.version for v in as_user(team_server, "alice").history("embed")] == [1]
