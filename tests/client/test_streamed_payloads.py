"""Big payloads without a copy on the client: arguments pickled into :class:`tether.client.payloads.Pieces` (a big
buffer is sent from itself) and a big pickled frame of a response read by the unpickler straight from the socket
(:class:`tether.client.syncwire.StreamedPayload`). Scripted servers on real sockets: every byte arrives, the
connection carries the next request, and a payload cut short is a dropped link (not an unpickling error), a bad one
an unpickling error that closes the connection."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
from typing import Any

import pytest

from tests.client.servers import read_request, response, serve
from tether.client import Dropped
from tether.client.payloads import Pieces, dump_pieces, dumps_args, loads
from tether.client.syncwire import StreamedPayload, SyncTransport
from tether.client.wire import AsyncTransport
from tether.errors import SerializationError
from tether.protocol.frames import client_frame

MB = 1024 * 1024


def test_pieces_hold_a_big_argument_itself_and_join_to_the_same_pickle() -> None:
    big = os.urandom(3 * MB)
    mutable = bytearray(os.urandom(2 * MB))
    args, kwargs = (big, 7, "x"), {"buf": mutable, "n": [1, 2]}
    pieces = dump_pieces(args, kwargs)
    assert any(part is big for part in pieces.parts)  # sent from the caller's own bytes
    assert any(isinstance(part, memoryview) and part.obj is mutable for part in pieces.parts)
    assert len(pieces) == sum(len(p) for p in pieces.parts)
    assert bytes(pieces) == dumps_args(args, kwargs)
    assert pickle.loads(bytes(pieces)) == (args, kwargs)


def _answers(payloads: list[bytes], seen: list[int]) -> Any:
    """Answers the n-th request (on any connection) with a RESULT frame of ``payloads[n]`` (a log frame first)."""
    left = iter(payloads)

    def script(conn: socket.socket, n: int) -> None:
        seen.append(n)
        while read_request(conn):
            payload = next(left)
            body = client_frame(ord("L"), b'{"text": "x"}') + client_frame(ord("R"), payload)
            conn.sendall(response(200, body))
    return script


def _frames(t: SyncTransport) -> list[tuple[int, Any]]:
    resp = t.send("POST", "/x/call", {})
    try:
        out = []
        while (frame := resp.next_frame()) is not None:
            kind, payload = frame
            out.append((kind, loads(payload) if kind == ord("R") else payload))
        return out
    finally:
        resp.close()


def test_a_big_result_is_unpickled_from_the_socket_and_the_connection_is_reused() -> None:
    values = [os.urandom(5 * MB), {"a": os.urandom(2 * MB), "b": list(range(1000))}, b"small"]
    seen: list[int] = []
    with serve(_answers([pickle.dumps(v, protocol=5) for v in values], seen)) as endpoint:
        t = SyncTransport(endpoint)
        got = [_frames(t) for _ in values]
    assert [frames[1][1] for frames in got] == values
    assert all(frames[0] == (ord("L"), b'{"text": "x"}') for frames in got)
    assert seen == [0]  # one connection carried all three


def test_a_streamed_payload_left_unread_is_skipped_and_the_connection_still_serves() -> None:
    big = pickle.dumps(os.urandom(3 * MB), protocol=5)
    seen: list[int] = []
    with serve(_answers([big, pickle.dumps(b"next")], seen)) as endpoint:
        t = SyncTransport(endpoint)
        resp = t.send("POST", "/x/call", {})
        kinds = []
        while (frame := resp.next_frame()) is not None:
            kinds.append(frame[0])
            if frame[0] == ord("R"):
                assert isinstance(frame[1], StreamedPayload) and len(frame[1]) == len(big)
        resp.close()
        assert kinds == [ord("L"), ord("R")]
        assert _frames(t)[1][1] == b"next"
    assert seen == [0]


def test_a_big_result_cut_short_is_a_dropped_link() -> None:
    payload = pickle.dumps(os.urandom(4 * MB), protocol=5)

    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        whole = response(200, client_frame(ord("R"), payload))
        conn.sendall(whole[: len(whole) // 2])  # then the connection closes

    with serve(script) as endpoint, pytest.raises(Dropped):
        _frames(SyncTransport(endpoint))


def test_a_bad_big_pickle_is_an_unpickling_error_and_its_connection_is_not_reused() -> None:
    bad = b"\x80\x05" + b"\xff" * (2 * MB)  # no opcode 0xff: the unpickler stops at once
    seen: list[int] = []
    with serve(_answers([bad, pickle.dumps(b"after")], seen)) as endpoint:
        t = SyncTransport(endpoint)
        with pytest.raises(SerializationError, match="could not unpickle"):
            _frames(t)
        assert _frames(t)[1][1] == b"after"
    assert seen == [0, 1]  # the connection with a payload half read was closed; a new one served the next


def test_pieces_are_sent_whole_by_both_transports() -> None:
    """A big body goes whole from the caller's buffers: the sync transport's ``sendall``, the async one's
    off-loop thread (``tether.client.offloop``), as pieces or as one ``bytes``."""
    big, other = os.urandom(3 * MB), bytearray(os.urandom(2 * MB))
    pieces = dump_pieces((big,), {"x": other})
    bodies: list[bytes] = []

    def script(conn: socket.socket, n: int) -> None:
        while request := read_request(conn):
            bodies.append(request.partition(b"\r\n\r\n")[2])
            conn.sendall(response(200, b""))

    with serve(script) as endpoint:
        SyncTransport(endpoint).send("POST", "/x", {}, pieces).close()

        async def go() -> None:
            t = AsyncTransport(endpoint)
            (await t.asend("POST", "/x", {}, pieces)).close()
            (await t.asend("POST", "/x", {}, bytes(pieces))).close()

        asyncio.run(go())
    assert bodies == [bytes(pieces)] * 3
    assert isinstance(pieces, Pieces)


def test_a_link_dropped_inside_a_streamed_result_leaves_the_call_to_be_resumed() -> None:
    """The outcome does not count a frame it could not read: the resumed attempt asks for it again."""
    from tether.client.outcome import Outcome

    class Cut:
        def readinto(self, buf: Any) -> int:
            raise Dropped("the link dropped")

        def read(self, n: int = -1) -> bytes:
            raise Dropped("the link dropped")

        def readline(self, n: int = -1) -> bytes:
            raise Dropped("the link dropped")

    out = Outcome(None)
    out.feed(ord("L"), b'{"text": "x"}')
    with pytest.raises(Dropped):
        out.feed(ord("R"), Cut())  # type: ignore[arg-type]
    assert out.seen == 1 and not out.final and not out.done
