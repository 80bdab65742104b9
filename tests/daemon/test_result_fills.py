"""A private call's big result sent while the worker still writes it into the daemon's pool file
(``tether.daemon.fills``): each byte goes only once the worker reported it written, a worker that stops midway
cuts the answer (and later attaches answer ``WorkerDied``), and the pool file goes back only once the fill
ended. Real threads, a real aiohttp server on real sockets, plain and TLS."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from aiohttp import web

from tests.daemon.aiohttp_sites import self_signed, serve_while
from tether.daemon import bodies, fills, result_pool
from tether.daemon import protocol as p
from tether.daemon.calls import Call
from tether.daemon.routes_calls import _client_payload
from tether.daemon.workers import WorkerProcess
from tether.errors import WorkerDied, error_from_wire
from tether.protocol.pieces import Pieces
from tether.protocol.shm import SHM_DIR
from tether.specs import EnvSpec

pytestmark = pytest.mark.skipif(SHM_DIR is None, reason="needs a writable /dev/shm")

MiB = 1024 * 1024


def test_a_fill_hands_out_bytes_as_the_worker_reports_them() -> None:
    async def go() -> tuple[list[int], list[str], bool]:
        fill = fills.Fill(3 * MiB)
        ended: list[str] = []
        fill.when_ended(lambda: ended.append("ended"))
        got: list[int] = []
        thread = threading.Thread(target=lambda: got.extend([fill.past(0), fill.past(MiB)]))
        thread.start()
        await asyncio.sleep(0.05)
        blocked = not got  # nothing reported yet: the sender waits
        fill.advance(MiB)
        await asyncio.sleep(0.05)
        fill.advance(5 * MiB)  # past the end: held at the size
        await asyncio.to_thread(thread.join)
        return got, ended, blocked and fill.ended and fill.upto == 3 * MiB

    got, ended, ok = asyncio.run(go())
    assert got == [MiB, 3 * MiB] and ended == ["ended"] and ok


def test_a_failed_or_stalled_fill_cuts_the_answer_and_its_callbacks_run_on_the_loop() -> None:
    async def go() -> tuple[list[Any], list[bool]]:
        loop_thread = threading.get_ident()
        failed, stalled = fills.Fill(MiB), fills.Fill(MiB)
        where: list[bool] = []
        stalled.when_ended(lambda: where.append(threading.get_ident() == loop_thread))
        errors: list[Any] = []

        def sender(fill: fills.Fill, stall: float) -> None:
            try:
                fill.past(0, stall)
            except ConnectionResetError as exc:
                errors.append(str(exc))

        first = threading.Thread(target=sender, args=(failed, 30.0))
        first.start()
        await asyncio.sleep(0.05)
        failed.fail()
        await asyncio.to_thread(first.join)
        await asyncio.to_thread(sender, stalled, 0.1)  # nothing ever reported: given up after the stall
        await asyncio.sleep(0.05)  # the end callbacks were handed to the loop
        with pytest.raises(ConnectionResetError):
            await failed.until(0)
        return errors, where

    errors, where = asyncio.run(go())
    assert len(errors) == 2 and all("did not finish" in e for e in errors)
    assert where == [True]


def test_the_loop_side_wait_wakes_on_progress_on_a_failure_from_a_thread_and_gives_up_after_a_stall() -> None:
    """``Fill.until`` (the TLS send's wait, on the event loop): a wait for bytes already written returns at once,
    one for later bytes when they are reported, a failure in a sending thread wakes every wait with the cut, and a
    fill that reports nothing gives up after the stall."""
    async def go() -> tuple[list[str], bool, Any]:
        fill, stalled, failing = fills.Fill(3 * MiB), fills.Fill(MiB), fills.Fill(MiB)
        order: list[str] = []

        async def wait(offset: int) -> None:
            await fill.until(offset)
            order.append(f"past {offset}")

        early, late = asyncio.ensure_future(wait(MiB - 1)), asyncio.ensure_future(wait(2 * MiB))
        await asyncio.sleep(0.05)
        waited = not early.done() and not late.done()
        fill.advance(MiB)
        await asyncio.sleep(0.01)
        order.append("advanced")
        fill.advance(3 * MiB)
        await asyncio.gather(early, late)
        await fill.until(0)  # written already: at once
        cut = asyncio.ensure_future(failing.until(0))
        await asyncio.sleep(0.01)
        await asyncio.to_thread(failing.fail)  # a sending thread gave up on this one
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(cut, 5)
        with pytest.raises(ConnectionResetError):
            await stalled.until(0, stall=0.1)
        return order, waited, stalled.failed

    order, waited, stalled_failed = asyncio.run(go())
    assert waited and order == ["past 1048575", "advanced", "past 2097152"] and stalled_failed


def test_a_pool_file_goes_back_only_once_its_fill_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = result_pool.ResultPool()

    async def go() -> tuple[bool, bool]:
        path = pool.take()
        assert path is not None
        fill = fills.FILLS[path] = fills.Fill(MiB)
        try:
            pool.give_back(path)  # the caller has what was sent so far... but the worker still writes
            held = path in pool.lent and path not in pool.free
            fill.advance(MiB)
            return held, path in pool.free and path not in pool.lent
        finally:
            fills.FILLS.pop(path, None)

    held, back = asyncio.run(go())
    pool.close()
    assert held and back


def test_the_worker_copies_every_piece_and_reports_about_every_step() -> None:
    value = (os.urandom(3 * MiB + 5), list(range(1000)), bytearray(os.urandom(2 * MiB)))
    pieces = Pieces()
    cloudpickle.dump(value, pieces, protocol=5)
    target = bytearray(pieces.size)
    reports: list[int] = []
    with memoryview(target) as view:
        fills.write_reporting(view, pieces, reports.append)
    assert bytes(target) == bytes(pieces) and cloudpickle.loads(target) == value
    assert reports == sorted(reports) and reports[-1] == pieces.size
    assert all(b - a <= 2 * fills.STEP for a, b in zip([0, *reports], reports, strict=False))
    assert len(reports) >= pieces.size // (2 * fills.STEP)


class Counted:
    """A big value that counts how often it is pickled."""

    pickled = 0

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> Any:
        Counted.pickled += 1
        return (Counted, (self.data,))


def test_a_refused_pool_file_sends_the_result_pickled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the daemon's pool file cannot take the result (gone, or ``/dev/shm`` refused the growth), the pieces
    already pickled go as a file of the worker's own (or inline), and the value is not pickled again."""
    from types import SimpleNamespace

    from tether.daemon import worker as worker_mod
    from tether.daemon.call_output import CallCtx

    sent: list[tuple[int, int, Any, bytes]] = []

    def refuse(path: str, header: str) -> Any:
        raise OSError(28, "No space left on device")

    fake = SimpleNamespace(send=lambda kind, tag, meta=None, body=b"": sent.append((kind, tag, meta, body)),
                           _slab=refuse)
    fake._encode = functools.partial(worker_mod.Worker._encode, fake)
    fake._send_filling = functools.partial(worker_mod.Worker._send_filling, fake)
    ctx = CallCtx(7, fake, "echo", slab="/dev/shm/tether-pool-x", fill=True)  # type: ignore[arg-type]
    value = Counted(os.urandom(3 * MiB))
    Counted.pickled = 0
    worker_mod.Worker._send_result(fake, ctx, value, False)  # type: ignore[arg-type]
    assert Counted.pickled == 1
    [(kind, tag, meta, body)] = sent
    assert (kind, tag) == (ord("R"), 7)
    if meta is not None:  # a file of the worker's own (the daemon sends it and removes it)
        with open(meta["_shm"], "rb") as f:
            body = f.read()
        os.unlink(meta["_shm"])
    assert cloudpickle.loads(body).data == value.data


# -- sending while the worker writes: a real server --------------------------------------------------------------
async def _serve(path: str, data: bytes, tls: ssl.SSLContext | None, fail_after: int | None) -> tuple[bytes, bytes]:
    """One GET answered from pool file ``path`` while a task writes ``data`` into it MiB by MiB (failing after
    ``fail_after`` MiB when set), then a second, ordinary GET on a new connection; what each client read."""
    pool = result_pool.ResultPool()
    pool.lent.add(path)
    view = pool.view(path, len(data))
    assert view is not None
    fill = fills.Fill(len(data))

    async def write() -> None:
        with open(path, "r+b", buffering=0) as f:
            for i, off in enumerate(range(0, len(data), MiB)):
                await asyncio.sleep(0.01)
                if fail_after is not None and i == fail_after:
                    fill.fail()
                    return
                f.seek(off)
                f.write(data[off:off + MiB])
                fill.advance(off + MiB)

    async def handler(request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse()
        stream.content_length = len(data)
        await stream.prepare(request)
        writing = asyncio.ensure_future(write())
        try:
            await bodies.ShmBody(path, len(data), view, fill).send(request, stream)
            await stream.write_eof()
        finally:
            await writing
        return stream

    async def ordinary(request: web.Request) -> web.Response:
        return web.Response(body=b"still serving")

    app = web.Application()
    app.router.add_get("/r", handler)
    app.router.add_get("/o", ordinary)
    return await serve_while(app, tls, lambda port: (_get(port, tls is not None, "/r"), _get(port, tls is not None, "/o")))


def _get(port: int, tls: bool, path: str) -> bytes:
    """The body of one GET: as much of it as arrived before the server closed the connection."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    with sock, sock.makefile("rb") as f:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        length = None
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert length is not None
        try:
            return f.read(length)
        except (ConnectionError, ssl.SSLError):
            return b""


@pytest.fixture()
def pool_file() -> Any:
    f, path = p.new_shm_file()
    with f:
        f.truncate(6 * MiB + 7)  # zeros: a byte sent before the worker wrote it would show as one
    yield path
    p.unlink_quietly(path)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_result_sent_while_the_worker_writes_it_arrives_whole(pool_file: str, tmp_path: Path, tls: bool) -> None:
    data = os.urandom(6 * MiB + 7)
    context = self_signed(tmp_path) if tls else None
    got, after = asyncio.run(_serve(pool_file, data, context, None))
    assert got == data and after == b"still serving"


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_worker_that_stops_midway_cuts_the_answer_and_the_server_serves_on(pool_file: str, tmp_path: Path,
                                                                              tls: bool) -> None:
    data = os.urandom(6 * MiB + 7)
    context = self_signed(tmp_path) if tls else None
    got, after = asyncio.run(_serve(pool_file, data, context, fail_after=2))
    assert len(got) < len(data) and data.startswith(got)  # cut short, and never a byte that was not written
    assert after == b"still serving"


def test_a_result_the_worker_did_not_finish_answers_worker_died(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = result_pool.ResultPool()
    monkeypatch.setattr(result_pool, "POOL", pool)

    async def go() -> tuple[bytes, ...]:
        path = pool.take()
        assert path is not None
        fill = fills.FILLS[path] = fills.Fill(2 * MiB)
        call = Call("c3", "echo", None, False, pooled=path)
        call.add(p.RESULT, {"_slab": path, "_size": 2 * MiB, "_filling": True}, b"")
        assert call.fill is fill
        fill.fail()
        return _client_payload(call, *call.frames[-1], files=False)  # type: ignore[return-value]

    frame = asyncio.run(go())
    pool.close()
    assert len(frame) == 1 and isinstance(frame[0], bytes)
    kind, length = p.parse_client_header(frame[0][:p.CLIENT_HDR_SIZE])
    assert kind == p.ERROR
    err = error_from_wire(json.loads(frame[0][p.CLIENT_HDR_SIZE:p.CLIENT_HDR_SIZE + length]))
    assert isinstance(err, WorkerDied) and "finished writing" in str(err)


def test_a_worker_that_dies_while_writing_a_result_fails_its_fill() -> None:
    """The daemon's side of a worker link: RESULT ``_filling``, PROGRESS, then the worker is gone."""

    async def go() -> tuple[list[Any], fills.Fill, bool, bool]:
        worker = WorkerProcess(EnvSpec(name="fills"), None)
        worker.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader, ours_writer = await asyncio.open_unix_connection(sock=ours)  # kept: a dropped writer closes
        _theirs_reader, writer = await asyncio.open_unix_connection(sock=theirs)
        answers: list[Any] = []
        worker.pending[7] = lambda kind, meta, body: answers.append((kind, meta.get("_filling")))
        path = "/dev/shm/tether-fills-test"
        link = p.FrameWriter(writer)
        link.send(p.RESULT, 7, {"_slab": path, "_size": 3 * MiB, "_filling": True})
        link.send(p.PROGRESS, 7, {"upto": MiB})
        link.flush()
        reading = asyncio.ensure_future(worker._read_loop(reader))
        while path not in fills.FILLS or fills.FILLS[path].upto < MiB:
            await asyncio.sleep(0.01)
        fill = fills.FILLS[path]
        moving = not fill.ended
        writer.close()  # the worker is gone before it reported the rest
        await reading
        ours_writer.close()
        return answers, fill, moving, path in fills.FILLS or bool(worker.fills)

    answers, fill, moving, left = asyncio.run(go())
    assert answers == [(p.RESULT, True)] and moving
    assert fill.failed and fill.upto == MiB and not left
