"""Lent slabs (``tether.daemon.slabs``) against a real daemon and worker on a real unix socket.

A same-host client lends a ``/dev/shm/tether-*`` file holding its pickled arguments (``X-Tether-Shm-Lent:
<path>:<length>``) and one for a big result (``X-Tether-Result-Slab: <path>``); both stay the client's.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_shm_bodies import _start, args, assert_serving, request, result
from tests.reliability.daemons import DaemonProc
from tether.daemon import protocol as p
from tether.daemon.slabs import ARGS_HEADER, RESULT_HEADER

pytestmark = pytest.mark.skipif(p.SHM_DIR is None, reason="needs a writable /dev/shm")

MiB = 1024 * 1024
SLAB = {"X-Tether-Accept-Shm": "1"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = _start(tmp_path_factory.mktemp("slabs"))
    yield d
    d.kill()


@pytest.fixture
def slabs() -> Iterator[list[str]]:
    """Paths of slabs a test makes (as a client would), removed after it."""
    made: list[str] = []
    yield made
    for path in made:
        if os.path.lexists(path):
            os.unlink(path)


def slab(made: list[str], content: bytes = b"", name: str | None = None) -> str:
    path = os.path.join(p.SHM_DIR or "/dev/shm", name or f"tether-{os.getpid()}-{uuid.uuid4().hex}")
    Path(path).write_bytes(content)
    made.append(path)
    return path


def lend_args(path: str, pickled: bytes) -> dict[str, str]:
    return {ARGS_HEADER: f"{path}:{len(pickled)}"}


def slab_frame(raw: bytes) -> dict:
    (kind, payload), = [f for f in p.split_client_frames(raw) if f[0] != p.LOG]
    assert kind == p.FILE, payload
    ref = json.loads(payload)
    assert ref["slab"] is True and ref["kind"] == p.RESULT
    return ref


def worker_maps(d: DaemonProc, path: str) -> bool:
    """Whether the echo service's worker has ``path`` mapped (deleted or not)."""
    pid, = [w["pid"] for w in d.get("/status").json()["workers"] if w["env"] == "default"]
    return path in Path(f"/proc/{pid}/maps").read_text()


def test_lent_arguments_are_read_in_place_and_stay_the_clients(daemon, slabs):
    pickled = args(os.urandom(3 * MiB))
    path = slab(slabs, pickled + b"stale bytes after the pickle from an earlier, longer call")
    for _ in range(2):  # the worker keeps the mapping; the same slab serves the next call
        status, raw = request(daemon, "/nbytes/call", headers=lend_args(path, pickled))
        assert status == 200, raw
        assert result(raw) == 3 * MiB
        assert os.path.exists(path)
        assert Path(path).read_bytes().startswith(pickled)  # read, never written


def test_a_big_result_is_pickled_into_the_lent_result_slab(daemon, slabs):
    room = slab(slabs)  # empty: the worker grows it
    before = set(os.listdir(p.SHM_DIR or ""))
    for size in (2 * MiB, 5 * MiB, 3 * MiB):  # grows once, then a shorter result in the same file
        big = os.urandom(size)
        status, raw = request(daemon, "/echo/call", body=args(big), headers={**SLAB, RESULT_HEADER: room})
        assert status == 200, raw
        ref = slab_frame(raw)
        assert ref["path"] == room
        data = Path(room).read_bytes()
        assert len(data) >= ref["size"]
        assert pickle.loads(data[: ref["size"]]) == big
    # no file of the worker's on the way, and of the daemon's only its one reusable argument file (the inline
    # bodies went there, the same file each time: see tether.daemon.bodies.ArgSlabs)
    pid = daemon.get("/status").json()["pid"]
    assert all(f.startswith(f"tether-{pid}-") for f in set(os.listdir(p.SHM_DIR or "")) - before)
    assert len(set(os.listdir(p.SHM_DIR or "")) - before) <= 1


def test_small_results_stay_inline_even_with_a_result_slab(daemon, slabs):
    room = slab(slabs)
    status, raw = request(daemon, "/echo/call", body=args(b"small"), headers={**SLAB, RESULT_HEADER: room})
    assert status == 200 and result(raw) == b"small"
    assert os.path.getsize(room) == 0


def test_only_the_lender_reads_a_result_left_in_its_slab(daemon, slabs):
    room = slab(slabs)
    call_id = uuid.uuid4().hex
    big = os.urandom(2 * MiB)
    status, raw = request(daemon, "/echo/call", body=args(big),
                          headers={**SLAB, RESULT_HEADER: room, "X-Tether-Call-Id": call_id})
    assert status == 200 and slab_frame(raw)["path"] == room
    for headers in (SLAB, {}, {**SLAB, RESULT_HEADER: slab(slabs)}):  # others: with files, inline, another slab
        status, raw = request(daemon, f"/calls/{call_id}", method="GET", headers=headers)
        assert status == 200
        (kind, payload), = p.split_client_frames(raw)
        assert kind == p.ERROR
        err = json.loads(payload)["error"]
        assert err["type"] == "NotFound" and "spawn" in err["hint"]
    status, raw = request(daemon, f"/calls/{call_id}", method="GET", headers={**SLAB, RESULT_HEADER: room})
    assert status == 200 and slab_frame(raw)["path"] == room  # the lender, re-attaching after a dropped link


@pytest.mark.parametrize("case", ["outside", "name", "length", "tcp", "json", "body", "both_headers"])
def test_malformed_slab_headers_are_refused_by_the_daemon(daemon, slabs, tmp_path, case):
    pickled = args(b"abc")
    path = slab(slabs, pickled)
    headers, body, tcp = lend_args(path, pickled), b"", False
    if case == "outside":
        outside = tmp_path / f"tether-{os.getpid()}-x"
        outside.write_bytes(pickled)
        headers = lend_args(str(outside), pickled)
    elif case == "name":
        headers = {RESULT_HEADER: slab(slabs, name=f"other-{uuid.uuid4().hex}")}
        body = pickled
    elif case == "length":
        headers = {ARGS_HEADER: f"{path}:many"}
    elif case == "tcp":
        tcp = True
    elif case == "json":
        headers["Content-Type"] = "application/json"
    elif case == "both_headers":
        headers["X-Tether-Shm"] = slab(slabs, pickled)
    else:
        body = pickled
    status, raw = request(daemon, "/nbytes/call", headers=headers, body=body, tcp=tcp)
    assert 400 <= status < 500, raw
    err = json.loads(raw)["error"]
    assert err["type"] == "ConfigError"
    assert os.path.exists(path) and Path(path).read_bytes() == pickled  # the client's file, untouched
    assert_serving(daemon)


@pytest.mark.parametrize("case", ["symlink", "missing", "fifo", "short"])
def test_slabs_the_worker_cannot_use_fail_the_call_and_the_daemon_keeps_serving(daemon, slabs, case):
    pickled = args(b"abcd")
    path = os.path.join(p.SHM_DIR or "", f"tether-{case}-{uuid.uuid4().hex}")
    slabs.append(path)
    if case == "symlink":
        os.symlink(slab(slabs, pickled), path)
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "short":
        Path(path).write_bytes(pickled[:5])
    status, raw = request(daemon, "/nbytes/call", headers=lend_args(path, pickled))
    assert status == 200
    (kind, payload), = p.split_client_frames(raw)
    assert kind == p.ERROR
    err = json.loads(payload)["error"]
    assert err["type"] == ("SerializationError" if case == "short" else "ConfigError"), err
    assert_serving(daemon)
    # a result slab the worker refuses: the result comes the ordinary way instead (a short file is fine there)
    big = os.urandom(2 * MiB)
    status, raw = request(daemon, "/echo/call", body=args(big), headers={**SLAB, RESULT_HEADER: path})
    assert status == 200
    (kind, payload), = p.split_client_frames(raw)
    assert kind == p.FILE and bool(json.loads(payload).get("slab")) == (case == "short")


def test_a_removed_slab_is_unmapped_by_the_worker(daemon, slabs):
    pickled = args(os.urandom(2 * MiB))
    first = slab(slabs, pickled)
    status, raw = request(daemon, "/nbytes/call", headers=lend_args(first, pickled))
    assert status == 200 and result(raw) == 2 * MiB
    assert worker_maps(daemon, first)
    os.unlink(first)  # the client dropped it: its pages must not stay alive in the worker
    second = slab(slabs, pickled)
    status, raw = request(daemon, "/nbytes/call", headers=lend_args(second, pickled))
    assert status == 200 and result(raw) == 2 * MiB
    deadline = time.monotonic() + 10
    while worker_maps(daemon, first) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker_maps(daemon, first)
    assert worker_maps(daemon, second)


def test_the_daemon_removes_files_of_dead_processes_while_it_runs(tmp_path, monkeypatch, slabs):
    monkeypatch.setenv("TETHER_SHM_SWEEP_SECONDS", "0.5")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = _start(tmp_path)  # (it sweeps once at start too: the files come after)
    try:
        orphan = slab(slabs, b"x" * 1024, name=f"tether-{dead.pid}-{uuid.uuid4().hex}")  # a killed client's slab
        alive = slab(slabs, b"y" * 1024)  # ours: this process lives
        deadline = time.monotonic() + 20
        while os.path.exists(orphan) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(orphan)
        assert os.path.exists(alive)
        assert_serving(d)
    finally:
        d.kill()
