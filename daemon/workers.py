"""The daemon's side of worker processes: one per env, started on demand, restarted after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from tether.daemon import fills, liveness
from tether.daemon import protocol as p
from tether.daemon.journal import Journal
from tether.daemon.memory import baseline_evidence, classify_exit
from tether.daemon.secrets import secret_env
from tether.daemon.venvs import ensure_venv
from tether.errors import ConfigError, WorkerDied
from tether.specs import EnvSpec

log = structlog.get_logger("tether.daemon.workers")

Frame = tuple[int, dict[str, Any], bytes]
_KEPT = (p.RESULT, p.ITEM)  # kinds whose large bodies stay files for the call table
Sink = Callable[[int, dict[str, Any], bytes], None]


class WorkerProcess:
    """One running worker: its process, its socket and the requests waiting on it."""

    def __init__(self, env: EnvSpec, memory_limit: int | None) -> None:
        self.env = env
        self.memory_limit = env.memory_limit or memory_limit
        self.proc: asyncio.subprocess.Process | None = None
        self.link: p.FrameWriter | None = None
        self.pending: dict[int, Sink] = {}
        self.fills: dict[int, fills.Fill] = {}  # results it is still writing into pool files, by tag
        self.alive = False
        self.death: BaseException | None = None
        self.evidence: dict[str, Any] = {}
        self.worker_pid: int | None = None  # the worker's own pid (READY): not ``pid`` when a launcher started it
        self.on_exit: Callable[[WorkerProcess], None] | None = None
        self._tags = itertools.count(1)
        self._reader_task: asyncio.Task[None] | None = None
        self._pulse_task: asyncio.Task[None] | None = None  # liveness pings (see liveness.py)
        self.unresponsive = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, python: str, cwd: str | None, secrets: dict[str, str] | None = None) -> None:
        self.evidence = baseline_evidence()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pulse, pulse_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env.update(self.env.env_vars)
        env.update(secrets or {})  # daemon/secrets.py: the env's secrets, read from the store at each start
        env["TETHER_ENV"] = self.env.name
        env["PYTHONUNBUFFERED"] = "1"
        env["TETHER_DAEMON_PID"] = str(os.getpid())  # the worker dies with this daemon (see worker.py)
        if self.memory_limit:
            env["TETHER_MEMORY_LIMIT"] = str(self.memory_limit)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                python, "-m", "tether.daemon.worker", str(child.fileno()), str(pulse_child.fileno()),
                pass_fds=[child.fileno(), pulse_child.fileno()], env=env, cwd=cwd or None, stdin=subprocess.DEVNULL,
            )
        except (OSError, ValueError) as exc:
            parent.close()
            pulse.close()
            raise ConfigError(f"could not start a worker for env {self.env.name!r}: {exc}") from exc
        finally:
            child.close()
            pulse_child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=p.LINK_BUFFER)
        self.link = p.FrameWriter(writer)
        try:
            kind, _, ready, _ = await asyncio.wait_for(p.read_frame(reader), timeout=60)
        except (asyncio.IncompleteReadError, TimeoutError) as exc:
            rc = await self.proc.wait()
            raise WorkerDied(f"worker for env {self.env.name!r} exited at start (code {rc})",
                             hint="check the env's requirements and the daemon log") from exc
        if kind != p.READY:
            raise WorkerDied(f"worker for env {self.env.name!r} sent no READY frame")
        self.worker_pid = ready.get("pid")
        self.alive = True
        self._reader_task = asyncio.ensure_future(self._read_loop(reader))
        self._pulse_task = asyncio.ensure_future(liveness.watch(pulse, self._unresponsive))

    def _unresponsive(self) -> None:
        """No answer to a liveness ping within the deadline: kill the worker (SIGKILL ends a stopped process
        too); its read loop then fails what waits on it with ``liveness.unresponsive_error``."""
        if not self.alive or self.proc is None or self.proc.returncode is not None:
            return
        self.unresponsive = True
        log.warning("worker_unresponsive", env=self.env.name, pid=self.proc.pid, deadline_s=liveness.DEADLINE)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def state(self) -> str:
        """``running``, ``unresponsive`` (killed for not answering its pings) or ``dead``."""
        if self.alive:
            return "running"
        return "unresponsive" if self.unresponsive else "dead"

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, tag, meta, body = await p.read_frame(reader, keep_shm=_KEPT)
                if kind == p.PROGRESS:
                    self._progress(tag, meta)
                    continue
                if kind == p.RESULT and meta.get("_filling"):
                    self._filling(tag, meta)
                sink = self.pending.get(tag)
                if "_shm" in meta:
                    kind, meta = _adopt(kind, meta, sink is not None)
                if sink is None:
                    continue
                if kind in (p.RESULT, p.ERROR):
                    del self.pending[tag]
                sink(kind, meta, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.alive = False
        assert self.proc is not None
        rc = await self.proc.wait()
        self.death = liveness.unresponsive_error(self.env.name, self.proc.pid) if self.unresponsive else \
            _death_error(self.env.name, rc, self.memory_limit, {**self.evidence, "pid": self.proc.pid})
        log.warning("worker_died", env=self.env.name, pid=self.proc.pid, returncode=rc,
                    error=type(self.death).__name__)
        if self.on_exit is not None:
            self.on_exit(self)
        wire = self.death.to_wire() if hasattr(self.death, "to_wire") else {"error": {"message": str(self.death)}}
        pending, self.pending = self.pending, {}
        for sink in pending.values():
            sink(p.ERROR, wire, b"")
        for fill in list(self.fills.values()):  # results it had not finished writing
            fill.fail()

    def _filling(self, tag: int, meta: dict[str, Any]) -> None:
        """A RESULT whose bytes the worker is still writing into a pool file (see :mod:`tether.daemon.fills`)."""
        path, size = meta.get("_slab"), meta.get("_size")
        if not isinstance(path, str) or not isinstance(size, int) or size <= 0:
            meta.pop("_filling", None)
            return
        fill = self.fills[tag] = fills.FILLS[path] = fills.Fill(size)

        def ended() -> None:
            self.fills.pop(tag, None)
            if fills.FILLS.get(path) is fill:
                del fills.FILLS[path]

        fill.when_ended(ended)

    def _progress(self, tag: int, meta: dict[str, Any]) -> None:
        fill = self.fills.get(tag)
        if fill is None:
            return
        if meta.get("failed") or not isinstance(meta.get("upto"), int):
            fill.fail()
        else:
            fill.advance(meta["upto"])

    def request(self, kind: int, meta: dict[str, Any] | bytes, body: bytes, sink: Sink) -> int:
        """Send a frame (``meta`` as a dict or pre-encoded JSON); ``sink(kind, meta, body)`` gets each answer,
        the last being RESULT or ERROR. A RESULT or ITEM body of 1 MiB or more arrives as a file: meta ``_shm``
        (its path, now the daemon's) and ``_size``, with an empty body."""
        if not self.alive or self.link is None:
            raise self.death or WorkerDied(f"worker for env {self.env.name!r} is not running")
        tag = next(self._tags)
        self.pending[tag] = sink
        self.link.send(kind, tag, meta, body)
        return tag

    async def ask(self, kind: int, meta: dict[str, Any], body: bytes = b"") -> Frame:
        """Send a frame and wait for its final answer."""
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()

        def sink(k: int, m: dict[str, Any], b: bytes) -> None:
            if "_shm" in m:
                b = p.read_shm(m.pop("_shm"))
            if k in (p.RESULT, p.ERROR) and not fut.done():
                fut.set_result((k, m, b))

        self.request(kind, meta, body, sink)
        await self.drain()
        return await fut

    def cancel(self, tag: int) -> None:
        if self.alive and self.link is not None:
            self.link.send(p.CANCEL, tag)

    async def drain(self) -> None:
        """Wait while much is buffered for the worker (back-pressure); returns at once otherwise."""
        if self.link is not None:
            await self.link.drain()

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._reader_task:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader_task, timeout=5)
        if self._pulse_task:
            self._pulse_task.cancel()
        self.alive = False


def _adopt(kind: int, meta: dict[str, Any], wanted: bool) -> tuple[int, dict[str, Any]]:
    """A large result or item stays in its shared-memory file, renamed to the daemon's (see calls.py); an
    unwanted one (its call is gone) is deleted."""
    if not wanted:
        p.unlink_quietly(meta["_shm"])
        return kind, meta
    try:
        meta["_shm"], meta["_size"] = p.adopt_shm(meta["_shm"])
    except OSError as exc:
        return p.ERROR, WorkerDied(f"the worker's result file is gone: {exc}").to_wire()
    return kind, meta


def _death_error(env: str, returncode: int, memory_limit: int | None, evidence: dict[str, Any]) -> BaseException:
    """OutOfMemory when there is memory-pressure evidence, else WorkerDied."""
    err = classify_exit(returncode, memory_limit=memory_limit, evidence=evidence)
    if isinstance(err, WorkerDied) and not err.hint:
        err.hint = "it restarts on the next call; services deployed to it are restored"
    err.details.setdefault("env", env)
    if env not in err.message:
        err.message = f"{err.message} (env {env!r})"
        err.args = (err.message,)
    return err


class WorkerPool:
    """Workers by env name; starts them on demand and calls ``on_start`` to restore their services."""

    def __init__(self, state_dir: Path, memory_limit: int | None,
                 on_start: Callable[[WorkerProcess], Any]) -> None:
        self.state_dir = state_dir
        self.memory_limit = memory_limit
        self.on_start = on_start
        self.workers: dict[str, WorkerProcess] = {}
        self.envs: dict[str, EnvSpec] = {}
        self.journal: Journal | None = None  # records each worker's pids: a restarted daemon kills orphans
        self._locks: dict[str, asyncio.Lock] = {}

    def live(self, name: str) -> WorkerProcess | None:
        """The running worker of env ``name``, if any (no await: the call path's common case)."""
        worker = self.workers.get(name)
        return worker if worker is not None and worker.alive else None

    async def get(self, env: EnvSpec | None = None, name: str | None = None) -> WorkerProcess:
        """The live worker of ``env`` (or of env ``name``), starting or restarting it as needed."""
        if env is None:
            env = self.envs.get(name or "default") or EnvSpec(name=name or "default")
        worker = self.workers.get(env.name)
        if worker is not None and worker.alive and self.envs.get(env.name) == env:
            return worker
        lock = self._locks.setdefault(env.name, asyncio.Lock())
        async with lock:
            worker = self.workers.get(env.name)
            if worker is not None and worker.alive and self.envs.get(env.name) == env:
                return worker
            if worker is not None:
                await worker.stop()
            known = env.name in self.envs
            self.envs[env.name] = env
            worker = WorkerProcess(env, self.memory_limit)
            try:
                python = await self._python_for(env)
                await worker.start(python, env.working_dir, secret_env(self.state_dir, env.secrets))
            except BaseException:
                if not known:  # a new env that never started is not kept: a corrected deploy may use its name
                    self.envs.pop(env.name, None)
                raise
            log.info("worker_started", env=env.name, pid=worker.pid)
            if self.journal is not None:
                journal = self.journal
                journal.worker_started(env.name, [worker.pid, worker.worker_pid])
                worker.on_exit = lambda w: journal.worker_stopped(w.pid)
            try:
                await self.on_start(worker)
            except BaseException:
                await worker.stop()
                raise
            # only now: a caller that finds it (``live``, the check above) must find its services restored
            self.workers[env.name] = worker
            return worker

    async def _python_for(self, env: EnvSpec) -> str:
        if env.python:
            return env.python
        if not env.reqs:
            return sys.executable
        return await ensure_venv(self.state_dir / "envs" / env.name, env.reqs)

    async def remove(self, name: str) -> bool:
        worker = self.workers.pop(name, None)
        self.envs.pop(name, None)
        if worker is None:
            return False
        await worker.stop()
        return True

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers.values()), return_exceptions=True)
        self.workers.clear()
