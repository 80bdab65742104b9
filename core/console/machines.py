"""What the console knows of a cluster: its state on this server, its daemon's ``/status``, its price per hour,
and per-worker CPU and memory samples kept in memory for the last hour.

A cluster is known from this server's ``$TETHER_HOME/clusters`` state (its token never comes from the registry)
and from the services whose saved config names it. CPU and memory per worker come from the daemon's ``/status``
when it reports them (``cpu_percent``, ``rss_bytes``, ``gpu_memory_bytes``); for a local-backend cluster (its
daemon runs on this machine as this user) the console reads them from ``/proc`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tether.client import DaemonClient
from tether.compute import get_backend
from tether.compute.base import ClusterHandle
from tether.compute.catalog import offerings
from tether.compute.state import load_state, state_backend
from tether.errors import TetherError
from tether.home import clusters_dir
from tether.specs import ClusterSpec

__all__ = ["WINDOW_S", "ClusterView", "Sampler", "known_clusters", "look", "price_per_hour", "proc_usage"]

WINDOW_S = 3600.0
STATUS_TIMEOUT_S = 10.0
_CLIENTS: dict[tuple[str | None, ...], DaemonClient] = {}


def known_clusters() -> list[str]:
    """The clusters this server's ``$TETHER_HOME/clusters`` holds a state file for."""
    try:
        files = sorted(clusters_dir().glob("*.json"))
    except OSError:
        return []
    return [p.stem for p in files if not p.name.startswith(".")]


def _handle(name: str, state: dict[str, Any]) -> ClusterHandle | None:
    try:
        backend: Any = get_backend(state_backend(state))
        spec = ClusterSpec.model_validate(state.get("spec") or {"name": name})
        return backend.handle(spec) if hasattr(backend, "handle") else None
    except Exception:  # noqa: BLE001 - a backend that cannot answer here (sky without its extra): not reachable
        return None


def price_per_hour(state: dict[str, Any] | None, handle: ClusterHandle | None = None) -> float | None:
    """$/h of one node of the cluster: what its backend recorded, else the catalog's price of its instance type in
    its cloud and region (spot when it runs on spot); 0 for the local backend; None when unknown."""
    if handle is not None and handle.price_per_hour is not None:
        return handle.price_per_hour
    if not state:
        return None
    if isinstance(state.get("price_per_hour"), (int, float)):
        return float(state["price_per_hour"])
    if state_backend(state) == "local":
        return 0.0
    cloud, region, itype = state.get("cloud"), state.get("region"), state.get("instance_type")
    if not (isinstance(cloud, str) and isinstance(itype, str)):
        return None
    spot = bool((state.get("spec") or {}).get("use_spot"))
    try:
        rows = offerings(clouds=[cloud], regions=[region] if isinstance(region, str) else None, use_spot=spot)
    except (TetherError, OSError, ValueError):
        return None
    prices = [p for o in rows if o.instance_type == itype and (p := o.hourly(spot)) is not None]
    return min(prices) if prices else None


def _ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except (OSError, IndexError, ValueError):
        return None


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _meminfo() -> dict[str, int]:
    """This machine's ``/proc/meminfo`` in bytes (empty where there is none)."""
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                with contextlib.suppress(ValueError, IndexError):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def proc_usage(pids: list[int], interval: float = 0.2) -> dict[int, tuple[float | None, int | None]]:
    """Per pid of this machine: (CPU percent over ``interval`` seconds, resident bytes); None where unreadable.
    Blocks for ``interval``: call it off the event loop."""
    tick = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), {p: _ticks(p) for p in pids}
    time.sleep(interval)
    t1, c1 = time.monotonic(), {p: _ticks(p) for p in pids}
    out: dict[int, tuple[float | None, int | None]] = {}
    for p in pids:
        a, b = c0[p], c1[p]
        cpu = round(100.0 * (b - a) / tick / (t1 - t0), 1) if a is not None and b is not None else None
        out[p] = (cpu, _rss(p))
    return out


@dataclass
class ClusterView:
    """One cluster as the console shows it."""

    name: str
    backend: str | None
    state: dict[str, Any] | None
    handle: ClusterHandle | None
    status: dict[str, Any] | None
    price: float | None
    error: str | None = None

    @property
    def health(self) -> str:
        if self.state is None:
            return "not on this server"
        if self.status is not None:
            return "up"
        return "unreachable" if self.handle is not None else "down or stopped"

    @property
    def local(self) -> bool:
        return self.backend == "local"

    def nodes(self) -> list[dict[str, Any]]:
        """The daemon's nodes when its ``/status`` lists them, else the hosts its backend recorded."""
        listed = (self.status or {}).get("nodes")
        if isinstance(listed, list) and listed:
            return [n for n in listed if isinstance(n, dict)]
        spec = (self.state or {}).get("spec") or {}
        hosts = list(self.handle.hosts) if self.handle else list(spec.get("host") or [])
        itype = (self.handle.instance_type if self.handle else None) or (self.state or {}).get("instance_type") \
            or spec.get("instance_type")
        if not hosts and self.state is not None:
            hosts = [self.name] * int(spec.get("num_nodes") or 1)
        here = {"cpus": os.cpu_count(), "memory_total": _meminfo().get("MemTotal")} if self.local else {}
        return [{"host": h, "index": i, "instance_type": itype, **here} for i, h in enumerate(hosts)]

    def autostop_left(self) -> float | None:
        """Seconds until the daemon's idle clock stops the cluster (None: no autostop, paused, or unknown)."""
        st = self.status or {}
        mins, idle = st.get("autostop_mins"), st.get("idle_seconds")
        if mins is None or idle is None or st.get("autostop_paused") or (st.get("running_calls") or []):
            return None
        return max(0.0, float(mins) * 60 - float(idle))


async def look(name: str) -> ClusterView:
    """The cluster's state, handle, ``/status`` (when its daemon answers within 10 s) and price."""
    state = await asyncio.to_thread(load_state, name)
    if state is None:
        return ClusterView(name, None, None, None, None, None)
    handle = await asyncio.to_thread(_handle, name, state)
    status, error = None, None
    if handle is not None:
        key = (handle.endpoint, handle.token, handle.tls_fingerprint, handle.unix_socket)
        client = _CLIENTS.get(key)
        if client is None:  # one per daemon: its connections are pooled
            client = _CLIENTS[key] = DaemonClient(handle.endpoint, token=handle.token,
                                                  tls_fingerprint=handle.tls_fingerprint,
                                                  unix_socket=handle.unix_socket)
        try:
            status = await asyncio.wait_for(client.daemon_status(), STATUS_TIMEOUT_S)
        except (TetherError, OSError, TimeoutError) as exc:
            error = str(exc)
    price = await asyncio.to_thread(price_per_hour, state, handle)
    return ClusterView(name, state_backend(state), state, handle, status, price, error)


@dataclass
class Sample:
    """Per env: (CPU percent, resident bytes, GPU memory bytes) at time ``t``."""

    t: float
    workers: dict[str, tuple[float | None, int | None, int | None]] = field(default_factory=dict)


class Sampler:
    """Per-worker usage samples of each cluster over the last hour, in this server's memory."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: dict[str, deque[Sample]] = {}

    async def sample(self, view: ClusterView) -> Sample | None:
        """Take one sample of ``view``'s workers (from its ``/status``, or ``/proc`` for a local daemon), keep it,
        and return it; None when the daemon did not answer."""
        if view.status is None:
            return None
        workers = [w for w in view.status.get("workers", []) if isinstance(w, dict) and w.get("env")]
        missing = [int(w["pid"]) for w in workers if w.get("pid") and w.get("cpu_percent") is None]
        measured = await asyncio.to_thread(proc_usage, missing) if view.local and missing else {}
        now = time.time()
        got = Sample(now)
        for w in workers:
            cpu, rss = measured.get(int(w.get("pid") or 0), (None, None))
            got.workers[str(w["env"])] = (w.get("cpu_percent", cpu), w.get("rss_bytes", rss),
                                          w.get("gpu_memory_bytes"))
        kept = self.samples.setdefault(view.name, deque())
        kept.append(got)
        while kept and kept[0].t < now - self.window_s:
            kept.popleft()
        return got

    def history(self, cluster: str) -> list[Sample]:
        now = time.time()
        return [s for s in self.samples.get(cluster, ()) if s.t >= now - self.window_s]

    async def run(self, every_s: float) -> None:
        """Sample every cluster this server knows every ``every_s`` seconds, until cancelled."""
        while True:
            for name in await asyncio.to_thread(known_clusters):
                with contextlib.suppress(TetherError, OSError, ValueError):
                    await self.sample(await look(name))
            await asyncio.sleep(every_s)
