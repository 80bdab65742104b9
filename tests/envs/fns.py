"""Functions the env tests deploy (imported by path on the hosts)."""

from __future__ import annotations

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
