"""Self-signed TLS for the daemon: a certificate the client pins by its SHA-256 fingerprint (no CA needed)."""

from __future__ import annotations

import ssl
from pathlib import Path

from tether.protocol.tls import ensure_self_signed, fingerprint

__all__ = ["ensure_self_signed", "fingerprint", "server_context"]


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The daemon's server-side TLS context (TLS 1.2 or newer)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
