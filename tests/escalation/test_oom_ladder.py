"""The local OOM ladder end to end: real daemons with real memory limits, a real OOM, a real escalation."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import tether
from tests.escalation import oom_jobs
from tether.escalation import Escalation, run_with_escalation

LADDER = ["local:256MB", "local:1GB", "local:4GB"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _cluster(rung: str) -> tether.Cluster:
    return tether.cluster(name=f"esc-{uuid.uuid4().hex[:6]}", instance_type=rung)


def test_real_oom_on_the_first_rung_reruns_on_the_second(esc_home: Path) -> None:
    base = _cluster("local:256MB").up_if_not()
    daemon_pid = base.handle.pid
    seen: list[tether.escalation.Attempt] = []
    fn = tether.function(oom_jobs.allocate).to(base, on_oom=Escalation(ladder=LADDER)).with_options(
        on_attempt=seen.append)
    small = fn(8)  # fits: no escalation, and tells us the small worker's pid
    assert [a.outcome for a in seen] == ["ok"]

    seen.clear()
    out = fn(600)

    assert out["mib"] == 600 and out["pid"] != small["pid"]
    assert [(a.instance_type, a.outcome) for a in seen] == [
        ("local:256MB", "oom"),
        ("local:1GB", "ok"),
    ]
    first = seen[0]
    assert first.error_type == "OutOfMemory" and first.details["kind"] == "host"
    assert first.seconds > 0 and first.est_cost == 0.0 and first.ended_at <= seen[1].started_at
    # the smaller rung is gone: daemon and worker processes, and the backend reports it down
    assert not _alive(small["pid"]) and daemon_pid is not None and not _alive(daemon_pid)
    assert base.status() == "down"
    # later calls go straight to the rung that worked; the handle itself still names the cluster it was made for
    assert fn.current_cluster is not None and fn.current_cluster.spec.instance_type == "local:1GB"
    assert fn.cluster is base
    seen.clear()
    assert fn(600)["pid"] == out["pid"]
    assert [(a.instance_type, a.outcome) for a in seen] == [("local:1GB", "ok")]


def test_a_non_oom_error_does_not_escalate(esc_home: Path) -> None:
    base = _cluster("local:256MB").up_if_not()
    seen: list[tether.escalation.Attempt] = []
    fn = tether.function(oom_jobs.fail).to(base, on_oom=Escalation(ladder=LADDER)).with_options(
        on_attempt=seen.append)
    with pytest.raises(ValueError, match="not memory"):
        fn("not memory")
    assert [(a.instance_type, a.outcome, a.error_type) for a in seen] == [
        ("local:256MB", "error", "ValueError")
    ]
    assert base.status() == "up", "a cluster that did not run out of memory is left alone"
    assert sorted(p.stem for p in (esc_home / "clusters").glob("*.json")) == [base.name]


def test_the_last_rung_failing_raises_out_of_memory_with_every_attempt(esc_home: Path) -> None:
    base = _cluster("local:128MB").up_if_not()
    fn = tether.function(oom_jobs.allocate).to(base, on_oom=Escalation(ladder=["local:128MB", "local:256MB"]))
    last_rung = tether.cluster(name=f"{base.name}-local-256mb", instance_type="local:256MB")
    with pytest.raises(tether.OutOfMemory) as info:
        fn(600)
    attempts = info.value.details["attempts"]
    assert [(a["instance_type"], a["outcome"]) for a in attempts] == [
        ("local:128MB", "oom"),
        ("local:256MB", "oom"),
    ]
    assert "no larger rung" in info.value.message
    assert base.status() == "down" and last_rung.status() == "down", "on_smaller='down' leaves no zombie"


def test_pytorch_cuda_oom_raised_by_remote_code_escalates(esc_home: Path) -> None:
    base = _cluster("local:256MB").up_if_not()
    seen: list[tether.escalation.Attempt] = []
    fn = tether.function(oom_jobs.cuda_oom_below).to(
        base, on_oom=Escalation(ladder=LADDER, on_smaller="keep")
    ).with_options(on_attempt=seen.append)
    assert fn(512) == "fits in 1024 MiB"
    first = seen[0]
    assert (first.outcome, first.details["pattern"], first.details["kind"]) == (
        "oom",
        "torch_cuda_oom",
        "gpu",
    )
    assert first.details["tried_to_allocate"] == int(1.95 * 2**30)
    assert base.status() == "up", "on_smaller='keep' keeps the smaller cluster"


def test_max_attempts_and_the_cost_ceiling_stop_early(esc_home: Path) -> None:
    base = _cluster("local:256MB").up_if_not()
    fn = tether.function(oom_jobs.cuda_oom_below).to(base)
    capped = Escalation(ladder=LADDER, max_attempts=1)
    tried: list[tether.escalation.Attempt] = []
    with pytest.raises(tether.OutOfMemory, match="max_attempts"):
        run_with_escalation(fn, (2048,), {}, capped, base_cluster=base, on_attempt=tried.append)
    assert len(tried) == 1

    base = _cluster("local:256MB").up_if_not()
    # nominal prices for the free local rungs: $1/s on the first, $1000/s on the next
    pricey = Escalation(
        ladder=LADDER, max_cost=5.0, price_per_hour={"local:256MB": 3600.0, "local:1GB": 3.6e6}
    )
    seen: list[tether.escalation.Attempt] = []
    with pytest.raises(tether.OutOfMemory, match="max_cost") as info:
        run_with_escalation(fn, (512,), {}, pricey.model_dump(), base_cluster=base, on_attempt=seen.append)
    assert [a.instance_type for a in seen] == ["local:256MB"] and seen[0].est_cost > 0
    assert info.value.details["spent"] == pytest.approx(seen[0].est_cost)


def test_a_plain_function_and_json_policy_work_as_orchestrators_pass_them(esc_home: Path) -> None:
    policy_json = Escalation(ladder=LADDER).model_dump_json()  # what an Airflow/Prefect/Dagster param carries
    base = _cluster("local:256MB")
    out = run_with_escalation(tether.function(oom_jobs.allocate), (600,), {}, policy_json, base_cluster=base)
    assert out["mib"] == 600 and os.getpid() != out["pid"]
    with pytest.raises(tether.ConfigError, match="not a tether service handle"):  # a bare callable: say how
        run_with_escalation(oom_jobs.allocate, (1,), {}, policy_json, base_cluster=base)


def test_the_oom_ladder_example_runs(esc_home: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "examples" / "oom_ladder.py")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TETHER_HOME": str(esc_home)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln.split() for ln in proc.stdout.splitlines()]
    assert ["local:256MB", "oom"] in [ln[:2] for ln in lines] and ["local:1GB", "ok"] in [
        ln[:2] for ln in lines
    ]
    assert "epoch 3/3 loss=0.216" in proc.stdout


def test_orchestrators_get_every_attempt_through_run_remote(esc_home: Path) -> None:
    from tether.runs import call_id_for, run_remote

    base = _cluster("local:256MB").up_if_not()
    fn = tether.function(oom_jobs.allocate).to(base)
    lines: list[str] = []
    policy = Escalation(ladder=LADDER).model_dump(mode="json")  # as a DAG/flow/job parameter carries it
    result = run_remote(fn, (600,), call_id=call_id_for("dag", "train", "run-1"), log=lines.append,
                        escalation=policy)  # fmt: skip
    assert result.value["mib"] == 600
    assert [(a.instance_type, a.outcome) for a in result.attempts] == [
        ("local:256MB", "oom"),
        ("local:1GB", "ok"),
    ]
    assert result.instance_type == "local:1GB"
    assert [a["outcome"] for a in result.metadata()["attempts"]] == ["oom", "ok"]


def test_the_rlimit_fallback_escalates_on_memory_error(
    esc_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_MEMORY_LIMIT_MODE", "rlimit")  # as on a machine without a writable cgroup
    base = _cluster("local:256MB").up_if_not()
    seen: list[tether.escalation.Attempt] = []
    fn = tether.function(oom_jobs.allocate).to(base, on_oom=Escalation(ladder=LADDER)).with_options(
        on_attempt=seen.append)
    assert fn(600)["mib"] == 600
    first = seen[0]
    assert (first.outcome, first.details["pattern"], first.details["kind"]) == ("oom", "MemoryError", "host")
    assert [a.instance_type for a in seen] == ["local:256MB", "local:1GB"]
