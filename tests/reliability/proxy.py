"""A TCP proxy on 127.0.0.1 that can cut every open connection (RST) on demand — a flaky network in a box."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from concurrent.futures import Future


class CuttingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; ``cut()`` resets every connection open at that moment."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self.conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.accepted = 0
        self.cuts = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    def _run(self, coro):  # type: ignore[no-untyped-def]
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self.conns.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.conns.discard(pair)

    async def _cut(self) -> int:
        n = 0
        for client, upstream in list(self.conns):
            sock = client.get_extra_info("socket")
            if sock is not None:  # linger 0: close sends RST, like a dropped NAT entry or a reset middlebox
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abort()
            upstream.transport.abort()
            n += 1
        self.conns.clear()
        return n

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        self.cuts += 1
        return self._run(self._cut())

    def close(self) -> None:
        self.server.close()
        self._run(self._cut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
