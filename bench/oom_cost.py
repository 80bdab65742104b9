"""Benchmark: what a workload mix costs under three placement strategies, on the pinned fixture catalog.

    python bench/oom_cost.py [--jobs 1000] [--seed 7] [--setup-min 4] [--start T4:1]

The ladder is ``tether.Escalation.by_memory(start)`` over the catalog (cheapest provider per rung). Each
simulated job has a true GPU memory need (log-uniform between 2 GiB and the top rung, so needs spread over
the ladder), a run time (log-normal, median 1 h, 5 min..24 h) and, when it does not fit, an OOM point
(uniform 2-25 % into the run: most OOMs hit in the first steps or the first eval). Every attempt also pays
``--setup-min`` minutes of bring-up and deploy at the rung's price. Strategies:
  escalate  start on the smallest rung; on OOM pay for the failed part and move up one rung (tether on_oom)
  largest   always the top rung
  oracle    the smallest rung that fits (knowing every job's need in advance)
Run time is taken as the same on every rung (a larger GPU is often faster, which favours "largest" a bit).
"""

from __future__ import annotations

import argparse
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import tether

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "catalog" / "v8"  # beside the repo
SHARED = Path("/work/shared/catalog/v8")


@dataclass
class Job:
    need_gib: float
    hours: float
    oom_at: float  # fraction of the run completed when an undersized rung runs out of memory


def make_jobs(n: int, seed: int, top_gib: float) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for _ in range(n):
        need = math.exp(rng.uniform(math.log(2.0), math.log(top_gib)))
        hours = min(24.0, max(5 / 60, rng.lognormvariate(0.0, 1.0)))
        jobs.append(Job(need_gib=need, hours=hours, oom_at=rng.uniform(0.02, 0.25)))
    return jobs


def simulate(
    jobs: list[Job], ladder: list[tuple[str, float, float]], setup_h: float
) -> dict[str, dict[str, float]]:
    """Totals per strategy: dollars, GPU-hours billed, attempts, and extra wall time for ``escalate``."""
    top = ladder[-1]
    out = {
        s: {"cost": 0.0, "hours": 0.0, "attempts": 0.0, "delay_h": 0.0}
        for s in ("escalate", "largest", "oracle")
    }
    for job in jobs:
        fit = next(i for i, (_, mem, _) in enumerate(ladder) if mem >= job.need_gib)
        for i in range(fit):  # escalate: failed attempts on every smaller rung
            _, _, price = ladder[i]
            spent_h = setup_h + job.oom_at * job.hours
            out["escalate"]["cost"] += price * spent_h
            out["escalate"]["hours"] += spent_h
            out["escalate"]["delay_h"] += spent_h
        for name, (_, _, price) in (("escalate", ladder[fit]), ("oracle", ladder[fit]), ("largest", top)):
            out[name]["cost"] += price * (setup_h + job.hours)
            out[name]["hours"] += setup_h + job.hours
        out["escalate"]["attempts"] += fit + 1
        out["oracle"]["attempts"] += 1
        out["largest"]["attempts"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--setup-min", type=float, default=4.0, help="bring-up + deploy minutes per attempt")
    parser.add_argument("--start", default="T4:1", help="smallest rung (accelerator:count)")
    parser.add_argument("--exclude", nargs="*", default=[], help="accelerators to leave out, e.g. GH200")
    args = parser.parse_args()
    if "TETHER_CATALOG_DIR" not in os.environ:
        os.environ["TETHER_CATALOG_DIR"] = str(FIXTURE if FIXTURE.exists() else SHARED)
        os.environ.setdefault("TETHER_CATALOG_READER", "csv")

    policy = tether.Escalation.by_memory(start=args.start, providers="cheapest", exclude=args.exclude)
    ladder = [(r, policy.memory_gib[r], policy.price_per_hour[r]) for r in policy.ladder]
    jobs = make_jobs(args.jobs, args.seed, ladder[-1][1])
    totals = simulate(jobs, ladder, args.setup_min / 60)

    print(f"catalog: {os.environ['TETHER_CATALOG_DIR']}")
    print("ladder:  " + "  ->  ".join(f"{r} ({m:g} GiB, ${p:.3f}/h)" for r, m, p in ladder))
    per_rung = [sum(1 for j in jobs if j.need_gib <= m and (i == 0 or j.need_gib > ladder[i - 1][1]))
                for i, (_, m, _) in enumerate(ladder)]  # fmt: skip
    print(f"jobs:    {args.jobs} (seed {args.seed}); smallest fitting rung: "
          + ", ".join(f"{r}={n}" for (r, _, _), n in zip(ladder, per_rung, strict=True)))  # fmt: skip
    print(f"         {sum(j.hours for j in jobs):.0f} job-hours; {args.setup_min:g} min setup per attempt\n")
    oracle = totals["oracle"]["cost"]
    print(
        f"{'strategy':<10} {'total $':>12} {'vs oracle':>10} {'GPU-h billed':>13} {'attempts':>9} {'extra wall h':>13}"
    )
    for name in ("escalate", "largest", "oracle"):
        t = totals[name]
        print(f"{name:<10} {t['cost']:>12,.2f} {t['cost'] / oracle:>9.2f}x {t['hours']:>13,.0f} "
              f"{t['attempts']:>9,.0f} {t['delay_h']:>13,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
