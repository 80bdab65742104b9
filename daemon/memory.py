"""Memory of worker processes: why a dead worker died (``classify_exit``: killed for memory, or not), and
``apply_memory_limit``, which puts a worker under a cgroup v1 memory limit (the kernel OOM-kills it like a real
box) or under ``RLIMIT_AS`` (allocations fail with ``MemoryError``) where cgroups cannot be written.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tether.errors import ConfigError, OutOfMemory, WorkerDied
from tether.escalation.oom import judge_exit
from tether.specs import parse_bytes

__all__ = ["MemoryLimit", "apply_memory_limit", "baseline_evidence", "classify_exit", "exit_evidence"]


# --- dead workers ----------------------------------------------------------------------------------------

def classify_exit(
    returncode: int, *, memory_limit: int | str | None = None, evidence: Mapping[str, Any] | None = None
) -> OutOfMemory | WorkerDied:
    """Why a worker died: :class:`OutOfMemory` when there is memory-pressure evidence, else :class:`WorkerDied`.

    ``evidence`` may hold ``pid`` (its memory cgroup is then read), ``oom_kill`` (kills counted by its cgroup),
    ``vmstat_oom_kill`` (``/proc/vmstat`` oom_kill before the worker started), ``peak_rss`` (bytes) and
    ``stderr`` (the worker's last output). Without any, dead tether cgroups of this process's workers are read.
    """
    ev: dict[str, Any] = dict(evidence or {})
    if "oom_kill" not in ev:
        gathered = exit_evidence(ev.get("pid"))
        ev = {**gathered, **ev}
    return judge_exit(returncode, memory_limit=memory_limit, evidence=ev, vmstat_now=_vmstat_oom_kills())


def _vmstat_oom_kills() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


def exit_evidence(pid: int | None = None) -> dict[str, Any]:
    """Read (and remove) the memory cgroup a dead worker ran in: OOM kills, failures, peak usage, limit.

    With ``pid`` None, the dead worker cgroups of this process's children are read (the one with an OOM kill
    wins). Returns ``{}`` when nothing is found, e.g. when workers ran under the rlimit fallback.
    """
    root = _memory_cgroup_dir()
    found: dict[str, Any] = {}
    if root is None:
        return found
    pattern = f"tether-*-{pid}" if pid is not None else f"tether-{os.getpid()}-*"
    for group in sorted(root.glob(pattern)):
        if _tasks(group):
            continue  # still has live processes: not (yet) a dead worker's
        stats = {**_cgroup_stats(group), "cgroup": str(group)}
        _remove_cgroup(group)
        if not found or stats.get("oom_kill"):
            found = stats
    return found


def baseline_evidence() -> dict[str, Any]:
    """Taken when a worker starts and passed back as ``evidence`` at its death: the host's OOM-kill count."""
    return {"vmstat_oom_kill": _vmstat_oom_kills()}


# --- limits ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryLimit:
    """How a worker's memory is limited: ``cgroup`` (kernel OOM kill) or ``rlimit`` (MemoryError)."""

    mode: Literal["cgroup", "rlimit"]
    nbytes: int
    cgroup: str | None = None
    address_space: int | None = None


def apply_memory_limit(nbytes: int | str, *, mode: str | None = None) -> MemoryLimit:
    """Limit this process (and its children) to ``nbytes`` more memory than it uses now; call at worker start.

    ``mode`` (default ``$TETHER_MEMORY_LIMIT_MODE`` or ``auto``): ``cgroup`` creates a cgroup v1 memory cgroup
    ``tether-<ppid>-<pid>`` under this process's own and moves into it; ``rlimit`` sets ``RLIMIT_AS`` to the
    address space in use plus ``nbytes``; ``auto`` tries the cgroup and falls back to the rlimit.
    """
    limit = parse_bytes(nbytes)
    if not limit or limit <= 0:
        raise ConfigError(f"memory limit must be positive, got {nbytes!r}")
    chosen = (mode or os.environ.get("TETHER_MEMORY_LIMIT_MODE") or "auto").lower()
    if chosen not in ("auto", "cgroup", "rlimit"):
        raise ConfigError(f"unknown memory limit mode {chosen!r}", hint="use 'auto', 'cgroup' or 'rlimit'")
    if chosen in ("auto", "cgroup"):
        try:
            return _join_cgroup(limit)
        except OSError as exc:
            if chosen == "cgroup":
                raise ConfigError(
                    f"could not put the worker in a memory cgroup: {exc}",
                    hint="cgroup v1 memory controller writable by this user is needed; or use mode 'rlimit'",
                ) from exc
    return _set_rlimit(limit)


def _set_rlimit(limit: int) -> MemoryLimit:
    in_use = _vm_size()
    cap = in_use + limit
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return MemoryLimit(mode="rlimit", nbytes=limit, address_space=cap)


def _vm_size() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _memory_cgroup_dir() -> Path | None:
    """This process's own cgroup v1 memory directory, or None when there is no v1 memory controller."""
    mount = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, extra = left.split(), right.split()
            if len(extra) >= 3 and extra[0] == "cgroup" and "memory" in extra[2].split(","):
                mount = (fields[3], Path(fields[4]))
                break
    if mount is None:
        return None
    mount_root, mount_point = mount
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path
                directory = (mount_point / rel.lstrip("/")).resolve()
                return directory if directory.is_dir() else None
    return None


def _join_cgroup(limit: int) -> MemoryLimit:
    parent = _memory_cgroup_dir()
    if parent is None:
        raise OSError(errno.ENOENT, "no cgroup v1 memory controller is mounted")
    _remove_stale(parent)
    group = parent / f"tether-{os.getppid()}-{os.getpid()}"
    group.mkdir(exist_ok=True)
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
            with contextlib.suppress(OSError):
                (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        _remove_cgroup(group)
        raise
    atexit.register(_leave_cgroup, parent, group)
    return MemoryLimit(mode="cgroup", nbytes=limit, cgroup=str(group))


def _leave_cgroup(parent: Path, group: Path) -> None:
    """On a clean exit: move back to the parent so the (then empty) cgroup can be removed."""
    with contextlib.suppress(OSError):
        (parent / "cgroup.procs").write_text(str(os.getpid()))
        if not _tasks(group):
            group.rmdir()


def _tasks(group: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in (group / "cgroup.procs").read_text().split()]
    return []


def _cgroup_stats(group: Path) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in (group / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("oom_kill", "under_oom"):
                stats[key] = int(value)
    for name, key in (("memory.failcnt", "failcnt"), ("memory.max_usage_in_bytes", "max_usage"),
                      ("memory.limit_in_bytes", "limit")):  # fmt: skip
        with contextlib.suppress(OSError, ValueError):
            stats[key] = int((group / name).read_text().strip())
    return stats


def _remove_cgroup(group: Path) -> None:
    with contextlib.suppress(OSError):
        group.rmdir()


def _remove_stale(parent: Path) -> None:
    """Remove empty ``tether-*`` cgroups whose worker and daemon are both gone (nobody will read them)."""
    for group in parent.glob("tether-*-*"):
        ids = group.name.split("-")[1:]
        if all(i.isdigit() and not Path(f"/proc/{i}").exists() for i in ids) and not _tasks(group):
            _remove_cgroup(group)
