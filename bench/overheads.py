"""What every orchestrator task and every remote cluster pays, each figure beside a baseline measured in the same run.

1. fresh process: ``python -c "import tether; tether.function(name='addsvc')(1, 2)"`` (load by name from the local
   registry + first call to a running local daemon: a ``tether.api.saved.SavedFunction``, no models built) beside
   ``python -c pass``, the same load and call through the full handle, and the same call made in-process.
2. big payloads over TCP (what a client on another host uses: no unix socket, no /dev/shm): 10 MB and 100 MB echo
   through tether's TCP endpoint, sync and async clients, plain and TLS, beside a raw Python socket echo (plain /
   TLS) of the same bytes; and 10 MB one way only (up with a small result, down for a small argument) beside half
   the raw echo.
3. deploy cost as the daemon fills up: a deploy at the 1st vs the 1,000th service of one env, a deploy into the
   50th env, and memory (RSS) per env.

Run: .venv/bin/python bench/overheads.py [--quick] [--only fresh,tcp,deploy]
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tether  # noqa: E402
from bench import bench_services as svc  # noqa: E402
from tether.client import DaemonClient  # noqa: E402
from tether.client.loop import run_sync  # noqa: E402

MiB = 1024 * 1024
Row = tuple[str, str, str]


def median_s(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f}"


# -- 1. fresh process ------------------------------------------------------------------------------------------------
def _wall(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def fresh_process(cluster: Any, reps: int) -> list[Row]:
    f = tether.function(svc.add).to(cluster, name="addsvc")
    f.save()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed package: its bytecode cached (not in the checkout)
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="tether-pyc-")
    call = [sys.executable, "-c", "import tether; tether.function(name='addsvc')(1, 2)"]
    # the same load and call through the full handle (its cluster, env and spec models), as before tether.api.saved
    full_call = [sys.executable, "-c", "from tether.api.loading import function; function(name='addsvc')(1, 2)"]
    _wall(call, env)  # fills the bytecode cache
    _wall(full_call, env)
    fresh: list[float] = []
    full: list[float] = []
    bare: list[float] = []
    imp: list[float] = []
    floor: list[float] = []
    for _ in range(reps):  # interleaved: this box's speed drifts by a third over a minute
        fresh.append(_wall(call, env))
        full.append(_wall(full_call, env))
        bare.append(_wall([sys.executable, "-c", "pass"], env))
        imp.append(_wall([sys.executable, "-c", "import tether"], env))
        floor.append(_wall([sys.executable, "-c", "import pydantic.main"], env))
    local = []
    for _ in range(max(reps, 20)):
        t = time.perf_counter()
        f(1, 2)
        local.append(time.perf_counter() - t)
    return [
        ("fresh process: load 'addsvc' by name + first call, median s", f"{median_s(fresh)} (min {min(fresh):.3f})",
         f"{median_s(bare)} (python -c pass)"),
        ("fresh process: the same through the full handle (models built), median s",
         f"{median_s(full)} (min {min(full):.3f})", f"{median_s(bare)} (python -c pass)"),
        ("fresh process: import pydantic alone, median s", median_s(floor), f"{median_s(bare)} (python -c pass)"),
        ("fresh process: import tether alone, median s", median_s(imp), f"{median_s(bare)} (python -c pass)"),
        ("the same call made in-process, median ms", f"{statistics.median(local) * 1000:.2f}", "-"),
    ]


# -- 2. big payloads over TCP ------------------------------------------------------------------------------------------
def _recv_exactly(sock: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = sock.recv_into(buf[got:])
        if not n:
            raise ConnectionError("closed")
        got += n


class RawEcho:
    """A raw Python socket echo (a thread per connection): 8-byte length, then that many bytes, echoed back."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None  # the client's kept connection
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        with conn:
            head = bytearray(8)
            while True:
                try:
                    _recv_exactly(conn, memoryview(head))
                except (ConnectionError, OSError):
                    return
                data = bytearray(int.from_bytes(head, "big"))
                _recv_exactly(conn, memoryview(data))
                conn.sendall(head)
                conn.sendall(data)

    def round_trips(self, payload: bytes, reps: int, client_tls: ssl.SSLContext | None) -> list[float]:
        """``reps`` timed echoes of ``payload`` on one kept connection (a first, untimed one warms a new one)."""
        fresh = self.conn is None
        if self.conn is None:
            sock: socket.socket = socket.create_connection(("127.0.0.1", self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = client_tls.wrap_socket(sock, server_hostname="127.0.0.1") if client_tls is not None else sock
        out = []
        for _ in range(reps + fresh):
            t = time.perf_counter()
            self.conn.sendall(len(payload).to_bytes(8, "big"))
            self.conn.sendall(payload)
            head = bytearray(8)
            _recv_exactly(self.conn, memoryview(head))
            back = bytearray(int.from_bytes(head, "big"))
            _recv_exactly(self.conn, memoryview(back))
            out.append(time.perf_counter() - t)
            assert len(back) == len(payload)
        return out[fresh:]


def _tput(size: int, times: list[float]) -> float:
    return size / MiB / statistics.median(times)


def _tls_contexts(cluster: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with the TLS cluster's own certificate and key, and a client context that trusts any."""
    tls_dir = Path(os.environ["TETHER_HOME"]) / "clusters" / cluster.name / "tls"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


def tcp_echo(plain: Any, tls_cluster: Any, sizes: list[int], reps: int) -> list[Row]:
    rows: list[Row] = []
    server_tls, client_tls = _tls_contexts(tls_cluster)
    raw = {"plain": RawEcho(None), "TLS": RawEcho(server_tls)}
    for label, cluster in (("plain", plain), ("TLS", tls_cluster)):
        tether.function(svc.echo).to(cluster, name="echo")
        h = cluster.handle
        client = DaemonClient(h.endpoint, h.token, h.tls_fingerprint)  # no unix socket: TCP, as from another host;
        # lend=True below: a call id only this caller knows, as a handle's call without an explicit id
        assert client.unix_socket is None
        for size in sizes:
            payload = os.urandom(size)

            def sync_call(p: bytes = payload, c: DaemonClient = client) -> None:
                assert len(c.call_sync("echo", None, (p,), {}, call_id=os.urandom(8).hex(), lend=True)) == len(p)

            async def async_calls(n: int, p: bytes = payload, c: DaemonClient = client) -> list[float]:
                out = []
                for _ in range(n + 1):
                    t = time.perf_counter()
                    assert len(await c.call("echo", None, (p,), {}, call_id=os.urandom(8).hex(), lend=True)) == len(p)
                    out.append(time.perf_counter() - t)
                return out[1:]

            sync_call()
            run_sync(async_calls(1))
            raw[label].round_trips(payload, 1, client_tls if label == "TLS" else None)
            sync_times: list[float] = []
            async_times: list[float] = []
            base: list[float] = []
            for _ in range(reps):  # interleaved: each tether call beside a raw echo made just before it
                base += raw[label].round_trips(payload, 1, client_tls if label == "TLS" else None)
                sync_times += _timed(sync_call, 1, warm=False)
                async_times += run_sync(async_calls(1))
            b = _tput(size, base)
            s, a = _tput(size, sync_times), _tput(size, async_times)
            rows.append((f"TCP echo {size // MiB} MB, {label}, MiB/s (sync / async)",
                         f"{s:.0f} / {a:.0f} ({_paired(base, sync_times)} / {_paired(base, async_times)})",
                         f"{b:.0f} (raw socket echo)"))
            if label == "plain" and size == sizes[0]:
                rows += _one_way(cluster, client, payload, reps, statistics.median(base))
    return rows


def _one_way(cluster: Any, client: DaemonClient, payload: bytes, reps: int, raw_echo: float) -> list[Row]:
    """Where an echo's time goes: the payload one way only (up, with a small result; down, for a small
    argument), sync, beside half the raw echo's round trip of the same bytes."""
    tether.function(svc.size_of).to(cluster, name="size_of")
    tether.function(svc.make).to(cluster, name="make")
    size = len(payload)

    def up_call() -> None:
        assert client.call_sync("size_of", None, (payload,), {}, call_id=os.urandom(8).hex(), lend=True) == size

    def down_call() -> None:
        assert len(client.call_sync("make", None, (size,), {}, call_id=os.urandom(8).hex(), lend=True)) == size

    up, down = _timed(up_call, reps), _timed(down_call, reps)
    half = f"{raw_echo / 2 * 1000:.1f} (half the raw echo)"
    return [(f"TCP {size // MiB} MB argument, small result, plain sync, median ms",
             f"{statistics.median(up) * 1000:.1f}", half),
            (f"TCP small argument, {size // MiB} MB result, plain sync, median ms",
             f"{statistics.median(down) * 1000:.1f}", half)]


def _paired(base: list[float], ours: list[float]) -> str:
    """The median over interleaved pairs of raw time / tether time (this box's speed drifts between runs)."""
    return f"{statistics.median(b / o for b, o in zip(base, ours, strict=True)):.2f}x"


def _timed(fn: Callable[[], None], reps: int, warm: bool = True) -> list[float]:
    if warm:
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# -- 3. deploy cost as the daemon fills up ---------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _timed_deploy(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def deploy_rows(services: int, envs: int) -> list[Row]:
    c = tether.cluster(name="overheads-deploy").up_if_not()
    try:
        status = c.daemon_status()
        daemon_pid = status["pid"]
        times = [_timed_deploy(lambda i=i: tether.function(svc.add).to(c, name=f"s{i}")) for i in range(services)]
        k = min(20, services // 10 or 1)
        first, last = statistics.median(times[:k]), statistics.median(times[-k:])
        daemon_before = _rss_mb(daemon_pid)
        env_times = [_timed_deploy(lambda i=i: tether.function(svc.add).to(c, name=f"e{i}",
                                                                         env=tether.env(name=f"e{i}")))
                     for i in range(envs)]
        again = [_timed_deploy(lambda i=i: tether.function(svc.echo).to(c, name=f"x{i}", env=tether.env(name=f"e{i}")))
                 for i in range(envs)]
        workers = [w for w in c.daemon_status()["workers"] if w.get("alive", True)]
        per_env = [_rss_mb(w["pid"]) for w in workers]
        daemon_after = _rss_mb(daemon_pid)
        ke = min(10, envs // 5 or 1)
    finally:
        c.teardown()
    return [
        (f"deploy into one env: services 1-{k} vs {services - k + 1}-{services}, median ms",
         f"{last * 1000:.1f} (at {services})", f"{first * 1000:.1f} (first {k})"),
        (f"deploy a service into a new env (its worker starts), median ms ({envs} envs)",
         f"{statistics.median(env_times[-ke:]) * 1000:.0f} (envs {envs - ke + 1}-{envs})",
         f"{statistics.median(env_times[:ke]) * 1000:.0f} (envs 1-{ke})"),
        (f"deploy a 2nd service into each running env, median ms ({envs} envs)",
         f"{statistics.median(again) * 1000:.1f}", f"{first * 1000:.1f} (1st services, one env)"),
        ("memory per env (worker RSS), median MB", f"{statistics.median(per_env):.1f} ({len(per_env)} workers)",
         f"daemon {daemon_before:.0f} MB with {services} services -> {daemon_after:.0f} MB with {envs} more envs"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--only", default="fresh,tcp,deploy", help="comma-separated sections")
    a = ap.parse_args()
    only = set(a.only.split(","))
    os.environ.setdefault("TETHER_HOME", tempfile.mkdtemp(prefix="tether-bench-"))
    rows: list[Row] = []
    c = tether.cluster(name="overheads").up_if_not()
    clusters = [c]
    try:
        if "fresh" in only:
            rows += fresh_process(c, 5 if a.quick else 15)
        if "tcp" in only:
            tls = tether.cluster(name="overheads-tls", server_connection_type="tls").up_if_not()
            clusters.append(tls)
            rows += tcp_echo(c, tls, [10 * MiB, 100 * MiB], 3 if a.quick else 5)
        if "deploy" in only:
            rows += deploy_rows(200 if a.quick else 1000, 10 if a.quick else 50)
    finally:
        for each in clusters:
            each.teardown()
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'tether':<34}  baseline (same run)")
    for name, ours, base in rows:
        print(f"{name:<{width}}  {ours:<34}  {base}")


if __name__ == "__main__":
    main()
