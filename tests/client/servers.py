"""Tiny scripted HTTP servers on 127.0.0.1 (a thread each) for the transport tests: each accepted connection is
handed to a function that reads the request and writes whatever bytes the test needs, broken ones included."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tether.protocol.tls import ensure_self_signed

Script = Callable[[socket.socket, int], None]  # (connection, how many connections came before it)


def read_request(conn: socket.socket) -> bytes:
    """The head and body of one request (``Content-Length`` bodies only, as the client sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def response(status: int, body: bytes, *, chunked: bool = False, headers: str = "") -> bytes:
    if chunked:
        return (f"HTTP/1.1 {status} OK\r\nTransfer-Encoding: chunked\r\n{headers}\r\n".encode()
                + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n")
    return f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


@contextlib.contextmanager
def serve(script: Script, *, tls_dir: Path | None = None) -> Iterator[str]:
    """Run ``script`` on every connection to a fresh port; yields the endpoint (``https://`` with ``tls_dir``:
    a self-signed certificate made there)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    context = None
    if tls_dir is not None:
        ensure_self_signed(tls_dir / "cert.pem", tls_dir / "key.pem")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    stop = threading.Event()

    def run() -> None:
        n = 0
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            if context is not None:
                try:
                    conn = context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            threading.Thread(target=_one, args=(conn, n), daemon=True).start()
            n += 1

    def _one(conn: socket.socket, n: int) -> None:
        with contextlib.suppress(OSError), conn:
            script(conn, n)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def free_port() -> int:
    """A port nothing listens on (just closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
