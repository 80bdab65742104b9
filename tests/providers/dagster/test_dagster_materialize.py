"""Assets and ops call tether services through ``TetherResource``: value, logs, metadata, re-attach on retry."""

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_support import EMBED, FNS, SERVICES, run_logs

import tether
import tether.runs
import tether.runs as tether_runs  # the op's `tether` parameter shadows the package
from examples.services.embed import embed
from tether.protocol import CallState
from tether.providers.dagster import TetherResource
from tether.providers.dagster.reporting import StepIdentity


def test_asset_gets_remote_value_logs_and_call_metadata(local_cluster, instance) -> None:
    @dg.asset
    def vectors(context: dg.AssetExecutionContext, tether: TetherResource) -> list[float]:
        return tether.call(context, EMBED, "hello dagster world", dim=4)

    result = dg.materialize(
        [vectors], resources={"tether": TetherResource(cluster_name=local_cluster.name)}, instance=instance
    )

    assert result.success
    assert result.output_for_node("vectors") == embed("hello dagster world", dim=4)
    logs = run_logs(instance, result.run_id)
    assert any("embed: 19 chars" in line for line in logs), logs  # remote print
    assert any("embedded 3 tokens" in line for line in logs), logs  # remote logging record
    (mat,) = result.asset_materializations_for_node("vectors")
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["tether/call_id"].startswith("run-")
    assert md["tether/reattached"] is False
    assert md["tether/service"] == "embed"
    assert md["tether/instance_type"] == "local"
    assert md["tether/attempts"] == 1
    assert md["tether/duration_s"] > 0


def test_call_id_is_deterministic_per_run_step_and_partition(local_cluster, instance) -> None:
    parts = dg.StaticPartitionsDefinition(["a", "b"])
    seen: dict[str, str] = {}

    @dg.asset(partitions_def=parts)
    def part(context: dg.AssetExecutionContext, tether: TetherResource) -> dg.MaterializeResult:
        run = tether.run(context, EMBED, args=(context.partition_key,))
        seen[context.partition_key] = run.call_id
        return run.get_materialize_result(metadata={"partition": context.partition_key})

    resources = {"tether": TetherResource(cluster_name=local_cluster.name)}
    first = dg.materialize([part], partition_key="a", resources=resources, instance=instance)
    second = dg.materialize([part], partition_key="b", resources=resources, instance=instance)

    assert first.success and second.success
    assert seen["a"].startswith("run-") and seen["b"].startswith("run-") and seen["a"] != seen["b"]
    step = StepIdentity(run_id=first.run_id, step_key="part", partition="a")
    identity = tether.runs.call_identity(tether.function(embed), ("a",))  # as the resource computes it
    assert step.call_id(EMBED, 0, identity) != step.call_id(EMBED, 1, identity)  # the n-th call of the step
    assert StepIdentity(run_id=first.run_id, step_key="part", partition="b").call_id(EMBED, 0, identity) != (
        step.call_id(EMBED, 0, identity)
    )
    (mat,) = first.asset_materializations_for_node("part")
    assert mat.metadata["tether/call_id"].value == seen["a"]
    assert mat.metadata["partition"].value == "a"


def test_asset_check_reports_a_remote_verdict_with_the_call_metadata(local_cluster, instance) -> None:
    @dg.asset
    def text() -> str:
        return "a b c"

    @dg.asset_check(asset=text)
    def embeds_to_unit_length(
        context: dg.AssetCheckExecutionContext, tether: TetherResource
    ) -> dg.AssetCheckResult:
        run = tether.run(context, EMBED, args=("a b c",))
        return dg.AssetCheckResult(
            passed=abs(sum(v * v for v in run.value) - 1) < 1e-9, metadata=run.metadata
        )

    result = dg.materialize(
        [text, embeds_to_unit_length],
        resources={"tether": TetherResource(cluster_name=local_cluster.name)},
        instance=instance,
    )

    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    assert check.metadata["tether/call_id"].value.startswith("run-")


def test_step_retry_reattaches_to_the_same_remote_call(local_cluster, instance, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    call_ids: list[tuple[str, str]] = []

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
    def double(context: dg.OpExecutionContext, tether: TetherResource) -> int:
        total = tether.run(context, f"{SERVICES}:add", args=(20, 22))
        logged = tether.run(context, f"{SERVICES}:sleep_then", args=(0.0, str(ledger)))
        call_ids.append((total.call_id, logged.call_id))
        if context.retry_number == 0:
            raise RuntimeError("the orchestrator side failed after the remote calls finished")
        return total.value

    @dg.job
    def job() -> None:
        double()

    result = job.execute_in_process(
        resources={"tether": TetherResource(cluster_name=local_cluster.name)}, instance=instance
    )

    assert result.success
    assert result.output_for_node("double") == 42
    assert len(call_ids) == 2 and call_ids[0] == call_ids[1]  # each call of the step kept its id
    assert call_ids[0][0] != call_ids[0][1]
    assert ledger.read_text().splitlines() == [
        "start",
        "end",
    ]  # the remote function ran once for both attempts


class WorkerLost(Exception):
    """Stands for the step's process dying mid-call: the attempt ends, the remote call is not cancelled."""


def _waiting_for_a_frame(frame: Any) -> bool:
    """Whether the interrupted thread waits on the call's socket (for the response or its next frame), and is not
    inside a log handler (where ``logging`` would swallow the exception the signal handler raises)."""
    waiting = False
    while frame is not None:
        code = frame.f_code
        if f"{os.sep}logging{os.sep}" in code.co_filename:
            return False
        waiting = waiting or (code.co_name in ("send", "_more")  # the response's head, or its next frame
                              and code.co_filename.endswith(f"client{os.sep}syncwire.py"))
        frame = frame.f_back
    return waiting


def test_step_retry_reattaches_to_the_remote_call_still_running(local_cluster, instance, tmp_path: Path) -> None:
    """The first attempt fails while its remote call runs; the retry attaches to that call instead of starting a
    second run, and gets its result once it finishes (as the Airflow and Prefect retry tests do); the call's
    metadata records the remote call's duration, not the retry's shorter wait.

    The first attempt ends by a SIGUSR1 whose handler raises in the step's thread. It raises only while that
    thread waits on the call's socket (for the response or its next frame): a signal handled inside a log handler
    (the remote ``print`` arriving as a log line) would be swallowed by ``logging`` (``Handler.handleError``), so
    the watcher signals again until the handler says it raised; and the watcher waits for real events (the
    remote function started, the retry chose its call) for as long as the job runs, never giving up silently on
    a time limit — no timing decides the outcome.
    """
    attempts: list[tuple[int, str]] = []  # (retry number, run id) as each attempt starts
    times: dict[str, float] = {}
    handled, raised, finished = threading.Event(), threading.Event(), threading.Event()
    watch_failed: list[str] = []

    def lose_the_worker(signum: int, frame: object) -> None:
        try:
            if _waiting_for_a_frame(frame) and not raised.is_set():
                raised.set()
                raise WorkerLost("the step's worker died mid-call")
        finally:
            handled.set()

    def call_ids() -> list[str]:
        logs = run_logs(instance, attempts[0][1]) if attempts else []
        return [line.rsplit("(call id ", 1)[1].rstrip(")") for line in logs if "(call id " in line]

    def until(done: Callable[[], bool], what: str) -> bool:
        """Poll ``done`` until it holds or the job ended (a real event, not a time limit)."""
        while not done():
            if finished.is_set():
                watch_failed.append(f"the job ended before {what}")
                return False
            time.sleep(0.02)
        return True

    def watch() -> None:
        if not until((tmp_path / "started").exists, "the remote function started"):
            return
        times["started"] = time.monotonic()
        while not raised.is_set():  # the first attempt ends while the call runs
            handled.clear()
            os.kill(os.getpid(), signal.SIGUSR1)
            if not until(handled.is_set, "the signal was handled"):
                return
            if not raised.is_set():
                time.sleep(0.01)  # it was elsewhere (a log handler): signal again once it waits on its socket
        if not until(lambda: len(call_ids()) >= 2, "the retry chose its call"):  # the retry has chosen its call ...
            return
        state_on_retry.append(tether_runs.call_state(call_ids()[1], local_cluster))
        time.sleep(1.0)  # ... and waits on the call, which still runs (the asserts hold however long this is)
        times["released"] = time.monotonic()
        (tmp_path / "release").touch()

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
    def slow(context: dg.OpExecutionContext, tether: TetherResource) -> int:
        attempts.append((context.retry_number, context.run_id))
        try:
            run = tether.run(context, f"{SERVICES}:log_wait_count", args=(str(tmp_path),))
        except WorkerLost:
            lost.append(context.retry_number)
            raise
        return run.value

    @dg.job
    def job() -> None:
        slow()

    state_on_retry: list[object] = []
    lost: list[int] = []
    saved = signal.signal(signal.SIGUSR1, lose_the_worker)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = job.execute_in_process(
            resources={"tether": TetherResource(cluster_name=local_cluster.name)}, instance=instance,
            raise_on_error=False,
        )
    finally:
        finished.set()
        signal.signal(signal.SIGUSR1, saved)
        (tmp_path / "release").touch()
        watcher.join(10)

    logs = run_logs(instance, result.run_id)
    ids = call_ids()
    assert not watch_failed, (watch_failed, logs)
    assert lost == [0], logs  # attempt 0 ended mid-call
    assert result.success, logs
    assert [n for n, _ in attempts] == [0, 1]
    assert len(ids) == 2 and ids[0] == ids[1]  # the retry used the running call's id ...
    assert state_on_retry == [CallState.RUNNING]  # ... while that call was still running
    assert any(f"re-attaching {SERVICES}:log_wait_count to its running call (call id {ids[0]})" in line
               for line in logs), logs
    assert result.output_for_node("slow") == 1  # its result: the first (and only) run
    assert (tmp_path / "runs").read_text().splitlines() == ["run"]  # the remote function ran once
    outputs = [e.step_output_data.metadata for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    (metadata,) = outputs
    assert metadata["tether/reattached"].value is True
    assert metadata["tether/duration_s"].value >= times["released"] - times["started"] - 0.2  # the remote call's


def test_step_retry_reruns_a_remote_call_that_failed(local_cluster, instance, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=2))
    def flaky(context: dg.OpExecutionContext, tether: TetherResource) -> str:
        return tether.call(context, f"{FNS}:fail_first_time", str(ledger))

    @dg.job
    def job() -> None:
        flaky()

    result = job.execute_in_process(
        resources={"tether": TetherResource(cluster_name=local_cluster.name)}, instance=instance
    )

    assert result.success
    assert result.output_for_node("flaky") == "ok after 2 runs"
    assert ledger.read_text().splitlines() == ["ran", "ran"]


def test_op_job_calls_a_deployed_function_and_a_saved_service(local_cluster, instance) -> None:
    deployed = tether.function(embed).to(local_cluster, name="dg-embed")
    saved = deployed.save()

    @dg.op
    def by_function(context: dg.OpExecutionContext, tether: TetherResource) -> list[float]:
        return tether.call(context, deployed, "one two")

    @dg.op
    def by_name(context: dg.OpExecutionContext, tether: TetherResource) -> list[float]:
        return tether.call(context, "dg-embed", "one two")

    @dg.job
    def job() -> None:
        by_function()
        by_name()

    result = job.execute_in_process(resources={"tether": TetherResource()}, instance=instance)

    assert result.success
    assert result.output_for_node("by_function") == result.output_for_node("by_name") == embed("one two")
    outputs = {
        e.step_key: e.step_output_data.metadata
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT"
    }
    assert outputs["by_name"]["tether/service"].value == "dg-embed"
    assert outputs["by_name"]["tether/version"].value == saved.version
    assert outputs["by_function"]["tether/call_id"].value != outputs["by_name"]["tether/call_id"].value


def test_remote_exception_fails_the_step_with_the_original_type(local_cluster, instance) -> None:
    @dg.asset
    def broken(context: dg.AssetExecutionContext, tether: TetherResource) -> None:
        tether.call(context, f"{SERVICES}:raises_value_error", "bad input row 7")

    result = dg.materialize(
        [broken],
        resources={"tether": TetherResource(cluster_name=local_cluster.name)},
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None
    assert "bad input row 7" in error.to_string()
    assert "ValueError" in error.to_string()
    assert any("tether: calling" in line for line in run_logs(instance, result.run_id))
