"""Console sessions: a bearer token once on the login page, then an HttpOnly SameSite=Strict session cookie.

A session holds the token in the server's memory only; every request looks the token up again (a revoked or
expired token ends its sessions at once). Every form that changes something carries the session's CSRF token,
checked in constant time, and a cross-site ``Origin`` is refused as well. ``tether console`` (a local registry)
logs in with a one-time token it prints and acts as the trusted local user (principal None).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["COOKIE", "Session", "Sessions", "same_origin"]

COOKIE = "tether_console"
IDLE_S = 8 * 3600


@dataclass
class Session:
    """One logged-in browser: its token (None for the local console), who that is, its CSRF token."""

    token: str | None
    principal: str | None
    label: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf, str(given))


class Sessions:
    """Session id → :class:`Session`, in memory (a restarted server asks everyone to log in again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def new(self, session: Session) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            for old in [k for k, s in self._by_id.items() if now - s.seen > IDLE_S]:
                del self._by_id[old]
            self._by_id[sid] = session
        return sid

    def get(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        with self._lock:
            session = self._by_id.get(sid or "")
            if session is None or time.monotonic() - session.seen > IDLE_S:
                return None
            session.seen = time.monotonic()
            return session

    def drop(self, request: web.Request) -> None:
        with self._lock:
            self._by_id.pop(request.cookies.get(COOKIE) or "", None)

    def drop_token(self, token: str) -> None:
        with self._lock:
            for sid in [k for k, s in self._by_id.items() if s.token == token]:
                del self._by_id[sid]


def set_cookie(response: web.StreamResponse, request: web.Request, sid: str) -> None:
    response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/console", secure=request.secure,
                        max_age=IDLE_S)


def same_origin(request: web.Request) -> bool:
    """A state-changing request from this site: no ``Origin`` (older browsers, tests) or one naming this host."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == request.host
