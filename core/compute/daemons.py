"""Which process is a cluster's daemon, and where a local one listens, from its state file alone.

Plain (no models, no backend): the local backend asks this, and so does a fresh process that calls a saved
service on a local cluster without building the cluster's models (:mod:`tether.api.saved`).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ANSWER_TIMEOUT", "CHILDREN", "LocalAddress", "is_daemon", "local_address", "pid_alive"]

#: how long a local daemon that runs may take to answer before it counts as hung (and is replaced at ``up``)
ANSWER_TIMEOUT = 2.0

#: processes this process started (tunnels), kept so their exit status is reaped (no zombies mistaken for live)
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` runs and is not a zombie."""
    if not pid:
        return False
    child = CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        CHILDREN.pop(pid, None)
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return state != "Z"


def is_daemon(pid: int | None, state_dir: Path) -> bool:
    """``pid`` is this cluster's daemon: alive and running ``tether.daemon`` on ``state_dir``. A pid in a state file
    may name another process after a reboot, and a daemon that is exiting (its sockets already closed, not yet a
    zombie) has no command line left: neither is up, and neither may be signalled."""
    if not pid or not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"tether.daemon" in argv and os.fsencode(state_dir) in argv


@dataclass(frozen=True)
class LocalAddress:
    """Where a running local daemon listens, as its state file says."""

    endpoint: str
    token: str | None
    pid: int
    tls_fingerprint: str | None
    unix_socket: str | None


def local_address(state: dict[str, Any] | None, state_dir: Path) -> LocalAddress | None:
    """The address of the local daemon ``state`` describes, when that daemon runs (else None)."""
    if not state or not is_daemon(state.get("pid"), state_dir):
        return None
    fingerprint = state.get("tls_fingerprint")
    scheme = "https" if fingerprint else "http"
    return LocalAddress(endpoint=f"{scheme}://127.0.0.1:{state['port']}", token=state.get("token"),
                        pid=state["pid"], tls_fingerprint=fingerprint, unix_socket=state.get("unix_socket"))
