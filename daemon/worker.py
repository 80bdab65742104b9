"""A worker process: holds the objects of one env and runs calls on them.

Started by the daemon as ``python -m tether.daemon.worker FD``; speaks the frame protocol over the inherited
socket. Sync code runs in threads (so calls overlap and can be cancelled); async code on the worker's loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import functools
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

import cloudpickle

from tether.daemon import eventloop, fills, liveness
from tether.daemon import protocol as p
from tether.daemon.auth import ROOTS_ENV, check_imported
from tether.daemon.call_output import CallCtx, Router, TetherLogForwarder, current, emit_report
from tether.daemon.deployed_code import describe, from_root, purge_modules_under, purge_package
from tether.daemon.memory import apply_memory_limit
from tether.daemon.slabs import ARGS_HEADER, RESULT_HEADER, SlabCache, keep_freed_memory
from tether.daemon.worker_codec import (
    Body,
    decode_args,
    encode_result,
    error_payload,
    is_small,
    spill_pieces,
    unserializable,
)
from tether.errors import CallCancelled, ConfigError, NotFound, SerializationError
from tether.home import USER_UMASK_ENV
from tether.protocol import reports
from tether.protocol.pieces import Pieces

CONFINED = bool(os.environ.get(ROOTS_ENV))  # read at start, before any deployed code runs

class _ThreadCancelled(BaseException):
    """Raised asynchronously inside a thread running a cancelled sync call."""


class Worker:
    """The object store of one env and the loop that serves the daemon's frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.link = p.FrameWriter(writer)
        self.loop = asyncio.get_running_loop()
        self.objects: dict[str, Any] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.root_hashes: dict[str, str] = {}
        self.locks: dict[str, threading.Lock] = {}
        self.fast: dict[tuple[str, str], int] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.ctxs: dict[int, CallCtx] = {}
        limit = int(os.environ.get("TETHER_MEMORY_LIMIT") or 0)
        self.slabs = SlabCache(max_bytes=limit // 4 if limit else None)  # the clients' lent slabs, mapped once
        self._sweeping = False
        self._loop_thread = threading.get_ident()

    def send(self, kind: int, tag: int, meta: dict[str, Any] | None = None, body: bytes = b"") -> None:
        """Queue a frame to the daemon (written at the end of this loop iteration, with the others)."""
        self.link.send(kind, tag, meta, body)

    def send_threadsafe(self, kind: int, tag: int, meta: dict[str, Any] | None = None, body: bytes = b"",
                        *, wait: bool = False) -> None:
        """Send from any thread; with ``wait``, the frame is on the socket when this returns."""
        if threading.get_ident() == self._loop_thread:
            self.send(kind, tag, meta, body)
            if wait:
                self.link.flush()
        elif not wait:
            self.loop.call_soon_threadsafe(self.send, kind, tag, meta, body)
        else:
            sent = threading.Event()

            def send() -> None:
                try:
                    self.send(kind, tag, meta, body)
                    self.link.flush()  # on the socket before the call's thread goes on
                finally:
                    sent.set()

            self.loop.call_soon_threadsafe(send)
            sent.wait(5.0)

    async def serve(self) -> None:
        """Answer the daemon's frames until it closes the link."""
        self.send(p.READY, 0, {"pid": os.getpid()})
        while True:
            try:
                kind, tag, meta, body = await p.read_frame(self.reader, keep_shm=_MAPPED)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if kind == p.CALL:
                self._start_call(tag, meta, body)
            elif kind == p.CANCEL:
                self._cancel(tag)
            elif kind == p.DEPLOY:
                self._reply(tag, self._deploy, meta, body)
            elif kind == p.OBJECT:
                self._reply(tag, self._object_op, meta, body)
            await self.link.drain()

    def _start_call(self, tag: int, meta: dict[str, Any], body: bytes) -> None:
        args: Body = body
        try:
            if "_shm" in meta:  # large arguments: unpickled straight from the mapped file (one copy, not two)
                args = p.map_shm(meta.pop("_shm"))
            elif "_lent" in meta:  # a client's slab: unpickled in place, the mapping kept for its next call
                path, length = meta.pop("_lent")
                args = self._slab(path, ARGS_HEADER).view(length)
        except ConfigError as exc:
            self.send(p.ERROR, tag, *error_payload(exc))
            return
        except (OSError, EOFError, ValueError) as exc:
            self.send(p.ERROR, tag, *error_payload(SerializationError(
                f"the call's arguments could not be read: {exc}")))
            return
        if not self._call_inline(tag, meta, args):
            self._start(tag, self._call(tag, meta, args))

    def _slab(self, path: str, header: str) -> Any:
        """A client's lent slab, mapped once (see ``SlabCache``; raises ``ConfigError`` for a refused file)."""
        slab = self.slabs.get(path, header)
        self._sweep_later()
        return slab

    def _sweep_later(self) -> None:
        """Close, within a few seconds, the mappings of slabs their clients removed (their pages go with them)."""
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        self._sweeping = False
        self.slabs.sweep()
        if len(self.slabs):
            self._sweep_later()

    def _encode(self, ctx: CallCtx, value: Any, json_mode: bool) -> tuple[dict[str, Any] | None, bytes]:
        """A call's RESULT frame: into the caller's result slab when it lent one and the pickle is big."""
        if ctx.slab is None or json_mode:
            return encode_result(value, json_mode)
        return encode_result(value, json_mode, functools.partial(self._slab, ctx.slab, RESULT_HEADER))

    def _send_result(self, ctx: CallCtx, value: Any, json_mode: bool) -> None:
        """A call's RESULT frame; a big pickle for the daemon's pool file goes while it is written."""
        if ctx.fill and ctx.slab is not None and not json_mode and not is_small(value):
            self._send_filling(ctx, ctx.slab, value)
            return
        self.send(p.RESULT, ctx.tag, *self._encode(ctx, value, json_mode))

    def _send_filling(self, ctx: CallCtx, path: str, value: Any) -> None:
        """Pickle ``value`` into pieces (nothing copied yet), answer RESULT with its size, then copy it into the
        pool file ``path`` reporting PROGRESS (see :mod:`tether.daemon.fills`). A refused file: the pieces go as
        :func:`~tether.daemon.worker_codec.spill_pieces` sends them."""
        pieces = Pieces()
        try:
            cloudpickle.dump(value, pieces, protocol=5)
        except Exception as exc:
            raise unserializable(value, exc) from exc
        if pieces.size < p.SHM_THRESHOLD:
            self.send(p.RESULT, ctx.tag, None, bytes(pieces))
            return
        try:
            slab = self._slab(path, RESULT_HEADER)
            slab.reserve(pieces.size)
            target = slab.view(pieces.size)
        except (OSError, ConfigError, EOFError):  # the pool file is gone or refused: a file of our own
            self.send(p.RESULT, ctx.tag, *spill_pieces(pieces))
            return

        def report(upto: int) -> None:
            self.send(p.PROGRESS, ctx.tag, {"upto": upto})
            self.link.flush()

        with target:
            self.send(p.RESULT, ctx.tag, {"_slab": path, "_size": pieces.size, "_filling": True})
            self.link.flush()
            try:
                fills.write_reporting(target, pieces, report)
            except Exception:  # noqa: BLE001 - the RESULT is out: the daemon cuts the answer
                self.send(p.PROGRESS, ctx.tag, {"failed": True})

    def _reply(self, tag: int, fn: Any, meta: dict[str, Any], body: bytes) -> None:
        try:
            out_meta, out_body = fn(meta, body)
            self.send(p.RESULT, tag, out_meta, out_body)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            self.send(p.ERROR, tag, *error_payload(exc))

    # -- deploy and object store -------------------------------------------------------------------------------
    def _deploy(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        spec = meta["spec"]
        code = spec["code"]
        if code.get("pickled_b64"):
            obj = cloudpickle.loads(base64.b64decode(code["pickled_b64"]))
        else:
            obj = self._import(code)
            if CONFINED:  # --allowed-roots: what the qualname reached must be defined under the checked root
                check_imported(obj, code["root"])
        if spec["kind"] == "instance":
            args, kwargs = cloudpickle.loads(base64.b64decode(spec["init_pickled_b64"])) if spec.get(
                "init_pickled_b64") else ((), {})
            cls = self.objects.get(spec.get("of") or "", obj)
            obj = cls(*args, **kwargs)
        self.objects[spec["name"]] = obj
        self.specs[spec["name"]] = spec
        if spec["kind"] == "instance":
            self.locks[spec["name"]] = threading.Lock()
        return {"name": spec["name"], "methods": describe(obj)}, b""

    def _import(self, code: dict[str, Any]) -> Any:
        root = code.get("root")
        if root:
            if sys.path[:1] != [root]:  # this root wins for its import paths (a saved version's snapshot, say)
                with contextlib.suppress(ValueError):
                    sys.path.remove(root)
                sys.path.insert(0, root)
            top = code["import_path"].split(".")[0]
            loaded = sys.modules.get(top)
            if loaded is not None and not from_root(loaded, root):  # same package name, another tree
                purge_package(top)
            new_hash = code.get("code_hash") or ""
            old_hash = self.root_hashes.get(root)
            if old_hash is not None and old_hash != new_hash:
                purge_modules_under(root)
            self.root_hashes[root] = new_hash
        module = importlib.import_module(code["import_path"])
        obj: Any = module
        for part in (code.get("qualname") or "").split("."):
            if part:
                obj = getattr(obj, part)
        return obj

    def _object_op(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        op, key = meta["op"], meta.get("key", "")
        if op == "put":
            self.objects[key] = cloudpickle.loads(body)
            return {}, b""
        if op == "keys":
            return {"keys": sorted(self.objects)}, b""
        if key not in self.objects:
            raise NotFound(f"no object {key!r} in this env")
        if op == "get":
            return {}, cloudpickle.dumps(self.objects[key], protocol=5)
        if op == "delete":
            del self.objects[key]
            self.specs.pop(key, None)
            return {}, b""
        if op == "rename":
            self.objects[meta["to"]] = self.objects.pop(key)
            return {}, b""
        raise ValueError(f"unknown object op {op!r}")

    # -- calls -------------------------------------------------------------------------------------------------
    def _note_duration(self, key: tuple[str, str], seconds: float) -> None:
        self.fast[key] = self.fast.get(key, 0) + 1 if seconds < FAST_SECONDS else 0

    def _start(self, tag: int, call: Coroutine[Any, Any, None]) -> None:
        """Run a call's coroutine as a task (``_cancel`` cancels it)."""
        task = self.tasks[tag] = asyncio.ensure_future(call)
        task.add_done_callback(functools.partial(self._ended_unstarted, tag))

    def _ended_unstarted(self, tag: int, task: asyncio.Future[None]) -> None:
        """A call's task cancelled before it ran a step (its CANCEL came in the same read as the call, to a busy
        worker) never entered the call's own handler, which answers a cancelled call: answer it here."""
        if not task.cancelled():
            return  # it ran: its handler answered (a cancel it caught ends it normally)
        self.tasks.pop(tag, None)
        self.ctxs.pop(tag, None)
        with contextlib.suppress(Exception):  # the link may be gone (the worker is stopping)
            self.send(p.ERROR, tag, *error_payload(CallCancelled("the call was cancelled")))

    def _cancel(self, tag: int) -> None:
        ctx = self.ctxs.get(tag)
        if ctx is not None and ctx.thread_id is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ctx.thread_id), ctypes.py_object(_ThreadCancelled))
        task = self.tasks.get(tag)
        if task is not None:
            task.cancel()

    def _call_inline(self, tag: int, meta: dict[str, Any], body: Body) -> bool:
        """Run a sync call right here on the loop when it has recently always been quick (< 2 ms, 8 in a row).

        Saves a task and two thread hand-offs (~0.15-0.2 ms a call). Never waits for an instance's lock here: a
        threaded call holding it may be waiting on this loop. Returns False to take the general path instead.
        """
        name, method = meta.get("name", ""), meta.get("method")
        obj = self.objects.get(name)
        if obj is None or method in ("__getattr__", "__setattr__"):
            return False
        target = getattr(obj, method, None) if method else obj
        key = (name, getattr(target, "__name__", ""))
        if self.fast.get(key, 0) < FAST_STREAK or not callable(target) or inspect.iscoroutinefunction(target) \
                or inspect.isasyncgenfunction(target) or inspect.isgeneratorfunction(target):
            return False
        lock = self.locks.get(name)
        if lock is not None and not lock.acquire(blocking=False):
            return False
        ctx = CallCtx(tag, self, name, slab=meta.get("_slab"), fill=bool(meta.get("_fill")))
        token = current.set(ctx)
        json_mode = meta.get("mode") == "json"
        try:
            args, kwargs = decode_args(body, json_mode)
            started = time.perf_counter()
            result = target(*args, **kwargs)
            self._note_duration(key, time.perf_counter() - started)
            if inspect.isgenerator(result) or inspect.isawaitable(result):  # finish it on the general path
                self.fast[key] = 0
                self._start(tag, self._finish(ctx, result, json_mode))
                return True
            ctx.flush()
            self._send_result(ctx, result, json_mode)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            ctx.flush()
            self.send(p.ERROR, tag, *error_payload(exc))
        finally:
            if lock is not None:
                lock.release()
            current.reset(token)
        return True

    async def _finish(self, ctx: CallCtx, result: Any, json_mode: bool) -> None:
        """Stream a returned generator or await a returned awaitable, then send the result."""
        current.set(ctx)
        try:
            result = await _drain_sync_generator(self, ctx, result, json_mode)
            if inspect.isawaitable(result):
                result = await result
            ctx.flush()
            self._send_result(ctx, result, json_mode)
        except BaseException as exc:  # noqa: BLE001
            ctx.flush()
            self.send(p.ERROR, ctx.tag, *error_payload(exc))
        finally:
            self.tasks.pop(ctx.tag, None)

    async def _call(self, tag: int, meta: dict[str, Any], body: Body) -> None:
        ctx = CallCtx(tag, self, meta.get("name", ""), slab=meta.get("_slab"), fill=bool(meta.get("_fill")))
        self.ctxs[tag] = ctx
        current.set(ctx)
        json_mode = meta.get("mode") == "json"
        try:
            args, kwargs = decode_args(body, json_mode)
            name, method = meta["name"], meta.get("method")
            if name not in self.objects:
                raise NotFound(f"no service {name!r} in this worker", details={"missing_service": name})
            obj = self.objects[name]
            if method == "__getattr__":
                result = getattr(obj, args[0])
            elif method == "__setattr__":
                setattr(obj, args[0], args[1])
                result = None
            else:
                target = getattr(obj, method) if method else obj
                result = await self._invoke(ctx, target, args, kwargs, json_mode)
            ctx.flush()
            self._send_result(ctx, result, json_mode)
        except (asyncio.CancelledError, _ThreadCancelled):
            ctx.flush()
            self.send(p.ERROR, tag, *error_payload(CallCancelled("the call was cancelled")))
        except BaseException as exc:  # noqa: BLE001
            ctx.flush()
            self.send(p.ERROR, tag, *error_payload(exc))
        finally:
            self.tasks.pop(tag, None)
            self.ctxs.pop(tag, None)

    async def _invoke(self, ctx: CallCtx, target: Any, args: list, kwargs: dict, json_mode: bool) -> Any:
        if inspect.iscoroutinefunction(target):
            return await target(*args, **kwargs)
        if inspect.isasyncgenfunction(target):
            async for item in target(*args, **kwargs):
                self.send(p.ITEM, ctx.tag, *encode_result(item, json_mode))
            return None

        lock = self.locks.get(ctx.name)

        def run() -> Any:
            ctx.thread_id = threading.get_ident()
            try:
                if lock is not None:  # a stateful instance runs one sync method at a time, like an actor
                    with lock:
                        out = target(*args, **kwargs)
                else:
                    out = target(*args, **kwargs)
                if inspect.isgenerator(out):
                    _send_items(self, ctx, out, json_mode)
                    return None
                return out
            finally:
                ctx.thread_id = None

        key = (ctx.name, getattr(target, "__name__", ""))
        started = time.perf_counter()
        result = await asyncio.to_thread(run)
        self._note_duration(key, time.perf_counter() - started)
        if inspect.isawaitable(result):
            result = await result
        return result


async def _drain_sync_generator(worker: Worker, ctx: CallCtx, out: Any, json_mode: bool) -> Any:
    """A sync function that returned a generator: stream its items (in a thread: it may be slow)."""
    if not inspect.isgenerator(out):
        return out

    await asyncio.to_thread(_send_items, worker, ctx, out, json_mode)
    return None


def _send_items(worker: Worker, ctx: CallCtx, items: Any, json_mode: bool) -> None:
    """Send each item of a sync generator to the caller as it is produced (from a call's thread)."""
    for item in items:
        worker.send_threadsafe(p.ITEM, ctx.tag, *encode_result(item, json_mode))


_MAPPED = (p.CALL,)  # kinds whose large bodies are mapped, not read
FAST_SECONDS = 0.002  # a sync call this quick may run inline on the worker's loop ...
FAST_STREAK = 8  # ... once this many calls in a row were that quick; one slow call sends it back to threads
SWEEP_SECONDS = 5.0  # how often a worker holding slab mappings looks for slabs their clients removed


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=p.LINK_BUFFER)
    await Worker(reader, writer).serve()
    os._exit(0)  # the daemon closed our socket (it stopped or died): no call's thread may run on without it


_PR_SET_PDEATHSIG = 1


def die_with_daemon() -> None:
    """On Linux, have the kernel SIGKILL this worker the moment the process that started it dies: a worker
    orphaned by a killed daemon must not finish its calls while a restarted daemon runs them again. A daemon
    that died before this took effect is checked for by pid (``TETHER_DAEMON_PID``); a worker started through a
    launcher that does not exec is killed by the restarted daemon instead (it finds it in its call journal)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    daemon = os.environ.get("TETHER_DAEMON_PID", "")
    if daemon.isdigit():
        try:
            os.kill(int(daemon), 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass


def main() -> None:
    with contextlib.suppress(KeyError, ValueError):  # the daemon's files are private; user code gets its umask
        os.umask(int(os.environ.pop(USER_UMASK_ENV), 8) & 0o777)
    die_with_daemon()
    limit = os.environ.get("TETHER_MEMORY_LIMIT")
    if limit:
        apply_memory_limit(int(limit))
    keep_freed_memory(int(limit) if limit else None)
    sys.stdout = Router(sys.stdout, "stdout")  # type: ignore[assignment]
    sys.stderr = Router(sys.stderr, "stderr")  # type: ignore[assignment]
    root = logging.getLogger()
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(TetherLogForwarder())
    reports.set_emitter(emit_report)
    if len(sys.argv) > 2:  # the daemon's liveness pings, answered by a thread (see tether.daemon.liveness)
        liveness.answer_pings(int(sys.argv[2]))
    eventloop.run(_main(int(sys.argv[1])))
    os._exit(0)


if __name__ == "__main__":
    main()
