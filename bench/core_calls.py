"""Core call benchmark: tether vs a raw aiohttp server measured in the same run.

Prints: sequential p50/p99 of add(1, 2); calls/s with 32 concurrent callers on one stateful object (asyncio tasks,
and threads on the sync API); 10 MB and 100 MB echo throughput; deploy loop (edit → .to() → first call).

Run: .venv/bin/python bench/core_calls.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import cloudpickle
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tether  # noqa: E402
from bench import bench_services as svc  # noqa: E402

MiB = 1024 * 1024


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_baseline() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "baseline_server.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/", timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.05)
    return proc, url


async def baseline_async(url: str, n: int) -> list[float]:
    body = cloudpickle.dumps(((1, 2), {}))
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t = time.perf_counter()
            async with s.post(url + "/add", data=body) as r:
                cloudpickle.loads(await r.read())
            out.append(time.perf_counter() - t)
    return out


def baseline_requests(url: str, n: int) -> list[float]:
    body = cloudpickle.dumps(((1, 2), {}))
    out = []
    with requests.Session() as s:
        for _ in range(n):
            t = time.perf_counter()
            cloudpickle.loads(s.post(url + "/add", data=body).content)
            out.append(time.perf_counter() - t)
    return out


async def baseline_concurrent(url: str, total: int, conc: int = 32) -> float:
    body = cloudpickle.dumps(((1, 2), {}))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        async def worker(k: int) -> None:
            for _ in range(k):
                async with s.post(url + "/add", data=body) as r:
                    await r.read()
        t = time.perf_counter()
        await asyncio.gather(*(worker(total // conc) for _ in range(conc)))
        return total / (time.perf_counter() - t)


async def baseline_echo(url: str, size: int, reps: int) -> tuple[float, float]:
    """MiB/s over ``reps`` calls after one warm-up call, and that first call's seconds (as :func:`echo_tput`)."""
    payload = os.urandom(size)
    body = cloudpickle.dumps(((payload,), {}), protocol=5)
    async with aiohttp.ClientSession() as s:
        times = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            async with s.post(url + "/echo", data=body) as r:
                assert len(cloudpickle.loads(await r.read())) == size
            times.append(time.perf_counter() - t)
        return size * reps / MiB / sum(times[1:]), times[0]


def seq_sync(f, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f(1, 2)
        out.append(time.perf_counter() - t)
    return out


async def seq_async(f, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await f.remote_async(1, 2)
        out.append(time.perf_counter() - t)
    return out


async def conc_async(ctr, total: int, conc: int = 32) -> float:
    async def worker(k: int) -> None:
        for _ in range(k):
            await ctr.incr.remote_async()
    t = time.perf_counter()
    await asyncio.gather(*(worker(total // conc) for _ in range(conc)))
    return total / (time.perf_counter() - t)


def conc_threads(ctr, total: int, conc: int = 32) -> float:
    def worker(k: int) -> None:
        for _ in range(k):
            ctr.incr()
    threads = [threading.Thread(target=worker, args=(total // conc,)) for _ in range(conc)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return total / (time.perf_counter() - t)


def echo_tput(f, size: int, reps: int) -> tuple[float, float]:
    """MiB/s over ``reps`` echo calls after one warm-up call, and that first call's seconds (it pays for
    growing the shared-memory slabs and, on a fresh VM, for the host backing never-touched guest pages)."""
    payload = os.urandom(size)
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        assert len(f(payload)) == size
        times.append(time.perf_counter() - t)
    return size * reps / MiB / sum(times[1:]), times[0]


def deploy_loop(cluster, reps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "pyproject.toml").write_text("[project]\nname='loop'\n")
        sys.path.insert(0, d)
        times = []
        for i in range(reps):
            (root / "loopmod.py").write_text(f"def version():\n    return {i}\n")
            t = time.perf_counter()
            mod = importlib.import_module("loopmod") if i == 0 else importlib.reload(sys.modules["loopmod"])
            f = tether.function(mod.version).to(cluster)
            assert f() == i
            times.append(time.perf_counter() - t)
        sys.path.remove(d)
        return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    a = ap.parse_args()
    n, total, big_reps = (300, 2000, 2) if a.quick else (2000, 8000, 5)
    os.environ.setdefault("TETHER_HOME", tempfile.mkdtemp(prefix="tether-bench-"))
    base_proc, url = start_baseline()
    c = tether.cluster(name="bench").up_if_not()
    try:
        radd = tether.function(svc.add).to(c)
        echo = tether.function(svc.echo).to(c)
        ctr = tether.module(svc.Counter).to(c)(name="bench_ctr")
        radd(1, 2), echo(b"x"), ctr.incr()
        asyncio.run(baseline_async(url, 50))
        rows = []
        b_async = asyncio.run(baseline_async(url, n))
        b_req = baseline_requests(url, n)
        t_sync = seq_sync(radd, n)
        t_async = asyncio.run(seq_async(radd, n))
        rows.append(("sequential add(1,2) p50 ms", f"{pct(t_sync, .5):.3f} (sync) / {pct(t_async, .5):.3f} (async)",
                     f"{pct(b_async, .5):.3f} (aiohttp) / {pct(b_req, .5):.3f} (requests)"))
        rows.append(("sequential add(1,2) p99 ms", f"{pct(t_sync, .99):.3f} (sync) / {pct(t_async, .99):.3f} (async)",
                     f"{pct(b_async, .99):.3f} (aiohttp) / {pct(b_req, .99):.3f} (requests)"))
        rows.append(("p50 ratio to aiohttp baseline", f"{pct(t_sync, .5) / pct(b_async, .5):.2f}x (sync) / "
                     f"{pct(t_async, .5) / pct(b_async, .5):.2f}x (async)", "1.00x"))
        b_conc = asyncio.run(baseline_concurrent(url, total))
        rows.append(("calls/s, 32 asyncio callers, one object", f"{asyncio.run(conc_async(ctr, total)):.0f}",
                     f"{b_conc:.0f}"))
        rows.append(("calls/s, 32 threads, sync API, one object", f"{conc_threads(ctr, total):.0f}", f"{b_conc:.0f}"))
        for size, label in ((10 * MiB, "10 MB"), (100 * MiB, "100 MB")):
            ours, first = echo_tput(echo, size, big_reps)
            theirs, base_first = asyncio.run(baseline_echo(url, size, big_reps))
            rows.append((f"echo {label} MiB/s (after a warm-up call)", f"{ours:.0f}", f"{theirs:.0f}"))
            rows.append((f"echo {label}: the warm-up call, ms", f"{first * 1000:.0f}", f"{base_first * 1000:.0f}"))
        rows.append(("deploy loop (edit → .to() → first call) median s", f"{deploy_loop(c, 10 if a.quick else 20):.3f}",
                     "-"))
        width = max(len(r[0]) for r in rows)
        print(f"daemon and worker event loop: {c.daemon_status().get('loop', '?')} (TETHER_LOOP=asyncio forces the stdlib loop)")
        print(f"{'metric':<{width}}  {'tether':<34}  baseline (same run)")
        for name, ours, base in rows:
            print(f"{name:<{width}}  {ours:<34}  {base}")
    finally:
        c.teardown()
        base_proc.terminate()


if __name__ == "__main__":
    main()
