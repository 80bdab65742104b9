"""The frames of a call's HTTP response, as a Python client reads them: ``!BI`` = kind, length; then the payload.

Kinds: ``L`` log event (JSON), ``I`` generator item (pickle), ``R`` result (pickle), ``E`` error (JSON wire error),
``H`` heartbeat (empty, at least every 10 s while a call runs), ``F`` a RESULT/ITEM payload left in a same-host
shared-memory file (JSON ``{"kind", "path", "size"}``, plus ``"slab": true`` when it is in the caller's lent slab).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "CLIENT_HDR_SIZE", "ERROR", "FILE", "FINAL_KINDS", "HEARTBEAT", "ITEM", "LOG", "RESULT", "Frame",
    "FrameDecoder", "client_frame", "client_header", "parse_client_header", "split_client_frames",
]

LOG = ord("L")
ITEM = ord("I")
RESULT = ord("R")
ERROR = ord("E")
HEARTBEAT = ord("H")
FILE = ord("F")
FINAL_KINDS = frozenset({RESULT, ERROR})

_CLIENT_HDR = struct.Struct("!BI")
CLIENT_HDR_SIZE = _CLIENT_HDR.size


class Frame(NamedTuple):
    """One frame of a call's response stream."""

    kind: int
    payload: bytes


def client_frame(kind: int, payload: bytes) -> bytes:
    """One frame of the HTTP response stream a Python client reads."""
    return _CLIENT_HDR.pack(kind, len(payload)) + payload


def client_header(kind: int, length: int) -> bytes:
    return _CLIENT_HDR.pack(kind, length)


def parse_client_header(data: bytes) -> tuple[int, int]:
    return _CLIENT_HDR.unpack(data)


def split_client_frames(raw: bytes) -> list[tuple[int, bytes]]:
    """The frames of a whole client response body, heartbeats included."""
    out = []
    size = _CLIENT_HDR.size
    i = 0
    while i < len(raw):
        kind, length = _CLIENT_HDR.unpack_from(raw, i)
        i += size
        out.append((kind, raw[i : i + length]))
        i += length
    return out


class FrameDecoder:
    """Splits a byte stream that arrives in pieces into frames (no I/O: the transports feed it what they read)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        """Take the next bytes; return the frames they complete (heartbeats included)."""
        self._buf += data
        out: list[Frame] = []
        buf, i, size = self._buf, 0, _CLIENT_HDR.size
        while len(buf) - i >= size:
            kind, length = _CLIENT_HDR.unpack_from(buf, i)
            if len(buf) - i - size < length:
                break
            out.append(Frame(kind, bytes(buf[i + size:i + size + length])))
            i += size + length
        del buf[:i]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held back."""
        return len(self._buf)
