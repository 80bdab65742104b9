"""Services for the worker-usage test: one that keeps a core busy, one that holds memory."""

from __future__ import annotations

import time

_HELD: list[bytearray] = []


def burn(seconds: float) -> int:
    end, n = time.process_time() + seconds, 0
    while time.process_time() < end:
        n += 1
    return n


def hold(megabytes: int) -> int:
    _HELD.append(bytearray(megabytes * 1024 * 1024))
    for i in range(0, len(_HELD[-1]), 4096):
        _HELD[-1][i] = 1
    return len(_HELD)
