"""A generator the stream re-run tests deploy: it holds after ``hold_at`` items until ``marker_dir/go`` exists, and
appends a line to ``marker_dir/runs`` each time it runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path


def ticks(marker_dir: str, n: int, hold_at: int) -> Iterator[int]:
    d = Path(marker_dir)
    with open(d / "runs", "a") as f:
        f.write("run\n")
    for i in range(n):
        if i == hold_at:
            (d / "held").touch()
            while not (d / "go").exists():
                time.sleep(0.01)
        yield i


def talk_then_hold(marker_dir: str) -> str:
    """The first run prints three lines, then holds until ``marker_dir/go``; a re-run prints nothing."""
    d = Path(marker_dir)
    first = not (d / "runs").exists()
    with open(d / "runs", "a") as f:
        f.write("run\n")
    if first:
        for i in range(3):
            print(f"line {i}", flush=True)
        (d / "held").touch()
        while not (d / "go").exists():
            time.sleep(0.01)
    return "done"
