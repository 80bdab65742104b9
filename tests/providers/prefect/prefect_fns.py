"""Functions the Prefect tests deploy to a local tether cluster; they count their runs in marker files."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("prefect_fns")


def _count(marker_dir: str) -> int:
    """Append one line per run to ``runs``; returns how many runs there were, this one included."""
    path = Path(marker_dir) / "runs"
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def wait_for_release(marker_dir: str) -> str:
    """Count the run, say it started, then wait until the test creates ``release``."""
    n = _count(marker_dir)
    (Path(marker_dir) / "started").touch()
    print(f"waiting for release (run {n})")
    for _ in range(6000):
        if (Path(marker_dir) / "release").exists():
            return f"released after run {n}"
        time.sleep(0.02)
    raise RuntimeError("never released")


def run_until_cancelled(marker_dir: str) -> str:
    """Count the run, say it started, then run for up to two minutes; ``finished`` marks a run never cancelled."""
    _count(marker_dir)
    (Path(marker_dir) / "started").touch()
    for _ in range(1200):
        time.sleep(0.1)
    (Path(marker_dir) / "finished").touch()
    return "not cancelled"


def die_on_first_run(marker_dir: str) -> str:
    """The first run kills its own worker process (a segfault stand-in); later runs succeed."""
    n = _count(marker_dir)
    if n == 1:
        os._exit(17)
    log.info("survived on run %d", n)
    return f"survived on run {n}"


def fail_with_value_error(marker_dir: str) -> str:
    """A bug in the remote code: never worth a retry."""
    n = _count(marker_dir)
    raise ValueError(f"bad input on run {n}")


def grow(marker_dir: str, nbytes: int) -> int:
    """Allocate ``nbytes`` (a memory-limited worker runs out of memory on a small rung)."""
    _count(marker_dir)
    block = bytearray(nbytes)
    return len(block)


def value_error_on_first_run(marker_dir: str) -> str:
    """A remote error of the user's code on the first run (bad data that was fixed meanwhile); later runs pass."""
    n = _count(marker_dir)
    if n == 1:
        raise ValueError("bad input on run 1")
    return f"ok on run {n}"
