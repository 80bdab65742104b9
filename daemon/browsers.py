"""Browser-shaped requests to a daemon without auth (``auth=False``, loopback only).

A web page open in a browser on the same machine can send requests to ``127.0.0.1:<port>``: a cross-site
``POST`` with a ``text/plain`` body needs no CORS preflight, and by DNS rebinding (its own name resolving to
127.0.0.1) the page even counts as same-origin to the browser. Without a token that would run code. So a daemon
without auth refuses, with a typed 403 ``AuthError``:

- a ``Host`` that is not a loopback name or address (``localhost``, ``127.0.0.0/8``, ``::1``) nor the address
  the daemon was bound to (``details.reason`` ``host_not_allowed``: DNS rebinding), and
- any request whose ``Origin`` is not the daemon's own (a loopback host on the daemon's port: a page of another
  local web server is refused too), or that says ``Sec-Fetch-Site: cross-site`` / ``same-site``
  (``cross_origin``). Every method: ``GET /{name}?a=1`` runs code too.

Plain clients (tether's, curl, requests) send no ``Origin`` and a loopback ``Host``. Requests over the unix
socket (0600, no browser reaches it) and daemons with a token are not checked: a page cannot send the token
without a preflight the daemon never answers, and a daemon behind a tunnel or proxy sees the proxy's ``Host``.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from tether.errors import AuthError

__all__ = ["refusal"]

_HINT = ("a daemon without a token serves only local programs, not web pages: call it without an Origin header "
         "and with Host 127.0.0.1 or localhost, or start it with a token (auth=True)")


def _loopback(host: str | None, own: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or (own is not None and host == own.strip("[]").lower()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> str | None:
    try:
        return urlsplit("//" + value).hostname
    except ValueError:
        return None


def refusal(request: web.BaseRequest, own_host: str | None) -> AuthError | None:
    """The error for a browser-shaped request to a daemon without auth (``None``: serve it); ``own_host`` is the
    address the daemon was bound to."""
    host = request.headers.get("Host")
    if host is not None and not _loopback(_hostname(host), own_host):
        return _forbidden(f"Host {host[:100]!r} is not this daemon's", "host_not_allowed")
    origin = request.headers.get("Origin")
    if origin is not None:
        try:
            parts = urlsplit(origin)
            origin_host, origin_port = (parts.hostname, parts.port) if origin != "null" else (None, None)
        except ValueError:
            origin_host, origin_port = None, None
        if not _loopback(origin_host, own_host) or origin_port != _port(request):
            return _forbidden(f"cross-origin request (Origin {origin[:100]!r}) to a daemon without auth",
                              "cross_origin")
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        return _forbidden("cross-site request (Sec-Fetch-Site) to a daemon without auth", "cross_origin")
    return None


def _port(request: web.BaseRequest) -> int | None:
    """The port the request came in on (the daemon's own origin is loopback on this port)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def _forbidden(message: str, reason: str) -> AuthError:
    err = AuthError(message, hint=_HINT, details={"reason": reason})
    err.status = 403
    return err
