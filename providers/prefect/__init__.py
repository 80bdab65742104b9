"""Prefect provider (``tether[prefect]``): task helpers that call tether services, and the ``TetherCluster`` Block.

Also the ``prefect.collections`` entry point: Prefect imports this package to find the Block by its slug.
"""

from __future__ import annotations

from .blocks import TetherCluster
from .tasks import resolve_cluster, retry_on_tether_errors, run_remote, run_remote_result, tether_task

__all__ = [
    "TetherCluster",
    "resolve_cluster",
    "retry_on_tether_errors",
    "run_remote",
    "run_remote_result",
    "tether_task",
]
