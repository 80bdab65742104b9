"""Raw HTTP/1.1 over a plain socket: send exactly the bytes a test wants (malformed, slow, browser-shaped)."""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawAnswer:
    """What came back: status (0 when the server closed without an answer), headers (lower-case), body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def address(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    return parts.hostname or "127.0.0.1", parts.port or 80


def connect(endpoint: str, timeout: float = 30) -> socket.socket:
    return socket.create_connection(address(endpoint), timeout=timeout)


def read_answer(sock: socket.socket) -> RawAnswer:
    """Read one response: its head, then Content-Length bytes (or up to the close)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    if b"\r\n\r\n" not in data:
        return RawAnswer(0, body=data)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    try:
        while length < 0 or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return RawAnswer(status, headers, body[:length] if length >= 0 else body)


def exchange(endpoint: str, request: bytes, timeout: float = 30) -> RawAnswer:
    """Send ``request`` on a new connection and read the answer."""
    with connect(endpoint, timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return read_answer(sock)


def request(method: str, path: str, *, host: str = "127.0.0.1", headers: dict[str, str] | None = None,
            body: bytes = b"") -> bytes:
    """A well-formed request's bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
