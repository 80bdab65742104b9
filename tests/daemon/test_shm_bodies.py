"""Shared-memory bodies for same-host clients, against a real daemon on a real unix socket.

Request: ``X-Tether-Shm`` names a ``/dev/shm/tether-*`` file holding the pickled (args, kwargs); honoured on the
unix socket only. Response: with ``X-Tether-Accept-Shm: 1`` a large RESULT/ITEM comes as an ``F`` frame naming
a file the daemon keeps until the call leaves its table (or it stops).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pickle
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from tests.reliability.daemons import ROOT, DaemonProc, start_daemon
from tether.daemon import protocol as p
from tether.daemon.calls import Call, CallTable

pytestmark = pytest.mark.skipif(p.SHM_DIR is None, reason="needs a writable /dev/shm")

MiB = 1024 * 1024
PICKLE = "application/x-tether-pickle"


class UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(self._path)
        self.sock = sock


def _start(tmp: Path) -> DaemonProc:
    sock = tmp / "d.sock"
    d = start_daemon(tmp / "state", "--unix-socket", str(sock))
    d.extra["sock"] = str(sock)
    for name in ("echo", "nbytes", "big_items"):
        d.deploy(name, name, module="tests.daemon.shm_services", root=ROOT)
    return d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = _start(tmp_path_factory.mktemp("shm"))
    yield d
    d.kill()


def request(d: DaemonProc, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
            method: str = "POST", tcp: bool = False) -> tuple[int, bytes]:
    """One raw HTTP request over the daemon's unix socket (or TCP); returns the status and the body."""
    if tcp:
        host, port = d.endpoint.removeprefix("http://").split(":")
        conn: http.client.HTTPConnection = http.client.HTTPConnection(host, int(port), timeout=60)
    else:
        conn = UnixConnection(d.extra["sock"])
    try:
        conn.request(method, path, body=body, headers={**d.headers, "Content-Type": PICKLE, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def shm_file(payload: bytes, name: str | None = None) -> str:
    """A client-side argument file, as the client writes it."""
    path = os.path.join(p.SHM_DIR or "/dev/shm", name or f"tether-{os.getpid()}-{uuid.uuid4().hex}")
    with open(path, "wb") as f:
        f.write(payload)
    return path


def args(*a: Any, **kw: Any) -> bytes:
    return cloudpickle.dumps((a, kw), protocol=5)


def result(raw: bytes) -> Any:
    (kind, payload), = [f for f in p.split_client_frames(raw) if f[0] != p.LOG]
    assert kind == p.RESULT, payload
    return pickle.loads(payload)


def assert_serving(d: DaemonProc) -> None:
    status, raw = request(d, "/nbytes/call", body=args(b"abc"))
    assert status == 200 and result(raw) == 3


# -- requests -------------------------------------------------------------------------------------------------------
def test_arguments_in_a_shm_file_are_taken_over_by_the_daemon(daemon):
    big = os.urandom(3 * MiB)
    for payload in (b"small", big):
        path = shm_file(args(payload))
        status, raw = request(daemon, "/nbytes/call", headers={"X-Tether-Shm": path})
        assert status == 200, raw
        assert result(raw) == len(payload)
        assert not os.path.exists(path)  # renamed to the daemon's own name, then removed by the worker


def test_a_second_request_with_the_same_call_id_removes_its_file(daemon):
    call_id = uuid.uuid4().hex
    first = shm_file(args(b"xyz"))
    status, raw = request(daemon, "/nbytes/call", headers={"X-Tether-Shm": first, "X-Tether-Call-Id": call_id})
    assert status == 200 and result(raw) == 3
    again = shm_file(args(b"a much longer argument"))
    status, raw = request(daemon, "/nbytes/call", headers={"X-Tether-Shm": again, "X-Tether-Call-Id": call_id})
    assert status == 200 and result(raw) == 3  # the first call's answer: it ran once
    assert not os.path.exists(again)


@pytest.mark.parametrize("case", ["outside", "symlink", "name", "missing", "not_pickle", "fifo", "relative"])
def test_bad_shm_files_are_refused_and_the_daemon_keeps_serving(daemon, tmp_path, case):
    made: list[str] = []
    if case == "outside":
        path = str(tmp_path / "tether-outside")
        Path(path).write_bytes(args(1))
    elif case == "symlink":
        target = shm_file(args(1))
        path = os.path.join(p.SHM_DIR or "", f"tether-link-{uuid.uuid4().hex}")
        os.symlink(target, path)
        made.append(target)
    elif case == "name":
        path = shm_file(args(1), name=f"other-{uuid.uuid4().hex}")
    elif case == "missing":
        path = os.path.join(p.SHM_DIR or "", f"tether-missing-{uuid.uuid4().hex}")
    elif case == "not_pickle":
        path = shm_file(b"not a pickle")
    elif case == "fifo":
        path = os.path.join(p.SHM_DIR or "", f"tether-fifo-{uuid.uuid4().hex}")
        os.mkfifo(path)
    else:
        path = "tether-relative"
    made.append(path)
    try:
        status, raw = request(daemon, "/nbytes/call", headers={"X-Tether-Shm": path})
        assert 400 <= status < 500, raw
        err = json.loads(raw)["error"]
        assert err["type"] == ("SerializationError" if case == "not_pickle" else "ConfigError")
        assert "X-Tether-Shm" in err["message"]
        if case not in ("missing", "relative"):
            assert os.path.lexists(path)  # a refused file stays the client's
        assert_serving(daemon)
    finally:
        for m in made:
            if os.path.lexists(m) and os.path.isabs(m):
                os.unlink(m)


def test_shm_header_over_tcp_is_refused(daemon):
    path = shm_file(args(b"abc"))
    try:
        status, raw = request(daemon, "/nbytes/call", headers={"X-Tether-Shm": path}, tcp=True)
        assert status == 400
        err = json.loads(raw)["error"]
        assert err["type"] == "ConfigError" and "inline" in err["hint"]
        assert os.path.exists(path)
    finally:
        os.unlink(path)
    status, raw = request(daemon, "/nbytes/call", body=args(b"abcd"), tcp=True)
    assert status == 200 and result(raw) == 4


def test_shm_header_with_a_body_or_json_is_refused(daemon):
    path = shm_file(args(b"abc"))
    try:
        status, _ = request(daemon, "/nbytes/call", headers={"X-Tether-Shm": path}, body=args(b"x"))
        assert status == 422
        status, _ = request(daemon, "/nbytes/call", headers={"X-Tether-Shm": path, "Content-Type": "application/json"})
        assert status == 422
        assert os.path.exists(path)
    finally:
        os.unlink(path)


# -- responses ------------------------------------------------------------------------------------------------------
def _file_frame(payload: bytes) -> dict[str, Any]:
    ref = json.loads(payload)
    assert set(ref) == {"kind", "path", "size"}
    assert os.path.dirname(ref["path"]) == p.SHM_DIR and os.path.basename(ref["path"]).startswith("tether-")
    assert os.path.getsize(ref["path"]) == ref["size"]
    return ref


def test_large_result_comes_as_a_file_frame_when_accepted(daemon):
    big = os.urandom(2 * MiB)
    call_id = uuid.uuid4().hex
    status, raw = request(daemon, "/echo/call", body=args(big),
                          headers={"X-Tether-Accept-Shm": "1", "X-Tether-Call-Id": call_id})
    assert status == 200
    (kind, payload), = p.split_client_frames(raw)
    assert kind == p.FILE
    ref = _file_frame(payload)
    assert ref["kind"] == p.RESULT
    assert pickle.loads(Path(ref["path"]).read_bytes()) == big
    assert os.path.exists(ref["path"])  # the client does not delete it; the daemon keeps it with the call

    # re-attach: a file frame again with the header, the bytes inline without it or over TCP
    status, raw = request(daemon, f"/calls/{call_id}", method="GET", headers={"X-Tether-Accept-Shm": "1"})
    assert status == 200 and p.split_client_frames(raw)[0][0] == p.FILE
    for tcp in (False, True):
        status, raw = request(daemon, f"/calls/{call_id}", method="GET", tcp=tcp,
                              headers={} if not tcp else {"X-Tether-Accept-Shm": "1"})
        assert status == 200 and result(raw) == big


def test_small_results_stay_inline_with_the_header(daemon):
    status, raw = request(daemon, "/echo/call", body=args(b"small"), headers={"X-Tether-Accept-Shm": "1"})
    assert status == 200 and result(raw) == b"small"


def test_large_generator_items_come_as_file_frames(daemon):
    status, raw = request(daemon, "/big_items/call", body=args(3, 2 * MiB), headers={"X-Tether-Accept-Shm": "1"})
    assert status == 200
    got = [f for f in p.split_client_frames(raw) if f[0] != p.LOG]
    assert [k for k, _ in got] == [p.FILE, p.FILE, p.FILE, p.RESULT]
    for i, (_, payload) in enumerate(got[:3]):
        ref = _file_frame(payload)
        assert ref["kind"] == p.ITEM
        assert pickle.loads(Path(ref["path"]).read_bytes()) == bytes([i]) * (2 * MiB)


def test_json_callers_get_large_results_inline(daemon):
    r = daemon.post("/nbytes/call", json={"args": ["x" * (3 * MiB)]})
    assert r.status_code == 200 and r.json()["result"] == 3 * MiB
    r = daemon.post("/echo/call", json={"args": ["y" * (2 * MiB)]})
    assert r.status_code == 200 and r.json()["result"] == "y" * (2 * MiB)


def test_result_files_are_removed_when_the_daemon_stops(tmp_path):
    d = _start(tmp_path)
    try:
        status, raw = request(d, "/echo/call", body=args(os.urandom(2 * MiB)), headers={"X-Tether-Accept-Shm": "1"})
        assert status == 200
        (kind, payload), = p.split_client_frames(raw)
        path = _file_frame(payload)["path"]
        assert os.path.exists(path)
    finally:
        d.kill()
    assert d.proc.returncode == 0
    assert not os.path.exists(path)


# -- the call table's part ------------------------------------------------------------------------------------------
async def _gone(path: str) -> bool:
    """Whether ``path`` disappears (files are deleted in a thread, shared ones after a grace period)."""
    deadline = time.monotonic() + 30
    while os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not os.path.exists(path)


def test_evicted_calls_remove_their_files_but_not_while_a_response_is_written():
    def kept(i: int) -> dict[str, Any]:
        path, size = p.adopt_shm(shm_file(bytes([i]) * 10))
        return {"_shm": path, "_size": size}

    async def go() -> tuple[list[str], bool, bool, bool]:
        table = CallTable(max_finished=10, max_bytes=25, ttl=3600)
        calls = [Call(f"c{i}", "svc", None, False) for i in range(3)]
        metas = [kept(i) for i in range(3)]
        for c in calls:
            table.add(c)
        calls[0].pin()  # a response is still being written from c0's file
        calls[0].add(p.RESULT, metas[0], b"")
        calls[1].add(p.RESULT, metas[1], b"")
        calls[2].add(p.RESULT, metas[2], b"")  # 30 bytes > 25: c0 leaves the table
        evicted_but_pinned = "c0" not in table.calls and os.path.exists(metas[0]["_shm"])
        calls[0].unpin()
        gone_after_unpin = await _gone(metas[0]["_shm"])
        others_kept = all(os.path.exists(m["_shm"]) for m in metas[1:])
        table.close()
        return [m["_shm"] for m in metas], evicted_but_pinned, gone_after_unpin, others_kept

    paths, evicted_but_pinned, gone_after_unpin, others_kept = asyncio.run(go())
    assert evicted_but_pinned and gone_after_unpin and others_kept
    assert not any(os.path.exists(path) for path in paths)  # close(): the daemon stops


def test_files_handed_to_a_client_outlive_their_call_briefly():
    async def go() -> tuple[bool, bool]:
        table = CallTable(max_finished=1, max_bytes=10**9, ttl=3600)
        path, size = p.adopt_shm(shm_file(b"x" * 10))
        first, second = Call("a", "svc", None, False), Call("b", "svc", None, False)
        table.add(first)
        table.add(second)
        first.shared = True
        first.add(p.RESULT, {"_shm": path, "_size": size}, b"")
        second.add(p.RESULT, {}, b"")  # first is evicted
        still_there = os.path.exists(path)
        return still_there, await _gone(path)

    still_there, gone_later = asyncio.run(go())
    assert still_there and gone_later
