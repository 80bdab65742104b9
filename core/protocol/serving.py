"""What both tether HTTP servers (the daemon and the team registry) do with what reaches them from the network.

- JSON bodies are parsed by :func:`loads_json`: nesting past the interpreter's recursion limit and integers past
  its int-str conversion limit are a typed 400 ``SerializationError`` (``details.reason`` ``too_deep`` or
  ``int_too_long``), never a ``RecursionError``/``ValueError`` 500.
- A request aiohttp's parser refuses before any handler runs (a malformed request line, bad or oversized
  headers) or that breaks while its body is read (bad chunked encoding, a short body) is answered with the same
  ``{"error": {...}}`` JSON as every other error (:class:`JsonErrorsHandler`, :func:`input_error`); aiohttp
  itself offers no hook there (aio-libs/aiohttp#3287), hence the request handler subclass.

- Slow and idle peers (:class:`Server`): a connection must send a complete request head within the idle
  timeout after it opened or after its last answer (aiohttp's keep-alive timer covers both), and a server holds
  at most ``max_connections``. A connection past the cap makes room: first the oldest connections that have not
  sent a complete request head yet (slowloris) are closed with a 503 JSON error, then the oldest idle keep-alive
  connections, those that never passed authentication first; when every connection is busy with a request the
  new one is refused with a typed, retryable 503 (``ClusterUnavailable``, ``details.reason``
  ``too_many_connections``). The default cap stays below the open-file limit, so accepting never fails.

- :func:`serve_until_signalled`: the registry server and the local console bind, write their ready file and
  serve until SIGTERM/SIGINT the same way.

Only the daemon, the registry server and the console import this module (it needs ``aiohttp.web``).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tether.errors import ClusterUnavailable, SerializationError, TetherError

__all__ = [
    "IDLE_TIMEOUT", "MAX_SPEC_DEPTH", "JsonErrorsHandler", "Runner", "Server", "default_max_connections",
    "input_error", "loads_json", "mark_authenticated", "read_json", "serve_until_signalled",
]

log = structlog.get_logger("tether.serving")

_INT_LIMIT = "integer string conversion"  # the ValueError of int('9' * 5000) and of json.loads of it


#: nesting allowed in a spec or config body (deploy, registry saves): pydantic serializes ~250 levels at most,
#: and a config is stored, dumped and loaded again many times; call bodies go up to the recursion limit
MAX_SPEC_DEPTH = 100


def loads_json(body: bytes | bytearray | memoryview | str, max_depth: int | None = None) -> Any:
    """``json.loads``, with hostile-but-valid JSON refused as a typed ``SerializationError`` (400): nested
    deeper than ``max_depth`` (or than the interpreter's recursion limit allows), or holding an integer longer
    than its int-str conversion limit.

    Malformed JSON still raises ``json.JSONDecodeError`` (or ``UnicodeDecodeError``): each server words that
    one itself."""
    try:
        data = json.loads(bytes(body) if isinstance(body, bytearray | memoryview) else body)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as exc:
        if _INT_LIMIT in str(exc) and not isinstance(exc, json.JSONDecodeError):
            raise _int_too_long() from None
        raise
    if max_depth is not None and _deeper_than(data, max_depth):
        raise _too_deep(max_depth)
    return data


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether ``data`` (parsed JSON) nests lists and objects more than ``limit`` levels (no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return False


def _too_deep(limit: int | None = None) -> SerializationError:
    most = limit or f"about {sys.getrecursionlimit()}"
    return SerializationError(f"the JSON body is nested too deeply ({most} levels at most)",
                              hint="flatten the structure, or send it pickled",
                              details={"reason": "too_deep", "max_depth": limit})


def _int_too_long() -> SerializationError:
    return SerializationError(
        f"the JSON body holds an integer of more than {sys.get_int_max_str_digits()} digits",
        hint="send such a number as a string", details={"reason": "int_too_long"})


async def read_json(request: web.BaseRequest, max_depth: int | None = MAX_SPEC_DEPTH) -> Any:
    """The request's body parsed by :func:`loads_json` (a spec or config: ``MAX_SPEC_DEPTH`` levels)."""
    return loads_json(await request.read(), max_depth)


def input_error(exc: BaseException) -> TetherError | None:
    """The typed error for a failure that the request's bytes caused, raised while a handler read or used them
    (``None`` when ``exc`` is not one): a body that broke while being read (bad chunked encoding, a short body,
    a bad content encoding), JSON too deep or with an integer too long for the interpreter."""
    if isinstance(exc, HttpProcessingError):
        return SerializationError(f"malformed request body: {_what(exc)}",
                                  details={"reason": "malformed_http", "error": _kind(exc)})
    if isinstance(exc, RecursionError):
        return _too_deep()
    if isinstance(exc, ValueError) and _INT_LIMIT in str(exc):
        return _int_too_long()
    return None


#: what each parser error means, in words of our own: aiohttp's messages quote the refused bytes, and those may
#: be a credential (``Authorization: Bearer <token>\x00``), which must not be echoed or logged
_MEANING = {
    "LineTooLong": "a request line or header is longer than the server reads (8,190 bytes)",
    "BadStatusLine": "the request line is not 'METHOD /path HTTP/1.x'",
    "BadHttpMethod": "the method is not a valid token",
    "InvalidHeader": "a header name or value holds characters HTTP does not allow",
    "InvalidURLError": "the request target is not a valid URL",
    "TransferEncodingError": "the chunked transfer encoding is broken",
    "ContentLengthError": "the body is shorter than its Content-Length",
    "ContentEncodingError": "the body does not decode with its Content-Encoding",
    "BadHttpMessage": "the request head is malformed (headers, Content-Length or Transfer-Encoding)",
}


def _kind(exc: BaseException | None) -> str:
    return type(exc).__name__ if exc is not None else "BadHttpMessage"


def _what(exc: BaseException | None) -> str:
    for cls in type(exc).__mro__ if exc is not None else ():
        if cls.__name__ in _MEANING:
            return _MEANING[cls.__name__]
    return _MEANING["BadHttpMessage"]


IDLE_TIMEOUT = float(os.environ.get("TETHER_IDLE_TIMEOUT", "75"))  # to a complete request head (> clients' 60 s)


def default_max_connections() -> int:
    """Connections a server holds at once by default: ``$TETHER_MAX_CONNECTIONS``, else what the open-file
    limit leaves after room for the server's own files (workers, journal, database), at most 4,096. The soft
    limit is raised to the hard one first (up to 65,536)."""
    if os.environ.get("TETHER_MAX_CONNECTIONS"):
        return int(os.environ["TETHER_MAX_CONNECTIONS"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(8, min(4096, soft - max(64, soft // 8)))


def mark_authenticated(request: web.BaseRequest) -> None:
    """The request's connection passed authentication: when the server is full it is closed last."""
    handler = request.protocol
    if isinstance(handler, JsonErrorsHandler):
        handler.authenticated = True


def _full(limit: int, message: str) -> bytes:
    """A complete ``503`` answer refusing a connection over the cap."""
    err = ClusterUnavailable(message, hint="retry in a moment: the server is at its connection limit; callers "
                                          "that keep their connections busy or idle hold its places",
                             details={"reason": "too_many_connections", "limit": limit})
    body = json.dumps(err.to_wire()).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


class JsonErrorsHandler(web.RequestHandler):
    """aiohttp's connection handler, answering the requests its parser refuses with tether's JSON errors.

    The log line names the error's class only: the refused bytes may hold a credential (an over-long
    ``Authorization`` header), so no part of them is written to the log."""

    authenticated = False  # set by the app once a request on this connection passed authentication
    server: Server | None = None
    opened = 0.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.opened = self._loop.time()
        if self.server is not None:
            self.server.admit(self)

    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def head_pending(self) -> bool:
        """No complete request head has arrived on this connection yet."""
        return getattr(self, "_request_count", 1) == 0

    def idle(self) -> bool:
        """Between requests (keep-alive): nothing is being answered, nothing is queued."""
        return not getattr(self, "_request_in_progress", True) and not getattr(self, "_messages", True)

    def refuse(self, answer: bytes | None) -> None:
        """Close this connection, sending ``answer`` first."""
        if self.transport is not None and not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of a response went out: the connection is broken
            raise ConnectionError("a response was already being sent; cannot send an error after it")
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        log.warning("request_refused", status=status, error=type(exc).__name__ if exc else None,
                    peer=str(peer) if peer else None)
        err: TetherError
        if 400 <= status < 500:
            err = SerializationError(f"malformed HTTP request: {_what(exc)}", hint="send a well-formed HTTP/1.1 "
                                     "request", details={"reason": "malformed_http", "error": _kind(exc)})
        elif status == 504:
            err = TetherError("the request took too long", retryable=True)
        else:
            err = TetherError(f"internal error: {type(exc).__name__ if exc else 'unknown'}")
        resp = web.json_response(err.to_wire(), status=status)
        resp.force_close()
        return resp


def _expect_in_json(handler: Callable[[web.BaseRequest], Any]) -> Callable[[web.BaseRequest], Any]:
    """``handler`` answering an ``Expect`` header other than ``100-continue`` with a JSON 417: aiohttp checks it
    before any middleware runs and answers in plain text."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPExpectationFailed:
            err = SerializationError(f"unsupported Expect header {request.headers.get('Expect', '')[:64]!r}",
                                     hint="send no Expect header, or 'Expect: 100-continue'",
                                     details={"reason": "unsupported_expect"})
            return web.json_response(err.to_wire(), status=417)

    return handle


class Server(web.Server):
    """aiohttp's low-level server, with :class:`JsonErrorsHandler` for every connection and a connection cap
    (``max_connections``; 0: none)."""

    max_connections = 0

    @classmethod
    def like(cls, server: web.Server) -> Server:
        """This server class with everything ``server`` (made by an ``AppRunner``) was configured with."""
        return cls(_expect_in_json(server.request_handler), request_factory=server.request_factory,
                   handler_cancellation=server.handler_cancellation, loop=server._loop, **server._kwargs)

    def __call__(self) -> web.RequestHandler:
        handler = JsonErrorsHandler(self, loop=self._loop, **self._kwargs)
        handler.server = self
        return handler

    def admit(self, new: JsonErrorsHandler) -> None:
        """Make room for ``new`` when the server holds more than ``max_connections`` (see the module doc)."""
        limit = self.max_connections
        if not limit or len(self._connections) <= limit:
            return
        open_ = [h for h in self._connections if h is not new and isinstance(h, JsonErrorsHandler)
                 and not h.closing()]
        if len(open_) < limit:  # the others are closing already
            return
        pending = [h for h in open_ if h.head_pending()]
        if pending:
            victim = min(pending, key=lambda h: h.opened)
            log.warning("connection_evicted", reason="head_pending", limit=limit)
            victim.refuse(_full(limit, f"connection closed: the server holds its limit of {limit} connections and "
                                       "this one had not sent a complete request"))
            return
        idle = [h for h in open_ if h.idle()]
        if idle:
            victim = min(idle, key=lambda h: (h.authenticated, h.opened))
            log.info("connection_evicted", reason="idle", limit=limit)
            victim.refuse(None)  # an idle keep-alive connection: its client opens another
            return
        log.warning("connection_refused", limit=limit)
        new.refuse(_full(limit, f"connection refused: the server holds its limit of {limit} connections, "
                                "every one busy with a request"))


class Runner(web.AppRunner):
    """An ``AppRunner`` serving through :class:`Server`, holding at most ``max_connections`` (0: no cap) and
    closing a connection that sends no complete request head for ``idle_timeout`` seconds."""

    def __init__(self, app: web.Application, *, max_connections: int | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", idle_timeout)
        super().__init__(app, **kwargs)
        self.max_connections = default_max_connections() if max_connections is None else max_connections

    async def _make_server(self) -> web.Server:
        server = Server.like(await super()._make_server())
        server.max_connections = self.max_connections
        return server


async def serve_until_signalled(runner: web.AppRunner, host: str, port: int, ready_file: str | None,
                                bound: Callable[[int], dict[str, Any]]) -> None:
    """Serve ``runner``'s app on ``host:port`` (``0``: a free port) until SIGTERM/SIGINT, then clean up.

    Once listening, ``bound(port)`` is called (to log or print the address); the dict it returns is written,
    with ``port``, ``pid`` and ``url``, atomically and owner-only to ``ready_file`` (when given)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    actual = runner.addresses[0][1]
    extra = bound(actual)
    if ready_file:
        tmp = Path(ready_file + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"port": actual, "pid": os.getpid(), "url": f"http://{host}:{actual}", **extra}))
        tmp.replace(ready_file)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
