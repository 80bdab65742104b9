"""The I/O-free HTTP/1.1 parsers both lean transports share: heads, Content-Length and chunked bodies, frames."""

from __future__ import annotations

import random

import pytest

from tether.client.http11 import (
    BodyReader,
    ChunkedDecoder,
    body_length,
    encode_head,
    parse_status_and_headers,
)
from tether.protocol.frames import FrameDecoder, client_frame, split_client_frames


def _frames(rng: random.Random, n: int = 60) -> bytes:
    return b"".join(client_frame(rng.choice(b"LIRHF"), rng.randbytes(rng.randrange(4000))) for _ in range(n))


def _chunked(rng: random.Random, body: bytes) -> bytes:
    out, i = [], 0
    while i < len(body):
        j = i + rng.randrange(1, 7000)
        out.append(b"%x%s\r\n%s\r\n" % (len(body[i:j]), rng.choice([b"", b";ext=1"]), body[i:j]))
        i = j
    return b"".join(out) + b"0\r\n\r\n"


def _pieces(rng: random.Random, data: bytes, most: int = 9000) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        j = i + rng.randrange(1, most)
        out.append(data[i:j])
        i = j
    return out


def test_request_head_and_response_head():
    head = encode_head("http://127.0.0.1:8080", "POST", "/f/call", {"X-Tether-Call-Id": "c1"}, 5)
    assert head == (b"POST /f/call HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 5\r\n"
                    b"X-Tether-Call-Id: c1\r\n\r\n")
    status, headers = parse_status_and_headers(b"HTTP/1.1 202 Accepted\r\nX-Tether-Call-Id: c1\r\n"
                                               b"Content-Length: 0\r\n\r\n")
    assert status == 202 and headers == {"x-tether-call-id": "c1", "content-length": "0"}
    with pytest.raises(ValueError):
        parse_status_and_headers(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_a_body_is_content_length_or_chunked_and_nothing_else():
    assert body_length({"content-length": "12"}) == 12
    assert body_length({"transfer-encoding": "chunked"}) is None
    for bad in ({}, {"content-length": "-1"}, {"content-length": "x"}):
        with pytest.raises(ValueError):
            body_length(bad)


@pytest.mark.parametrize("seed", range(20))
def test_chunked_frames_split_the_same_whatever_the_reads(seed: int):
    rng = random.Random(seed)
    raw = _frames(rng)
    body = BodyReader({"transfer-encoding": "chunked"})
    got = []
    for piece in _pieces(rng, _chunked(rng, raw)):
        got += body.feed_frames(piece)
    assert body.done and body.reusable
    assert [tuple(f) for f in got] == split_client_frames(raw)


@pytest.mark.parametrize("seed", range(5))
def test_a_content_length_body_is_never_read_past_its_end(seed: int):
    rng = random.Random(seed)
    raw = _frames(rng)
    body = BodyReader({"content-length": str(len(raw))})
    got, i = [], 0
    while not body.done:
        n = min(body.want(), rng.randrange(1, 9000))
        assert body.want() == len(raw) - i
        got += body.feed_frames(raw[i:i + n])
        i += n
    assert i == len(raw) and [tuple(f) for f in got] == split_client_frames(raw)
    with pytest.raises(ValueError):
        BodyReader({"content-length": "3"}).feed_bytes(b"four")


def test_chunked_bytes_and_what_is_not_chunked():
    dec = ChunkedDecoder()
    out = b"".join(bytes(p) for p in dec.feed(b"5\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"))
    assert out == b"hello world" and dec.done and not dec.extra
    dec = ChunkedDecoder()
    dec.feed(b"1\r\na\r\n0\r\n\r\nEXTRA")
    assert dec.done and dec.extra == 5  # the connection is not reused then
    for bad in (b"zz\r\n", b"3\r\nabcXY", b"1" * 5000):
        with pytest.raises(ValueError):
            ChunkedDecoder().feed(bad)


def test_a_body_that_ends_inside_a_frame_is_an_error():
    raw = client_frame(ord("R"), b"x" * 10)[:-3]
    with pytest.raises(ValueError, match="inside a frame"):
        BodyReader({"content-length": str(len(raw))}).feed_frames(raw)


def test_the_frame_decoder_keeps_only_an_unfinished_frame():
    dec = FrameDecoder()
    frame = client_frame(ord("L"), b"abc")
    assert dec.feed(frame + frame[:4]) == [(ord("L"), b"abc")]
    assert dec.pending == 4 and dec.need == 1  # the rest of the header first
    assert dec.feed(memoryview(frame[4:6])) == [] and dec.need == len(frame) - 6  # then the rest of the frame
    assert dec.feed(bytearray(frame[6:])) == [(ord("L"), b"abc")] and dec.pending == 0
