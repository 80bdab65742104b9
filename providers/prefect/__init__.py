"""Prefect provider (``tether[prefect]``): task helpers that call tether services, ``TetherTaskRunner`` (task bodies
run on a tether cluster), and the ``TetherCluster`` Block.

Also the ``prefect.collections`` entry point: Prefect imports this package to find the Block by its slug.
"""

from __future__ import annotations

from . import logs
from .blocks import TetherCluster
from .runner import TetherTaskRunner
from .tasks import resolve_cluster, retry_on_tether_errors, run_remote, run_remote_result, tether_task

logs.install()  # plain tether calls inside a run with log_prints=True log into the run

__all__ = [
    "TetherCluster",
    "TetherTaskRunner",
    "resolve_cluster",
    "retry_on_tether_errors",
    "run_remote",
    "run_remote_result",
    "tether_task",
]
