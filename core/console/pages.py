"""The console's pages over the registry store, each read as the logged-in principal (the store checks access)."""

from __future__ import annotations

import asyncio
import difflib
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tether.console.auth import Session
from tether.console.charts import percentile, stacked_bars
from tether.console.graph import graph_svg
from tether.console.html import e, form, link, page, service_path, table, when
from tether.console.usage import cluster_price, team_section, teams_of_callers
from tether.home import tether_home
from tether.registry.models import Artifact, CallRecord, Version, level_at_least
from tether.registry.names import Ref, parse_ref
from tether.registry.store import Store

__all__ = ["Pages", "snapshot_dir"]


def _ref(request: web.Request) -> Ref:
    return parse_ref(f"{request.match_info['namespace']}/{request.match_info['name']}", allow_selector=False)


def snapshot_dir(v: Version) -> Path | None:
    """The version's code snapshot folder when it is on this machine, under this user's ``$TETHER_HOME/code``."""
    raw = ((v.config.get("service") or {}).get("metadata") or {}).get("snapshot")
    if not isinstance(raw, str):
        return None
    root = (tether_home() / "code").resolve()
    path = Path(raw).resolve()
    return path if path.is_dir() and path.is_relative_to(root) else None


def _diff(a: Version, b: Version) -> str:
    left = json.dumps(a.config, indent=2, sort_keys=True).splitlines()
    right = json.dumps(b.config, indent=2, sort_keys=True).splitlines()
    lines = []
    for line in difflib.unified_diff(left, right, f"version {a.version}", f"version {b.version}", lineterm="", n=3):
        css = "add" if line.startswith("+") else "del" if line.startswith("-") else "hunk" if line.startswith("@") else ""
        lines.append(f'<span class="{css}">{e(line)}</span>')
    body = "\n".join(lines) or "(the two configs are the same)"
    return f'<pre class="diff" id="config-diff">{body}</pre>'


class Pages:
    """GET pages and POST actions; ``run`` calls the store off the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # ------------------------------------------------------------------ services
    async def services(self, request: web.Request, s: Session) -> web.Response:
        q = request.query.get("q", "").strip().lower()
        only = request.query.get("namespace") or None
        entries = await self.run(self.store.list, only, principal=s.principal)
        shown = [x for x in entries if q in x.name.lower()]
        groups: dict[str, list[Any]] = defaultdict(list)
        for x in shown:
            groups[x.name.split("/", 1)[0]].append(x)
        namespaces = sorted({x.name.split("/", 1)[0] for x in entries})
        chips = " ".join(link("/console/services", ns, namespace=ns) for ns in namespaces)
        body = [f'<h1>Services</h1><form method="get" action="/console/services">'
                f'<input id="search" name="q" value="{e(q)}" placeholder="search by name" autocomplete="off"> '
                f'<button class="quiet" type="submit">Search</button></form>'
                f'<p class="muted">namespaces: {chips or "none"}'
                + (f' · {link("/console/services", "all")}' if only else "") + "</p>"]
        for ns, items in sorted(groups.items()):
            body.append(f'<h2>{e(ns)} <span class="muted">owner: {e(ns)}</span></h2>')
            rows = [[link(service_path(x.name), x.name), e(x.kind), e(x.latest),
                     "".join(f'<span class="tag">{e(t)}→{e(v)}</span>' for t, v in sorted(x.tags.items())),
                     e(x.updated_by), e(when(x.updated_at))] for x in items]
            body.append(table(["name", "kind", "latest", "tags", "saved by", "saved at"], rows,
                              row_names=[x.name for x in items]))
        if not shown:
            body.append('<p class="muted" id="no-services">No services you can read'
                        + (f" match {e(q)!r}" if q else "") + ".</p>")
        return page("Services", "".join(body), s)

    async def service(self, request: web.Request, s: Session) -> web.Response:
        ref = _ref(request)
        versions = await self.run(self.store.history, ref, principal=s.principal)
        level = await self.run(self.store.access_level, ref, principal=s.principal)
        grants = await self.run(self.store.grants, ref, principal=s.principal)
        calls = await self.run(self.store.calls, ref, principal=s.principal, limit=5000)
        base = service_path(ref.full)
        body = [f'<h1 id="service-name">{e(ref.full)}</h1><p class="muted">your access: <b id="access-level">'
                f'{e(level)}</b> · {len(versions)} versions · {len(calls)} recorded calls</p>'
                '<nav class="tabs"><a href="#versions">Versions</a><a href="#access">Access</a>'
                '<a href="#usage">Usage</a><a href="#lineage">Lineage</a></nav>']
        body.append(self._versions(ref, versions, level, s, request))
        body.append(self._access(base, grants, level, s))
        cluster = (versions[-1].config.get("cluster") or {}).get("name") if versions else None
        cluster = cluster if isinstance(cluster, str) else None
        teams = await self.run(teams_of_callers, self.store, [c.caller or "unknown" for c in calls])
        price = await self.run(cluster_price, cluster)
        body.append(self._usage(calls, team_section(calls, teams, price, cluster) if calls else ""))
        body.append(await self._lineage_section(ref, calls, s))
        return page(ref.full, "".join(body), s, flash=request.query.get("done"))

    def _versions(self, ref: Ref, versions: list[Version], level: str | None, s: Session,
                  request: web.Request) -> str:
        base = service_path(ref.full)
        can_roll = level_at_least(level, "write")
        rows = []
        for v in reversed(versions):
            roll = form(f"{base}/rollback", s, f'<input type="hidden" name="version" value="{v.version}">',
                        "Roll back", css="quiet", confirm=f"Make version {v.version} the latest again?") \
                if can_roll and v.version != versions[-1].version else ""
            code = link(f"{base}/code/{v.version}", (v.code_hash or "")[:12] or "files") if snapshot_dir(v) else \
                e((v.code_hash or "")[:12])
            rows.append([e(v.version), "".join(f'<span class="tag">{e(t)}</span>' for t in v.tags), e(v.saved_by),
                         e(when(v.saved_at)), code, e(v.import_path),
                         e(f"copy of {v.copied_from}" if v.copied_from else ""), roll])
        out = ['<h2 id="versions">Versions</h2>',
               table(["version", "tags", "saved by", "saved at", "code", "import path", "note", ""], rows)]
        numbers = [v.version for v in versions]
        if len(numbers) >= 2:
            try:
                a = int(request.query.get("a", numbers[-2]))
                b = int(request.query.get("b", numbers[-1]))
            except ValueError:
                a, b = numbers[-2], numbers[-1]
            by = {v.version: v for v in versions}
            opts = lambda sel: "".join(  # noqa: E731
                f'<option value="{n}"{" selected" if n == sel else ""}>{n}</option>' for n in numbers)
            out.append(f'<h3>Config diff</h3><form method="get" action="{e(base)}#versions">'
                       f'<select name="a" id="diff-a">{opts(a)}</select> → <select name="b" id="diff-b">{opts(b)}'
                       '</select> <button class="quiet" type="submit" id="diff-go">Compare</button></form>')
            if a in by and b in by:
                out.append(_diff(by[a], by[b]))
        return "".join(out)

    def _access(self, base: str, grants: list[Any], level: str | None, s: Session) -> str:
        owner = level_at_least(level, "owner")
        rows = []
        for g in grants:
            target = g.name if g.name.endswith("/*") else "this service"
            revoke = form(f"{base}/revoke", s, f'<input type="hidden" name="principal" value="{e(g.principal)}">'
                          f'<input type="hidden" name="scope" value="{"namespace" if g.name.endswith("/*") else ""}">',
                          "Revoke", css="danger", confirm=f"Revoke {g.principal}'s access?") if owner else ""
            rows.append([f'<span class="grantee">{e(g.principal)}</span>', e(g.access_level), e(target),
                         e(g.granted_by), e(when(g.granted_at)), revoke])
        out = ['<h2 id="access">Access</h2>', table(["principal", "level", "on", "granted by", "at", ""], rows,
                                                    empty="no grants: only the namespace's owners")]
        if owner:
            out.append('<h3>Grant access</h3>' + form(
                f"{base}/grant", s,
                '<input name="principal" id="grant-principal" placeholder="user or team" required> '
                '<select name="level" id="grant-level"><option>read</option><option>write</option>'
                '<option>owner</option></select> ', "Grant", inline=False))
        return "".join(out)

    def _usage(self, calls: list[CallRecord], by_team: str = "") -> str:
        if not calls:
            return '<h2 id="usage">Usage</h2><p class="muted">no recorded calls</p>'
        days = sorted({c.started_at.strftime("%Y-%m-%d") for c in calls})
        index = {d: i for i, d in enumerate(days)}
        by_caller: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
        by_version: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
        durations: dict[str, list[float]] = defaultdict(list)
        for c in calls:
            i = index[c.started_at.strftime("%Y-%m-%d")]
            by_caller[c.caller or "unknown"][i] += 1
            by_version[f"v{c.version}"][i] += 1
            durations[f"v{c.version}"].append(c.duration_s)
        rows = [[e(v), e(len(d)), *(e(f"{percentile(d, q):.3f}") for q in (50, 90, 99)), e(f"{max(d):.3f}"),
                 e(sum(1 for c in calls if f"v{c.version}" == v and c.outcome != "ok"))]
                for v, d in sorted(durations.items())]
        return ('<h2 id="usage">Usage</h2><div class="grid">'
                f'<div class="card" id="chart-callers">{stacked_bars(days, by_caller, title="calls per day by caller")}</div>'
                f'<div class="card" id="chart-versions">{stacked_bars(days, by_version, title="calls per day by version")}'
                '</div></div><h3>Duration (seconds)</h3>'
                + table(["version", "calls", "p50", "p90", "p99", "max", "errors"], rows) + by_team)

    async def _lineage_section(self, ref: Ref, calls: list[CallRecord], s: Session) -> str:
        graph = await self.run(self.store.dependents, ref, principal=s.principal, depth=10)
        base = service_path(ref.full)
        rows = [[link(f"{base}/calls/{quote(c.call_id, safe='')}", c.call_id[:16]), e(f"v{c.version}"), e(c.caller),
                 e(when(c.started_at)), e(c.outcome)] for c in calls[:10]]
        hidden = f'<p class="muted">{graph.hidden} calls of services you may not read are left out.</p>' \
            if graph.hidden else ""
        return ('<h2 id="lineage">Lineage</h2><p class="muted">what its calls wrote, and who read it since:</p>'
                f'<div class="graph">{graph_svg(graph)}</div>{hidden}<h3>Latest calls</h3>'
                + table(["call", "version", "caller", "started", "outcome"], rows))

    async def code(self, request: web.Request, s: Session) -> web.Response:
        ref = _ref(request)
        v = await self.run(self.store.get, Ref(ref.namespace, ref.name, version=int(request.match_info["version"])),
                           principal=s.principal)
        root = snapshot_dir(v)
        if root is None:
            return page("Code", '<div class="error">this version\'s code snapshot is not on this server</div>', s,
                        status=404)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        wanted = request.query.get("file")
        shown = ""
        if wanted in files:
            text = (root / wanted).read_text(errors="replace")[:200_000]
            shown = f'<h3>{e(wanted)}</h3><pre id="code-file">{e(text)}</pre>'
        base = f"{service_path(ref.full)}/code/{v.version}"
        items = "".join(f"<li>{link(base, f, file=f)}</li>" for f in files)
        return page(f"{ref.full}@{v.version} code", f'<h1>{e(ref.full)}@{v.version}: code snapshot</h1>'
                    f'<p class="muted">{len(files)} files · hash {e(v.code_hash)}</p><ul id="code-files">{items}</ul>'
                    + shown, s)

    # ------------------------------------------------------------------ actions (POST, CSRF checked by the caller)
    async def rollback(self, request: web.Request, s: Session, data: Any) -> str:
        v = await self.run(self.store.rollback, _ref(request), int(data.get("version", "0")), by=s.label,
                           principal=s.principal)
        return f"rolled back: version {v.version} copies version {v.copied_from}"

    async def grant(self, request: web.Request, s: Session, data: Any) -> str:
        who, level = str(data.get("principal", "")).strip(), str(data.get("level", "read"))
        g = await self.run(self.store.share, _ref(request), who, level, by=s.label, principal=s.principal)
        return f"granted {g.access_level} to {g.principal}"

    async def revoke(self, request: web.Request, s: Session, data: Any) -> str:
        ref = _ref(request)
        if data.get("scope") == "namespace":
            ref = Ref(ref.namespace, "*")
        who = str(data.get("principal", ""))
        n = await self.run(self.store.unshare, ref, who, by=s.label, principal=s.principal)
        return f"revoked {who}'s access" if n else f"{who} had no grant"

    # ------------------------------------------------------------------ calls and lineage
    async def calls(self, request: web.Request, s: Session) -> web.Response:
        records = await self.run(self.store.recent_calls, principal=s.principal, limit=200)
        rows = [[link(f"{service_path(c.name)}/calls/{quote(c.call_id, safe='')}", c.call_id[:16]), link(service_path(c.name), c.name),
                 e(f"v{c.version}"), e(c.caller), e(c.run_id), e(f"{c.duration_s:.3f}s"),
                 f'<span class="{"ok" if c.outcome == "ok" else "bad"}">{e(c.outcome)}</span>', e(when(c.started_at))]
                for c in records]
        return page("Calls", '<h1>Recent calls</h1>' + table(
            ["call", "service", "version", "caller", "run", "duration", "outcome", "started"], rows), s)

    async def lineage(self, request: web.Request, s: Session) -> web.Response:
        uri = request.query.get("uri", "").strip()
        version = request.query.get("version") or None
        search = (f'<form method="get" action="/console/lineage"><input name="uri" id="lineage-uri" size="50" '
                  f'value="{e(uri)}" placeholder="s3://bucket/path"> <input name="version" size="12" '
                  f'value="{e(version)}" placeholder="version"> <button type="submit">Trace</button></form>')
        if not uri:
            return page("Lineage", f"<h1>Lineage</h1><p>What produced an artifact, with which code, from which "
                        f"inputs.</p>{search}", s)
        graph = await self.run(self.store.lineage, Artifact(uri=uri, version=version), principal=s.principal)
        rows = [[link(f"{service_path(c.service)}/calls/{quote(c.call_id, safe='')}", c.ref), e((c.code_hash or "")[:12]),
                 e(c.cluster), e(c.caller), e(c.run_id), "<br>".join(e(a) for a in c.inputs),
                 "<br>".join(e(a) for a in c.outputs)] for c in graph.calls]
        hidden = f'<p class="muted" id="hidden">{graph.hidden} calls you may not read are left out.</p>' \
            if graph.hidden else ""
        return page("Lineage", f'<h1>Lineage of <code>{e(graph.root)}</code></h1>{search}'
                    f'<div class="graph">{graph_svg(graph)}</div>{hidden}<h3>Calls, newest first</h3>'
                    + table(["call", "code", "cluster", "caller", "run", "read", "wrote"], rows,
                            empty="nothing recorded produced it"), s)
