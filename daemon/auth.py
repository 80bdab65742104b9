"""Bearer-token auth for the daemon. The token is kept only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenCheck:
    """Compares a presented bearer token with the stored hash in constant time."""

    def __init__(self, token_hash: str | None) -> None:
        self.token_hash = token_hash

    @property
    def enabled(self) -> bool:
        return self.token_hash is not None

    def ok(self, authorization: str | None) -> bool:
        if self.token_hash is None:
            return True
        if not authorization or not authorization.startswith("Bearer "):
            return False
        return hmac.compare_digest(hash_token(authorization[7:].strip()), self.token_hash)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
