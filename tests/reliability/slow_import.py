"""A module that takes a while to import: its service's restore into a fresh worker is slow."""

from __future__ import annotations

import time

time.sleep(1.5)


def ready() -> str:
    return "ready"
