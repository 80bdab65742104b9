"""The daemon's call path in isolation: coalesced worker-link writes, waits with heartbeat timeouts, the worker's
log guarantee, the token hash cache."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tether.daemon import calls
from tether.daemon import protocol as p
from tether.daemon.auth import HASH_CACHE, OWNER, AccessPolicy, hash_token
from tether.daemon.calls import Call
from tether.daemon.worker import Worker


class _CountingTransport:
    """Wraps a real transport and counts the writes reaching it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def _pair(kernel_buffer: int | None = None) -> tuple[asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter]:
    """A writer, and the reader (and its writer, kept open) of the socket's other end; ``kernel_buffer`` caps the
    socket buffers so that unread bytes pile up in the writer's transport, where back-pressure can see them."""
    a, b = socket.socketpair()
    if kernel_buffer:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, kernel_buffer)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, kernel_buffer)
    _, writer_a = await asyncio.open_unix_connection(sock=a)
    reader_b, writer_b = await asyncio.open_unix_connection(sock=b)
    return writer_a, reader_b, writer_b


def test_first_frame_goes_at_once_and_the_rest_of_the_iteration_in_one_write_in_order():
    async def go() -> tuple[int, int, list[tuple[int, int, dict[str, Any], bytes]]]:
        writer, reader, _peer = await _pair()
        counting = _CountingTransport(writer.transport)
        writer._transport = counting  # type: ignore[attr-defined]
        link = p.FrameWriter(writer)
        for tag in range(1, 51):
            link.send(p.CALL, tag, p.encode_meta({"name": "f"}) if tag % 2 else {"name": "g"}, b"x" * tag)
        written_before_yield = counting.writes
        got = [await p.read_frame(reader) for _ in range(50)]
        writer.close()
        return written_before_yield, counting.writes, got

    before, after, got = asyncio.run(go())
    assert before == 1 and after == 2  # a lone call pays no extra loop turn; 49 more frames share one write
    assert [(k, t, m, b) for k, t, m, b in got] == [
        (p.CALL, t, {"name": "f" if t % 2 else "g"}, b"x" * t) for t in range(1, 51)]


def test_a_large_queue_is_written_at_once_and_drain_waits_for_the_socket():
    FRAMES = 96  # of FLUSH_AT / 4 = 64 KiB each: 6 MiB in all, above DRAIN_AT (4 MiB)
    assert FRAMES * p.FLUSH_AT // 4 > p.DRAIN_AT * 1.25

    async def go() -> dict[str, Any]:
        writer, reader, _peer = await _pair(kernel_buffer=64 * 1024)
        counting = _CountingTransport(writer.transport)
        writer._transport = counting  # type: ignore[attr-defined]
        link = p.FrameWriter(writer)
        seen: dict[str, Any] = {}
        chunk = b"y" * (p.FLUSH_AT // 4)
        for tag in range(4):
            link.send(p.ITEM, tag, None, chunk)
        seen["at_threshold"] = counting.writes  # the fourth frame crossed FLUSH_AT: written without waiting
        little = asyncio.ensure_future(link.drain())  # ~1 MiB buffered, below DRAIN_AT: no waiting
        await asyncio.sleep(0)
        seen["little_done"] = little.done()
        for tag in range(4, FRAMES):  # 6 MiB > DRAIN_AT: drain() must wait until the reader takes some
            link.send(p.ITEM, tag, None, chunk)
        seen["buffered_before"] = link.buffered()

        async def drain_then_measure() -> int:
            await link.drain()
            return link.buffered()

        drained = asyncio.ensure_future(drain_then_measure())
        await asyncio.sleep(0.2)  # nobody reads: the socket buffer is full, so drain() must still be waiting
        seen["waited"] = not drained.done()
        frames = []
        while not drained.done():  # reading makes room; drain() returns once the buffer has gone down
            frames.append(await p.read_frame(reader))
        seen["frames_read_before_drain_returned"] = len(frames)
        seen["buffered_when_drained"] = drained.result()
        while len(frames) < FRAMES:
            frames.append(await p.read_frame(reader))
        seen["tags"] = [tag for _, tag, _, _ in frames]
        writer.close()
        return seen

    seen = asyncio.run(go())
    assert seen["at_threshold"] == 1
    assert seen["little_done"], "drain() waited although less than DRAIN_AT was buffered"
    assert seen["buffered_before"] > p.DRAIN_AT
    assert seen["waited"], "drain() returned while more than DRAIN_AT bytes sat unread in the socket buffer"
    assert seen["frames_read_before_drain_returned"] >= 1
    assert seen["buffered_when_drained"] <= p.DRAIN_AT, "drain() returned before the buffer went down"
    assert seen["tags"] == list(range(FRAMES))


def test_waits_end_with_the_next_frame_or_time_out(monkeypatch):
    monkeypatch.setattr(calls, "TICK", 0.02)

    async def go() -> tuple[bool, bool, bool]:
        call = Call("c", "svc", None, False)
        timed_out = await call.changed(0.05)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, call.add, p.LOG, {}, b"{}")
        woken = await call.changed(60)
        untimed = call.changed()
        call.add(p.RESULT, {}, b"r")
        return timed_out, woken, await untimed

    timed_out, woken, untimed = asyncio.run(go())
    assert timed_out is False and woken is True and untimed is True


def test_a_log_line_from_a_call_thread_is_on_the_socket_before_the_thread_goes_on():
    async def go() -> list[bool]:
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=a)
        worker = Worker(reader, writer)
        b.setblocking(False)
        seen: list[bool] = []

        def call_thread() -> None:
            for i in range(20):
                worker.send_threadsafe(p.LOG, 1, None, b'{"i": %d}' % i, wait=True)
                try:
                    seen.append(bool(b.recv(65536)))
                except BlockingIOError:
                    seen.append(False)

        await asyncio.to_thread(call_thread)
        writer.close()
        b.close()
        return seen

    assert all(asyncio.run(go()))


def test_thread_sends_without_wait_arrive_in_order():
    async def go() -> list[int]:
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=a)
        peer, peer_writer = await asyncio.open_unix_connection(sock=b)
        worker = Worker(reader, writer)

        def call_thread() -> None:
            for i in range(100):
                worker.send_threadsafe(p.ITEM, i, None, b"z")

        await asyncio.to_thread(call_thread)
        tags = [(await p.read_frame(peer))[1] for _ in range(100)]
        writer.close()
        peer_writer.close()
        return tags

    assert asyncio.run(go()) == list(range(100))


def test_token_hashes_are_cached_within_a_bound():
    owner = "owner-token"
    policy = AccessPolicy(hash_token(owner))
    assert policy.identify(f"Bearer {owner}") is OWNER
    assert policy.identify(f"Bearer {owner}") is OWNER  # from the cache
    for i in range(3 * HASH_CACHE):
        assert policy.identify(f"Bearer wrong-{i}") is None
    assert len(policy._hashes) <= HASH_CACHE
    assert policy.identify(f"Bearer {owner}") is OWNER
    assert policy.identify("Bearer ") is None and policy.identify(None) is None
