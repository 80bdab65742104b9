"""Bearer tokens: made by whoever starts a daemon, kept by the daemon only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

__all__ = ["HASH_PREFIX", "hash_token", "new_token", "read_token_file"]

HASH_PREFIX = "sha256:"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_token_file(path: Path) -> str:
    """The owner token's hash from a token file holding either the token or ``sha256:<hex>`` (preferred: the
    file then holds nothing that lets anyone in)."""
    text = path.read_text().strip()
    if text.startswith(HASH_PREFIX):
        digest = text[len(HASH_PREFIX) :].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise SystemExit(f"{path}: not a sha256 hex digest after {HASH_PREFIX!r}")
        return digest
    if not text:
        raise SystemExit(f"{path} is empty: it must hold the bearer token or sha256:<hex of it>")
    return hash_token(text)
