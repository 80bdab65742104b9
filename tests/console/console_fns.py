"""Remote functions for the console's browser tests (imported by the daemon's worker)."""

from __future__ import annotations

import time
from pathlib import Path


def gated_lines(release: str, before: int = 3, after: int = 3) -> int:
    """Print ``before`` lines, wait until the file ``release`` exists (5 minutes at most), print ``after`` more."""
    for i in range(before):
        print(f"line {i + 1} of {before + after}", flush=True)
    deadline = time.monotonic() + 300  # a cancelled call's thread still ends on its own
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(before, before + after):
        print(f"line {i + 1} of {before + after}", flush=True)
    return before + after
