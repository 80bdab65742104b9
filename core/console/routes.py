"""The console's routes on an aiohttp app: login and sessions, CSRF on every form, pages, static files.

``add_console(app, store)`` mounts it under ``/console`` on the team registry server (``tether registry serve``:
log in with a registry token). :func:`serve_local` runs it alone over a local registry file (``tether console``):
it prints a one-time login token and acts as the trusted local user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tether.console.assets import ASSETS
from tether.console.auth import COOKIE, Session, Sessions, same_origin, set_cookie
from tether.console.clusters import ClusterPages
from tether.console.html import e, error_page, page, service_path
from tether.console.machines import Sampler
from tether.console.pages import Pages
from tether.console.tail import Tail
from tether.errors import ConfigError, TetherError
from tether.protocol.serving import serve_until_signalled
from tether.registry.names import current_user
from tether.registry.store import Store

__all__ = ["PREFIX", "add_console", "is_console_path", "serve_local"]

PREFIX = "/console"
LOGIN_COOKIE = "tether_console_login"
SAMPLE_S = float(os.environ.get("TETHER_CONSOLE_SAMPLE_S", "30"))  # how often the console samples each cluster
View = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
Action = Callable[[web.Request, Session, Any], Awaitable[str]]


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


class Console:
    """Sessions, and the wrappers that turn a page or an action into a handler with auth and typed errors."""

    def __init__(self, store: Store, *, local_token: str | None) -> None:
        self.store = store
        self.local_token = local_token
        self.sessions = Sessions()
        self.pages = Pages(store)
        self.tail = Tail(store)
        self.sampler = Sampler()
        self.clusters = ClusterPages(store, self.sampler)

    async def session(self, request: web.Request) -> Session | None:
        s = self.sessions.get(request)
        if s is None or s.token is None:
            return s
        if await asyncio.to_thread(self.store.principal_for, s.token) != s.principal:  # revoked or expired
            self.sessions.drop_token(s.token)
            return None
        return s

    def view(self, fn: View) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            s = await self.session(request)
            if s is None:
                return _redirect(f"{PREFIX}/login?next={quote(request.path_qs, safe='')}")
            try:
                return await fn(request, s)
            except TetherError as exc:
                return self.failure(s, exc)

        return handler

    def action(self, fn: Action) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            s = await self.session(request)
            if s is None:
                return error_page(None, 401, "Signed out", "your session ended; log in again")
            data = await request.post()
            if not same_origin(request) or not s.csrf_ok(str(data.get("csrf") or "")):
                return error_page(s, 403, "Refused", "this form did not come from this console page (CSRF check)",
                                  hint="reload the page and try again")
            try:
                done = await fn(request, s, data)
            except TetherError as exc:
                return self.failure(s, exc)
            except ValueError as exc:
                return error_page(s, 422, "Invalid input", str(exc))
            return _redirect(f"{service_path(request.match_info['namespace'] + '/' + request.match_info['name'])}"
                             f"?done={quote(done)}")

        return handler

    @staticmethod
    def failure(s: Session | None, exc: TetherError) -> web.Response:
        title = {"AuthError": "No access", "NotFound": "Not found", "ConfigError": "Invalid input"}.get(
            type(exc).__name__, "Error")
        return error_page(s, exc.status, title, exc.message, exc.hint)

    # ------------------------------------------------------------------ login / logout
    async def login_form(self, request: web.Request) -> web.Response:
        nonce = secrets.token_urlsafe(24)
        nxt = request.query.get("next", f"{PREFIX}/services")
        message = request.query.get("error")
        err = f'<div class="error" id="error">{e(message)}</div>' if message else ""
        where = "this machine's local registry (the token `tether console` printed)" if self.local_token else \
            "the team registry (a token from `tether registry token`)"
        body = (f'<div class="login"><h1>Sign in</h1><p class="muted">to {e(where)}</p>{err}'
                f'<form method="post" action="{PREFIX}/login"><input type="hidden" name="csrf" value="{e(nonce)}">'
                f'<input type="hidden" name="next" value="{e(nxt)}"><label for="token">Token</label>'
                f'<input type="password" name="token" id="token" autocomplete="off" required>'
                f'<button type="submit" id="login">Sign in</button></form></div>')
        response = page("Sign in", body, None)
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path=f"{PREFIX}/login",
                            secure=request.secure, max_age=900)
        return response

    async def login(self, request: web.Request) -> web.Response:
        data = await request.post()
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not same_origin(request) or not nonce or not secrets.compare_digest(nonce, str(data.get("csrf") or "")):
            return _redirect(f"{PREFIX}/login?error={quote('the sign-in form expired; try again')}")
        token = str(data.get("token") or "").strip()
        nxt = str(data.get("next") or "")
        nxt = nxt if nxt.startswith(f"{PREFIX}/") and not nxt.startswith("//") else f"{PREFIX}/services"
        if self.local_token is not None:
            if not token or not secrets.compare_digest(token, self.local_token):
                return _redirect(f"{PREFIX}/login?error={quote('wrong token')}")
            session = Session(token=None, principal=None, label=f"{current_user()} (local)")
        else:
            principal = await asyncio.to_thread(self.store.principal_for, token) if token else None
            if principal is None:
                return _redirect(f"{PREFIX}/login?error={quote('unknown, revoked or expired token')}")
            session = Session(token=token, principal=principal, label=principal)
        response = _redirect(nxt)
        set_cookie(response, request, self.sessions.new(session))
        response.del_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        s = await self.session(request)
        data = await request.post()
        if s is not None and same_origin(request) and s.csrf_ok(str(data.get("csrf") or "")):
            self.sessions.drop(request)
        response = _redirect(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=PREFIX)
        return response

    async def static(self, request: web.Request) -> web.Response:
        found = ASSETS.get(request.match_info["file"])
        if found is None:
            return error_page(None, 404, "Not found", "no such file")
        kind, text = found
        return web.Response(text=text, content_type=kind, headers={"Cache-Control": "max-age=300"})

    async def home(self, request: web.Request) -> web.Response:
        return _redirect(f"{PREFIX}/services")


def add_console(app: web.Application, store: Store, *, local_token: str | None = None) -> None:
    """Mount the console on ``app`` under ``/console`` (and ``/`` → it). ``local_token``: the local console's login
    token (sessions act as the trusted local user); None: log in with a registry token."""
    c = Console(store, local_token=local_token)
    s_path = PREFIX + "/s/{namespace}/{name}"
    app.router.add_get("/", c.home)
    app.router.add_get(PREFIX, c.home)
    app.router.add_get(PREFIX + "/", c.home)
    app.router.add_get(PREFIX + "/login", c.login_form)
    app.router.add_post(PREFIX + "/login", c.login)
    app.router.add_post(PREFIX + "/logout", c.logout)
    app.router.add_get(PREFIX + "/static/{file}", c.static)
    app.router.add_get(PREFIX + "/services", c.view(c.pages.services))
    app.router.add_get(PREFIX + "/calls", c.view(c.pages.calls))
    app.router.add_get(PREFIX + "/lineage", c.view(c.pages.lineage))
    app.router.add_get(PREFIX + "/clusters", c.view(c.clusters.clusters))
    app.router.add_get(PREFIX + "/c/{cluster}", c.view(c.clusters.cluster))
    app.router.add_get(s_path, c.view(c.pages.service))
    app.router.add_get(s_path + "/code/{version:\\d+}", c.view(c.pages.code))
    app.router.add_get(s_path + "/calls/{call_id}", c.view(c.tail.page))
    app.router.add_get(s_path + "/calls/{call_id}/logs", c.view(c.tail.logs))
    app.router.add_post(s_path + "/calls/{call_id}/cancel", c.action(c.tail.cancel))
    app.router.add_post(s_path + "/rollback", c.action(c.pages.rollback))
    app.router.add_post(s_path + "/grant", c.action(c.pages.grant))
    app.router.add_post(s_path + "/revoke", c.action(c.pages.revoke))

    async def sampling(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(c.sampler.run(SAMPLE_S))  # CPU/memory per worker over the last hour
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sampling)


def serve_local(db: str | Path, *, host: str = "127.0.0.1", port: int = 0, ready_file: str | None = None,
                token: str | None = None) -> None:
    """``tether console``: the console alone over a local registry file, until SIGTERM/SIGINT. Prints the URL and
    the one-time login token (also written, with port and pid, to ``ready_file``)."""
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise ConfigError("the local console serves the trusted local registry: bind it to 127.0.0.1",
                          hint="use `tether registry serve` (token auth) to share a registry")
    store = Store(db)
    login = token or secrets.token_urlsafe(24)

    async def main() -> None:
        app = web.Application()
        add_console(app, store, local_token=login)

        def bound(port: int) -> dict[str, Any]:
            print(f"tether console: http://{host}:{port}{PREFIX}/login\nlogin token: {login}", flush=True)
            return {"token": login}

        await serve_until_signalled(web.AppRunner(app, access_log=None), host, port, ready_file, bound)

    try:
        asyncio.run(main())
    finally:
        store.close()



def is_console_path(path: str) -> bool:
    """Whether ``path`` is the console's (it does its own auth: sessions, not bearer tokens)."""
    return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")
