"""Functions the env tests deploy (imported by path on the hosts)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any


def probe_value() -> dict[str, Any]:
    import tetherprobe  # type: ignore[import-not-found]  # installed by the env's reqs

    return {"value": tetherprobe.VALUE, "python": sys.executable}


def environ(names: list[str]) -> dict[str, str | None]:
    return {n: os.environ.get(n) for n in names}


def read_file(path: str) -> dict[str, Any]:
    p = Path(os.path.expanduser(path))
    return {"text": p.read_text(), "mode": p.stat().st_mode & 0o777}


def _sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def environ_digests(names: list[str]) -> dict[str, str | None]:
    """The sha256 of each variable: a secret's value never becomes a call result (results are journaled)."""
    return {n: _sha(os.environ.get(n)) for n in names}


def file_digest(path: str) -> dict[str, Any]:
    p = Path(os.path.expanduser(path))
    text = p.read_text()
    return {"sha": _sha(text), "first_line": text.splitlines()[0], "mode": p.stat().st_mode & 0o777,
            "path": str(p)}
