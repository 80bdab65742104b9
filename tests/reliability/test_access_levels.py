"""Access levels that restrict: every route of the OpenAPI document tried by every level (issue 14).

Levels: ``none`` (a valid token with no grant on the services tried), ``read``, ``write``, ``write`` with
``allow_pickle``, ``owner`` of the services (not of ``*``), and the daemon's owner token. A ``write`` grant
without ``allow_pickle`` or ``allow_code`` must not run code of its own choosing as the daemon's user.
"""

from __future__ import annotations

import builtins
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.reliability.daemons import ROOT, DaemonProc, start_daemon
from tether.daemon.auth import add_grant
from tether.daemon.openapi import document

LEVELS = ("none", "read", "write", "pickle", "svc_owner", "root")
NAMES = ("add", "ctr", "objk", "mine", "mine2")  # what the granted levels cover
PICKLE = "application/x-tether-pickle"


def _code(qualname: str, root: Path = ROOT, module: str = "tests.core.services") -> dict[str, Any]:
    return {"root": str(root), "import_path": module, "qualname": qualname}


class _Payload:
    """A pickle whose loading writes ``marker``: what an attacker would send."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def levels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProc, dict[str, dict[str, str]], Path]]:
    base = tmp_path_factory.mktemp("levels")
    access = base / "access.json"
    d = start_daemon(base / "state", "--access-file", str(access))
    try:
        d.deploy("add", "add")
        d.deploy("secret", "echo")  # the daemon owner's, in the same env, granted to nobody
        r = d.post("/deploy", json={"name": "ctr", "kind": "instance", "code": _code("Counter")})
        assert r.status_code == 200, r.text
        r = d.post("/deploy", json={"name": "Ctr", "kind": "module", "code": _code("Counter")})
        assert r.status_code == 200, r.text
        r = requests.put(d.endpoint + "/objects/objk", data=pickle.dumps({"v": 1}),
                         headers={**d.headers, "Content-Type": PICKLE}, timeout=30)
        assert r.status_code == 200, r.text
        r = d.post("/add/call", json={"args": [1, 2]}, headers={**d.headers, "X-Tether-Call-Id": "root-call-1"})
        assert r.status_code == 200, r.text
        tokens = {
            "none": add_grant(access, "nobody", {"other": "read"}),
            "read": add_grant(access, "reader", dict.fromkeys(NAMES, "read")),
            "write": add_grant(access, "writer", dict.fromkeys(NAMES, "write")),
            "pickle": add_grant(access, "pickler", dict.fromkeys(NAMES, "write"), allow_pickle=True),
            "svc_owner": add_grant(access, "svcowner", dict.fromkeys((*NAMES, "Ctr"), "owner")),
            "coder": add_grant(access, "coder", {"mine": "write", "mine2": "write"}, allow_code=True),
        }
        heads = {k: {"Authorization": f"Bearer {t}"} for k, t in tokens.items()}
        heads["root"] = d.headers
        yield d, heads, base
    finally:
        d.kill()


def _pickled_args() -> bytes:
    return pickle.dumps(((1, 2), {}))


# (method, path template, request keywords, expected per level in LEVELS order: T passes auth, F is 401, - skipped)
ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("get", "/health", {}, "TTTTTT"),
    ("get", "/openapi.json", {}, "TTTTTT"),
    ("get", "/status", {}, "TTTTTT"),  # filtered: test_listings_show_only_granted_names
    ("get", "/objects", {}, "TTTTTT"),
    ("get", "/envs", {}, "TTTTTT"),
    ("post", "/deploy", {"json": {"name": "mine", "code": _code("add")}}, "FFFTFT"),
    ("post", "/autostop", {"json": {"paused": True}}, "FFFFFT"),
    ("post", "/shutdown", {}, "FFFFF-"),
    ("post", "/{name}/call", {"json": {"args": [1, 2]}}, "FTTTTT"),
    ("post", "/{name}/call", {"data": _pickled_args(), "headers": {"Content-Type": PICKLE}}, "FFFTFT"),
    ("post", "/{name}/call", {"data": _pickled_args(), "headers": {"Content-Type": "application/octet-stream"}},
     "FTTTTT"),  # read as JSON (the label decides how it is read, never lets a pickle through): 400
    # GET calls: the query parameters are the kwargs (Runhouse's curl spelling), JSON only, the same read check
    ("get", "/{name}", {"params": {"a": 1, "b": 2}}, "FTTTTT"),
    ("get", "/{name}/call", {"params": {"a": 1, "b": 2}}, "FTTTTT"),
    ("get", "/secret", {"params": {"x": 1}}, "FFFFFT"),  # granted to nobody: not even its env-mate's owners
    ("get", "/ctr/{method}/call", {"params": {"by": 1}}, "FTTTTT"),
    ("get", "/ctr/__getattr__/call", {"params": {"name": "__dict__"}}, "FFFTTT"),
    ("post", "/ctr/{method}/call", {"json": {"args": [1]}}, "FTTTTT"),
    ("post", "/ctr/__getattr__/call", {"json": {"args": ["n"]}}, "FTTTTT"),
    ("post", "/ctr/__getattr__/call", {"json": {"args": ["__dict__"]}}, "FFFTTT"),
    ("post", "/ctr/__setattr__/call", {"json": {"args": ["n", 5]}}, "FFTTTT"),
    ("post", "/ctr/__setattr__/call", {"json": {"args": ["_n", 5]}}, "FFFTTT"),
    # a call is its starter's (here the daemon owner's): others need owner on its service
    ("get", "/calls/{call_id}", {"params": {"wait": "0"}}, "FFFFTT"),
    ("get", "/calls/{call_id}/logs", {}, "FFFFTT"),
    ("post", "/calls/{call_id}/cancel", {}, "FFFFTT"),
    ("get", "/objects/{key}", {}, "FTTTTT"),
    ("get", "/objects/ctr", {}, "FFFTTT"),  # a service's whole state, private fields included
    ("put", "/objects/mine", {"data": pickle.dumps(1), "headers": {"Content-Type": PICKLE}}, "FFFTFT"),
    ("put", "/objects/mine", {"data": pickle.dumps(1), "headers": {"Content-Type": "application/octet-stream"}},
     "FFFTFT"),
    ("post", "/objects/{key}/rename", {"json": {"to": "mine2"}}, "FFTTTT"),
    ("post", "/objects/mine/rename", {"json": {"to": "zzz"}}, "FFFFFT"),
    ("delete", "/objects/{key}", {}, "FFTTTT"),
    ("delete", "/services/{key}", {}, "FFTTTT"),
    ("delete", "/envs/{env}", {}, "FFFFFT"),
    # grants (daemon/grants.py): owner on '*' only; an owner of some services shares none of them this way
    ("get", "/grants", {}, "FFFFFT"),
    ("post", "/grants", {"json": {"principal": "levels-tmp", "services": {"add": "owner"}}}, "FFFFFT"),
    ("post", "/grants", {"json": {"principal": "svcowner", "services": {"*": "owner"}}}, "FFFFF-"),
    ("post", "/grants/revoke", {"json": {"principal": "reader", "service": "add"}}, "FFFFF-"),
    ("post", "/grants/revoke", {"json": {"principal": "levels-tmp"}}, "FFFFFT"),
]

FILL = {"name": "add", "method": "incr", "call_id": "root-call-1", "key": "objk", "env": "nothere"}
MUTATING = {"/objects/{key}/rename": "mine", "/objects/{key}": "mine", "/services/{key}": "mine"}


def test_every_openapi_route_has_rows():
    documented = {(m, path) for path, ops in document()["paths"].items() for m in ops}
    tried = {(m, path) for m, path, _, _ in ROWS}
    templated = {(m, p.replace("/ctr/", "/{name}/").replace("mine", "{key}").replace("ctr", "{key}"))
                 for m, p in tried}
    assert documented <= tried | templated, documented - tried - templated
    assert all("x-tether-access" in op for ops in document()["paths"].values() for op in ops.values())


def test_each_route_by_each_level(levels):
    d, heads, _ = levels
    wrong = []
    for method, path, kw, want in ROWS:
        fill = dict(FILL)
        if method in ("delete", "post") and path in MUTATING:
            fill["key"] = MUTATING[path]  # destroy only what the test owns ("mine" may be absent: 404 is fine)
        url = d.endpoint + path.format(**fill)
        for level, expect in zip(LEVELS, want, strict=True):
            if expect == "-":
                continue
            extra = dict(kw)
            headers = {**heads[level], **extra.pop("headers", {})}
            r = getattr(requests, method)(url, headers=headers, timeout=30, **extra)
            got = "F" if r.status_code == 401 else "T"
            assert r.status_code < 500, (method, path, level, r.status_code, r.text)
            if got != expect:
                wrong.append((method, path, kw.get("json"), level, r.status_code, r.text[:160]))
    assert not wrong, "\n".join(map(str, wrong))


def test_listings_show_only_granted_names(levels):
    d, heads, _ = levels
    status = d.get("/status", headers=heads["read"]).json()
    assert {s["name"] for s in status["services"]} <= set(NAMES), status["services"]
    keys = d.get("/objects", headers=heads["read"]).json()["keys"]
    assert "secret" not in keys and "Ctr" not in keys and "add" in keys, keys
    assert d.get("/status", headers=heads["none"]).json()["services"] == []
    assert d.get("/envs", headers=heads["none"]).json()["envs"] == {}
    assert "secret" in {s["name"] for s in d.get("/status").json()["services"]}


def test_put_object_pickle_labelled_octet_stream_does_not_run(levels):
    d, heads, base = levels
    marker = base / "put-ran"
    for label in ("application/octet-stream", "application/json", "text/plain", PICKLE):
        r = requests.put(d.endpoint + "/objects/mine", data=pickle.dumps(_Payload(marker)),
                         headers={**heads["write"], "Content-Type": label}, timeout=30)
        assert r.status_code == 401, (label, r.text)
    time.sleep(0.3)
    assert not marker.exists()


def test_write_without_a_code_grant_runs_no_code_of_its_choosing(levels, tmp_path):
    d, heads, _ = levels
    pkg = tmp_path / "evil"
    pkg.mkdir()
    marker = tmp_path / "ran"
    (pkg / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    attacks = [
        {"name": "mine", "code": {"import_path": "os", "qualname": "system"}},
        {"name": "mine", "env": {"name": "e1", "env_vars": {"PYTHONPATH": str(pkg)}}, "code": _code("add")},
        {"name": "mine", "env": {"name": "e2", "python": "/bin/sh"}, "code": _code("add")},
        {"name": "mine", "code": {"root": str(pkg), "import_path": "sitecustomize"}},
    ]
    for spec in attacks:
        r = d.post("/deploy", json=spec, headers=heads["write"])
        assert r.status_code == 401, (spec, r.text)
        assert "code" in r.json()["error"]["message"]
    r = d.post("/mine/call", json={"args": [f"touch {marker}"]}, headers=heads["write"])
    assert r.status_code in (401, 404), r.text
    time.sleep(0.3)
    assert not marker.exists()


def test_no_instance_of_anothers_class_no_env_restart_no_rename_over(levels):
    d, heads, _ = levels
    spec = {"name": "mine", "kind": "instance", "of": "Ctr", "code": _code("Counter")}
    r = d.post("/deploy", json=spec, headers=heads["coder"])  # may run code, but has no grant on Ctr
    assert r.status_code == 401 and "Ctr" in r.text, r.text
    pid = next(w["pid"] for w in d.get("/status").json()["workers"] if w["env"] == "default")
    spec = {"name": "mine", "env": {"name": "default", "env_vars": {"X": "1"}}, "code": _code("add")}
    r = d.post("/deploy", json=spec, params={"replace_env": "1"}, headers=heads["coder"])
    assert r.status_code == 401 and "default" in r.text, r.text
    assert pid == next(w["pid"] for w in d.get("/status").json()["workers"] if w["env"] == "default")
    r = d.post("/deploy", json={"name": "mine", "code": _code("add")}, headers=heads["coder"])
    assert r.status_code == 200, r.text
    r = d.post("/objects/mine/rename", json={"to": "secret2"}, headers=heads["coder"])
    assert r.status_code == 401 and "secret2" in r.text, r.text
    for who in ("svc_owner", "coder"):  # owner of some services is no owner of the daemon or of others' envs
        assert requests.delete(d.endpoint + "/envs/default", headers=heads[who], timeout=30).status_code == 401
        assert d.post("/autostop", json={"mins": 0}, headers=heads[who]).status_code == 401
    assert d.call("secret", 7).json()["result"] == 7


def test_write_deploys_from_allowed_roots_without_a_code_grant(tmp_path):
    root = tmp_path / "roots"
    (root / "okpkg").mkdir(parents=True)
    (root / "okpkg" / "__init__.py").write_text("def hello():\n    return 'hi'\n")
    access = tmp_path / "access.json"
    d = start_daemon(tmp_path / "state", "--access-file", str(access), "--allowed-roots", str(root))
    try:
        as_w = {"Authorization": f"Bearer {add_grant(access, 'w', {'hello': 'write'})}"}
        spec = {"name": "hello", "code": {"root": str(root), "import_path": "okpkg", "qualname": "hello"}}
        r = d.post("/deploy", json=spec, headers=as_w)
        assert r.status_code == 200, r.text
        assert d.post("/hello/call", json={}, headers=as_w).json()["result"] == "hi"
        bad = {**spec, "env": {"name": "e", "env_vars": {"PYTHONPATH": str(root)}}}
        assert d.post("/deploy", json=bad, headers=as_w).status_code == 401
        # a package's build runs its code: a writer adds no requirement the owner did not install (refused before
        # anything is installed, so no name reaches the package index)
        with_reqs = {**spec, "env": {"name": "e3", "reqs": ["tether-no-such-package-for-tests"]}}
        r = d.post("/deploy", json=with_reqs, headers=as_w)
        assert r.status_code == 401 and "requirements" in r.json()["error"]["message"], r.text
    finally:
        d.kill()


def test_a_call_id_is_its_starters(levels):
    d, heads, _ = levels
    # a reader pre-creates the id an orchestrator will use (ids derived from dag/task/run are guessable) ...
    r = d.post("/add/call", json={"args": [40, 0]}, headers={**heads["read"], "X-Tether-Call-Id": "dag-run-7"})
    assert r.status_code == 200 and r.json()["result"] == 40
    # ... the owner's call with that id is refused, not answered with the reader's result
    r = d.post("/add/call", json={"args": [1, 1]}, headers={**d.headers, "X-Tether-Call-Id": "dag-run-7"})
    assert r.status_code == 401 and "another principal" in r.text, r.text
    # another principal attaching to, reading or cancelling someone's call
    r = d.post("/add/call", json={"args": [2, 2]}, headers={**d.headers, "X-Tether-Call-Id": "owners-7"})
    assert r.json()["result"] == 4
    r = d.post("/add/call", json={"args": [0, 0]}, headers={**heads["write"], "X-Tether-Call-Id": "owners-7"})
    assert r.status_code == 401, r.text
    assert d.get("/calls/owners-7/logs", headers=heads["write"]).status_code == 401
    assert d.get("/calls/dag-run-7", params={"wait": "0"}, headers=heads["read"]).status_code == 200
    assert d.get("/calls/dag-run-7", params={"wait": "0"}, headers=heads["write"]).status_code == 401
    # cancelling an id before it arrives (it would cancel the owner's call then) is the daemon owner's
    assert d.post("/calls/not-yet-1/cancel", headers=heads["read"]).status_code == 401
    assert d.post("/calls/not-yet-1/cancel").status_code == 404
