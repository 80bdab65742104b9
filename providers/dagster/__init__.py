"""Dagster provider: ``TetherResource`` gives assets and ops a client for tether services (``tether[dagster]``)."""

from __future__ import annotations

from .reporting import METADATA_PREFIX, TetherRun
from .resource import CleanupPolicy, TetherResource

__all__ = ["METADATA_PREFIX", "CleanupPolicy", "TetherResource", "TetherRun"]
