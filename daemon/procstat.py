"""What each worker process uses, read from ``/proc`` for ``/status``: resident memory and the CPU share since the
previous status request (the first time: since the process started). No sampling thread and no sleep: a status
request answers at once, and two requests some seconds apart give that interval's CPU share."""

from __future__ import annotations

import os
import time

__all__ = ["CpuSampler", "rss_bytes"]

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_and_start(pid: int) -> tuple[float, float] | None:
    """(CPU seconds used, start time in seconds since boot) of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[19]) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class CpuSampler:
    """CPU percent of processes between successive :meth:`percent` calls (100 = one core busy)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, float, float]] = {}  # pid -> (cpu seconds, at, start time)

    def percent(self, pid: int) -> float | None:
        got = _cpu_and_start(pid)
        if got is None:
            self._last.pop(pid, None)
            return None
        cpu, start = got
        now = time.monotonic()
        last = self._last.get(pid)
        self._last[pid] = (cpu, now, start)
        if last is not None and last[2] == start and now > last[1]:
            return round(100.0 * (cpu - last[0]) / (now - last[1]), 1)
        try:
            lived = _uptime() - start
        except (OSError, ValueError):
            return None
        return round(100.0 * cpu / lived, 1) if lived > 0 else None

    def forget_except(self, pids: set[int]) -> None:
        """Drop what is kept of processes no longer asked about."""
        for pid in [p for p in self._last if p not in pids]:
            del self._last[pid]
