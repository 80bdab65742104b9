"""Bad input: oversized bodies, malformed pickles and JSON, unknown names — typed 4xx answers, never a crash."""

from __future__ import annotations

import json

import cloudpickle
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tether
from tests.reliability.daemons import DaemonProc
from tether.client import AsyncClient
from tether.client.loop import run_sync
from tether.daemon.protocol import split_client_frames

PICKLE = "application/x-tether-pickle"
LIMIT = 1024 * 1024  # the module daemon runs with --max-body 1MB


@pytest.fixture(scope="module", autouse=True)
def services(daemon: DaemonProc) -> None:
    daemon.deploy("add", "add")
    daemon.deploy("echo", "echo")


def test_oversized_bodies_get_413_with_the_limit(daemon: DaemonProc):
    big = b"\x80" + b"x" * (LIMIT + 10) + b"."
    for method, path, kw in (
        ("post", "/echo/call", {"data": big, "headers": {"Content-Type": PICKLE}}),
        ("put", "/objects/big", {"data": big, "headers": {"Content-Type": PICKLE}}),
        (
            "post",
            "/deploy",
            {"data": b"{" + b" " * (LIMIT + 10) + b"}", "headers": {"Content-Type": "application/json"}},
        ),
    ):
        headers = {**daemon.headers, **kw.pop("headers")}
        r = getattr(requests, method)(daemon.endpoint + path, headers=headers, timeout=30, **kw)
        assert r.status_code == 413, (path, r.status_code, r.text[:200])
        err = r.json()["error"]
        assert (
            err["type"] == "PayloadTooLarge"
            and err["details"]["limit"] == LIMIT
            and str(LIMIT) in err["message"]
        )
    client = AsyncClient(daemon.endpoint, daemon.token)
    with pytest.raises(tether.PayloadTooLarge):
        run_sync(client.call("echo", None, (b"y" * (LIMIT + 10),), {}, call_id="too-big-1"))
    assert daemon.call("echo", "small").json()["result"] == "small"


def test_malformed_pickles_are_serialization_errors(daemon: DaemonProc):
    h = {**daemon.headers, "Content-Type": PICKLE}
    for body in (b"not a pickle", b"\x80\x05garbage", b"{}"):
        r = requests.post(daemon.endpoint + "/add/call", data=body, headers=h, timeout=10)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "SerializationError"
    # framed like a pickle but broken inside: the worker refuses it, typed, in the call's error frame
    good = cloudpickle.dumps(((1, 2), {}), protocol=5)
    client = AsyncClient(daemon.endpoint, daemon.token)

    async def send(body: bytes, call_id: str) -> list[tuple[int, bytes]]:
        return [f async for f in client.frames("add", None, body, call_id=call_id)]

    for i, body in enumerate((good[:-6] + b".", b"\x80\x05K\x01.", cloudpickle.dumps(([1], {"x": 2})))):
        frames = run_sync(send(body, f"bad-pickle-{i}"))
        kind, payload = frames[-1]
        assert kind == ord("E")
        err = json.loads(payload)["error"]
        assert err["type"] in ("SerializationError", "RemoteError"), err
    assert run_sync(client.call("add", None, (1, 2), {}, call_id="good-after-bad")) == 3


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=st.binary(max_size=256), framed=st.booleans())
def test_random_pickle_bodies_never_5xx(daemon: DaemonProc, body: bytes, framed: bool):
    if framed:
        body = b"\x80\x05" + body + b"."
    r = requests.post(
        daemon.endpoint + "/add/call",
        data=body,
        timeout=10,
        headers={**daemon.headers, "Content-Type": PICKLE},
    )
    assert r.status_code in (200, 400), r.text[:300]
    if r.status_code == 400:
        assert r.json()["error"]["type"] == "SerializationError"
    else:
        kind, payload = split_client_frames(r.content)[-1]
        assert kind in (ord("R"), ord("E"))
        if kind == ord("E"):
            assert json.loads(payload)["error"]["message"]


def test_unknown_names_are_404_with_close_matches(daemon: DaemonProc):
    r = daemon.call("ad", 1, 2)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "NotFound" and "add" in err["details"]["close_matches"] and "add" in err["hint"]
    r = daemon.post("/ecko/upper/call", json={"args": []})
    assert r.status_code == 404 and "echo" in r.json()["error"]["details"]["close_matches"]
    for method, path in (
        ("get", "/calls/nope"),
        ("post", "/calls/nope/cancel"),
        ("get", "/objects/nope"),
        ("delete", "/services/nope"),
        ("delete", "/envs/nope"),
        ("get", "/no/such/route/x"),
    ):
        r = getattr(requests, method)(daemon.endpoint + path, headers=daemon.headers, timeout=10)
        assert r.status_code in (404, 405), (path, r.status_code)
        assert r.json()["error"]["message"]


def test_malformed_json_and_specs_are_4xx(daemon: DaemonProc):
    cases = [
        b"{",
        b"[]",
        b'"x"',
        b"null",
        json.dumps({"name": "x"}).encode(),
        json.dumps({"name": "x", "code": {}, "kind": "nope"}).encode(),
        json.dumps({"name": "x", "code": {}, "extra": 1}).encode(),
        b"\xff\xfe",
    ]
    for body in cases:
        r = daemon.post("/deploy", data=body, headers={**daemon.headers, "Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text[:200])
        assert r.json()["error"]["message"]
    for body in (b"{", b"[1, 2]", b'{"args": 1}', b'{"args": [], "kwargs": []}'):
        r = daemon.post(
            "/add/call", data=body, headers={**daemon.headers, "Content-Type": "application/json"}
        )
        assert r.status_code in (400, 422), (body, r.status_code, r.text[:200])
        assert r.json()["error"]["type"] in ("SerializationError", "ConfigError")
    r = daemon.post(
        "/add/call", json={"args": [1, 2]}, headers={**daemon.headers, "X-Tether-Call-Id": "x" * 201}
    )
    assert r.status_code == 422
    # the function itself raises: the caller's problem, a 4xx
    r = daemon.post("/add/call", json={"args": [1]})
    assert r.status_code == 422 and "TypeError" in r.json()["error"]["message"]
    r = daemon.post("/deploy", json={"name": "nomod", "code": {"import_path": "no_such_module_xyz"}})
    assert r.status_code == 422 and "no_such_module_xyz" in r.json()["error"]["message"]
    for body in ({"mins": -1}, {"mins": "5"}, {"mins": True}, {"paused": "yes"}, [1]):
        r = daemon.post("/autostop", json=body)
        assert r.status_code == 422, (body, r.text)
    assert daemon.get("/status").json()["autostop_mins"] is None  # nothing half-applied


def test_a_negative_memory_limit_is_refused_at_deploy(daemon: DaemonProc):
    """Found by the API fuzzer: it reached the worker, which refused it at start (a 502 WorkerDied)."""
    spec = {"name": "neg", "env": {"name": "neg", "memory_limit": -26049},
            "code": {"import_path": "tests.core.services", "qualname": "add"}}
    r = daemon.post("/deploy", json=spec)
    assert r.status_code == 422, r.text
    assert "memory_limit" in r.text
    assert daemon.call("add", 1, 2).json()["result"] == 3


@pytest.mark.parametrize("limit", [1, 5, 4096, "1MB", "20MB"])
def test_a_memory_limit_too_small_to_start_a_worker_is_refused_at_deploy(daemon: DaemonProc, limit: object):
    """Found by the API fuzzer (seed 1486715927): a limit of a few bytes reached the worker, whose memory cgroup
    then OOM-killed it before it was ready (a 502 WorkerDied, code -9). A worker needs tens of MiB to start."""
    spec = {"name": "tiny", "env": {"name": "tiny", "memory_limit": limit},
            "code": {"import_path": "tests.core.services", "qualname": "add"}}
    r = daemon.post("/deploy", json=spec)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "ConfigError" and "memory_limit" in err["message"] and "MiB" in err["message"]
    assert "tiny" not in daemon.get("/status").text  # nothing deployed, no worker started
    assert daemon.call("add", 1, 2).json()["result"] == 3


def test_an_unknown_expect_header_gets_a_json_417(daemon: DaemonProc):
    """Found by the API fuzzer (seed 1486715927): aiohttp answered an unknown ``Expect`` with a plain-text 417
    before any middleware ran."""
    r = daemon.post("/add/call", json={"args": [1, 2], "kwargs": {}}, headers={**daemon.headers, "Expect": "v>VI~"})
    assert r.status_code == 417, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == "SerializationError" and "Expect" in err["message"]
    r = daemon.post("/add/call", json={"args": [1, 2], "kwargs": {}},
                    headers={**daemon.headers, "Expect": "100-continue"})
    assert r.json()["result"] == 3


def test_a_new_env_whose_worker_cannot_start_is_not_kept(daemon: DaemonProc):
    """A deploy into a new env whose worker cannot start must not leave that env's spec behind: the corrected
    deploy under the same name then failed with 'env has another spec' (found with the fuzzer's tiny limits)."""
    bad = {"name": "fixme", "env": {"name": "fixme", "python": "/nonexistent/python"},
           "code": {"import_path": "tests.core.services", "qualname": "add"}}
    r = daemon.post("/deploy", json=bad)
    assert r.status_code == 422 and r.json()["error"]["type"] == "ConfigError", r.text
    good = {"name": "fixme", "env": {"name": "fixme"}, "code": {"import_path": "tests.core.services", "qualname": "add"}}
    r = daemon.post("/deploy", json=good)
    assert r.status_code == 200, r.text
    assert daemon.call("fixme", 2, 3).json()["result"] == 5
