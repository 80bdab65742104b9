"""The cost model behind bench/oom_cost.py: the oracle is a floor, escalation pays only for failed prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.oom_cost import Job, make_jobs, simulate
from tether.escalation import Escalation

LADDER = [("T4:1", 16.0, 0.5), ("A6000:1", 48.0, 1.0), ("H100:1", 80.0, 3.0)]


def test_a_job_that_fits_the_first_rung_costs_the_same_under_escalation_and_the_oracle() -> None:
    totals = simulate([Job(need_gib=10, hours=2.0, oom_at=0.1)], LADDER, setup_h=0.0)
    assert totals["escalate"]["cost"] == totals["oracle"]["cost"] == pytest.approx(1.0)
    assert totals["largest"]["cost"] == pytest.approx(6.0)


def test_escalation_pays_the_failed_part_on_each_smaller_rung() -> None:
    job = Job(need_gib=70, hours=10.0, oom_at=0.2)
    totals = simulate([job], LADDER, setup_h=0.5)
    failed = 0.5 * (0.5 + 2.0) + 1.0 * (0.5 + 2.0)  # T4 and A6000: setup + 20 % of the run each
    assert totals["escalate"]["cost"] == pytest.approx(failed + 3.0 * 10.5)
    assert totals["oracle"]["cost"] == totals["largest"]["cost"] == pytest.approx(3.0 * 10.5)
    assert totals["escalate"]["attempts"] == 3 and totals["escalate"]["delay_h"] == pytest.approx(5.0)


def test_on_the_fixture_catalog_escalation_sits_between_the_oracle_and_always_largest(
    fixture_catalog: Path,
) -> None:
    policy = Escalation.by_memory(start="T4:1")
    ladder = [(r, policy.memory_gib[r], policy.price_per_hour[r]) for r in policy.ladder]
    jobs = make_jobs(300, seed=7, top_gib=ladder[-1][1])
    assert make_jobs(300, seed=7, top_gib=ladder[-1][1]) == jobs, "fixed seed, same mix"
    totals = simulate(jobs, ladder, setup_h=4 / 60)
    assert totals["oracle"]["cost"] < totals["escalate"]["cost"] < totals["largest"]["cost"]
