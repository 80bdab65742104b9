"""What the distributed tests look at on the namespace hosts: the processes in each one."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path


def processes(hosts, i: int) -> list[str]:
    """Command lines of every process in host ``i``'s network namespace (sshd aside)."""
    pids = subprocess.run(["ip", "netns", "pids", hosts.hosts[i].namespace], capture_output=True, text=True).stdout
    cmds = []
    for pid in pids.split():
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if cmd and "sshd" not in cmd:
                cmds.append(cmd)
    return cmds


def workers_in(hosts, i: int) -> list[str]:
    return [c for c in processes(hosts, i) if "tether.daemon.worker" in c]


def env_of(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"TETHER_ENV="):
                return item.split(b"=", 1)[1].decode()
    return None


def worker_envs(hosts, i: int) -> list[str]:
    """TETHER_ENV of every worker process in host ``i``."""
    pids = subprocess.run(["ip", "netns", "pids", hosts.hosts[i].namespace], capture_output=True, text=True).stdout
    out = []
    for pid in pids.split():
        with contextlib.suppress(OSError):
            if b"tether.daemon.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                env = env_of(int(pid))
                if env:
                    out.append(env)
    return sorted(out)
