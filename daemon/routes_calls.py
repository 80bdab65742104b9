"""The call routes: ``POST /{name}/call`` and ``/{name}/{method}/call`` (also ``GET`` with query parameters as
keyword arguments), answered with frames or JSON, and ``/calls/{id}`` (re-attach, logs, cancel)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

from aiohttp import web

from tether.daemon import bodies, result_pool, slabs
from tether.daemon import protocol as p
from tether.daemon.auth import GRANT_KEY
from tether.daemon.calls import FINAL, Call, frame_body, present
from tether.daemon.middleware import DAEMON, _name, _over_unix_socket, http_status
from tether.daemon.state import _as_error
from tether.errors import (
    AuthError,
    ConfigError,
    NotFound,
    SerializationError,
    WorkerDied,
)
from tether.protocol import headers as h
from tether.protocol.headers import PREFER, RESPOND_ASYNC, wants_async
from tether.protocol.serving import loads_json

HEARTBEAT_SECONDS = 10.0


async def call(request: web.Request) -> web.StreamResponse:
    d = request.app[DAEMON]
    name = _name(request)
    method = request.match_info.get("method")
    if method is not None and (not method.isidentifier() or (method.startswith("_") and method not in ("__getattr__", "__setattr__"))):
        raise ConfigError(f"invalid method name {method!r}")
    json_mode = request.content_type != h.PICKLE
    call_id = request.headers.get(h.CALL_ID) or uuid.uuid4().hex
    if len(call_id) > 200:
        raise ConfigError(f"{h.CALL_ID} is longer than 200 characters")
    shm = request.headers.get(h.SHM)
    lent = _lent_slabs(request, json_mode)
    spawn = wants_async(request.headers.get(PREFER))
    if spawn and lent:
        raise ConfigError(f"a spawned call (Prefer: {RESPOND_ASYNC}) lends no slab: its caller does not wait for "
                          "the worker to be done with it", hint="send the arguments in the body")
    reply = _spawned if spawn else respond
    _take_back_received(request, d)
    arg_file = _claim_arg_file(request, shm, json_mode) if shm is not None else None
    existing = d.calls.attachable(call_id)  # a call lost in a daemon restart runs again
    grant = request.get(GRANT_KEY)
    if existing is not None:
        if arg_file is not None:
            p.unlink_quietly(arg_file)
        starter = d.starter_of(call_id)
        if grant is not None and starter is not None and starter != grant.token_sha256:
            raise AuthError(f"call id {call_id!r} was started by another principal: it attaches only its starter",
                            hint="use a call id of your own (a new one for a new call)")
        if existing.service != name or existing.method != method:
            raise ConfigError(f"call id {call_id!r} belongs to {existing.service}.{existing.method or '__call__'}",
                              hint="use a new call id for a different service")
        return await reply(request, existing)
    d.note_starter(call_id, grant)
    if grant is not None and d.starter_of(call_id) != grant.token_sha256:  # another's, on its way to the worker
        if arg_file is not None:
            p.unlink_quietly(arg_file)
        raise AuthError(f"call id {call_id!r} was started by another principal: it attaches only its starter",
                        hint="use a call id of your own (a new one for a new call)")
    expect = request.headers.get(h.EXPECT)
    if expect is not None:
        try:
            d.check_expected(name, expect)
        except NotFound:
            if arg_file is not None:
                p.unlink_quietly(arg_file)
            raise
    if arg_file is not None or "_lent" in lent:
        return await reply(request, await d.start_call(call_id, name, method, b"", json_mode, arg_file, lent))
    if not json_mode and (big := await bodies.receive_args(request, d.max_body)) is not None:  # TCP: a reused file
        started: Call | None = None
        try:
            lent, pooled = _lend_result_file(request, name, method, json_mode, spawn, {**lent, **big.lent()})
            started = await d.start_call(call_id, name, method, b"", json_mode, None, lent, pooled)
        finally:
            bodies.release_when_done(started, big)  # back to the pool once the call ended (removed if it never ran)
        assert started is not None
        return await reply(request, started)
    body = query_body(request) if request.method == "GET" else await bodies.read_body(request, d.max_body)
    if not json_mode and body and (body[:1] != b"\x80" or body[-1:] != b"."):  # PROTO ... STOP
        raise SerializationError("the body is not a pickle", hint="send cloudpickle.dumps((args, kwargs)) or JSON")
    if json_mode and body:
        try:
            loads_json(body)
        except ValueError as exc:
            raise SerializationError(f"the body is neither cloudpickle ({h.PICKLE}) nor JSON: {exc}") from None
    lent, pooled = _lend_result_file(request, name, method, json_mode, spawn, lent)
    return await reply(request, await d.start_call(call_id, name, method, body, json_mode, lent=lent, pooled=pooled))


def _lend_result_file(request: web.Request, name: str, method: str | None, json_mode: bool, spawn: bool,
                      lent: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A private call (``X-Tether-Private``) from a client not on this host, to a target that returned big results
    before, gets one of the daemon's reusable result files (``tether.daemon.result_pool``)."""
    if (json_mode or spawn or "_slab" in lent or request.headers.get(h.PRIVATE) != "1"
            or not result_pool.wants(name, method) or _over_unix_socket(request)):
        return lent, None
    pooled = result_pool.POOL.take()
    # _fill: the worker may answer before the file is written, and write it while the daemon sends it
    return ({**lent, "_slab": pooled, "_fill": True}, pooled) if pooled is not None else (lent, None)


def _take_back_received(request: web.Request, d: Any) -> None:
    """The private calls whose results this caller received whole (``X-Tether-Received``): their files go back to
    the pool. Only the principal that started a call can say so."""
    ids = request.headers.get(h.RECEIVED)
    if not ids:
        return
    grant = request.get(GRANT_KEY)
    for call_id in ids.split(",")[:64]:
        call = d.calls.get(call_id.strip())
        if call is None or call.pooled is None or not call.done:  # a running call's worker may be writing into it
            continue
        starter = d.starter_of(call.call_id)
        if grant is not None and starter is not None and starter != grant.token_sha256:
            continue
        call.release_pooled()


def query_body(request: web.Request) -> bytes:
    """A GET call's JSON body: its query parameters as keyword arguments, each a JSON value when it parses as
    one (``a=1`` is 1, ``a=x`` is ``"x"``)."""
    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return json.dumps({"args": [], "kwargs": {k: value(v) for k, v in request.query.items()}}).encode()


async def _spawned(request: web.Request, call: Call) -> web.Response:
    """The answer to a spawn (``Prefer: respond-async``): the call is registered, here is its id and state.
    Its frames are kept like any call's, for ``GET /calls/{id}``."""
    return web.json_response(call.summary(), status=202,
                             headers={h.CALL_ID: call.call_id, "Preference-Applied": RESPOND_ASYNC})


def _lent_slabs(request: web.Request, json_mode: bool) -> dict[str, Any]:
    """The CALL meta naming the slabs a same-host client lends (see ``tether.daemon.slabs``): ``_lent``
    (``[path, length]`` of its pickled arguments) and ``_slab`` (room for the result). Only the path's shape
    is checked here; the worker opens and checks the files."""
    args, result = request.headers.get(slabs.ARGS_HEADER), request.headers.get(slabs.RESULT_HEADER)
    if args is None and result is None:
        return {}
    _same_host_pickles(request, slabs.ARGS_HEADER if args is not None else slabs.RESULT_HEADER, json_mode)
    out: dict[str, Any] = {}
    if result is not None:
        if not slabs.is_slab_path(result):
            raise ConfigError(f"{slabs.RESULT_HEADER} {result!r}: not a tether-* file directly inside /dev/shm")
        out["_slab"] = result
    if args is not None:
        path, _, length = args.rpartition(":")
        if not slabs.is_slab_path(path) or not length.isdigit():
            raise ConfigError(f"{slabs.ARGS_HEADER} {args!r}: expected <path of a tether-* file directly inside "
                              "/dev/shm>:<length of the pickle in it>")
        if request.body_exists or h.SHM in request.headers:
            raise ConfigError(f"send the arguments in one place: the body, X-Tether-Shm or {slabs.ARGS_HEADER}")
        out["_lent"] = [path, int(length)]
    return out


def _same_host_pickles(request: web.Request, header: str, json_mode: bool) -> None:
    """Refuse a shared-memory header (``header``) that did not come over the unix socket with a pickle call."""
    if not _over_unix_socket(request):
        err = ConfigError(f"{header} is honoured only on the daemon's unix socket",
                          hint="send the pickled (args, kwargs) inline as the request body")
        err.status = 400
        raise err
    if json_mode:
        raise ConfigError(f"{header} carries pickles only (Content-Type: {h.PICKLE})")


def _claim_arg_file(request: web.Request, path: str, json_mode: bool) -> str:
    """The ``X-Tether-Shm`` file of a same-host client, now the daemon's (see ``protocol.claim_shm``)."""
    _same_host_pickles(request, h.SHM, json_mode)
    if request.body_exists:
        raise ConfigError("send the arguments either in the body or in the X-Tether-Shm file, not both")
    return p.claim_shm(path)


_HEARTBEAT = p.client_frame(p.HEARTBEAT, b"")


async def respond(request: web.Request, call: Call) -> web.StreamResponse:
    """Answer with the call's frames: one plain response if it ends before anything was streamed, else a live
    stream (with a heartbeat frame every ``HEARTBEAT_SECONDS`` of silence)."""
    if call.json_mode:
        return await _respond_json(call, {h.CALL_ID: call.call_id, h.CALL_ATTEMPT: str(call.attempt)})
    headers = {h.CALL_ID: call.call_id, h.CALL_ATTEMPT: str(call.attempt), "Content-Type": h.FRAMES,
               h.BODY_FOLLOWS: "1"}
    files = request.headers.get(h.ACCEPT_SHM) == "1" and _over_unix_socket(request)
    mine = request.headers.get(slabs.RESULT_HEADER) if files else None  # a result slab this client lent
    frames = call.frames
    stream: web.StreamResponse | None = None
    i = 0
    call.pin()
    try:
        while True:
            if i == len(frames):
                if not await call.changed(HEARTBEAT_SECONDS):
                    stream = stream or await _open_stream(request, headers)
                    await stream.write(_HEARTBEAT)
                continue
            kind, meta, body = frames[i]
            i += 1
            payload = _client_payload(call, kind, meta, body, files, mine)
            final = kind in FINAL
            if final and stream is None:
                if len(payload) == 1:
                    return web.Response(body=payload[0], headers=headers)
                stream = web.StreamResponse(headers=headers)  # large result: header + body, never joined
                stream.content_length = sum(map(len, payload))
                await stream.prepare(request)
            elif stream is None:
                stream = await _open_stream(request, headers)
            for part in payload:
                if isinstance(part, bodies.ShmBody):
                    await part.send(request, stream)  # sendfile over a plain socket, mapped slices over TLS
                else:
                    await stream.write(part)
            if final:
                await stream.write_eof()
                return stream
    finally:
        call.unpin()


async def _open_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    stream = web.StreamResponse(headers=headers)
    await stream.prepare(request)
    return stream


def _client_payload(call: Call, kind: int, meta: dict[str, Any], body: bytes, files: bool,
                    mine: str | None = None) -> tuple[bytes | memoryview | bodies.ShmBody, ...]:
    """A frame as the client reads it: one buffer, or a header and a large body (not joined: no copy).

    A result left in a lent slab goes only to the request that lent it (``mine``), as an ``F`` frame."""
    kind, meta, body = present(call, kind, meta, body)  # a /dev/shm file gone: the call's result_gone error
    slab = meta.get("_slab") if meta else None
    if slab is not None:
        if meta.get("_pooled") and slab == call.pooled:  # the daemon's file, still holding this result
            if not os.path.exists(slab):
                kind, meta, body = call.gone()
                return _client_payload(call, kind, meta, body, files)
            if call.fill is not None and call.fill.failed:  # the worker stopped before it wrote it all
                kind, meta, body = p.ERROR, _unwritten(call), b""
                return _client_payload(call, kind, meta, body, files)
            pooled = bodies.ShmBody(slab, meta["_size"], result_pool.POOL.view(slab, meta["_size"]), call.fill)
            return p.client_header(kind, len(pooled)), pooled
        if slab == mine:
            ref = {"kind": kind, "path": slab, "size": meta["_size"], "slab": True}
            return (p.client_frame(p.FILE, json.dumps(ref).encode()),)
        kind, meta, body = p.ERROR, slabs.not_kept(call.call_id), b""
    if kind == p.ERROR:
        wire = dict(meta.get("error", {}))
        if body:
            wire["exc"] = base64.b64encode(body).decode()
        return (p.client_frame(p.ERROR, json.dumps({"error": wire}).encode()),)
    path = meta.get("_shm") if meta else None
    if path is not None:
        if files:  # a same-host client maps the file itself
            call.shared = True
            ref = {"kind": kind, "path": path, "size": meta["_size"]}
            return (p.client_frame(p.FILE, json.dumps(ref).encode()),)
        big = bodies.result_body(meta, body, call)  # the file itself: sent without a copy in the daemon
        if len(big) > 1024 * 1024:
            return p.client_header(kind, len(big)), big
        body = bytes(bodies.result_view(meta, body, call)) if isinstance(big, bodies.ShmBody) else big
    if len(body) > 1024 * 1024:
        return p.client_header(kind, len(body)), body
    return (p.client_frame(kind, body),)


def _unwritten(call: Call) -> dict[str, Any]:
    return WorkerDied(f"the worker stopped before it finished writing the result of call {call.call_id}",
                      hint="run the call again (with a new call id)").to_wire()


async def _respond_json(call: Call, headers: dict[str, str]) -> web.Response:
    items: list[Any] = []
    logs: list[Any] = []
    frames = call.frames
    i = 0
    call.pin()
    try:
        while True:
            if i == len(frames):
                await call.changed()
                continue
            kind, meta, body = frames[i]
            i += 1
            if kind == p.LOG:
                logs.append(json.loads(body))
            elif kind == p.ITEM:
                items.append(json.loads(frame_body(meta, body, call)))
            elif kind == p.ERROR:
                err = _as_error(meta)
                return web.json_response(err.to_wire(), status=http_status(err), headers=headers)
            elif kind == p.RESULT:
                out: dict[str, Any] = {"call_id": call.call_id, "logs": logs}
                if items:
                    out["items"] = items
                else:
                    out["result"] = json.loads(frame_body(meta, body, call))
                return web.json_response(out, headers=headers)
    finally:
        call.unpin()


async def get_call(request: web.Request) -> web.StreamResponse:
    d = request.app[DAEMON]
    call = d.calls.get(request.match_info["call_id"])
    if call is None:
        raise NotFound(f"no call {request.match_info['call_id']!r}",
                       hint="calls are kept for an hour after they finish")
    if request.query.get("wait") == "0":
        return web.json_response(call.summary())
    return await respond(request, call)


async def call_logs(request: web.Request) -> web.Response:
    call = request.app[DAEMON].calls.get(request.match_info["call_id"])
    if call is None:
        raise NotFound(f"no call {request.match_info['call_id']!r}")
    try:
        since = max(0, int(request.query.get("since", "0")))
    except ValueError:
        raise ConfigError("'since' must be a whole number of log events already seen") from None
    logs = call.logs()
    return web.json_response({"call_id": call.call_id, "state": call.state, "logs": logs[since:], "next": len(logs)})


async def cancel_call(request: web.Request) -> web.Response:
    call = request.app[DAEMON].cancel(request.match_info["call_id"])
    return web.json_response(call.summary())
