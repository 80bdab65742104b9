"""What the Runhouse spellings cost, each beside tether's own spelling measured in the same run.

Prints p50 of a plain call vs the same call with ``stream_logs=False`` / ``run_async=False``; a JSON POST vs a GET
with query parameters (``curl "$ENDPOINT/add?a=1&b=2"``); and ``fn.map`` over N calls of a 20 ms function vs the
same N calls one after another.

Run: .venv/bin/python bench/compat_calls.py [--calls 300] [--map 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tether as rh  # noqa: E402
from tests.compat import services as svc  # noqa: E402


def p50s_ms(variants: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """p50 of each variant, measured round-robin (one call of each in turn) so background load hits all alike."""
    for fn in variants.values():
        for _ in range(min(20, n)):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(n):
        for label, fn in variants.items():
            t = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300, help="calls per p50")
    ap.add_argument("--map", type=int, default=32, help="calls in the map comparison")
    args = ap.parse_args()
    os.environ.setdefault("TETHER_HOME", tempfile.mkdtemp(prefix="tether-bench-compat-"))
    cluster = rh.cluster(name="bench-compat").up_if_not()
    try:
        add = rh.function(svc.add).to(cluster)
        sleep = rh.function(svc.synchronous_sleep).to(cluster)
        n = args.calls
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {cluster.token}"
        url = f"{cluster.endpoint}/add"
        rows = p50s_ms({
            "add(1, 2)": lambda: add(1, 2),
            "add(1, 2, stream_logs=False)": lambda: add(1, 2, stream_logs=False),
            "add(1, 2, run_async=False)": lambda: add(1, 2, run_async=False),
        }, n)
        rows.update(p50s_ms({
            "POST /add/call JSON (requests)": lambda: session.post(f"{url}/call", json={"args": [1, 2]}),
            "GET /add?a=1&b=2 (requests)": lambda: session.get(url, params={"a": 1, "b": 2}),
        }, n))
        for label, ms in rows.items():
            print(f"{label:34s} p50 {ms:7.3f} ms")
        m = args.map
        t = time.perf_counter()
        for _ in range(m):
            sleep(0.02)
        one_by_one = time.perf_counter() - t
        t = time.perf_counter()
        sleep.map([0.02] * m)
        mapped = time.perf_counter() - t
        print(f"{m} calls of a 20 ms function: one by one {one_by_one:.3f} s, map {mapped:.3f} s "
              f"({one_by_one / mapped:.1f}x)")
    finally:
        cluster.teardown()


if __name__ == "__main__":
    main()
