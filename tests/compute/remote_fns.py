"""Functions the SSH-host tests run remotely (stdlib only: the host's venv has tether and its deps, no pytest)."""

from __future__ import annotations

import os


def where(x: int) -> dict[str, object]:
    """Square ``x`` and say where it ran (each test host has its own HOME)."""
    return {"square": x * x, "home": os.environ.get("HOME"), "pid": os.getpid()}
