"""The tether daemon: an aiohttp "Python object server" holding named objects in per-env worker processes.

This module builds the app and its route table. The daemon's state is ``tether.daemon.state.Daemon``; the
routes are in ``routes_calls`` and ``routes_admin``; what runs around them is ``middleware``.
"""

from __future__ import annotations

from aiohttp import web

from tether.daemon import grants
from tether.daemon.middleware import DAEMON, errors_and_auth
from tether.daemon.routes_admin import (
    autostop,
    delete_env,
    delete_object,
    deploy,
    get_object,
    health,
    list_envs,
    list_objects,
    openapi,
    put_object,
    rename_object,
    shutdown,
    status,
)
from tether.daemon.routes_calls import call, call_logs, cancel_call, get_call
from tether.daemon.state import Daemon


def make_app(daemon: Daemon) -> web.Application:
    """The daemon's aiohttp app: every route, the middleware around them, the workers' shutdown at cleanup."""
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
