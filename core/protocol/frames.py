"""The frames of a call's HTTP response, as a Python client reads them: ``!BI`` = kind, length; then the payload.

Kinds: ``L`` log event (JSON; one with a ``"report"`` key is a report, see ``tether.protocol.reports``), ``I``
generator item (pickle), ``R`` result (pickle), ``E`` error (JSON wire error), ``H`` heartbeat (empty, at least every 10 s while a call runs), ``F`` a RESULT/ITEM payload left in a same-host
shared-memory file (JSON ``{"kind", "path", "size"}``, plus ``"slab": true`` when it is in the caller's lent slab).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "CLIENT_HDR_SIZE", "ERROR", "FILE", "FINAL_KINDS", "HEARTBEAT", "ITEM", "LOG", "RESULT", "Frame",
    "FrameDecoder", "client_frame", "client_header", "decode_frames", "parse_client_header", "split_client_frames",
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


def split_client_frames(raw: bytes) -> list[Frame]:
    """The frames of a whole client response body, heartbeats included (``ValueError`` if it ends inside one)."""
    out: list[Frame] = []
    if decode_frames(bytes(raw), out) != len(raw):
        raise ValueError("the body ends inside a frame")
    return out


_new_frame = tuple.__new__  # Frame(kind, payload) without NamedTuple's Python-level __new__ (a frame per call)


def decode_frames(data: bytes, out: list[Frame]) -> int:
    """Append the whole frames at the start of ``data`` to ``out`` (heartbeats included); return how many bytes
    they took (what is left is the start of an unfinished frame)."""
    size, unpack, frame = _CLIENT_HDR.size, _CLIENT_HDR.unpack_from, _new_frame
    i, n = 0, len(data)
    while n - i >= size:
        kind, length = unpack(data, i)
        end = i + size + length
        if end > n:
            break
        out.append(frame(Frame, (kind, data[i + size:end])))
        i = end
    return i


class FrameDecoder:
    """Splits a byte stream that arrives in pieces into frames (no I/O: the transports feed it what they read).

    A piece that holds whole frames is split in place; only the bytes of an unfinished frame are held back.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Take the next bytes; return the frames they complete (heartbeats included)."""
        out: list[Frame] = []
        size, unpack, frame = _CLIENT_HDR.size, _CLIENT_HDR.unpack_from, _new_frame
        if not self._buf and type(data) is bytes:  # the common case: frames sliced straight out of what was read
            i = decode_frames(data, out)
            if i < len(data):
                self._buf += memoryview(data)[i:]
            return out
        buf = self._buf
        buf += data
        i, n = 0, len(buf)
        with memoryview(buf) as view:
            while n - i >= size:
                kind, length = unpack(view, i)
                end = i + size + length
                if end > n:
                    break
                out.append(frame(Frame, (kind, bytes(view[i + size:end]))))
                i = end
        del buf[:i]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held back."""
        return len(self._buf)

    @property
    def need(self) -> int:
        """Bytes still missing: to complete the header held back, else the frame it starts."""
        buf, size = self._buf, _CLIENT_HDR.size
        if len(buf) < size:
            return size - len(buf)
        return size + _CLIENT_HDR.unpack_from(buf, 0)[1] - len(buf)
