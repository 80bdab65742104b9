"""Benchmark ``.distribute()`` on two network-namespace hosts against Ray and torchrun on the same hosts, in the
same run (needs root and .venv-dist):

    .venv-dist/bin/python bench/distributed.py [--calls 10000]

1. ``map`` of N small calls over 2 nodes x 2 replicas (calls/s), beside Ray tasks and a Ray ``ActorPool`` of 4
   actors over a Ray cluster on the same two hosts (its driver on the head; tether's client is outside the hosts
   and reaches them through ssh tunnels);
2. time from ``.distribute("pytorch", num_replicas=4, replicas_per_node=2)(...)`` to every rank running, beside
   ``torchrun`` started by hand on each host (``ip netns exec``);
3. Ray cluster bring-up: ``.distribute("ray").start()`` beside ``ray start`` by hand on each host.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
BIN = Path(PY).parent


def tiny(x: int) -> int:
    return x + 1


def started() -> float:
    return time.time()


def _ns(hosts, i: int, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", hosts.hosts[i].namespace, *argv],
                            env={**os.environ, **(env or {})}, **kw)


def _ray_by_hand(hosts, port: int, tmp: Path) -> tuple[list[subprocess.Popen], float]:
    """``ray start --block`` on each host (head first), until the head sees both nodes; the seconds it took."""
    procs = []
    t0 = time.perf_counter()
    addrs = hosts.addresses
    for i in range(2):
        rtmp = Path("/tmp") / f"tether-bench-ray{i}-{port}"
        rtmp.mkdir(exist_ok=True)
        argv = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--node-ip-address={addrs[i]}"]
        argv += (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={rtmp}"] if i == 0
                 else [f"--address={addrs[0]}:{port}"])
        procs.append(_ns(hosts, i, argv, {"RAY_TMPDIR": str(rtmp)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True))
        if i == 0:
            _driver(hosts, port, f"import socket,time\nwhile True:\n  try:\n    socket.create_connection(('{addrs[0]}', "
                                 f"{port}), 1).close(); break\n  except OSError: time.sleep(0.1)\n")
    _driver(hosts, port, "import ray,time\nray.init(address='auto', log_to_driver=False)\n"
                         "while len([n for n in ray.nodes() if n['Alive']]) < 2: time.sleep(0.2)\n")
    return procs, time.perf_counter() - t0


def _driver(hosts, port: int, code: str) -> str:
    """Run ``code`` on the head host with RAY_ADDRESS set; its stdout."""
    p = _ns(hosts, 0, [PY, "-c", code], {"RAY_ADDRESS": f"{hosts.addresses[0]}:{port}"},
            stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=900)
    if p.returncode:
        raise RuntimeError(f"ray driver failed ({p.returncode})")
    return out


RAY_CALLS = textwrap.dedent("""
    import ray, time
    from ray.util import ActorPool
    ray.init(address="auto", log_to_driver=False)
    N = {n}
    @ray.remote
    def tiny(x): return x + 1
    ray.get([tiny.remote(i) for i in range(100)])
    t = time.perf_counter(); out = ray.get([tiny.remote(i) for i in range(N)]); tasks = time.perf_counter() - t
    assert out == [i + 1 for i in range(N)]
    @ray.remote
    class A:
        def tiny(self, x): return x + 1
    pool = ActorPool([A.remote() for _ in range(4)])
    list(pool.map(lambda a, v: a.tiny.remote(v), range(100)))
    t = time.perf_counter(); out = list(pool.map(lambda a, v: a.tiny.remote(v), range(N))); actors = time.perf_counter() - t
    assert out == [i + 1 for i in range(N)]
    print(tasks, actors)
""")

TORCH_RANK = textwrap.dedent("""
    import os, sys, time
    open(os.path.join(sys.argv[1], "rank-" + os.environ["RANK"]), "w").write(repr(time.time()))
""")


def _torchrun_by_hand(hosts, tmp: Path) -> float:
    script = tmp / "rank.py"
    script.write_text(TORCH_RANK)
    marks = tmp / "marks"
    marks.mkdir()
    port = 29000 + os.getpid() % 1000
    t0 = time.time()
    procs = [_ns(hosts, i, [str(BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=2", f"--node-rank={i}",
                            f"--master-addr={hosts.addresses[0]}", f"--master-port={port}", str(script), str(marks)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]  # fmt: skip
    for p in procs:
        p.wait(timeout=600)
    return max(float(f.read_text()) for f in marks.iterdir()) - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-dist-"))
    os.environ["TETHER_HOME"] = str(tmp / "home")
    os.environ.setdefault("TETHER_PROGRESS", "0")

    import tether
    from bench import distributed as me
    from tests.compute.hosts import NetnsHosts, available
    from tether.compute.bootstrap import build_wheel

    reason = available()
    if reason:
        print(f"distributed benchmark skipped: {reason}")
        return
    os.environ["TETHER_WHEEL"] = str(build_wheel())
    with NetnsHosts(2, tmp / "hosts") as hosts:
        c = tether.cluster(name="bench", host=hosts.addresses, ssh_creds=hosts.ssh_creds).up_if_not()
        env = tether.env(name="bench", python=PY)
        n = args.calls

        pool = tether.function(me.tiny).to(c, env=env).distribute("pool", num_replicas=4, replicas_per_node=2)
        pool.map(range(200))
        t = time.perf_counter()
        assert pool.map(range(n)) == [i + 1 for i in range(n)]
        ours = time.perf_counter() - t
        pool.delete()

        t = time.perf_counter()
        ray = tether.function(me.tiny).to(c, env=env).distribute("ray").start()
        our_ray_up = time.perf_counter() - t
        ray.stop()
        port = 20000 + os.getpid() % 20000
        procs, their_ray_up = _ray_by_hand(hosts, port, tmp)
        try:
            tasks, actors = map(float, _driver(hosts, port, RAY_CALLS.format(n=n)).split())
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                p.wait(timeout=60)

        ranks = tether.function(me.started).to(c, env=env)
        t0 = time.time()
        stamps = ranks.distribute("pytorch", num_replicas=4, replicas_per_node=2)()
        ours_ranks = max(stamps) - t0
        theirs_ranks = _torchrun_by_hand(hosts, tmp)
        c.teardown()

    print(f"map of {n} small calls, 2 nodes x 2 replicas:")
    print(f"  tether pool.map        {n / ours:8.0f} calls/s   ({ours:.2f} s; client outside the hosts, via tunnels)")
    print(f"  Ray tasks              {n / tasks:8.0f} calls/s   ({tasks:.2f} s; driver on the head)")
    print(f"  Ray ActorPool (4)      {n / actors:8.0f} calls/s   ({actors:.2f} s)")
    print("time to every rank running, 4 ranks on 2 hosts:")
    print(f"  tether .distribute('pytorch')  {ours_ranks:6.2f} s  (fresh worker per rank, deploy through the head)")
    print(f"  torchrun by hand on each host  {theirs_ranks:6.2f} s")
    print("Ray cluster bring-up on 2 hosts:")
    print(f"  tether .distribute('ray').start()  {our_ray_up:6.2f} s  (worker envs, ray start, wait for both nodes)")
    print(f"  ray start by hand                  {their_ray_up:6.2f} s")


if __name__ == "__main__":
    main()
