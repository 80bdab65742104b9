"""Cleanup policy for clusters the resource brought up, and run termination forwarded to the remote call."""

import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_support import EMBED, SERVICES, run_logs

import tether
from tether.errors import CallCancelled
from tether.providers.dagster import TetherResource


def _job(fail: bool) -> dg.JobDefinition:
    @dg.op
    def step(context: dg.OpExecutionContext, tether: TetherResource) -> list[float]:
        value = tether.call(context, EMBED, "text")
        if fail:
            raise RuntimeError("downstream processing failed")
        return value

    @dg.job(name=f"cleanup_{'fail' if fail else 'ok'}")
    def job() -> None:
        step()

    return job


# 'always' is pinned by the escalation test (every rung torn down), interruption by the termination test below
@pytest.mark.parametrize(
    ("policy", "fail", "torn_down"),
    [("on_exception", True, True), ("on_exception", False, False)],
)
def test_cleanup_policy_for_a_cluster_the_resource_created(
    module_home: Path, instance: dg.DagsterInstance, policy: str, fail: bool, torn_down: bool
) -> None:
    name = f"dg-{policy.replace('_', '-')}-{int(fail)}"
    resource = TetherResource(cluster_name=name, cleanup=policy, allow_local_daemon=True)  # a daemon here, asked for
    assert tether.cluster(name=name).status() != "up"

    result = _job(fail).execute_in_process(
        resources={"tether": resource}, instance=instance, raise_on_error=False
    )

    assert result.success is not fail
    status = tether.cluster(name=name).status()
    try:
        assert (status != "up") is torn_down, status
        if torn_down:
            assert any("tore down cluster" in line for line in run_logs(instance, result.run_id))
    finally:
        tether.cluster(name=name).down()


def test_cleanup_always_leaves_a_cluster_it_did_not_create_running(local_cluster, instance) -> None:
    result = _job(fail=True).execute_in_process(
        resources={"tether": TetherResource(cluster_name=local_cluster.name, cleanup="always")},
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    assert local_cluster.status() == "up"


def _terminated_run(
    resource: TetherResource, instance: dg.DagsterInstance, marker: Path
) -> dg.ExecuteInProcessResult:
    """Materialize an asset whose remote call sleeps, and interrupt the run once the call has started."""

    @dg.asset
    def long_running(context: dg.AssetExecutionContext, tether: TetherResource) -> str:
        return tether.call(context, f"{SERVICES}:sleep_then", 45.0, str(marker))

    def terminate_when_started() -> None:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text()):  # the remote function writes "start" first
            if time.monotonic() > deadline:
                return  # never started: no interrupt (it would hit pytest itself); the caller's asserts fail
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # what a run launcher's terminate does to the run worker

    killer = threading.Thread(target=terminate_when_started, daemon=True)
    killer.start()
    try:
        return dg.materialize(
            [long_running], resources={"tether": resource}, instance=instance, raise_on_error=False
        )
    finally:
        killer.join()


def test_run_termination_cancels_the_remote_call(local_cluster, instance, tmp_path: Path) -> None:
    result = _terminated_run(TetherResource(cluster_name=local_cluster.name), instance, tmp_path / "marker")

    assert not result.success
    logs = run_logs(instance, result.run_id)
    cancelled = [line for line in logs if "cancelled remote call" in line]
    assert cancelled, logs
    call_id = cancelled[0].rsplit(" ", 1)[-1]
    with pytest.raises(CallCancelled):
        tether.call(call_id, local_cluster).result(timeout=30)
    assert tether.call(call_id, local_cluster).status()["state"] == "cancelled"


def test_termination_cancels_first_then_tears_down_a_cluster_it_created(
    module_home: Path, instance, tmp_path: Path
) -> None:
    resource = TetherResource(cluster_name="dg-terminated", cleanup="on_exception", allow_local_daemon=True)
    try:
        result = _terminated_run(resource, instance, tmp_path / "marker")

        assert not result.success
        logs = run_logs(instance, result.run_id)
        order = [i for i, line in enumerate(logs) if "cancelled remote call" in line or "tore down" in line]
        assert len(order) == 2 and "cancelled" in logs[order[0]] and "tore down" in logs[order[1]], logs
        assert tether.cluster(name="dg-terminated").status() != "up"
    finally:
        tether.cluster(name="dg-terminated").down()
