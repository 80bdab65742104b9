"""What runs on a node, inside a worker, for the Ray and Dask engines: start an engine process (a Ray head or
worker, a Dask scheduler or worker) tied to the worker's life, wait for the cluster, and run the user's
function against it. Deployed by import path (``tether.api.distribute.nodeside``): tether is installed in
every env that runs it.

Engine processes are started by one long-lived thread of the worker with ``PR_SET_PDEATHSIG`` = SIGTERM (the
kernel sends it when the *thread* that started the child ends: a call's thread would end too soon), so when
the worker stops — its env deleted, the daemon stopped, the cluster torn down, or a kill — the engine stops.
"""

from __future__ import annotations

import base64
import concurrent.futures
import ctypes
import fcntl
import importlib
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

__all__ = ["engine_tmp", "interface_towards", "run_function", "run_rank", "start_engine", "stop_engines", "wait_nodes"]

_PROCS: list[subprocess.Popen[bytes]] = []
_JOBS: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
_LAUNCHER: threading.Thread | None = None
_LOCK = threading.Lock()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _launcher() -> None:
    while True:
        job, fut = _JOBS.get()
        try:
            fut.set_result(job())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting call
            fut.set_exception(exc)


def _on_launcher(job: Callable[[], Any]) -> Any:
    """Run ``job`` on the one thread that lives as long as the worker (it owns the engine processes)."""
    global _LAUNCHER
    with _LOCK:
        if _LAUNCHER is None:
            _LAUNCHER = threading.Thread(target=_launcher, name="tether-engines", daemon=True)
            _LAUNCHER.start()
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    _JOBS.put((job, fut))
    return fut.result()


def engine_tmp(kind: str, address: str, port: int) -> str:
    """A short per-node folder for the engine's files (Ray's socket paths must stay under 108 bytes; the nodes
    of a test cluster share one filesystem)."""
    path = Path("/tmp") / f"tether-{kind}-{address.replace('.', '_').replace(':', '_')}-{port}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _argv(kind: str, role: str, address: str, port: int, head: str, tmp: str,
          resources: dict[str, float] | None = None) -> list[str]:
    """The engine's command line; ``resources`` (the env's ``compute``: CPU, GPU, memory in bytes) is what this
    node offers the engine (Ray: ``--num-cpus/--num-gpus/--memory``; a Dask worker: threads, memory limit, and a
    ``GPU`` resource)."""
    bindir = Path(sys.executable).parent
    res = resources or {}
    if kind == "ray":
        argv = [str(bindir / "ray"), "start", "--block", "--disable-usage-stats", f"--node-ip-address={address}"]
        argv += [f"--num-cpus={max(1, int(res['CPU']))}"] if "CPU" in res else []
        argv += [f"--num-gpus={int(res['GPU'])}"] if "GPU" in res else []
        argv += [f"--memory={int(res['memory'])}"] if "memory" in res else []
        if role == "head":
            return [*argv, "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}"]
        return [*argv, f"--address={head}:{port}"]
    if role == "scheduler":
        return [str(bindir / "dask"), "scheduler", "--host", address, "--port", str(port), "--no-dashboard",
                "--no-show"]  # fmt: skip
    argv = [str(bindir / "dask"), "worker", f"tcp://{head}:{port}", "--host", address, "--nworkers", "1",
            "--no-dashboard", "--local-directory", tmp, "--name", f"{address}"]  # fmt: skip
    argv += ["--nthreads", str(max(1, int(res["CPU"])))] if "CPU" in res else []
    argv += ["--memory-limit", str(int(res["memory"]))] if "memory" in res else []
    argv += ["--resources", f"GPU={int(res['GPU'])}"] if res.get("GPU") else []
    return argv


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def start_engine(kind: str, role: str, address: str, port: int, head: str, timeout: float = 120,
                 resources: dict[str, float] | None = None) -> dict[str, Any]:
    """Start one engine process on this node (``role``: ray ``head``/``worker``, dask ``scheduler``/``worker``)
    and wait until a head or scheduler accepts connections; returns its pid. ``resources``: see :func:`_argv`
    (the GPUs are those of this worker's ``CUDA_VISIBLE_DEVICES``, which the engine inherits)."""
    tmp = engine_tmp(kind, address, port)
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0")
    argv = _argv(kind, role, address, port, head, tmp, resources if role != "scheduler" else None)
    log = open(Path(tmp) / f"{role}.log", "ab")  # noqa: SIM115 - the child keeps it open
    proc: subprocess.Popen[bytes] = _on_launcher(lambda: subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent))  # fmt: skip
    log.close()
    _PROCS.append(proc)
    if role in ("head", "scheduler"):
        deadline = time.monotonic() + timeout
        while not _port_open(address, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (Path(tmp) / f"{role}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{kind} {role} did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
    return {"pid": proc.pid, "argv": argv}


def stop_engines(timeout: float = 20) -> int:
    """Stop the engine processes this worker started (TERM, then KILL); how many there were."""
    procs = list(_PROCS)
    _PROCS.clear()
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return len(procs)


def wait_nodes(kind: str, address: str, count: int, timeout: float = 180) -> int:
    """Wait until the engine at ``address`` (ray ``host:port``, dask ``tcp://host:port``) has ``count``
    nodes (Ray) or workers (Dask); returns how many it has."""
    deadline = time.monotonic() + timeout
    if kind == "dask":
        from distributed import Client

        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(count, timeout=timeout)
            return len(client.scheduler_info()["workers"])
    import ray

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        while True:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            if len(alive) >= count or time.monotonic() > deadline:
                return len(alive)
            time.sleep(0.5)
    finally:
        ray.shutdown()


def _load(ref: dict[str, Any]) -> Any:
    if ref.get("pickled_b64"):
        return cloudpickle.loads(base64.b64decode(ref["pickled_b64"]))
    obj: Any = importlib.import_module(ref["import_path"])
    for part in str(ref["qualname"]).split("."):
        obj = getattr(obj, part)
    return obj


def run_function(kind: str, address: str, ref: dict[str, Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    """Run the user's function against the engine: Ray with ``RAY_ADDRESS`` set (``ray.init(address="auto")``
    connects), Dask with a connected ``distributed.Client`` as its first argument."""
    fn = _load(ref)
    if kind == "dask":
        from distributed import Client

        with Client(address) as client:
            return fn(client, *args, **kwargs)
    return fn(*args, **kwargs)


def _address_of(interface: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:  # SIOCGIFADDR
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", interface[:15].encode()))
        except OSError:
            return None
        return socket.inet_ntoa(packed[20:24])


def interface_towards(address: str) -> str | None:
    """The network interface this node reaches ``address`` through (the one holding it, on that node itself);
    None when that is the loopback or cannot be told."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((address, 9))
            local = s.getsockname()[0]
    except OSError:
        return None
    if local.startswith("127."):
        return None
    return next((name for _, name in socket.if_nameindex() if _address_of(name) == local), None)


def run_rank(ref: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one rank of the user's function. Gloo and TensorPipe advertise the address the host name resolves to
    unless told an interface (``127.0.1.1`` on many hosts): name the one that reaches ``MASTER_ADDR``."""
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.environ.get("MASTER_ADDR"):
        iface = interface_towards(os.environ["MASTER_ADDR"])
        if iface:
            os.environ["GLOO_SOCKET_IFNAME"] = iface
            os.environ.setdefault("TP_SOCKET_IFNAME", iface)
    return _load(ref)(*args, **kwargs)
