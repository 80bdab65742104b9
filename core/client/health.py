"""Is a daemon up there? One blocking ``GET /health`` with a short timeout, for backends and the registry."""

from __future__ import annotations

import json
from typing import Any

from tether.client.syncwire import SyncTransport
from tether.client.transport import Dropped, mounted
from tether.protocol import headers as h

__all__ = ["probe_health"]


def probe_health(endpoint: str, *, token: str | None = None, tls_fingerprint: str | None = None,
                 unix_socket: str | None = None, timeout: float = 2.0) -> dict[str, Any] | None:
    """The daemon's ``/health`` answer (``{"status": "ok", ...}``), or None when nothing healthy answers at
    ``endpoint`` within ``timeout`` seconds (refused, gone silent, not HTTP, not 200).

    An ``https`` endpoint is checked against ``tls_fingerprint`` when one is given: another certificate raises
    ``AuthError``, never taken for "down". Without one the certificate is not checked (``/health`` carries no
    secret) and ``token`` is not sent.
    """
    transport = mounted(endpoint) or SyncTransport(endpoint, unix_socket, tls_fingerprint=tls_fingerprint,
                                                   verify=False, connect_timeout=timeout, read_timeout=timeout)
    unpinned_tls = endpoint.startswith("https://") and not tls_fingerprint
    headers = h.bearer(None if unpinned_tls else token)
    try:
        resp = transport.send("GET", "/health", headers, timeout=timeout)
        try:
            body = resp.read()
        finally:
            resp.close()
    except Dropped:
        return None
    if resp.status != 200:
        return None
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None
