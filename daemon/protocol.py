"""Framing between the daemon and its worker processes, and between the daemon and Python clients.

Worker link (unix socket pair): ``!BIIQ`` = kind, tag, meta length, body length; then JSON meta, raw body.
Client stream (HTTP body): ``!BI`` = kind, length; then the payload.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

__all__ = [
    "CALL", "CANCEL", "DEPLOY", "ERROR", "HEARTBEAT", "ITEM", "LOG", "OBJECT", "READY", "RESULT",
    "client_frame", "read_frame", "write_frame",
]

# daemon -> worker
CALL = ord("C")
DEPLOY = ord("D")
CANCEL = ord("X")
OBJECT = ord("O")
# worker -> daemon (and daemon -> client)
LOG = ord("L")
ITEM = ord("I")
RESULT = ord("R")
ERROR = ord("E")
READY = ord("Y")
HEARTBEAT = ord("H")

_WORKER_HDR = struct.Struct("!BIIQ")
_CLIENT_HDR = struct.Struct("!BI")
CLIENT_HDR_SIZE = _CLIENT_HDR.size


def encode(kind: int, tag: int, meta: dict[str, Any] | None = None, body: bytes = b"") -> list[bytes]:
    m = json.dumps(meta, separators=(",", ":")).encode() if meta else b""
    return [_WORKER_HDR.pack(kind, tag, len(m), len(body)), m, body]


def write_frame(
    writer: asyncio.StreamWriter, kind: int, tag: int, meta: dict[str, Any] | None = None, body: bytes = b""
) -> None:
    """Queue one frame on ``writer`` (no copy of ``body``)."""
    writer.writelines(encode(kind, tag, meta, body))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, dict[str, Any], bytes]:
    """Read one frame; raises ``asyncio.IncompleteReadError`` at EOF."""
    kind, tag, mlen, blen = _WORKER_HDR.unpack(await reader.readexactly(_WORKER_HDR.size))
    meta = json.loads(await reader.readexactly(mlen)) if mlen else {}
    body = await reader.readexactly(blen) if blen else b""
    return kind, tag, meta, body


def client_frame(kind: int, payload: bytes) -> bytes:
    """One frame of the HTTP response stream a Python client reads."""
    return _CLIENT_HDR.pack(kind, len(payload)) + payload


def client_header(kind: int, length: int) -> bytes:
    return _CLIENT_HDR.pack(kind, length)


def parse_client_header(data: bytes) -> tuple[int, int]:
    return _CLIENT_HDR.unpack(data)
