"""Benchmark: seconds from a real OOM on the local ladder to the next attempt starting (median of N runs).

    python bench/oom_escalation.py [--runs 5] [--mib 600]

Each run: a ``local:256MB`` cluster, a function that allocates ``--mib`` MiB, ``on_oom`` over
``local:256MB → local:1GB → local:4GB``. Printed per run and as medians:
  oom_detect   call sent → OutOfMemory back on the client (allocation, kernel OOM kill, classification)
  oom_to_next  OutOfMemory back → the retried call is sent (teardown of the small rung, bring-up, deploy)
  oom_to_up    OutOfMemory back → the next rung's bring-up starts (teardown of the small rung)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
import warnings

import tether

warnings.filterwarnings("ignore", message=".*defined in __main__")


def allocate(mib: int) -> int:
    """Allocate and touch ``mib`` MiB."""
    data = b"\x01" * (mib * 2**20)
    return len(data) // 2**20


def one_run(mib: int) -> dict[str, float]:
    base = tether.cluster(name=f"bench-{uuid.uuid4().hex[:6]}", instance_type="local:256MB").up_if_not()
    attempts: list[tether.escalation.Attempt] = []
    fn = tether.function(allocate).to(
        base, on_oom=tether.Escalation(ladder=["local:256MB", "local:1GB", "local:4GB"])
    ).with_options(on_attempt=attempts.append)
    try:
        assert fn(mib) == mib
        first, second = attempts[0], attempts[1]
        assert first.outcome == "oom" and second.outcome == "ok", attempts
        assert first.call_started_at is not None and second.call_started_at is not None
        return {
            "oom_detect": first.ended_at - first.call_started_at,
            "oom_to_next": second.call_started_at - first.ended_at,
            "oom_to_up": second.started_at - first.ended_at,
        }
    finally:
        if fn.current_cluster is not None:
            fn.current_cluster.teardown()
        base.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as home:
        os.environ["TETHER_HOME"] = home
        rows = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            row = one_run(args.mib)
            rows.append(row)
            print(f"run {i + 1}: " + "  ".join(f"{k}={v:.3f}s" for k, v in row.items())
                  + f"  (total {time.perf_counter() - t0:.2f}s)", flush=True)  # fmt: skip
    print(f"\nmedian over {args.runs} runs, {args.mib} MiB on local:256MB -> local:1GB")
    for key in rows[0]:
        print(f"  {key:<12} {statistics.median(r[key] for r in rows):.3f} s")


if __name__ == "__main__":
    main()
