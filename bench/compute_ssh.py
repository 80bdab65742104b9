"""Benchmark the ssh backend on a netns host and routing on the fixture catalog; prints numbers (needs root).

.venv/bin/python bench/compute_ssh.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    os.environ["TETHER_HOME"] = str(tmp / "home")
    os.environ.setdefault("TETHER_PROGRESS", "0")
    catalog = ROOT.parent / "shared" / "catalog" / "v8"
    os.environ["TETHER_CATALOG_DIR"] = str(catalog if catalog.exists() else Path("/work/shared/catalog/v8"))
    os.environ["TETHER_CATALOG_READER"] = "csv"

    import tether
    from tests.compute import remote_fns
    from tests.compute.hosts import NetnsHosts, available
    from tether import routing
    from tether.compute.bootstrap import build_wheel
    from tether.specs import ClusterSpec

    t = time.perf_counter()
    routing.plan(ClusterSpec(name="b", instance_type="A10G:1", backend="sky"))
    cold_plan = time.perf_counter() - t
    reps = [time.perf_counter()]
    for req in ("A10G:1", "A100:1", "CPU:4+", "L4:1", "H100:8") * 20:
        routing.plan(ClusterSpec(name="b", instance_type=req, backend="sky"))
        reps.append(time.perf_counter())
    per = statistics.median(b - a for a, b in zip(reps, reps[1:], strict=False))
    print(f"routing.plan: first {cold_plan * 1000:.1f} ms (reads CSVs), then median {per * 1000:.2f} ms")

    reason = available()
    if reason:
        print(f"ssh benchmark skipped: {reason}")
        return
    t = time.perf_counter()
    os.environ["TETHER_WHEEL"] = str(build_wheel())
    print(f"build wheel: {time.perf_counter() - t:.2f} s")
    with NetnsHosts(1, tmp / "hosts") as hosts:
        spec = dict(name="bench", host=hosts.addresses, ssh_creds=hosts.ssh_creds)
        t = time.perf_counter()
        c = tether.cluster(**spec).up_if_not()
        print(f"cold up_if_not (venv + install + daemon, wheelhouse cached): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        tether.cluster(**spec).up_if_not()
        print(f"warm up_if_not: {(time.perf_counter() - t) * 1000:.1f} ms")
        t = time.perf_counter()
        fn = tether.function(remote_fns.where).to(c)
        print(f"sync code + deploy: {time.perf_counter() - t:.2f} s")
        fn(1)
        lat = []
        for i in range(50):
            t = time.perf_counter()
            fn(i)
            lat.append(time.perf_counter() - t)
        lat.sort()
        print(
            f"call through the ssh tunnel: median {statistics.median(lat) * 1000:.1f} ms, "
            f"p90 {lat[int(len(lat) * 0.9)] * 1000:.1f} ms (n=50)"
        )
        c.stop()
        t = time.perf_counter()
        c.up_if_not()
        print(f"restart after stop (install kept): {time.perf_counter() - t:.2f} s")
        c.teardown()


if __name__ == "__main__":
    main()
