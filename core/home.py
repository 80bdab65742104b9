"""Where tether keeps its state: ``$TETHER_HOME`` (default ``~/.tether``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def tether_home() -> Path:
    home = Path(os.environ.get("TETHER_HOME") or Path.home() / ".tether")
    home.mkdir(parents=True, exist_ok=True)
    return home


def clusters_dir() -> Path:
    path = tether_home() / "clusters"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock held while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
