"""Big payloads from a client on another host: over TCP (no unix socket, no ``/dev/shm`` hand-over), plain and TLS,
sync and async, a 100 MB argument and result round-trip intact through a real daemon and worker (the daemon streams
the body into ``/dev/shm`` for the worker and sends the result from a mapping of the worker's file:
``tether.daemon.bodies``). A big body that is not a pickle, or that ends early, is a typed error and the daemon
keeps serving. Throughput is measured in ``bench/overheads.py``, not here."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.tcp_clusters import KINDS, echo_cluster
from tests.tcp_clusters import tcp_client as tcp_client_of
from tether.client import DaemonClient
from tether.client.loop import run_sync
from tether.errors import SerializationError

MB = 1024 * 1024


@pytest.fixture(scope="module", params=KINDS)
def tcp_client(request: pytest.FixtureRequest, module_home: Any) -> Iterator[DaemonClient]:
    """A client of a real local daemon that talks to it the way a client on another host does: over TCP."""
    kind = request.param
    with echo_cluster(f"big-{kind}", kind) as c:
        client = tcp_client_of(c)
        assert client.endpoint.startswith("https://" if kind == "tls" else "http://")
        yield client


def _payload(size: int) -> bytes:
    block = os.urandom(MB)
    return b"".join(hashlib.sha256(block + bytes([i % 256])).digest() * (MB // 32) for i in range(size // MB))


def test_a_100_mb_argument_and_result_round_trip_intact_sync(tcp_client: DaemonClient) -> None:
    payload = _payload(100 * MB)
    for _ in range(2):  # the second call reuses what the first one set up (connections, kept memory)
        back = tcp_client.call_sync("echo", None, (payload,), {}, call_id=os.urandom(8).hex())
        assert len(back) == len(payload) and back == payload


def test_a_100_mb_argument_and_result_round_trip_intact_async(tcp_client: DaemonClient) -> None:
    payload = _payload(100 * MB)
    back = run_sync(tcp_client.call("echo", None, (payload,), {}, call_id=os.urandom(8).hex()))
    assert back == payload


def test_a_big_result_can_be_attached_to_again_by_its_call_id(tcp_client: DaemonClient) -> None:
    payload = _payload(8 * MB)
    call_id = os.urandom(8).hex()
    assert tcp_client.call_sync("echo", None, (payload,), {}, call_id=call_id) == payload
    assert tcp_client.sync.attach(call_id) == payload  # sent again from the worker's file, which the call keeps


def _raw_post(client: DaemonClient, body: bytes, length: int) -> bytes:
    """A call request over a plain socket announcing ``length`` body bytes and sending ``body``, then closing its
    side; the daemon's answer (nothing when it just drops a body that ended early)."""
    u = urlsplit(client.endpoint)
    assert u.hostname is not None and u.port is not None
    head = (f"POST /echo/call HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/x-tether-pickle\r\n"
            f"Content-Length: {length}\r\nAuthorization: Bearer {client.token}\r\n\r\n").encode()
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    if u.scheme == "https":  # the daemon's self-signed certificate: this test pins nothing
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        sock = tls.wrap_socket(sock, server_hostname=u.hostname)
    with sock:
        sock.sendall(head + body)
        if not isinstance(sock, ssl.SSLSocket):
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.settimeout(3)  # TLS has no half-close: the daemon waits for the rest, then times out; we go
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def _files_of(pid: int) -> list[str]:
    """The daemon's files in /dev/shm (its own, and results it adopted from its workers)."""
    return [f for f in os.listdir("/dev/shm") if f.startswith(f"tether-{pid}-")]


def test_a_big_body_that_is_no_pickle_is_refused_and_the_daemon_keeps_serving(tcp_client: DaemonClient) -> None:
    pid = tcp_client.sync.daemon_status()["pid"]
    before = set(_files_of(pid))  # results the daemon keeps for earlier calls
    with pytest.raises(SerializationError, match="not a pickle"):
        run_sync(tcp_client.request("POST", "/echo/call", data=b"x" * (2 * MB),
                                    content_type="application/x-tether-pickle"))
    assert set(_files_of(pid)) <= before  # the body's file went with the refusal
    assert tcp_client.call_sync("echo", None, (b"still",), {}, call_id=os.urandom(8).hex()) == b"still"


def test_a_big_body_that_ends_early_leaves_nothing_behind(tcp_client: DaemonClient) -> None:
    pid = tcp_client.sync.daemon_status()["pid"]
    before = set(_files_of(pid))
    _raw_post(tcp_client, b"\x80" + b"y" * MB, 3 * MB)  # the client goes away a third of the way in
    deadline = time.monotonic() + 30  # the daemon notices the closed connection, then removes the partial file
    while not set(_files_of(pid)) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(_files_of(pid)) <= before
    assert tcp_client.call_sync("echo", None, (b"still",), {}, call_id=os.urandom(8).hex()) == b"still"


def _mapped_daemon_files(worker_pid: int, daemon_pid: int) -> set[str]:
    """The daemon's /dev/shm files the worker has mapped (its argument files, see ``bodies.ArgSlabs``)."""
    maps = Path(f"/proc/{worker_pid}/maps").read_text().split()
    return {m for m in maps if m.startswith(f"/dev/shm/tether-{daemon_pid}-")}


def test_big_arguments_go_through_one_reused_daemon_file(tcp_client: DaemonClient) -> None:
    status = tcp_client.sync.daemon_status()
    pid = status["pid"]
    worker, = [w["pid"] for w in status["workers"] if w.get("env") == "default"]
    seen = []
    for size in (4 * MB, 6 * MB, 3 * MB):  # grows once, then a shorter body in the same file
        payload = os.urandom(size)
        assert tcp_client.call_sync("echo", None, (payload,), {}, call_id=os.urandom(8).hex()) == payload
        seen.append(_mapped_daemon_files(worker, pid))
    assert seen[0] and seen[0] == seen[1] == seen[2]  # mapped once by the worker, the same file every call
    assert all(os.path.exists(path) for path in seen[0])  # kept for the next call, not removed
