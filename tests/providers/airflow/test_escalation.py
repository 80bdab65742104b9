"""An out-of-memory call inside a task climbs the escalation ladder; the attempts land in the task's XCom."""

from __future__ import annotations

import contextlib
from pathlib import Path

import tether

FNS = "af_remote_fns"  # airflow_fns.py, deployed from its own code root (conftest)


def test_oom_in_a_task_escalates_to_the_next_rung(run_operator, tether_home: Path, cluster) -> None:
    try:
        result = run_operator(
            "oom_escalates",
            "big",
            function=f"{FNS}:grab",
            args=[400 * 1024**2],
            cluster={"name": "af-esc", "instance_type": "local:256MB"},
            escalation={"ladder": ["local:256MB", "local:1GB"]},
        )

        assert result.state == "success"
        assert result.tries["big"] == 1  # escalation happened inside the try, not through Airflow retries
        xcom = result.xcoms["big"]
        assert xcom["return_value"] == 400 * 1024**2
        attempts = xcom["tether"]["attempts"]
        assert [(a["instance_type"], a["outcome"]) for a in attempts] == [
            ("local:256MB", "oom"),
            ("local:1GB", "ok"),
        ]
    finally:
        for state in (tether_home / "clusters").glob("af-esc*"):
            with contextlib.suppress(tether.TetherError):
                tether.cluster(name=state.stem if state.is_file() else state.name).teardown()
