"""The routes that are not calls: health, status, deploy, envs, stored objects, autostop, shutdown, OpenAPI."""

from __future__ import annotations

import os
import time

from aiohttp import web

from tether._version import __version__
from tether.daemon.auth import GRANT_KEY, check_code_roots, visible
from tether.daemon.eventloop import loop_name
from tether.daemon.middleware import DAEMON, _name, _valid_name
from tether.daemon.openapi import document
from tether.daemon.procstat import CpuSampler, rss_bytes
from tether.errors import (
    ConfigError,
    NotFound,
    TetherError,
)
from tether.protocol import headers as h
from tether.protocol.serving import read_json
from tether.specs import ServiceSpec


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__, "pid": os.getpid()})


_CPU = CpuSampler()


def _usage(pid: int | None) -> dict[str, object]:
    """A live worker's ``cpu_percent`` (since the previous status request) and ``rss_bytes``: of the worker itself,
    not of the launcher that applies a memory limit."""
    if not pid:
        return {}
    return {"cpu_percent": _CPU.percent(pid), "rss_bytes": rss_bytes(pid)}


async def status(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    grant = request.get(GRANT_KEY)  # a principal sees the services it has a grant on, their envs and calls
    services = [{**row, "methods": d.manifest.methods.get(row["name"], {})}  # what a stub of a live service needs
                for row in d.manifest.status() if visible(grant, row["name"])]
    envs = {row["env"] for row in services}
    workers = [{"env": n, "pid": w.pid, "alive": w.alive, "state": w.state(),
                **_usage((w.worker_pid or w.pid) if w.alive else None),
                **({"error": w.death.to_wire()["error"]} if isinstance(w.death, TetherError) else {})}
               for n, w in d.pool.workers.items() if n in envs or visible(grant, "*")]
    _CPU.forget_except({p for w in d.pool.workers.values() for p in (w.worker_pid, w.pid) if p})
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
