"""A cluster's state file under ``$TETHER_HOME/clusters/<name>.json``: read it, and write it atomically and
privately (it holds the daemon's token), for every backend."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from tether.errors import ConfigError
from tether.home import clusters_dir

__all__ = ["claim_name", "load_state", "save_state", "saved_spec", "state_backend", "state_path", "write_private"]


def state_path(name: str) -> Path:
    return clusters_dir() / f"{name}.json"


def load_state(name: str) -> dict[str, Any] | None:
    """The cluster's state, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(state_path(name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_state(name: str, state: dict[str, Any]) -> None:
    write_private(state_path(name), json.dumps(state, indent=2).encode())


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a temp file created 0600 (never readable by anyone else, not
    even for a moment), flushed to disk, then renamed over the old one; a failure leaves the old one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def state_backend(state: dict[str, Any]) -> str:
    """The backend that wrote a state file (local state files of older versions name none)."""
    raw = state.get("spec")
    spec: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return str(state.get("backend") or spec.get("backend") or "local")


def saved_spec(name: str) -> dict[str, Any] | None:
    """The ClusterSpec fields a backend recorded for cluster ``name`` when it brought it up, if any."""
    state = load_state(name)
    spec = state.get("spec") if state else None
    return spec if isinstance(spec, dict) else None


def claim_name(name: str, backend: str) -> None:
    """Refuse to bring up cluster ``name`` with ``backend`` when another backend's cluster has that name here:
    its state file (tokens, tunnels, hosts) is never overwritten."""
    state = load_state(name)
    if state is not None and (other := state_backend(state)) != backend:
        raise ConfigError(f"cluster {name!r} is already a {other} cluster here, not a {backend} one",
                          hint=f"tether.cluster(name={name!r}) alone reconnects to it; tear it down first, or pick "
                               "another name", details={"cluster": name, "backend": other})
