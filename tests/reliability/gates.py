"""Services for the slow-peer and stuck-worker tests: calls that wait at a gate (a file) until the test opens it."""

from __future__ import annotations

import os
import time
from pathlib import Path


def wait_at_gate(gate_dir: str, i: int) -> int:
    """Write ``started-<i>`` into ``gate_dir``, then wait until ``gate_dir/open`` exists; returns ``i``."""
    Path(gate_dir, f"started-{i}").touch()
    while not os.path.exists(os.path.join(gate_dir, "open")):
        time.sleep(0.01)
    return i


def worker_pid() -> int:
    """The pid of the worker process that runs this call."""
    return os.getpid()
