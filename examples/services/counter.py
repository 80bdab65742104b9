"""An example stateful service: a counter whose step comes from the env's variables."""

from __future__ import annotations

import os


class Counter:
    """Counts up by ``$STEP`` (default 1) per call."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self) -> int:
        self.n += int(os.environ.get("STEP", "1"))
        return self.n
