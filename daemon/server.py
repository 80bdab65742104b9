"""The tether daemon: an aiohttp "Python object server" holding named objects in per-env worker processes."""

from __future__ import annotations

import asyncio
import base64
import difflib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from tether._version import __version__
from tether.daemon import bodies, browsers, grants, slabs
from tether.daemon import protocol as p
from tether.daemon.auth import GRANT_KEY, AccessPolicy, authorize, check_code_roots, visible
from tether.daemon.calls import FINAL, Call, CallTable, frame_body, present
from tether.daemon.eventloop import loop_name
from tether.daemon.openapi import document
from tether.daemon.store import Manifest, discard
from tether.daemon.workers import WorkerPool, WorkerProcess
from tether.errors import (
    AuthError,
    ConfigError,
    NotFound,
    PayloadTooLarge,
    SerializationError,
    TetherError,
    error_from_wire,
)
from tether.protocol import headers as h
from tether.protocol.deployments import deployment_id
from tether.protocol.headers import PREFER, RESPOND_ASYNC, wants_async
from tether.protocol.serving import input_error, loads_json, mark_authenticated, read_json
from tether.specs import EnvSpec, ServiceSpec, validate_name

log = structlog.get_logger("tether.daemon")

HEARTBEAT_SECONDS = 10.0


def _close_matches(name: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(name, names, n=3, cutoff=0.5)


def http_status(exc: TetherError) -> int:
    """The HTTP status of an error; the caller's own code raising (RemoteError) is 422, not a daemon fault."""
    return exc.status if exc.status >= 400 else 422


def error_response(exc: TetherError) -> web.Response:
    return web.json_response(exc.to_wire(), status=http_status(exc))


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
                         arg_file: str | None = None, lent: dict[str, Any] | None = None) -> Call:
        """Send a call to its worker. Its arguments are ``body``, or the shared-memory file ``arg_file``, which
        the daemon owns: it is removed whatever happens; or the slab a client lent (``lent``: the ``_lent`` and
        ``_slab`` CALL meta, see ``tether.daemon.slabs``)."""
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
            call = Call(call_id, name, method, json_mode, arg_file)
            meta: dict[str, Any] | bytes = self._call_meta(name, method, json_mode)
            if arg_file is not None or lent:
                meta = {"name": name, "method": method, "mode": "json" if json_mode else "pickle", **(lent or {})}
                if arg_file is not None:
                    meta["_shm"] = arg_file
            call.worker = worker
            self.calls.add(call)  # journaled before the worker sees it
            try:
                call.worker_tag = worker.request(p.CALL, meta, body, call.add)
            except BaseException:
                self.calls.discard(call)
                raise
        except BaseException:
            if arg_file is not None:
                p.unlink_quietly(arg_file)
            raise
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


# -- HTTP ------------------------------------------------------------------------------------------------------------
DAEMON = web.AppKey("daemon", Daemon)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    daemon.last_activity = time.time()
    try:
        if daemon.auth.enabled:
            denied = await authorize(request, daemon.auth, daemon.service_of_call, daemon.names_in_env,
                                     daemon.is_service, daemon.env_reqs, daemon.starter_of)
            if denied is not None:
                return error_response(denied)
            mark_authenticated(request)
        elif not _over_unix_socket(request):  # no token: no web page may drive it (see browsers.py)
            refused = browsers.refusal(request, daemon.host)
            if refused is not None:
                return error_response(refused)
        return await handler(request)
    except TetherError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge(f"request body over the daemon's limit of {daemon.max_body} bytes",
                                              details={"limit": daemon.max_body}))
    except web.HTTPException as exc:
        if exc.status >= 400:
            err = TetherError(exc.reason or "HTTP error")
            return web.json_response(err.to_wire(), status=exc.status)
        raise
    except ValidationError as exc:
        return error_response(ConfigError(f"invalid request: {exc.errors(include_url=False)}"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error_response(ConfigError(f"the body is not valid JSON: {exc}"))
    except Exception as exc:  # noqa: BLE001 - the daemon keeps serving, the caller gets a JSON error
        typed = input_error(exc)  # the request's own bytes: a broken chunked body, JSON too deep, ...
        if typed is not None:
            return error_response(typed)
        log.exception("handler_failed", path=request.path)
        return web.json_response(TetherError(f"internal error: {type(exc).__name__}: {exc}").to_wire(), status=500)


def _name(request: web.Request, key: str = "name") -> str:
    return _valid_name(request.match_info[key])


def _valid_name(value: Any, what: str = "name") -> str:
    try:
        return validate_name(value, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__, "pid": os.getpid()})


async def status(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    grant = request.get(GRANT_KEY)  # a principal sees the services it has a grant on, their envs and calls
    services = [{**row, "methods": d.manifest.methods.get(row["name"], {})}  # what a stub of a live service needs
                for row in d.manifest.status() if visible(grant, row["name"])]
    envs = {row["env"] for row in services}
    workers = [{"env": n, "pid": w.pid, "alive": w.alive, "state": w.state(),
                **({"error": w.death.to_wire()["error"]} if isinstance(w.death, TetherError) else {})}
               for n, w in d.pool.workers.items() if n in envs or visible(grant, "*")]
    return web.json_response({
        "version": __version__, "pid": os.getpid(), "loop": loop_name(), "uptime": time.time() - d.started,
        "idle_seconds": time.time() - d.last_activity, "autostop_mins": d.autostop_mins,
        "autostop_paused": d.autostop_paused, "services": services, "workers": workers,
        "running_calls": [c.summary() for c in d.calls.running() if visible(grant, c.service)],
    })


async def deploy(request: web.Request) -> web.Response:
    spec = ServiceSpec.model_validate(await read_json(request))
    spec = check_code_roots(spec, request.app[DAEMON].allowed_roots)  # its paths resolved: what runs is what passed
    replace_env = request.query.get("replace_env", "0") not in ("", "0", "false")
    return web.json_response(await request.app[DAEMON].deploy(spec, replace_env=replace_env))


async def list_envs(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    grant = request.get(GRANT_KEY)
    out = {}
    for name, spec in d.env_specs().items():
        names = d.names_in_env(name)
        if not visible(grant, "*") and not any(visible(grant, n) for n in names):
            continue  # a principal sees the envs of services it has a grant on
        dumped = spec.model_dump(mode="json")
        if grant is not None and not all(grant.level(n) >= 2 for n in names):  # values only for its writers
            dumped["env_vars"] = dict.fromkeys(dumped["env_vars"], "<hidden>")
        out[name] = dumped
    return web.json_response({"envs": out})


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
    if not json_mode and (big := await bodies.receive_args(request, d.max_body)) is not None:  # TCP: into /dev/shm
        return await reply(request, await d.start_call(call_id, name, method, b"", json_mode, big, lent))
    body = query_body(request) if request.method == "GET" else await request.read()
    if not json_mode and body and (body[:1] != b"\x80" or body[-1:] != b"."):  # PROTO ... STOP
        raise SerializationError("the body is not a pickle", hint="send cloudpickle.dumps((args, kwargs)) or JSON")
    if json_mode and body:
        try:
            loads_json(body)
        except ValueError as exc:
            raise SerializationError(f"the body is neither cloudpickle ({h.PICKLE}) nor JSON: {exc}") from None
    return await reply(request, await d.start_call(call_id, name, method, body, json_mode, lent=lent))


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


def _over_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


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
    headers = {h.CALL_ID: call.call_id, h.CALL_ATTEMPT: str(call.attempt), "Content-Type": h.FRAMES}
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
                    mine: str | None = None) -> tuple[bytes | memoryview, ...]:
    """A frame as the client reads it: one buffer, or a header and a large body (not joined: no copy).

    A result left in a lent slab goes only to the request that lent it (``mine``), as an ``F`` frame."""
    kind, meta, body = present(call, kind, meta, body)  # a /dev/shm file gone: the call's result_gone error
    slab = meta.get("_slab") if meta else None
    if slab is not None:
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
        view = bodies.result_view(meta, body, call)  # a mapping of the file: sent without a copy
        if len(view) > 1024 * 1024:
            return p.client_header(kind, len(view)), view
        body = bytes(view)
    if len(body) > 1024 * 1024:
        return p.client_header(kind, len(body)), body
    return (p.client_frame(kind, body),)


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


async def list_objects(request: web.Request) -> web.Response:
    grant = request.get(GRANT_KEY)
    return web.json_response({"keys": [n for n in request.app[DAEMON].manifest.names() if visible(grant, n)]})


async def get_object(request: web.Request) -> web.Response:
    _, body = await request.app[DAEMON].object_op("get", _name(request, "key"))
    return web.Response(body=body, content_type=h.PICKLE)


async def put_object(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    key = _name(request, "key")
    if key in d.manifest.services:
        raise ConfigError(f"{key!r} is a deployed service", hint="delete it first or use another key")
    env = _valid_name(request.query.get("env", "default"), "env name")
    await d.object_op("put", key, await request.read(), env=env)
    return web.json_response({"key": key, "env": env})


async def delete_object(request: web.Request) -> web.Response:
    key = _name(request, "key")
    await request.app[DAEMON].object_op("delete", key)
    return web.json_response({"deleted": key})


async def rename_object(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    key = _name(request, "key")
    data = await read_json(request)
    to = _valid_name(data.get("to", "") if isinstance(data, dict) else "")
    if to in d.manifest.names():
        raise ConfigError(f"{to!r} already exists", hint="delete it first")
    await d.object_op("rename", key, to=to)
    return web.json_response({"renamed": key, "to": to})


async def delete_env(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    env = _name(request, "env")
    services, objects = d.manifest.in_env(env)
    for name in [s.name for s in services] + objects:
        d.manifest.forget(name)
    if not await d.pool.remove(env) and not services and not objects:
        raise NotFound(f"no env {env!r} on this cluster")
    return web.json_response({"deleted_env": env, "services": [s.name for s in services] + objects})


async def autostop(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object")
    mins, paused = data.get("mins"), data.get("paused", False)
    if (mins is not None and (isinstance(mins, bool) or not isinstance(mins, int | float) or not mins >= 0)
            or not isinstance(paused, bool)):
        raise ConfigError("expected {'mins': a number >= 0 or null, 'paused': true/false}")
    if "mins" in data:
        d.autostop_mins = None if mins is None else float(mins)
    if "paused" in data:
        d.autostop_paused = paused
    return web.json_response({"autostop_mins": d.autostop_mins, "paused": d.autostop_paused})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


async def shutdown(request: web.Request) -> web.Response:
    request.app[DAEMON].stop_event.set()
    return web.json_response({"stopping": True})


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=daemon.max_body)
    app[DAEMON] = daemon
    app.router.add_get("/health", health)
    app.router.add_get("/status", status)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/deploy", deploy)
    app.router.add_post("/shutdown", shutdown)
    app.router.add_post("/autostop", autostop)
    app.router.add_get("/objects", list_objects)
    app.router.add_get("/objects/{key}", get_object)
    app.router.add_put("/objects/{key}", put_object)
    app.router.add_delete("/objects/{key}", delete_object)
    app.router.add_post("/objects/{key}/rename", rename_object)
    app.router.add_delete("/services/{key}", delete_object)
    app.router.add_get("/envs", list_envs)
    app.router.add_delete("/envs/{env}", delete_env)
    app.router.add_get("/calls/{call_id}", get_call)
    app.router.add_get("/calls/{call_id}/logs", call_logs)
    app.router.add_post("/calls/{call_id}/cancel", cancel_call)
    app.router.add_post("/{name}/call", call)
    app.router.add_post("/{name}/{method}/call", call)
    app.router.add_routes(grants.routes(daemon.auth, daemon.state_dir / "access.json"))
    for path in ("/{name}/call", "/{name}/{method}/call", "/{name}"):  # curl "$ENDPOINT/fn?a=1": query = kwargs
        app.router.add_get(path, call)

    async def on_cleanup(app: web.Application) -> None:
        await daemon.pool.close()
        daemon.calls.close()

    app.on_cleanup.append(on_cleanup)
    return app


__all__ = ["Daemon", "make_app"]
