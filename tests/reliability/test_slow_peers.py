"""Slow and idle peers over real sockets: slowloris connections do not lock out a caller, a connection cap
refuses clearly, idle connections are closed.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.reliability import rawhttp
from tests.reliability.daemons import ROOT, DaemonProc, start_daemon
from tests.reliability.registries import start_registry

NOFILE = 256  # the servers' open-file limit here: 300 connections would exhaust it without a cap
SLOW = 300
GATES = "tests.reliability.gates"


def _slowloris(endpoint: str, n: int) -> list[socket.socket]:
    """``n`` connections, each sending the start of a request head one byte at a time, never finishing it."""
    socks = []
    for _ in range(n):
        s = rawhttp.connect(endpoint, timeout=30)
        s.sendall(b"G")
        socks.append(s)
    for byte in (b"E", b"T", b" ", b"/"):
        for s in socks:
            with contextlib.suppress(OSError):  # closed by the server: that is what the cap does
                s.sendall(byte)
    return socks


def _refusals(socks: list[socket.socket]) -> tuple[int, list[dict]]:
    """How many of ``socks`` the server closed, and the JSON errors it sent on them."""
    closed, errors = 0, []
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue  # still open, waiting for the rest of its head
        except ConnectionResetError:
            closed += 1
            continue
        finally:
            s.close()
        closed += 1
        if data.startswith(b"HTTP/1.1 503"):
            errors.append(rawhttp.RawAnswer(503, body=data.partition(b"\r\n\r\n")[2]).json()["error"])
    return closed, errors


@pytest.fixture
def low_fd_daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path / "state", nofile=NOFILE)
    yield d
    d.kill()


def test_slowloris_connections_do_not_lock_out_a_caller(low_fd_daemon: DaemonProc):
    d = low_fd_daemon
    d.deploy("add", "add")
    socks = _slowloris(d.endpoint, SLOW)
    r = d.call("add", 1, 2)  # a new connection, after 300 slow ones at a 256-file limit
    assert r.status_code == 200 and r.json()["result"] == 3, r.text
    closed, errors = _refusals(socks)
    assert closed >= SLOW - NOFILE, closed  # the cap made room by closing the oldest unfinished heads
    assert errors and all(e["type"] == "ClusterUnavailable" and e["retryable"]
                          and e["details"]["reason"] == "too_many_connections" for e in errors), errors
    assert d.proc.poll() is None and d.get("/health").status_code == 200


def test_slowloris_connections_do_not_lock_out_a_registry_caller(tmp_path: Path):
    registry = start_registry(tmp_path, nofile=NOFILE)
    try:
        socks = _slowloris(registry.url, SLOW)
        r = requests.get(registry.url + "/v1/whoami", headers=registry.headers, timeout=30)
        assert r.status_code == 200 and r.json()["principal"] == "fuzzer", r.text
        closed, _ = _refusals(socks)
        assert closed >= SLOW - NOFILE
    finally:
        registry.stop()


def test_a_full_daemon_refuses_a_connection_with_a_typed_retryable_error(tmp_path: Path):
    d = start_daemon(tmp_path / "state", "--max-connections", "4")
    gate = tmp_path / "gate"
    gate.mkdir()
    try:
        d.deploy("gate", "wait_at_gate", module=GATES, root=ROOT)
        busy = []
        for i in range(4):  # four callers, each with a call in progress: no connection is idle
            s = rawhttp.connect(d.endpoint, timeout=60)
            body = f'{{"args": ["{gate}", {i}]}}'.encode()
            s.sendall(rawhttp.request("POST", "/gate/call", body=body, headers={
                **d.headers, "Content-Type": "application/json"}))
            busy.append(s)
        deadline = time.monotonic() + 60
        while len(list(gate.glob("started-*"))) < 4:
            assert time.monotonic() < deadline, "the four calls did not start"
            time.sleep(0.02)
        refused = rawhttp.exchange(d.endpoint, rawhttp.request("GET", "/health"))
        assert refused.status == 503, refused
        err = refused.json()["error"]
        assert err["type"] == "ClusterUnavailable" and err["retryable"], err
        assert err["details"] == {"reason": "too_many_connections", "limit": 4}, err
        assert err["hint"]
        (gate / "open").touch()
        for i, s in enumerate(busy):
            answer = rawhttp.read_answer(s)
            assert answer.status == 200 and answer.json()["result"] == i, answer
            s.close()
        assert d.call("gate", str(gate), 9).json()["result"] == 9  # room again
    finally:
        (gate / "open").touch()
        d.kill()


def test_idle_and_half_sent_connections_are_closed(tmp_path: Path):
    d = start_daemon(tmp_path / "state", "--idle-timeout", "1")
    try:
        idle = rawhttp.connect(d.endpoint, timeout=30)
        half = rawhttp.connect(d.endpoint, timeout=30)
        half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends its head
        kept = rawhttp.connect(d.endpoint, timeout=30)
        kept.sendall(rawhttp.request("GET", "/health"))
        assert rawhttp.read_answer(kept).status == 200
        for s in (idle, half, kept):  # each is closed by the daemon (the 30 s socket timeout would fail it)
            assert s.recv(1) == b""
            s.close()
        assert d.get("/health").status_code == 200
    finally:
        d.kill()
