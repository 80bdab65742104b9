"""Prefect tasks the TetherTaskRunner tests run; plain ``@task`` bodies, no tether in them (the runner's job)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from prefect import task

log = logging.getLogger("runner_tasks")


@task
def square(x: int) -> tuple[int, int]:
    """``x * x`` and the process it ran in."""
    print(f"square: {x} in {os.getpid()}")
    log.warning("square: logged for %d", x)
    log.info("square: info record for %d", x)
    return x * x, os.getpid()


@task
async def add_async(a: int, b: int) -> int:
    """An async body (it runs on the worker's loop)."""
    return a + b


@task(retries=1, retry_delay_seconds=0)
def flaky(marker_dir: str) -> str:
    """Fails on its first run, passes on the next: each run leaves a line in ``runs``."""
    path = Path(marker_dir) / "runs"
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    n = len(path.read_text().splitlines())
    if n == 1:
        raise ConnectionError("transient: the feature store hung up")
    return f"ok on run {n}"


@task(timeout_seconds=5)
def runs_too_long(marker_dir: str) -> str:
    """Says it started, then runs past its task timeout; ``finished`` marks a run nobody cancelled."""
    (Path(marker_dir) / "started").touch()
    for _ in range(300):
        time.sleep(0.1)
    (Path(marker_dir) / "finished").touch()
    return "not cancelled"


@task
def run_until_cancelled(marker_dir: str) -> str:
    """Says it started, then runs for up to two minutes; ``finished`` marks a run nobody cancelled."""
    (Path(marker_dir) / "started").touch()
    for _ in range(1200):
        time.sleep(0.1)
    (Path(marker_dir) / "finished").touch()
    return "not cancelled"
