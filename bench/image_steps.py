"""What an image's per-host step cache saves: ``up`` of a stopped ssh cluster (bootstrap again) with an image whose
steps all ran before, against the same ``up`` of a cluster without an image (same run, same host) and the first
``up`` that runs the steps. Needs root (a netns host). Prints numbers.

.venv/bin/python bench/image_steps.py
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


def _up(spec: dict[str, object]) -> float:
    import tether

    t = time.perf_counter()
    tether.cluster(**spec).up_if_not()  # type: ignore[arg-type]
    return time.perf_counter() - t


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-img-"))
    os.environ["TETHER_HOME"] = str(tmp / "home")
    os.environ["TETHER_PROGRESS"] = "0"
    import tether
    from tests.compute.hosts import NetnsHosts, available
    from tests.envs.conftest import make_wheel
    from tether.compute.bootstrap import build_wheel

    reason = available()
    if reason:
        print(f"image benchmark skipped: {reason}")
        return
    os.environ["TETHER_WHEEL"] = str(build_wheel())
    wheel = make_wheel(tmp / "dist", "benchprobe", "1.0", "X = 1\n")
    img = (tether.Image("bench").pip_install([str(wheel)]).run_bash("sleep 1; echo done > ~/bench.txt")
           .set_env_vars({"BENCH": "1"}))
    with NetnsHosts(1, tmp / "hosts") as hosts:
        plain = dict(name="plain", host=hosts.addresses, ssh_creds=hosts.ssh_creds)
        imaged = dict(plain, name="imaged", image=img)
        _up(plain)  # venv + install once for the host
        first = _up(imaged)
        base, cached = [], []
        for _ in range(3):
            for spec, out in ((plain, base), (imaged, cached)):
                tether.cluster(**spec).stop()  # type: ignore[arg-type]
                out.append(_up(spec))
        print(f"first up with the image (pip_install + run_bash(sleep 1) + env vars run): {first:.2f} s")
        print(f"up after stop, no image (baseline, median of 3): {statistics.median(base):.2f} s")
        print(f"up after stop, image cached (median of 3): {statistics.median(cached):.2f} s "
              f"(+{statistics.median(cached) - statistics.median(base):.2f} s over the baseline: the marker check and "
              "the image.env write, two ssh round trips per host)")
        for spec in (plain, imaged):
            tether.cluster(**spec).teardown()  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
