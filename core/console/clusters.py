"""The console's cluster pages: the clusters a user's services run on, and one cluster's status, nodes, price,
autostop countdown, services and envs, and per-worker CPU and memory (now and over the last hour).

A user sees a cluster when a service it may read is saved onto it (the trusted local user of ``tether console``
sees every cluster this machine knows); on its page, only the envs and workers of services it may read.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tether.console.auth import Session
from tether.console.charts import line_chart
from tether.console.html import e, link, page, service_path, table
from tether.console.machines import ClusterView, Sampler, known_clusters, look
from tether.errors import AuthError
from tether.registry.names import parse_ref
from tether.registry.store import Store

__all__ = ["ClusterPages", "ServiceOn", "cluster_path", "fmt_bytes", "fmt_money", "services_on_clusters"]


def cluster_path(name: str) -> str:
    return f"/console/c/{quote(name, safe='')}"


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_money(x: float | None, digits: int = 4) -> str:
    return "unknown" if x is None else f"${x:.{digits}f}"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h {s % 3600 // 60}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


@dataclass
class ServiceOn:
    """A readable service saved onto a cluster: its registry name, the name its daemon knows, its env."""

    full: str
    deployed_as: str
    env: str


def services_on_clusters(store: Store, principal: str | None) -> dict[str, list[ServiceOn]]:
    """Cluster name → the services ``principal`` may read whose latest saved config deploys onto it."""
    out: dict[str, list[ServiceOn]] = defaultdict(list)
    for entry in store.list(None, principal=principal):
        config = store.get(parse_ref(entry.name, allow_selector=False), principal=principal).config
        cluster = (config.get("cluster") or {}).get("name")
        if not isinstance(cluster, str):
            continue
        svc = config.get("service") or {}
        env = (svc.get("env") or {}).get("name") or (config.get("env") or {}).get("name") or "default"
        out[cluster].append(ServiceOn(entry.name, str(svc.get("name") or entry.name.split("/", 1)[1]), str(env)))
    return dict(out)


class ClusterPages:
    """``/console/clusters`` and ``/console/c/{cluster}``; samples each page view into ``sampler``."""

    def __init__(self, store: Store, sampler: Sampler) -> None:
        self.store = store
        self.sampler = sampler

    async def _visible(self, s: Session) -> tuple[dict[str, list[ServiceOn]], list[str]]:
        on = await asyncio.to_thread(services_on_clusters, self.store, s.principal)
        names = set(on)
        if s.principal is None:  # the trusted local user: every cluster of this machine
            names |= set(await asyncio.to_thread(known_clusters))
        return on, sorted(names)

    async def clusters(self, request: web.Request, s: Session) -> web.Response:
        on, names = await self._visible(s)
        views = await asyncio.gather(*(look(n) for n in names))
        rows = []
        for v in views:
            left = v.autostop_left()
            rows.append([link(cluster_path(v.name), v.name), e(v.backend or "—"), _health(v), e(len(v.nodes())),
                         e(fmt_money(v.price)), _autostop(v, left), e(len(on.get(v.name, [])))])
        body = ('<h1>Clusters</h1><p class="muted">the clusters your services are saved onto, as this server sees '
                'them</p>' + table(["cluster", "backend", "status", "nodes", "price / h (per node)", "autostop",
                                    "your services"], rows, empty="no cluster runs a service you can read"))
        return page("Clusters", body, s)

    async def cluster(self, request: web.Request, s: Session) -> web.Response:
        name = request.match_info["cluster"]
        on, names = await self._visible(s)
        if name not in names:
            raise AuthError(f"no service you may read runs on cluster {name!r}",
                            hint="a cluster shows to those who may read a service saved onto it")
        v = await look(name)
        mine = on.get(name, [])
        trusted = s.principal is None
        deployed = {x.deployed_as for x in mine}
        rows_daemon = [r for r in (v.status or {}).get("services", []) if trusted or r.get("name") in deployed]
        envs = {str(r.get("env")) for r in rows_daemon} | {x.env for x in mine}
        await self.sampler.sample(v)
        workers = [w for w in (v.status or {}).get("workers", []) if trusted or w.get("env") in envs]
        left = v.autostop_left()
        nodes = [[e(n.get("index")), e(n.get("host")), e(n.get("instance_type") or "—"),
                  e(n.get("cpus", "—")), e(fmt_bytes(n.get("memory_total")))] for n in v.nodes()]
        latest = self.sampler.history(name)[-1:] or []
        now = latest[0].workers if latest else {}
        wrows = [[e(w.get("env")), e(w.get("pid")), e(w.get("state")), e(w.get("alive")),
                  e(_pct(now.get(str(w.get("env")), (None,))[0])),
                  e(fmt_bytes(now.get(str(w.get("env")), (None, None))[1])),
                  e(fmt_bytes(w.get("gpu_memory_bytes")))] for w in workers]
        srows = [[link(service_path(x.full), x.full), e(x.deployed_as), e(x.env),
                  "yes" if any(r.get("name") == x.deployed_as for r in rows_daemon) else
                  '<span class="muted">not deployed now</span>'] for x in mine]
        if trusted:
            known = {x.deployed_as for x in mine}
            srows += [[e(r.get("name")), e(r.get("name")), e(r.get("env")), "yes"] for r in rows_daemon
                      if r.get("name") not in known]
        facts = [("status", _health(v)), ("backend", e(v.backend or "—")),
                 ("price per hour", e(f"{fmt_money(v.price)} per node × {len(v.nodes())} node(s)")),
                 ("autostop", _autostop(v, left)),
                 ("daemon", e(f"version {v.status.get('version')}, up {_duration(v.status.get('uptime') or 0)}, "
                              f"{len(v.status.get('running_calls') or [])} running calls") if v.status else
                  e(v.error or "not reachable from this server"))]
        body = (f'<h1 id="cluster-name">{e(name)}</h1><table id="cluster-facts"><tbody>'
                + "".join(f"<tr><th>{e(k)}</th><td>{val}</td></tr>" for k, val in facts) + "</tbody></table>"
                '<h2 id="nodes">Nodes</h2>' + table(["#", "host", "instance type", "cpus", "memory"], nodes)
                + '<h2 id="services">Services and envs</h2>'
                + table(["service", "deployed as", "env", "live"], srows, empty="none you can read")
                + '<h2 id="workers">Workers</h2>'
                + table(["env", "pid", "state", "alive", "cpu", "memory", "gpu memory"], wrows,
                        empty="no worker of your envs runs now")
                + self._charts(name, {str(w.get("env")) for w in workers}))
        return page(f"cluster {name}", body, s)

    def _charts(self, name: str, envs: set[str]) -> str:
        history = self.sampler.history(name)
        if not history:
            return ""
        cpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
        mem: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for sample in history:
            for env, (c, r, _g) in sample.workers.items():
                if env in envs:
                    if c is not None:
                        cpu[env].append((sample.t, float(c)))
                    if r is not None:
                        mem[env].append((sample.t, r / 2**20))
        end = history[-1].t
        start = max(end - self.sampler.window_s, history[0].t)  # the hour, or as much of it as was sampled
        return (f'<h3>The last hour ({len(history)} samples kept by this server)</h3><div class="grid">'
                f'<div class="card" id="chart-cpu">{line_chart(cpu, title="CPU per worker", unit="%", start=start, end=end)}</div>'
                f'<div class="card" id="chart-memory">{line_chart(mem, title="memory per worker", unit=" MiB", start=start, end=end)}'
                '</div></div>')


def _pct(x: Any) -> str:
    return f"{x:.1f}%" if isinstance(x, (int, float)) else "—"


def _health(v: ClusterView) -> str:
    css = "ok" if v.health == "up" else "bad"
    return f'<span class="health {css}">{e(v.health)}</span>'


def _autostop(v: ClusterView, left: float | None) -> str:
    st = v.status or {}
    if not st:
        return '<span class="muted">unknown</span>'
    if st.get("autostop_mins") is None:
        return "never"
    if st.get("autostop_paused"):
        return "paused"
    if left is None:
        return f"after {st['autostop_mins']:g} idle min (busy now)"
    return (f'stops in <span class="countdown" data-left="{left:.0f}">{e(_duration(left))}</span> '
            f'<span class="muted">({st["autostop_mins"]:g} idle min)</span>')
