"""Helpers shared by the Dagster provider tests (conftest holds the fixtures)."""

from __future__ import annotations

import dagster as dg

# import paths of what the tests deploy (resolved by the daemon under the repo root); shared helpers first
SERVICES = "tests.core.services"
OOM_JOBS = "tests.escalation.oom_jobs"
FNS = "tests.providers.dagster.remote_fns"
EMBED = "examples.services.embed:embed"


def run_logs(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The user-visible messages of a run's event log (what the Dagster UI shows)."""
    return [entry.user_message for entry in instance.all_logs(run_id)]
