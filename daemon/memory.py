"""Memory of worker processes: why a dead worker died (``classify_exit``: killed for memory, or not), and
``apply_memory_limit``, which puts a worker under a memory cgroup limit (the kernel OOM-kills it like a real box)
or under ``RLIMIT_AS`` (allocations fail with ``MemoryError``) where no cgroup can be written.

Both cgroup versions: with a v1 ``memory`` hierarchy the worker's cgroup ``tether-<daemon pid>-<worker pid>`` is
made inside the daemon's own memory cgroup (``memory.limit_in_bytes``, counters in ``memory.oom_control``); with
cgroup v2 (the unified hierarchy, the default on current distributions) it is made beside the daemon's cgroup,
in its parent (``memory.max``, counters in ``memory.events``): a v2 cgroup that holds processes cannot give
controllers to children of its own, while its parent already gives the memory controller to its children. In
the v2 root cgroup, which may do both, the worker's cgroup goes inside it.
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
    """Read (and remove) the memory cgroup (v1 or v2) a dead worker ran in: OOM kills, failures, peak usage, limit.

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
    """How a worker's memory is limited: ``cgroup`` (kernel OOM kill; ``cgroup_version`` 1 or 2) or ``rlimit``
    (MemoryError)."""

    mode: Literal["cgroup", "rlimit"]
    nbytes: int
    cgroup: str | None = None
    address_space: int | None = None
    cgroup_version: int | None = None


def apply_memory_limit(nbytes: int | str, *, mode: str | None = None) -> MemoryLimit:
    """Limit this process (and its children) to ``nbytes`` more memory than it uses now; call at worker start.

    ``mode`` (default ``$TETHER_MEMORY_LIMIT_MODE`` or ``auto``): ``cgroup`` creates a memory cgroup
    ``tether-<ppid>-<pid>`` (cgroup v1 or v2, see the module's docstring) and moves into it; ``rlimit`` sets
    ``RLIMIT_AS`` to the address space in use plus ``nbytes``; ``auto`` tries the cgroup and falls back to the
    rlimit.
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
                    hint="a memory cgroup this user may write is needed (a cgroup v1 memory hierarchy, or cgroup "
                         "v2 with the memory controller given to this process's cgroup); or use mode 'rlimit'",
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


_PROC_SELF = Path("/proc/self")  # where this process's mounts and cgroups are read (tests point it elsewhere)


@dataclass(frozen=True)
class _Hierarchy:
    """Where this process's worker cgroups go: ``parent`` holds them; ``home`` is the cgroup this process is in."""

    version: Literal[1, 2]
    home: Path
    parent: Path


def _mounts() -> tuple[tuple[str, Path] | None, tuple[str, Path] | None]:
    """(root, mount point) of the cgroup v1 hierarchy holding ``memory`` and of the cgroup v2 hierarchy."""
    v1 = v2 = None
    with contextlib.suppress(OSError):
        for line in (_PROC_SELF / "mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, extra = left.split(), right.split()
            if len(fields) < 5 or not extra:
                continue
            if v1 is None and extra[0] == "cgroup" and len(extra) >= 3 and "memory" in extra[2].split(","):
                v1 = (fields[3], Path(fields[4]))
            elif v2 is None and extra[0] == "cgroup2":
                v2 = (fields[3], Path(fields[4]))
    return v1, v2


def _own_cgroup(mount: tuple[str, Path], wanted: str | None) -> Path | None:
    """This process's cgroup directory in ``mount``: the v1 line naming controller ``wanted``, or v2's ``0::``."""
    mount_root, mount_point = mount
    with contextlib.suppress(OSError, ValueError):
        for line in (_PROC_SELF / "cgroup").read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            if (wanted in controllers.split(",")) if wanted else (number == "0" and controllers == ""):
                rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path
                directory = (mount_point / rel.lstrip("/")).resolve()
                return directory if directory.is_dir() else None
    return None


def _words(path: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text().split()
    return []


def _memory_hierarchy() -> _Hierarchy | None:
    """Where worker memory cgroups go (see the module's docstring); None when no memory controller can be used."""
    v1, v2 = _mounts()
    if v1 is not None:
        own = _own_cgroup(v1, "memory")
        return _Hierarchy(1, own, own) if own is not None else None
    if v2 is None:
        return None
    own = _own_cgroup(v2, None)
    if own is None:
        return None
    if "memory" in _words(own / "cgroup.subtree_control"):  # the root cgroup (or an empty one): children inside
        return _Hierarchy(2, own, own)
    if own != v2[1].resolve() and "memory" in _words(own / "cgroup.controllers"):  # the parent gives memory
        return _Hierarchy(2, own, own.parent)
    return None


def _memory_cgroup_dir() -> Path | None:
    """The directory worker memory cgroups are made in (v1: this process's own; v2: see above), or None."""
    hierarchy = _memory_hierarchy()
    return hierarchy.parent if hierarchy else None


def _join_cgroup(limit: int) -> MemoryLimit:
    hierarchy = _memory_hierarchy()
    if hierarchy is None:
        raise OSError(errno.ENOENT, "no memory cgroup can be used here (no cgroup v1 memory hierarchy, and "
                                    "cgroup v2 does not give the memory controller to this process's cgroup)")
    parent = hierarchy.parent
    _remove_stale(parent)
    group = parent / f"tether-{os.getppid()}-{os.getpid()}"
    group.mkdir(exist_ok=True)
    if hierarchy.version == 1:
        limit_file, swap_file, swap_value = "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", str(limit)
    else:
        limit_file, swap_file, swap_value = "memory.max", "memory.swap.max", "0"
    try:
        (group / limit_file).write_text(str(limit))
        if (group / swap_file).exists():  # no swapping past the limit either
            with contextlib.suppress(OSError):
                (group / swap_file).write_text(swap_value)
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        _remove_cgroup(group)
        raise
    atexit.register(_leave_cgroup, hierarchy.home, group)
    return MemoryLimit(mode="cgroup", nbytes=limit, cgroup=str(group), cgroup_version=hierarchy.version)


def _leave_cgroup(home: Path, group: Path) -> None:
    """On a clean exit: move back to the cgroup the worker started in, so the (then empty) one can be removed."""
    with contextlib.suppress(OSError):
        (home / "cgroup.procs").write_text(str(os.getpid()))
        if not _tasks(group):
            group.rmdir()


def _tasks(group: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in (group / "cgroup.procs").read_text().split()]
    return []


def _cgroup_stats(group: Path) -> dict[str, Any]:
    """The counters of a worker's cgroup, by the same names in both versions: ``oom_kill``, ``failcnt`` (times
    the limit was hit), ``max_usage`` (peak bytes), ``limit`` (bytes), and ``under_oom`` (v1 only)."""
    if (group / "memory.events").exists():  # cgroup v2
        return _cgroup2_stats(group)
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


def _cgroup2_stats(group: Path) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in (group / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                stats["oom_kill"] = int(value)
            elif key == "max":
                stats["failcnt"] = int(value)
    for name, key in (("memory.peak", "max_usage"), ("memory.max", "limit")):
        with contextlib.suppress(OSError, ValueError):
            stats[key] = int((group / name).read_text().strip())  # memory.max may say "max": no limit
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
