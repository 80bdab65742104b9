"""``ssh -L`` tunnels from a local port to a daemon listening on a host's loopback.

The ssh process runs in its own session so it outlives the object that opened it; its pid and local port are
kept in the cluster state and checked (alive, port open) before reuse. A dead link makes ssh exit within a
few seconds (ServerAlive), which closes the local port, so callers see a refused connection, not a hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tether.compute.bootstrap import SSHTarget, step_error
from tether.compute.daemons import CHILDREN as _CHILDREN
from tether.compute.daemons import pid_alive

__all__ = ["Tunnel", "close_tunnel", "open_tunnel", "pid_alive", "tunnel_alive"]


@dataclass
class Tunnel:
    """A live tunnel: connect to ``127.0.0.1:local_port`` to reach ``remote_port`` on the host's loopback."""

    pid: int
    local_port: int
    remote_port: int
    host: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def tunnel_alive(pid: int | None, local_port: int | None) -> bool:
    """The ssh process is running and its local port accepts connections."""
    return bool(local_port) and pid_alive(pid) and _port_open(int(local_port or 0))


def open_tunnel(
    target: SSHTarget,
    remote_port: int,
    *,
    local_port: int | None = None,
    log: Path | None = None,
    timeout: float = 30,
) -> Tunnel:
    """Start ``ssh -N -L`` (on ``local_port`` when given, else a free one); wait until the local end accepts."""
    local_port = local_port or _free_port()
    argv = ["ssh", "-N", *target.options(), "-o", "ExitOnForwardFailure=yes",
            "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}", target.dest]  # fmt: skip
    errf = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                            start_new_session=True)  # fmt: skip
    if log:
        errf.close()  # type: ignore[union-attr]
    _CHILDREN[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while not _port_open(local_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            close_tunnel(proc.pid)
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise step_error(
                "tunnel", target.host, proc.returncode if proc.returncode is not None else 255, tail
            )
        time.sleep(0.05)
    return Tunnel(pid=proc.pid, local_port=local_port, remote_port=remote_port, host=target.host)


def close_tunnel(pid: int | None) -> None:
    """Stop a tunnel's ssh process (no error if it is already gone)."""
    if not pid:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
