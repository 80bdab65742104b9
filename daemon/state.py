"""The daemon's state and what it does: manifest, worker pool, call table; deploys, calls, objects, autostop."""

from __future__ import annotations

import asyncio
import difflib
import os
import time
from pathlib import Path
from typing import Any

import structlog

from tether.daemon import protocol as p
from tether.daemon import result_pool
from tether.daemon.auth import AccessPolicy, check_code_roots
from tether.daemon.calls import Call, CallTable
from tether.daemon.store import Manifest, discard
from tether.daemon.workers import WorkerPool, WorkerProcess
from tether.errors import (
    ConfigError,
    NotFound,
    TetherError,
    error_from_wire,
)
from tether.protocol.deployments import deployment_id
from tether.specs import EnvSpec, ServiceSpec

log = structlog.get_logger("tether.daemon")


def _close_matches(name: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(name, names, n=3, cutoff=0.5)


class Daemon:
    """State of one daemon: manifest, workers, calls, activity."""

    def __init__(self, state_dir: Path, *, token_hash: str | None = None, memory_limit: int | None = None,
                 autostop_mins: float | None = None, max_body: int = 2 * 1024**3, access_file: Path | None = None,
                 allowed_roots: list[Path] | None = None) -> None:
        self.state_dir = state_dir
        self.manifest = Manifest(state_dir)
        self.auth = AccessPolicy(token_hash, access_file, confined=bool(allowed_roots))
        self.allowed_roots = allowed_roots
        self._confine_manifest()
        self.pool = WorkerPool(state_dir, memory_limit, self._restore)
        self.calls = CallTable.recover(state_dir)  # the call journal: the ids a crashed daemon had, orphans killed
        self.pool.journal = self.calls.journal
        self._cancelled_early: dict[str, float] = {}  # call id -> when a cancel came before the call
        self.autostop_mins = autostop_mins
        self.autostop_paused = False
        self.max_body = max_body
        self.started = time.time()
        self.last_activity = time.time()
        self.stop_event = asyncio.Event()
        self.host: str | None = None  # the address it serves on (a daemon without auth serves that Host only)
        self._call_metas: dict[tuple[str, str | None, bool], bytes] = {}
        self._deploy_locks: dict[str, asyncio.Lock] = {}
        self.call_starters = self.calls.starters  # call id -> token hash of its starter (journaled with the call)

    def note_starter(self, call_id: str, grant: Any) -> None:
        """Remember who started call ``call_id`` (a call id is its starter's: nobody else attaches to it)."""
        if grant is None or call_id in self.call_starters:
            return
        if len(self.call_starters) >= STARTERS_KEPT:  # the oldest tenth goes (their calls left the table)
            for old in list(self.call_starters)[:STARTERS_KEPT // 10]:
                del self.call_starters[old]
        self.call_starters[call_id] = grant.token_sha256

    def starter_of(self, call_id: str) -> str | None:
        return self.call_starters.get(call_id)

    def _confine_manifest(self) -> None:
        """Under --allowed-roots a restored deployment passes the check a new one does (the daemon may have been
        restarted with other roots, or first ran without): one that fails is not restored, nor its env started;
        one that passes runs its resolved paths."""
        if not self.allowed_roots:
            return
        for name, spec in list(self.manifest.services.items()):
            try:
                self.manifest.services[name] = check_code_roots(spec, self.allowed_roots)
            except TetherError as exc:
                log.warning("restore_refused", service=name, error=str(exc))
                del self.manifest.services[name]
                self.manifest.methods.pop(name, None)

    # -- workers -------------------------------------------------------------------------------------------------
    async def _restore(self, worker: WorkerProcess) -> None:
        """Redeploy what the manifest holds for a (re)started worker's env."""
        services, objects = self.manifest.in_env(worker.env.name)
        for spec in services:
            try:
                await self._ask(worker, p.DEPLOY, {"spec": spec.model_dump(mode="json")})
            except TetherError as exc:
                log.warning("restore_failed", service=spec.name, error=str(exc))
        for key in objects:
            path = self.manifest.object_path(key)
            if path.exists():
                try:  # one object that no longer unpickles (its class is gone) must not take the env down
                    await self._ask(worker, p.OBJECT, {"op": "put", "key": key}, path.read_bytes())
                except TetherError as exc:
                    log.warning("restore_failed", object=key, error=str(exc))

    async def _ask(self, worker: WorkerProcess, kind: int, meta: dict[str, Any], body: bytes = b"") -> tuple[
            dict[str, Any], bytes]:
        rkind, rmeta, rbody = await worker.ask(kind, meta, body)
        if rkind == p.ERROR:
            raise _as_error(rmeta)
        return rmeta, rbody

    async def worker_for(self, name: str) -> WorkerProcess:
        env = self.manifest.env_of(name)
        if env is None:
            raise NotFound(f"no service or object named {name!r} on this cluster",
                           hint=_hint(name, self.manifest.names()),
                           details={"missing_service": name,
                                    "close_matches": _close_matches(name, self.manifest.names())})
        if env in self.pool.envs:  # the hot path: the env's worker runs (or ran) with a known spec, no scan
            return self.pool.live(env) or await self.pool.get(name=env)
        spec_env = next((s.env for s in self.manifest.services.values() if s.env.name == env), None)
        return await self.pool.get(spec_env, name=env)

    # -- operations ----------------------------------------------------------------------------------------------
    def env_spec(self, name: str) -> EnvSpec | None:
        """The spec env ``name`` runs (or ran) with, if the daemon knows it."""
        known = self.pool.envs.get(name)
        if known is not None:
            return known
        return next((s.env for s in self.manifest.services.values() if s.env.name == name), None)

    def env_specs(self) -> dict[str, EnvSpec]:
        names = {s.env.name for s in self.manifest.services.values()} | set(self.pool.envs)
        return {n: spec for n in sorted(names) if (spec := self.env_spec(n)) is not None}

    async def deploy(self, spec: ServiceSpec, *, replace_env: bool = False) -> dict[str, Any]:
        """Deploy ``spec`` into its env. An env name means one env spec: another spec under a known name is a
        ``ConfigError`` showing the difference, unless ``replace_env``: the env then restarts with the new spec
        (its other services with it) once the calls running in it have ended."""
        lock = self._deploy_locks.setdefault(spec.env.name, asyncio.Lock())
        async with lock:
            current = self.env_spec(spec.env.name)
            if current is not None and current != spec.env:
                changed = _differences(current, spec.env)
                if not replace_env:
                    raise ConfigError(
                        f"env {spec.env.name!r} on this cluster has another spec ({'; '.join(changed)})",
                        hint="use the env as it is (env='<name>'), deploy into another env name, or pass "
                             "replace_env=True to restart the env with this spec",
                        details={"env": spec.env.name, "differences": changed})
                await self._wait_env_idle(spec.env.name)
                for other in self.manifest.services.values():
                    if other.env.name == spec.env.name:
                        other.env = spec.env
            return await self._deploy(spec)

    async def _wait_env_idle(self, env: str) -> None:
        """Wait until no call runs in env ``env`` (a restart would kill them)."""
        while any(c.worker is not None and c.worker.env.name == env for c in self.calls.running()):
            await asyncio.sleep(0.05)

    async def _deploy(self, spec: ServiceSpec) -> dict[str, Any]:
        current = self.manifest.services.get(spec.name)
        live = self.pool.live(spec.env.name)
        if current is not None and live is not None and current.version != spec.version \
                and _without_version(current) == _without_version(spec):
            # the deployment saved as a version (or tagged): the same code and arguments keep running as they
            # are, so a live instance keeps its state and nothing is imported again
            self.manifest.services[spec.name] = spec
            self.manifest.save()
            methods = self.manifest.methods.get(spec.name, {})
            log.info("versioned", service=spec.name, version=spec.version)
            return {"name": spec.name, "env": spec.env.name, "methods": methods, "pid": live.pid}
        worker = await self.pool.get(spec.env)
        meta, _ = await self._ask(worker, p.DEPLOY, {"spec": spec.model_dump(mode="json")})
        self.manifest.services[spec.name] = spec
        self.manifest.methods[spec.name] = meta.get("methods", {})
        self.manifest.objects.pop(spec.name, None)
        self.manifest.save()
        log.info("deployed", service=spec.name, kind=spec.kind, env=spec.env.name)
        return {"name": spec.name, "env": spec.env.name, "methods": meta.get("methods", {}), "pid": worker.pid}

    async def start_call(self, call_id: str, name: str, method: str | None, body: bytes, json_mode: bool,
                         arg_file: str | None = None, lent: dict[str, Any] | None = None,
                         pooled: str | None = None) -> Call:
        """Send a call to its worker. Its arguments are ``body``, or the shared-memory file ``arg_file``, which
        the daemon owns: it is removed whatever happens; or the slab a client lent (``lent``: the ``_lent`` and
        ``_slab`` CALL meta, see ``tether.daemon.slabs``). ``pooled``: the daemon's own file lent as ``_slab``
        for a private call's big result (``tether.daemon.result_pool``); back to the pool if the call does not
        start."""
        started = False
        try:
            worker = await self.worker_for(name)
            existing = self.calls.attachable(call_id)  # the same id arrived while this one waited: attach to it
            if existing is not None:
                if existing.service != name or existing.method != method:
                    raise ConfigError(f"call id {call_id!r} belongs to {existing.service}."
                                      f"{existing.method or '__call__'}", hint="use a new call id for a different service")
                if arg_file is not None:
                    p.unlink_quietly(arg_file)
                return existing
            call = Call(call_id, name, method, json_mode, arg_file, pooled=pooled)
            meta: dict[str, Any] | bytes = self._call_meta(name, method, json_mode)
            if arg_file is not None or lent:
                meta = {"name": name, "method": method, "mode": "json" if json_mode else "pickle", **(lent or {})}
                if arg_file is not None:
                    meta["_shm"] = arg_file
            call.worker = worker
            self.calls.add(call)  # journaled before the worker sees it
            try:
                call.worker_tag = worker.request(p.CALL, meta, body, call.add)
                started = True
            except BaseException:
                self.calls.discard(call)
                raise
        except BaseException:
            if arg_file is not None:
                p.unlink_quietly(arg_file)
            raise
        finally:
            if pooled is not None and not started:
                result_pool.POOL.give_back(pooled)
        cancelled_at = self._cancelled_early.pop(call_id, None)
        if cancelled_at is not None and time.monotonic() - cancelled_at < 60:  # its caller gave up on the way
            worker.cancel(call.worker_tag)
        await worker.drain()
        return call

    def check_expected(self, name: str, expect: str) -> None:
        """A call that expects deployment ``expect`` (``X-Tether-Expect``) is answered only from that code."""
        have = deployment_id(self.manifest.services.get(name))
        if have != expect:
            raise NotFound(f"{name!r} on this cluster is {have or 'not a deployed service'}, not the {expect} this "
                           "call expects", hint="a tether client redeploys what it expects and calls again",
                           details={"missing_service": name, "expected": expect, "running": have})

    def _call_meta(self, name: str, method: str | None, json_mode: bool) -> bytes:
        """The CALL frame's meta, JSON-encoded once per target."""
        key = (name, method, json_mode)
        meta = self._call_metas.get(key)
        if meta is None:
            if len(self._call_metas) >= 1024:
                self._call_metas.clear()
            meta = self._call_metas[key] = p.encode_meta(
                {"name": name, "method": method, "mode": "json" if json_mode else "pickle"})
        return meta

    def names_in_env(self, env: str) -> list[str]:
        """The services and objects of env ``env`` (access checks on routes that restart or delete an env)."""
        services, objects = self.manifest.in_env(env)
        return [s.name for s in services] + objects

    def env_reqs(self, env: str) -> list[str]:
        """The requirements env ``env`` was set up with (none for an env the daemon does not know)."""
        spec = self.env_spec(env)
        return list(spec.reqs) if spec is not None else []

    def is_service(self, name: str) -> bool:
        return name in self.manifest.services

    def service_of_call(self, call_id: str) -> str | None:
        """The service a known call belongs to (access checks on /calls/{id} routes)."""
        call = self.calls.get(call_id)
        return call.service if call is not None else None

    def cancel(self, call_id: str) -> Call:
        """Cancel a call. An id not known yet is remembered for a minute: a caller interrupted while its request
        was still on the way cancels it, and the call is then cancelled as soon as it arrives."""
        call = self.calls.get(call_id)
        if call is None:
            now = time.monotonic()
            if len(self._cancelled_early) >= 4096:
                self._cancelled_early = {k: t for k, t in self._cancelled_early.items() if now - t < 60}
            self._cancelled_early[call_id] = now
            raise NotFound(f"no call {call_id!r}", hint="calls are kept for an hour after they finish",
                           details={"call_id": call_id, "cancel_pending": True})
        if not call.done and call.worker is not None and call.worker_tag is not None:
            call.worker.cancel(call.worker_tag)
        return call

    async def object_op(self, op: str, key: str, body: bytes = b"", env: str = "default", to: str | None = None
                        ) -> tuple[dict[str, Any], bytes]:
        if op == "put":  # on disk first (StorageFull: nothing changed anywhere), in place once the worker has it
            staged = self.manifest.stage_object(key, body)
            try:
                worker = await self.pool.get(name=env)
                await self._ask(worker, p.OBJECT, {"op": "put", "key": key}, body)
            except BaseException:
                discard(staged)
                raise
            self.manifest.commit_object(key, env, staged)
            return {}, b""
        worker = await self.worker_for(key)
        meta = {"op": op, "key": key, **({"to": to} if to else {})}
        out = await self._ask(worker, p.OBJECT, meta)
        if op == "delete":
            self.manifest.forget(key)
        elif op == "rename" and to:
            self.manifest.rename(key, to)
        return out

    async def idle_watch(self) -> None:
        """Stop after ``autostop_mins`` idle; every ``SHM_SWEEP_SECONDS`` remove the shared-memory files of dead
        processes (a killed client's slabs would otherwise hold their memory until the daemon restarts)."""
        loop = asyncio.get_running_loop()
        swept = loop.time()
        while not self.stop_event.is_set():
            await asyncio.sleep(min(1.0, SHM_SWEEP_SECONDS))
            if loop.time() - swept >= SHM_SWEEP_SECONDS:
                swept = loop.time()
                removed = await loop.run_in_executor(None, p.sweep_stale_shm)  # unlinking big files takes ms
                if removed:
                    log.info("stale_shm_removed", files=removed)
            if self.autostop_mins is None or self.autostop_paused or self.calls.running():
                continue
            if time.time() - self.last_activity > self.autostop_mins * 60:
                log.info("autostop", idle_minutes=self.autostop_mins)
                self.stop_event.set()


STARTERS_KEPT = 20_000


SHM_SWEEP_SECONDS = float(os.environ.get("TETHER_SHM_SWEEP_SECONDS", "60"))


def _hint(name: str, names: list[str]) -> str:
    close = _close_matches(name, names)
    return f"did you mean {', '.join(close)}?" if close else "deploy it with .to(cluster) first, or check `tether ls`"


def _as_error(meta: dict[str, Any]) -> TetherError:
    exc = error_from_wire(meta)
    return exc if isinstance(exc, TetherError) else TetherError(str(exc))


def _without_version(spec: ServiceSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude={"version", "metadata"})


def _differences(old: EnvSpec, new: EnvSpec) -> list[str]:
    """What differs between two specs of one env, field by field (values of env vars are not shown)."""
    out = []
    for field in type(old).model_fields:
        a, b = getattr(old, field), getattr(new, field)
        if a == b:
            continue
        if field == "env_vars":
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"env_vars differ in {', '.join(keys)}")
        else:
            out.append(f"{field}: {a!r} here, {b!r} in this deploy")
    return out
