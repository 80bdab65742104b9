"""What runs around every route of the daemon: access checks, browser-shaped requests to a daemon without
auth, and every failure mapped to a typed JSON error; the request helpers the routes share."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from tether.daemon import browsers
from tether.daemon.auth import authorize
from tether.daemon.state import Daemon, log
from tether.errors import (
    ConfigError,
    PayloadTooLarge,
    TetherError,
)
from tether.protocol.serving import input_error, mark_authenticated
from tether.specs import validate_name


def http_status(exc: TetherError) -> int:
    """The HTTP status of an error; the caller's own code raising (RemoteError) is 422, not a daemon fault."""
    return exc.status if exc.status >= 400 else 422


def error_response(exc: TetherError) -> web.Response:
    return web.json_response(exc.to_wire(), status=http_status(exc))


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


def _over_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX
