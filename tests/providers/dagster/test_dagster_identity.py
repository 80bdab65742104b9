"""Where a step's call runs and when it runs again: the resource decides the cluster (saved services too), no
daemon starts on the worker unasked; a new version or ``force_rerun`` runs again where a retry would re-attach."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_support import FNS, SERVICES, run_logs

import tether
import tether.runs as tether_runs  # the op's `tether` parameter shadows the package
from tests.core import services as svc
from tether.protocol import CallState
from tether.providers.dagster import TetherResource
from tether.providers.dagster.reporting import StepIdentity


@pytest.fixture(scope="module")
def other(module_home: Path) -> Iterator[Any]:
    """A second cluster: not where the services are saved."""
    c = tether.cluster(name="dg-other").up_if_not()
    try:
        yield c
    finally:
        c.down()


def _call_ids(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [line.rsplit("(call id ", 1)[1].rstrip(")") for line in run_logs(instance, run_id) if "(call id " in line]


def test_a_saved_service_runs_on_the_resources_cluster(local_cluster, other, instance) -> None:
    tether.function(svc.add).to(local_cluster, name="dg_where").save()  # saved on test-local

    @dg.op
    def by_name(context: dg.OpExecutionContext, tether: TetherResource) -> int:
        return tether.call(context, "dg_where", 20, 22)

    @dg.job
    def job() -> None:
        by_name()

    for resource in (TetherResource(endpoint=other.endpoint, token=other.token), TetherResource(cluster_name=other.name)):
        result = job.execute_in_process(resources={"tether": resource}, instance=instance)
        assert result.success and result.output_for_node("by_name") == 42
        (call_id,) = _call_ids(instance, result.run_id)
        assert tether_runs.call_state(call_id, other) is CallState.SUCCEEDED  # where the resource says
        assert tether_runs.call_state(call_id, local_cluster) is None  # not where it was saved


def test_a_step_with_nowhere_to_run_fails_instead_of_starting_a_daemon(module_home, instance, monkeypatch) -> None:
    monkeypatch.delenv("TETHER_ALLOW_LOCAL_DAEMON", raising=False)
    embedded = tether.cluster()
    assert embedded.status() == "down"

    @dg.op
    def nowhere(context: dg.OpExecutionContext, tether: TetherResource) -> int:
        return tether.call(context, f"{SERVICES}:add", 1, 2)

    @dg.job
    def job() -> None:
        nowhere()

    result = job.execute_in_process(resources={"tether": TetherResource()}, instance=instance, raise_on_error=False)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error.to_string()
    assert "ConfigError" in error and "no cluster to run" in error
    assert "TetherResource(" in error and "allow_local_daemon=True" in error  # what to set, how to opt in
    assert embedded.status() == "down"  # no daemon was started on the worker
    named = TetherResource(cluster_name="dg-not-running")  # a name alone does not start a local daemon either
    result = job.execute_in_process(resources={"tether": named}, instance=instance, raise_on_error=False)
    assert not result.success and tether.cluster(name="dg-not-running").status() == "down"


def test_a_retry_after_a_new_version_was_saved_runs_the_new_version(local_cluster, instance) -> None:
    from tests.providers.dagster.remote_fns import multiply

    tether.function(svc.add).to(local_cluster, name="dg_versioned").save()
    values: list[int] = []

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
    def versioned(context: dg.OpExecutionContext, tether: TetherResource) -> int:
        values.append(tether.call(context, "dg_versioned", 2, 3))
        if context.retry_number == 0:
            tether_mod = __import__("tether")
            tether_mod.function(multiply).to(local_cluster, name="dg_versioned").save()  # a teammate's v2
            raise RuntimeError("the step failed after its call; a new version was saved meanwhile")
        return values[-1]

    @dg.job
    def job() -> None:
        versioned()

    result = job.execute_in_process(
        resources={"tether": TetherResource(cluster_name=local_cluster.name)}, instance=instance
    )

    assert result.success
    assert values == [5, 6]  # the retry ran version 2, not version 1's recorded result
    first, second = _call_ids(instance, result.run_id)
    assert first != second


def test_force_rerun_runs_the_call_again_on_a_retry(local_cluster, instance, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
    def forced(context: dg.OpExecutionContext, tether: TetherResource) -> int:
        run = tether.run(context, f"{FNS}:count_call", args=(str(ledger), 7), force_rerun=True)
        if context.retry_number == 0:
            raise RuntimeError("the step failed after its call")
        return run.value

    @dg.job
    def job() -> None:
        forced()

    result = job.execute_in_process(
        resources={"tether": TetherResource(cluster_name=local_cluster.name)}, instance=instance
    )

    assert result.success and result.output_for_node("forced") == 7
    assert ledger.read_text().splitlines() == ["ran", "ran"]  # without force_rerun the retry re-attaches


def test_reattach_run_names_the_root_run_so_a_reexecution_reattaches() -> None:
    original = StepIdentity(run_id="run-1", step_key="step", partition="", root_run_id="run-1")
    reexecution = StepIdentity(run_id="run-2", step_key="step", partition="", root_run_id="run-1")
    assert reexecution.call_id("t", 0, "same") != original.call_id("t", 0, "same")  # default: a new run runs again
    assert reexecution.call_id("t", 0, "same", reattach="run") == original.call_id("t", 0, "same", reattach="run")
    assert reexecution.call_id("t", 0, "other", reattach="run") != original.call_id("t", 0, "same", reattach="run")
    retried = StepIdentity(run_id="run-1", step_key="step", partition="", attempt=1, root_run_id="run-1")
    assert retried.call_id("t", 0, "same") == original.call_id("t", 0, "same")
    assert retried.call_id("t", 0, "same", force_rerun=True) != original.call_id("t", 0, "same", force_rerun=True)
