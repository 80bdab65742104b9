"""HTTP/1.1 as the client speaks it to a daemon, without I/O: the request head, the response head, and a
response body (``Content-Length`` or chunked) turned incrementally into bytes or call frames.

Both lean transports (:mod:`tether.client.wire`, asyncio; :mod:`tether.client.syncwire`, blocking sockets) read
with their own I/O and feed what they read to these parsers, so chunked decoding and frame splitting exist once.
A parser raises ``ValueError`` for bytes that are not the HTTP the daemon speaks (the transports count that as a
dropped link).
"""

from __future__ import annotations

import struct
from urllib.parse import urlsplit

from tether.protocol.frames import ITEM, RESULT, Frame, FrameDecoder, decode_frames

__all__ = ["FRAME_HEAD", "PICKLED", "READ_SIZE", "BodyReader", "ChunkedDecoder", "body_length", "encode_head",
           "host_of", "parse_status_and_headers"]

READ_SIZE = 256 * 1024
"""How much a transport asks for at a time when the body's end is not known (chunked)."""
_MAX_LINE = 4096

_hosts: dict[str, str] = {}


def host_of(endpoint: str) -> str:
    """The ``Host`` header for an endpoint (``http://127.0.0.1:8080`` → ``127.0.0.1:8080``), cached."""
    host = _hosts.get(endpoint)
    if host is None:
        if len(_hosts) > 1024:
            _hosts.clear()
        host = _hosts[endpoint] = urlsplit(endpoint).netloc or "localhost"
    return host


def encode_head(endpoint: str, method: str, path: str, headers: dict[str, str], body_length: int) -> bytes:
    """The request line and headers of one HTTP/1.1 request, ready to send."""
    head = [f"{method} {path} HTTP/1.1\r\nHost: {host_of(endpoint)}\r\nContent-Length: {body_length}\r\n"]
    head += [f"{k}: {v}\r\n" for k, v in headers.items()]
    head.append("\r\n")
    return "".join(head).encode("latin-1")


def parse_status_and_headers(head: bytes) -> tuple[int, dict[str, str]]:
    """The status code and (lower-cased) headers of a response head (up to and including the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


def body_length(headers: dict[str, str]) -> int | None:
    """The body's ``Content-Length``, or None for a chunked body; ``ValueError`` for neither (the daemon always
    sends one of the two)."""
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ValueError(f"bad Content-Length {length[:40]!r}")
        return int(length)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return None
    raise ValueError("response with neither Content-Length nor chunked encoding")


_BIG = 1024 * 1024
PICKLED = frozenset({RESULT, ITEM})
"""The kinds of frame whose payload is a pickle."""
FRAME_HEAD = struct.Struct("!BI")
"""A frame's head: kind, payload length."""


def _split_big(data: bytes | bytearray, out: list[Frame]) -> int:
    """:func:`tether.protocol.frames.decode_frames` for a big body: a pickled payload of 1 MiB or more is a view
    of ``data``, not a copy (100 MB: ~0.1 s less per call), the other frames' payloads are ``bytes``; returns the
    bytes the whole frames took."""
    i, n, size = 0, len(data), FRAME_HEAD.size
    view = memoryview(data)
    while n - i >= size:
        kind, length = FRAME_HEAD.unpack_from(data, i)
        end = i + size + length
        if end > n:
            break
        payload = view[i + size:end] if length >= _BIG and kind in PICKLED else bytes(view[i + size:end])
        out.append(Frame(kind, payload))  # type: ignore[arg-type]  # a view, read like bytes (pickle.loads)
        i = end
    return i


_SIZE, _DATA, _CRLF, _TRAILER = range(4)
_NONE: list[Frame] = []  # shared and never appended to: an empty list without an allocation per response


class ChunkedDecoder:
    """Chunked transfer coding in, body bytes out: :meth:`feed` takes what was read and returns the body pieces it
    completes (views of the input where possible); :attr:`done` once the last chunk and the trailers are in."""

    __slots__ = ("_held", "_left", "_state", "done", "extra")

    def __init__(self) -> None:
        self._held = b""  # an unfinished size, CRLF or trailer line
        self._left = 0  # bytes of the current chunk still to come
        self._state = _SIZE
        self.done = False
        self.extra = 0  # bytes after the body's end (none from a daemon: the connection is then not reused)

    def feed(self, data: bytes | memoryview) -> list[memoryview]:
        """Take the next bytes read; return the body pieces they complete."""
        buf = self._held + data if self._held else (data if isinstance(data, bytes) else bytes(data))
        self._held = b""
        view = memoryview(buf)
        out: list[memoryview] = []
        i, n = 0, len(buf)
        while i < n:
            if self.done:
                self.extra += n - i
                break
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                out.append(view[i:i + take])
                i += take
                self._left -= take
                if not self._left:
                    self._state = _CRLF
            elif state == _CRLF:
                if n - i < 2:
                    break
                if buf[i:i + 2] != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
                i += 2
                self._state = _SIZE
            else:  # a size line, or a trailer line (an empty one ends the body)
                end = buf.find(b"\r\n", i, i + _MAX_LINE)
                if end < 0:
                    if n - i >= _MAX_LINE:
                        raise ValueError("a chunk size or trailer line over 4 KiB")
                    break
                line = buf[i:end]
                i = end + 2
                if state == _TRAILER:
                    self.done = not line
                    continue
                size = line.split(b";", 1)[0].strip()
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise ValueError(f"bad chunk size {size[:20]!r}") from None
                if self._left < 0:
                    raise ValueError("negative chunk size")
                self._state = _DATA if self._left else _TRAILER
        if i < n and not self.done:
            self._held = buf[i:]
        return out


class BodyReader:
    """One response body, fed as it is read: raw bytes in, the body (:meth:`feed_bytes`) or its call frames
    (:meth:`feed_frames`) out; or, kept here until asked for, :meth:`feed` then :meth:`next_frame` / :meth:`take`.
    :meth:`want` says how much to read next: a ``Content-Length`` body is never read past its end, so the
    connection stays usable for the next request."""

    __slots__ = ("_chunks", "_frames", "_i", "_parts", "_ready", "done", "length")

    def __init__(self, headers: dict[str, str]) -> None:
        length = body_length(headers)
        self._chunks = ChunkedDecoder() if length is None else None
        self.length = length
        """Bytes of a ``Content-Length`` body still to come (None: chunked)."""
        self._frames: FrameDecoder | None = None
        self._ready: list[Frame] = _NONE
        self._i = 0
        self._parts: list[bytes | memoryview] = _NONE  # type: ignore[assignment]
        self.done = length == 0

    def feed(self, data: bytes | memoryview, framed: bool) -> None:
        """Take what was read: its frames wait for :meth:`next_frame` (``framed``), else its bytes for
        :meth:`take`."""
        if framed:
            frames = self.feed_frames(data)
            if self._i == len(self._ready):
                self._ready, self._i = frames, 0
            else:
                self._ready += frames
        elif self._parts is _NONE:
            self._parts = self.feed_bytes(data)
        else:
            self._parts += self.feed_bytes(data)

    def next_frame(self) -> Frame | None:
        """A frame fed and not yet taken (None: read more, unless the body is :attr:`done`)."""
        if self._i == len(self._ready):
            return None
        self._i += 1
        return self._ready[self._i - 1]

    def take(self) -> bytes:
        """The bytes fed so far."""
        parts, self._parts = self._parts, _NONE  # type: ignore[assignment]
        return parts[0] if len(parts) == 1 and isinstance(parts[0], (bytes, bytearray)) else b"".join(parts)

    @property
    def at_boundary(self) -> bool:
        """Nothing of a frame read yet and no frame waiting: the next byte read starts a frame."""
        return self._i == len(self._ready) and (self._frames is None or not self._frames.pending)

    def streamed_head(self, head: bytes, threshold: int) -> tuple[int, int, bool] | None:
        """A transport streaming a ``Content-Length`` body read ``head`` (:data:`FRAME_HEAD`) :attr:`at_boundary`:
        the frame's kind and payload size, and whether it is a pickled frame of at least ``threshold`` bytes that
        the transport hands out still in the socket (then :meth:`skip_frame`; else it reads the payload and
        feeds ``head`` + payload). None when the frame is bigger than the body: ``head`` is fed, and the
        ordinary way then says what is wrong."""
        kind, size = FRAME_HEAD.unpack(head)
        assert self.length is not None
        if len(head) + size > self.length:
            self.feed(head, True)
            return None
        return kind, size, kind in PICKLED and size >= threshold

    def skip_frame(self, frame: Frame, size: int) -> None:
        """Count a frame of ``size`` bytes (its head included) as read: the transport reads its payload itself
        (streamed); ``frame`` waits for :meth:`next_frame`. Only :attr:`at_boundary` of a ``Content-Length``
        body."""
        assert self.length is not None and self.at_boundary and size <= self.length
        self.length -= size
        self.done = not self.length
        self._ready, self._i = [frame], 0

    @property
    def reusable(self) -> bool:
        """The body is complete and nothing followed it: the connection may carry the next request."""
        return self.done and (self._chunks is None or not self._chunks.extra)

    def want(self) -> int:
        if self.length is not None:
            return self.length
        if self._frames is not None and self._frames.pending:
            return max(READ_SIZE, self._frames.need)
        return READ_SIZE

    def feed_bytes(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        """Raw bytes in, body bytes out."""
        if self.length is not None:
            if len(data) > self.length:
                raise ValueError("more bytes than the Content-Length")
            self.length -= len(data)
            self.done = not self.length
            return [data]
        assert self._chunks is not None
        pieces: list[bytes | memoryview] = list(self._chunks.feed(data))
        self.done = self._chunks.done
        return pieces

    def feed_frames(self, data: bytes | memoryview) -> list[Frame]:
        """Raw bytes in, the call frames they complete out (heartbeats included); ``ValueError`` if the body
        ends inside a frame."""
        frames = self._frames
        if self.length is not None:
            if len(data) > self.length:
                raise ValueError("more bytes than the Content-Length")
            self.length -= len(data)
            self.done = not self.length
            if frames is None and self.done and type(data) in (bytes, bytearray):  # the whole body in one read
                out: list[Frame] = []
                small = len(data) < _BIG and type(data) is bytes
                if (decode_frames(data, out) if small else _split_big(data, out)) != len(data):  # type: ignore[arg-type]
                    raise ValueError("the response ended inside a frame")
                return out
        if frames is None:
            frames = self._frames = FrameDecoder()
        if self.length is not None:
            out = frames.feed(data)
        else:
            assert self._chunks is not None
            out = []
            for piece in self._chunks.feed(data):
                out += frames.feed(piece)
            self.done = self._chunks.done
        if self.done and frames.pending:
            raise ValueError("the response ended inside a frame")
        return out
