"""A TCP proxy on 127.0.0.1 whose link can be cut: a real network drop between a flow and its cluster."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading


class CuttableProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; ``reset()`` drops every open connection (RST), ``cut()`` also
    refuses new ones until ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0
        self.accepted = 0
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> int:
        """Reset every open connection, like a dropped NAT entry; returns how many client connections it cut."""
        with self._lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            _hard_close(s)
        return len(socks) // 2  # each connection is a client socket and its upstream

    def cut(self) -> int:
        """The link goes down: open connections are reset and new ones refused until :meth:`restore`."""
        self._up.clear()
        return self.reset()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if not self._up.is_set():
                self.refused += 1
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _hard_close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket cut() closed
            return
        finally:
            with self._lock:
                self._open.discard(a)
                self._open.discard(b)
            _hard_close(a)
            _hard_close(b)


def _hard_close(s: socket.socket) -> None:
    """Close with RST, like a dropped link (no orderly FIN the peer could mistake for the end of a response)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()
