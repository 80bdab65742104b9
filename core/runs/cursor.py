"""How many log events of a call a watcher has shown, kept on disk: a watcher rebuilt after its process restarted
(an Airflow triggerer) goes on from there instead of showing every line again."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from tether.home import open_private, private_dir, tether_home

__all__ = ["LogCursor"]


class LogCursor:
    """The count of events shown under ``key`` (e.g. a call id and a task try), in ``$TETHER_HOME/watches``.

    Readers and writers on one machine (or a shared ``TETHER_HOME``) agree; elsewhere the count starts at 0.
    Writes are atomic (temp file + rename); a missing or unreadable file reads as 0.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.path = tether_home() / "watches" / name

    def read(self) -> int:
        """The count stored, 0 if none."""
        try:
            return max(0, int(self.path.read_text().strip() or 0))
        except (OSError, ValueError):
            return 0

    def write(self, seen: int) -> None:
        """Store ``seen`` (never raises: a watcher that cannot store its place still shows the lines)."""
        with contextlib.suppress(OSError):
            private_dir(self.path.parent)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            fd = open_private(tmp)
            with os.fdopen(fd, "w") as f:
                f.write(str(int(seen)))
            os.replace(tmp, self.path)

    def clear(self) -> None:
        """Forget the count (the watch is over)."""
        with contextlib.suppress(OSError):
            Path(self.path).unlink()
