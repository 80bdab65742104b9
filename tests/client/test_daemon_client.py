"""DaemonClient and its sync twin against an in-process MockTransport: every route, the call path's outcomes, and
the retry of a dropped link under the same call id (frames already seen are not handled twice)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import cloudpickle
import pytest

import tether
from tests.client.servers import free_port
from tests.core import services as svc
from tether.client import (
    DaemonClient,
    Dropped,
    MockRequest,
    MockResponse,
    MockTransport,
    Unreachable,
    mount,
    probe_health,
)
from tether.protocol import frames as p


def _log(text: str) -> dict[str, Any]:
    return {"stream": "stdout", "text": text}


class FakeDaemon:
    """Plays a daemon: ``add`` returns the sum, ``gen`` yields its items, ``boom`` raises; spawned calls are kept."""

    def __init__(self) -> None:
        self.spawned: dict[str, tuple[Any, ...]] = {}
        self.objects: dict[str, bytes] = {}

    def __call__(self, req: MockRequest) -> Any:
        route = req.route
        if route == "/health":
            return {"status": "ok", "version": "test", "pid": 1}
        if route == "/status":
            return {"services": [{"name": "add", "kind": "function", "env": "default", "version": None}]}
        if route == "/deploy":
            return {"name": req.json()["name"], "env": "default", "methods": {}, "pid": 1}
        if route == "/add/call":
            args, _ = req.call_args()
            if req.spawn:
                self.spawned[req.call_id or ""] = args
                return MockResponse.spawned(req.call_id or "")
            return MockResponse.result(sum(args), logs=[_log("adding\n")])
        if route == "/gen/call":
            return MockResponse.result(None, items=[1, 2, 3])
        if route == "/boom/call":
            return MockResponse.raised(ValueError("bad input"))
        if route.startswith("/calls/"):
            call_id = route.split("/")[2]
            if call_id not in self.spawned:
                return MockResponse.error(tether.NotFound(f"no call {call_id!r}"))
            if route.endswith("/logs"):
                events = [_log("a\n"), _log("b\n")]
                return {"call_id": call_id, "state": "succeeded", "logs": events[int(req.query.get("since", 0)):],
                        "next": 2}
            if route.endswith("/cancel") or req.query.get("wait") == "0":
                return {"call_id": call_id, "state": "succeeded"}
            return MockResponse.result(sum(self.spawned[call_id]))
        if route.startswith("/objects/"):
            key = route.split("/")[2]
            if req.method == "PUT":
                self.objects[key] = req.body
                return {"key": key, "env": req.query["env"]}
            if req.method == "DELETE":
                return {"deleted": self.objects.pop(key) and key}
            return (200, {"Content-Type": "application/x-tether-pickle"}, self.objects[key])
        if route == "/objects":
            return {"keys": sorted(self.objects)}
        return MockResponse.error(tether.NotFound(f"no route {route}"))


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def client(daemon: FakeDaemon) -> DaemonClient:
    return DaemonClient("http://mock.test", "tok", transport=MockTransport(daemon))


def test_a_sync_call_folds_its_frames(client: DaemonClient):
    logs: list[dict[str, Any]] = []
    assert client.call_sync("add", None, (1, 2), {}, call_id="c1", on_log=logs.append) == 3
    assert logs == [_log("adding\n")]
    sent = client.transport.requests[-1]
    assert sent.headers["Authorization"] == "Bearer tok" and sent.call_id == "c1"
    assert client.sync.call("add", None, (2, 2), {}, call_id="c2", on_log=None) == 4


async def test_async_calls_streams_and_remote_errors(client: DaemonClient):
    assert await client.call("add", None, (3, 4), {}, call_id="c3", on_log=None) == 7
    assert [x async for x in client.stream("gen", None, (), {}, call_id="c4")] == [1, 2, 3]
    with pytest.raises(ValueError, match="bad input"):
        await client.call("boom", None, (), {}, call_id="c5", on_log=None)
    with pytest.raises(tether.NotFound):
        await client.call("nope", None, (), {}, call_id="c6", on_log=None)


def test_the_sync_twin_streams_on_the_background_loop(client: DaemonClient):
    assert list(client.sync.stream("gen", None, (), {}, call_id="c7")) == [1, 2, 3]


def test_spawn_status_logs_attach_cancel(client: DaemonClient):
    call_id = client.sync.spawn("add", None, (40, 2), {}, call_id="s1")
    assert call_id == "s1" and client.transport.requests[-1].spawn
    assert client.sync.status(call_id)["state"] == "succeeded"
    assert client.sync.logs(call_id) == [_log("a\n"), _log("b\n")]
    assert client.sync.logs(call_id, since=1) == [_log("b\n")]
    assert client.sync.attach(call_id, on_log=None) == 42
    assert client.sync.cancel(call_id)["state"] == "succeeded"
    with pytest.raises(tether.NotFound):
        client.sync.status("nope")
    with pytest.raises(tether.ConfigError):
        client.sync.logs(call_id, since=-1)


def test_a_spawn_without_a_call_id_gets_a_fresh_one(client: DaemonClient):
    first, second = (client.sync.spawn("add", None, (1, 2), {}) for _ in range(2))
    assert first != second and len(first) == 32 and client.transport.requests[-1].call_id == second
    assert client.sync.attach(first, on_log=None) == 3


async def test_the_async_routes(client: DaemonClient):
    assert await client.spawn("add", None, (1, 1), {}, call_id="s2") == "s2"
    assert await client.attach("s2", on_log=None) == 2
    assert (await client.status("s2"))["state"] == "succeeded"
    assert await client.logs("s2", since=2) == []
    assert (await client.health())["status"] == "ok"
    assert (await client.services())[0]["name"] == "add"
    assert (await client.deploy({"name": "x"}))["name"] == "x"
    await client.put_object("k", {"a": [1, 2]}, env="e1")
    assert await client.get_object("k") == {"a": [1, 2]}
    assert await client.keys() == ["k"]
    assert (await client.delete_object("k"))["deleted"] == "k"


def test_the_sync_object_routes_and_the_raw_request(client: DaemonClient):
    assert client.sync.put_object("k", [1, 2, 3]) == {"key": "k", "env": "default"}
    assert client.sync.get_object("k") == [1, 2, 3]
    assert client.sync.keys() == ["k"]
    assert client.sync.daemon_status()["services"][0]["name"] == "add"
    assert isinstance(client.sync.request("GET", "/objects/k"), bytes)  # a pickle body comes back raw
    assert client.sync.health() == {"status": "ok", "version": "test", "pid": 1}


def test_a_dropped_link_resumes_under_the_same_call_id_without_repeating_frames():
    seen: list[str | None] = []
    answer = MockResponse.frames([(p.LOG, json.dumps(_log(f"{i}\n")).encode()) for i in range(3)]
                                 + [(p.RESULT, cloudpickle.dumps(5))])

    def handler(req: MockRequest) -> MockResponse:
        seen.append(req.call_id)
        return answer.dropping_after(2) if len(seen) == 1 else answer

    for sync in (True, False):
        seen.clear()
        logs: list[dict[str, Any]] = []
        client = DaemonClient("http://mock.test", transport=MockTransport(handler))
        if sync:
            value = client.call_sync("add", None, (), {}, call_id="r1", on_log=logs.append)
        else:
            value = asyncio.run(client.call("add", None, (), {}, call_id="r1", on_log=logs.append))
        assert value == 5 and seen == ["r1", "r1"]
        assert [e["text"] for e in logs] == ["0\n", "1\n", "2\n"]  # each once


def test_no_daemon_is_unreachable_with_the_call_id_and_a_link_that_keeps_dropping_gives_up():
    def down(req: MockRequest) -> MockResponse:
        raise Unreachable("cannot connect to the daemon at http://mock.test: refused")

    client = DaemonClient("http://mock.test", transport=MockTransport(down))
    with pytest.raises(tether.ClusterUnavailable) as info:
        client.call_sync("add", None, (1, 2), {}, call_id="u1")
    assert info.value.details["unreachable"] is True and info.value.details["call_id"] == "u1"
    assert len(client.transport.requests) == 1  # nothing was sent: no resume

    def flaky(req: MockRequest) -> MockResponse:
        return MockResponse.result(1).dropping_after(0)

    client = DaemonClient("http://mock.test", transport=MockTransport(flaky))
    with pytest.raises(Dropped) as dropped:
        client.call_sync("add", None, (), {}, call_id="d1")
    assert dropped.value.details["unreachable"] is False and dropped.value.details["call_id"] == "d1"
    assert isinstance(dropped.value, tether.ClusterUnavailable) and dropped.value.retryable
    assert len(client.transport.requests) == 1 + 5  # the sync attempt, then five on the retrying path


def test_a_mounted_transport_serves_every_client_of_its_endpoint_and_the_health_probe(daemon: FakeDaemon):
    endpoint = f"http://127.0.0.1:{free_port()}"
    with mount(endpoint + "/", MockTransport(daemon)):
        assert DaemonClient(endpoint).sync.call("add", None, (1, 2), {}, call_id="m1", on_log=None) == 3
        assert probe_health(endpoint) == {"status": "ok", "version": "test", "pid": 1}
    assert probe_health(endpoint, timeout=0.5) is None  # unmounted: nothing there


def test_the_public_api_runs_against_a_mounted_mock_without_a_daemon(daemon: FakeDaemon, tether_home: Any,
                                                                      capsys: pytest.CaptureFixture[str]):
    endpoint = f"http://127.0.0.1:{free_port()}"
    with mount(endpoint, MockTransport(daemon)) as transport:
        cluster = tether.cluster(name="mocked", endpoint=endpoint).up_if_not()
        add = tether.function(svc.add).to(cluster, name="add")
        assert add(1, 2) == 3
    assert "adding\n" in capsys.readouterr().out  # the remote log, re-emitted here
    assert ("POST", "/deploy") in [(r.method, r.route) for r in transport.requests]


def test_a_client_pickles_with_its_cluster_and_makes_its_async_side_when_first_asked():
    """A Prefect runner carries its cluster, client and all, to a flow run's process (cloudpickle): the client
    holds no lock; its asyncio transport is made at the first async request, on either side of the trip."""
    import pickle

    fresh = DaemonClient(f"http://127.0.0.1:{free_port()}", "t")
    assert fresh._streams is None  # a sync caller's client: no asyncio transport yet
    copy = cloudpickle.loads(cloudpickle.dumps(fresh))
    again = pickle.loads(pickle.dumps(copy))
    for each in (fresh, again):
        with pytest.raises(Unreachable):
            asyncio.run(each.health(timeout=1))
        assert each._streams is not None
