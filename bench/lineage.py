"""What lineage costs, each figure beside a baseline measured in the same run.

1. a call of a saved function on the local daemon whose code declares one input and one output
   (``tether.lineage``), beside the same call of a function that declares nothing (both recorded in the registry);
2. the registry's upstream walk over a chain of N calls (SQLite), beside ``get()`` of one version.

Run: .venv/bin/python bench/lineage.py [--calls 300] [--chain 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TETHER_HOME", tempfile.mkdtemp(prefix="tether-bench-lineage-"))

import tether  # noqa: E402
from tests.registry import lineage_fns  # noqa: E402
from tether.registry import CallRecord, open_registry  # noqa: E402
from tether.registry.models import Artifact  # noqa: E402


def p50_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--chain", type=int, default=50)
    args = parser.parse_args()
    local = tether.cluster().up_if_not()
    try:
        tether.function(lineage_fns.slow_lines).to(local, name="bench-plain").save()
        tether.function(lineage_fns.serve_bert).to(local, name="bench-edges").save()
        a, b = tether.function(name="bench-plain"), tether.function(name="bench-edges")
        rounds = [(p50_us(lambda: a(0, 0.0), args.calls // 3), p50_us(lambda: b("ckpt", "a b c"), args.calls // 3))
                  for _ in range(3)]  # interleaved, so drift on a shared machine hits both
        base = statistics.median(r[0] for r in rounds)
        edges = statistics.median(r[1] for r in rounds)
        tether.registry.flush()
        print(f"call of a saved function, p50 (3 interleaved rounds of {args.calls // 3}): no declarations "
              f"{base:.0f} µs, one input + one output declared {edges:.0f} µs ({edges - base:+.0f} µs)")
    finally:
        tether.cluster().teardown()

    reg = open_registry(db=Path(os.environ["TETHER_HOME"]) / "walk.db")
    reg.save("step", {"kind": "function"})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(args.chain):
        reg.record_call(CallRecord(name="step", version=1, call_id=f"s{i}", started_at=t0 + timedelta(minutes=i),
                                   inputs=[Artifact(uri=f"mem://a{i}", version="1")],
                                   outputs=[Artifact(uri=f"mem://a{i + 1}", version="1")]))
    reg.flush()
    walk = p50_us(lambda: reg.lineage(f"mem://a{args.chain}", "1", depth=args.chain + 1), 30)
    get = p50_us(lambda: reg.get("step@1"), 30)
    assert len(reg.lineage(f"mem://a{args.chain}", "1", depth=args.chain + 1).calls) == args.chain
    print(f"upstream walk over a chain of {args.chain} calls (SQLite): {walk / 1000:.1f} ms; get() of one version: "
          f"{get / 1000:.2f} ms")
    reg.close()


if __name__ == "__main__":
    main()
