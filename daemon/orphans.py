"""Worker processes a dead daemon may have left running, named for good by pid *and* start time (a pid alone may
have been reused), and killed by the next daemon before it runs anything (see the call journal)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import structlog

log = structlog.get_logger("tether.daemon.journal")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b") ", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot): with its pid, it names one process for good."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else None


def _running(pid: int, ticks: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == ticks and stat[0] != "Z"


def kill_orphans(workers: list[list[list[int]]], timeout: float = 5.0) -> list[int]:
    """SIGKILL the recorded workers that still run (same pid *and* start time: never a process that reused the
    pid) and wait until they are gone; returns their pids."""
    me = os.getpid()
    victims = [(pid, ticks) for pids in workers for pid, ticks in pids if pid != me and _running(pid, ticks)]
    for pid, _ in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_running(pid, ticks) for pid, ticks in victims) and time.monotonic() < deadline:
        time.sleep(0.01)
    if victims:
        log.warning("orphaned_workers_killed", pids=[pid for pid, _ in victims],
                    why="a worker of the daemon that ran before this one was still running")
    return [pid for pid, _ in victims]


__all__ = ["kill_orphans", "start_ticks"]
