"""An in-process transport for tests: a function plays the daemon, no socket, no process.

::

    def daemon(request: MockRequest) -> MockResponse:
        if request.path == "/add/call":
            args, kwargs = request.call_args()
            return MockResponse.result(sum(args), logs=[{"text": "adding\\n"}])
        return MockResponse.json({"status": "ok"})

    client = DaemonClient("http://mock", transport=MockTransport(daemon))
    assert client.call_sync("add", None, (1, 2), {}, call_id="c1") == 3

or, for code that builds its own clients (``tether.cluster(endpoint=...)``), ``with mount("http://mock",
MockTransport(daemon)): ...``. The handler may also return a dict (a JSON 200), a ``(status, headers, body)``
tuple, or raise a tether error (``Dropped``, ``Unreachable``: what a broken link would raise).
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tether.client.transport import dropped
from tether.errors import TetherError
from tether.protocol import frames as p
from tether.protocol import headers as h
from tether.protocol.frames import Frame, FrameDecoder

__all__ = ["MockRequest", "MockResponse", "MockTransport"]


@dataclass(frozen=True)
class MockRequest:
    """What the client sent: method, path (with its query), headers and body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def route(self) -> str:
        """The path without its query string."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.path).query))

    @property
    def call_id(self) -> str | None:
        return self.headers.get(h.CALL_ID)

    @property
    def spawn(self) -> bool:
        """A call sent with ``Prefer: respond-async`` (answer ``MockResponse.spawned(call_id)``)."""
        return h.wants_async(self.headers.get(h.PREFER))

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def call_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The ``(args, kwargs)`` of a call (pickle or JSON body)."""
        if self.headers.get("Content-Type") == h.PICKLE:
            args, kwargs = pickle.loads(self.body)
            return tuple(args), dict(kwargs)
        data = self.json() or {}
        return tuple(data.get("args", ())), dict(data.get("kwargs", {}))


@dataclass
class MockResponse:
    """What the daemon answers: a status, headers and a body (a call's answer is a body of frames).

    ``drop_after=n``: the link breaks after the body's first ``n`` frames (the client sees ``Dropped``, as for a
    real connection that went down mid-call).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    drop_after: int | None = None

    def dropping_after(self, n: int) -> MockResponse:
        """This answer, with the link breaking after its first ``n`` frames."""
        return MockResponse(self.status, self.headers, self.body, n)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> MockResponse:
        return cls(status, {"content-type": h.JSON}, json.dumps(data).encode())

    @classmethod
    def error(cls, exc: TetherError) -> MockResponse:
        """A tether error as the daemon sends it (its HTTP status, the wire JSON)."""
        return cls.json(exc.to_wire(), status=exc.status if exc.status >= 400 else 422)

    @classmethod
    def frames(cls, frames: Iterable[tuple[int, bytes]]) -> MockResponse:
        """A call's answer: frames (``tether.protocol.frames`` kinds and payloads)."""
        return cls(200, {"content-type": h.FRAMES}, b"".join(p.client_frame(k, v) for k, v in frames))

    @classmethod
    def result(cls, value: Any, *, logs: Iterable[dict[str, Any]] = (), items: Iterable[Any] = ()) -> MockResponse:
        """A call that logged ``logs``, yielded ``items`` and returned ``value``."""
        import cloudpickle  # here: off a fresh process's imports
        out = [(p.LOG, json.dumps(e).encode()) for e in logs]
        out += [(p.ITEM, cloudpickle.dumps(i)) for i in items]
        return cls.frames([*out, (p.RESULT, cloudpickle.dumps(value))])

    @classmethod
    def raised(cls, exc: BaseException, *, logs: Iterable[dict[str, Any]] = ()) -> MockResponse:
        """A call whose remote code raised ``exc`` (rebuilt as itself on the client)."""
        import cloudpickle  # here: off a fresh process's imports
        wire = exc.to_wire()["error"] if isinstance(exc, TetherError) else {
            "type": type(exc).__name__, "message": str(exc)}
        wire["exc"] = base64.b64encode(cloudpickle.dumps(exc)).decode()
        out = [(p.LOG, json.dumps(e).encode()) for e in logs]
        return cls.frames([*out, (p.ERROR, json.dumps({"error": wire}).encode())])

    @classmethod
    def spawned(cls, call_id: str, state: str = "running") -> MockResponse:
        """The daemon's answer to a spawn: the call is registered."""
        return cls(202, {"content-type": h.JSON, h.CALL_ID.lower(): call_id},
                   json.dumps({"call_id": call_id, "state": state}).encode())


Handler = Callable[[MockRequest], "MockResponse | dict[str, Any] | tuple[int, dict[str, str], bytes]"]


class _Answer:
    """A :class:`MockResponse` read through the transport interface (sync and async)."""

    __slots__ = ("_drop_after", "_frames", "_i", "body", "headers", "status")

    def __init__(self, resp: MockResponse) -> None:
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.headers.items()}
        self.body = resp.body
        self._drop_after = resp.drop_after
        self._frames: list[Frame] | None = None
        self._i = 0

    def read(self) -> bytes:
        if self._drop_after is not None:
            raise dropped("mock://", ConnectionResetError("the mock link dropped mid-body"))
        return self.body

    def next_frame(self) -> Frame | None:
        if self._frames is None:
            decoder = FrameDecoder()
            self._frames = decoder.feed(self.body)
            if decoder.pending:
                raise ValueError("a MockResponse body that ends inside a frame")
        if self._i == self._drop_after:
            raise dropped("mock://", ConnectionResetError(f"the mock link dropped after {self._i} frames"))
        if self._i == len(self._frames):
            return None
        self._i += 1
        return self._frames[self._i - 1]

    async def aread(self) -> bytes:
        return self.read()

    async def anext_frame(self, off_loop: bool = False) -> Frame | None:  # (frames come whole here)
        return self.next_frame()

    def close(self) -> None:
        pass


class MockTransport:
    """A sync and async transport that answers every request with ``handler(request)``; the requests it saw are
    kept in :attr:`requests`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"", *,
             timeout: float | None = None) -> _Answer:
        request = MockRequest(method, path, dict(headers), bytes(body))
        self.requests.append(request)
        answer = self.handler(request)
        if isinstance(answer, dict):
            answer = MockResponse.json(answer)
        elif isinstance(answer, tuple):
            answer = MockResponse(*answer)
        return _Answer(answer)

    async def asend(self, method: str, path: str, headers: dict[str, str], body: bytes = b"", *,
                    timeout: float | None = None) -> _Answer:
        return self.send(method, path, headers, body, timeout=timeout)

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
