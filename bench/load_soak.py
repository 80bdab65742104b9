"""Load / soak: N concurrent clients for M seconds against one local daemon on loopback.

Reports calls/s, latency p50/p99, errors (should be 0) and the daemon's RSS (with its workers) at start and end.
Bounded: stops at ``--seconds`` or ``--max-calls``, whichever comes first.

    .venv/bin/python bench/load_soak.py --clients 32 --seconds 20 --procs 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def echo(x: Any) -> Any:
    """The service under load: returns its argument."""
    return x


def _rss(pid: int) -> int:
    """RSS of a process and its children (the daemon and its workers), in bytes."""
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


async def _client_tasks(
    endpoint: str, token: str | None, tasks: int, deadline: float, max_calls: int, payload: bytes
) -> dict[str, Any]:
    from tether.client import AsyncClient

    client = AsyncClient(endpoint, token)
    latencies: list[float] = []
    errors: list[str] = []
    wrong = 0

    async def one() -> None:
        nonlocal wrong
        while time.time() < deadline and len(latencies) + len(errors) < max_calls:
            started = time.perf_counter()
            try:
                out = await client.call("echo", None, (payload,), {}, call_id=uuid.uuid4().hex, on_log=None)
                if out != payload:
                    wrong += 1
                latencies.append(time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    await asyncio.gather(*(one() for _ in range(tasks)))
    return {"latencies": latencies, "errors": errors, "wrong": wrong}


def _proc_main(
    endpoint: str, token: str | None, tasks: int, deadline: float, max_calls: int, size: int, out: Any
) -> None:
    out.put(asyncio.run(_client_tasks(endpoint, token, tasks, deadline, max_calls, b"x" * size)))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(clients: int, seconds: float, procs: int, max_calls: int, size: int) -> dict[str, Any]:
    os.environ.setdefault("TETHER_HOME", tempfile.mkdtemp(prefix="tether-soak-"))
    import tether

    cluster = tether.cluster(name="soak").up()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = tether.function(echo).to(cluster)
        assert fn(b"warm") == b"warm"
        pid = cluster.handle.pid
        assert pid is not None
        rss_start = _rss(pid)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append((time.time(), _rss(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        per_proc = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        started = time.time()
        deadline = started + seconds
        workers = [
            ctx.Process(
                target=_proc_main,
                args=(cluster.endpoint, cluster.token, n, deadline, max_calls // procs, size, queue),
            )
            for n in per_proc
            if n
        ]
        for w in workers:
            w.start()
        results = [queue.get(timeout=seconds + 120) for _ in workers]
        for w in workers:
            w.join(30)
        elapsed = time.time() - started
        stop.set()
        sampler.join(5)
        rss_end = _rss(pid)
        latencies = [x for r in results for x in r["latencies"]]
        errors = [e for r in results for e in r["errors"]]
        return {
            "clients": clients,
            "procs": len(workers),
            "seconds": round(elapsed, 1),
            "payload_bytes": size,
            "calls": len(latencies),
            "calls_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
            "errors": len(errors),
            "wrong_results": sum(r["wrong"] for r in results),
            "first_errors": errors[:5],
            "rss_start_mb": round(rss_start / 2**20, 1),
            "rss_end_mb": round(rss_end / 2**20, 1),
            "rss_max_mb": round(max([rss_end, rss_start, *(s for _, s in samples)]) / 2**20, 1),
            "rss_quartiles_mb": [
                round(samples[min(len(samples) - 1, int(q * len(samples)))][1] / 2**20, 1)
                for q in (0.25, 0.5, 0.75, 1.0)
            ]
            if samples
            else [],
        }
    finally:
        cluster.teardown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32, help="concurrent callers")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to hold the load")
    ap.add_argument("--procs", type=int, default=2, help="client processes the callers are spread over")
    ap.add_argument("--max-calls", type=int, default=1_000_000, help="stop after this many calls in total")
    ap.add_argument("--payload", type=int, default=64, help="bytes sent and echoed back per call")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    out = run(args.clients, args.seconds, args.procs, args.max_calls, args.payload)
    for key, value in out.items():
        print(f"{key:>15}: {value}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if out["errors"] == 0 and out["wrong_results"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
