"""Big plain bodies of the asyncio transport moved off the event loop (``tether.client.offloop``): a big body is
sent from a worker thread straight from the caller's buffers, and a big pickled result frame is unpickled in a
worker thread straight from the socket. Scripted servers on real sockets: every byte arrives, the connection
carries the next request, a payload cut short or stalled is a dropped link (not an unpickling error), a bad one an
unpickling error that closes the connection, and a cancelled call stops its thread and leaves no descriptor open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import threading
from typing import Any

import pytest

from tests.client.servers import read_request, response, serve
from tether.client import Dropped
from tether.client.offloop import OffLoopPayload
from tether.client.payloads import loads
from tether.client.wire import AsyncTransport
from tether.errors import SerializationError
from tether.protocol.frames import client_frame

MB = 1024 * 1024
R, L = ord("R"), ord("L")


def _answers(payloads: list[bytes], seen: list[int]) -> Any:
    """Answers the n-th request (on any connection) with a log frame, then a RESULT frame of ``payloads[n]``."""
    left = iter(payloads)

    def script(conn: socket.socket, n: int) -> None:
        seen.append(n)
        while read_request(conn):
            body = client_frame(L, b'{"text": "x"}') + client_frame(R, next(left))
            conn.sendall(response(200, body))
    return script


async def _frames(t: AsyncTransport, took: list[type] | None = None, reader: Any = None) -> list[tuple[int, Any]]:
    resp = await t.asend("POST", "/x/call", {})
    try:
        out = []
        while (frame := await resp.anext_frame(off_loop=True)) is not None:
            kind, payload = frame
            if took is not None:
                took.append(type(payload))
            if isinstance(payload, OffLoopPayload):
                out.append((kind, await payload.feed(reader or (lambda _, p: loads(p)), kind)))
            else:
                out.append((kind, loads(payload) if kind == R else payload))
        return out
    finally:
        resp.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor is gone by now)
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(out)


async def _cancel_leaves_no_descriptor(start: Any) -> None:
    """Start ``start()`` (a coroutine using a fresh connection), cancel it while its transfer's thread waits, and
    check that the thread's descriptors and the client's connection close (the server's end stays: its script
    holds it)."""
    before = _open_fds()
    task = asyncio.ensure_future(start())
    await asyncio.sleep(0.3)  # the thread is waiting on the socket
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the thread wakes, and its descriptors close with it
        if _open_fds() <= before + 1:
            break
        await asyncio.sleep(0.02)
    assert _open_fds() <= before + 1, _fds()


def test_big_results_are_unpickled_off_the_loop_and_the_connection_is_reused() -> None:
    values = [os.urandom(5 * MB), {"a": os.urandom(2 * MB), "b": list(range(1000))}, b"small"]
    seen: list[int] = []
    took: list[type] = []
    with serve(_answers([pickle.dumps(v, protocol=5) for v in values], seen)) as endpoint:
        async def go() -> list[list[tuple[int, Any]]]:
            t = AsyncTransport(endpoint)
            return [await _frames(t, took) for _ in values]

        got = asyncio.run(go())
    assert [frames[1][1] for frames in got] == values
    assert all(frames[0] == (L, b'{"text": "x"}') for frames in got)
    assert took.count(OffLoopPayload) == 2  # the two big results; the small one came whole
    assert seen == [0]  # one connection carried all three


def test_a_payload_not_read_whole_closes_its_connection_and_the_next_request_gets_another() -> None:
    big = pickle.dumps(os.urandom(3 * MB), protocol=5)
    seen: list[int] = []
    with serve(_answers([big, pickle.dumps(b"next")], seen)) as endpoint:
        async def go() -> Any:
            t = AsyncTransport(endpoint)
            got = await _frames(t, reader=lambda _, p: p.read(10))  # reads 10 bytes of it, then stops
            assert got[1] == (R, big[:10])
            return (await _frames(t))[1][1]

        assert asyncio.run(go()) == b"next"
    assert seen == [0, 1]


def test_asking_for_the_next_frame_before_feeding_a_payload_is_refused_and_closes_the_connection() -> None:
    big = pickle.dumps(os.urandom(3 * MB), protocol=5)
    seen: list[int] = []
    with serve(_answers([big, pickle.dumps(b"next")], seen)) as endpoint:
        async def go() -> Any:
            t = AsyncTransport(endpoint)
            resp = await t.asend("POST", "/x/call", {})
            assert (await resp.anext_frame(off_loop=True)).kind == L  # type: ignore[union-attr]
            frame = await resp.anext_frame(off_loop=True)
            assert frame is not None and isinstance(frame.payload, OffLoopPayload)
            with pytest.raises(RuntimeError, match="not fed"):
                await resp.anext_frame(off_loop=True)  # its bytes would be read as the next frame's head
            return (await _frames(t))[1][1]

        assert asyncio.run(go()) == b"next"
    assert seen == [0, 1]  # the connection was closed, not reused


def test_a_big_result_cut_short_is_a_dropped_link() -> None:
    payload = pickle.dumps(os.urandom(4 * MB), protocol=5)

    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        whole = response(200, client_frame(R, payload))
        conn.sendall(whole[: len(whole) // 2])  # then the connection closes

    with serve(script) as endpoint, pytest.raises(Dropped):
        asyncio.run(_frames(AsyncTransport(endpoint)))


def test_a_bad_big_pickle_is_an_unpickling_error_and_its_connection_is_not_reused() -> None:
    bad = b"\x80\x05" + b"\xff" * (2 * MB)  # no opcode 0xff: the unpickler stops at once
    seen: list[int] = []
    with serve(_answers([bad, pickle.dumps(b"after")], seen)) as endpoint:
        async def go() -> Any:
            t = AsyncTransport(endpoint)
            with pytest.raises(SerializationError, match="could not unpickle"):
                await _frames(t)
            return (await _frames(t))[1][1]

        assert asyncio.run(go()) == b"after"
    assert seen == [0, 1]  # the connection with a payload half read was closed; a new one served the next


def _stalls_mid_result(release: threading.Event) -> Any:
    payload = pickle.dumps(os.urandom(4 * MB), protocol=5)

    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        whole = response(200, client_frame(R, payload))
        conn.sendall(whole[: len(whole) // 2])
        release.wait(30)  # the rest never comes while the test runs
    return script


def test_a_stalled_big_result_times_out_as_a_dropped_link() -> None:
    release = threading.Event()
    with serve(_stalls_mid_result(release)) as endpoint:
        try:
            with pytest.raises(Dropped, match="no answer"):
                asyncio.run(_frames(AsyncTransport(endpoint, read_timeout=0.5)))
        finally:
            release.set()


def test_a_call_cancelled_mid_result_stops_its_thread_and_leaves_no_descriptor() -> None:
    release = threading.Event()
    with serve(_stalls_mid_result(release)) as endpoint:
        try:  # the thread waits for the rest of the payload
            asyncio.run(_cancel_leaves_no_descriptor(lambda: _frames(AsyncTransport(endpoint))))
        finally:
            release.set()


def test_a_send_cancelled_while_the_peer_reads_nothing_stops_its_thread() -> None:
    release = threading.Event()

    def script(conn: socket.socket, n: int) -> None:
        release.wait(30)  # reads nothing: the socket's buffers fill and the send waits

    with serve(script) as endpoint:
        big = os.urandom(64 * MB)
        try:  # the thread waits for room in the socket's buffers
            asyncio.run(_cancel_leaves_no_descriptor(lambda: AsyncTransport(endpoint).asend("POST", "/x", {}, big)))
        finally:
            release.set()


EXITS = """
import asyncio, sys, threading, time
from tests.client.servers import serve
from tests.client.test_offloop import _frames, _stalls_mid_result
from tether.client.wire import AsyncTransport

server = serve(_stalls_mid_result(threading.Event()))  # (kept: a dropped one stops serving)
endpoint = server.__enter__()
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()  # as the sync facade's background loop
asyncio.run_coroutine_threadsafe(_frames(AsyncTransport(endpoint, read_timeout=600)), loop)
time.sleep(0.5)  # the transfer's thread waits for bytes that never come
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("tether")), flush=True)
"""


def test_a_transfer_in_progress_does_not_hold_up_the_interpreters_exit() -> None:
    """The off-loop thread is a daemon thread: a process that ends while a big result is still arriving exits
    at once instead of waiting for the transfer (here: a stalled one, with a 600 s read timeout)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", EXITS], cwd=root, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(root)})  # (a held-up exit would take 600 s)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['tether-offloop']", out.stdout  # the transfer was under way at the exit
