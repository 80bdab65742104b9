"""A lineage graph as inline SVG: artifacts and calls in columns by distance from the root, edges between them."""

from __future__ import annotations

from collections import deque
from html import escape
from urllib.parse import urlencode

from tether.console.html import service_path
from tether.registry.models import Artifact, LineageCall, LineageGraph

__all__ = ["graph_svg"]

W, H, GAP_X, GAP_Y = 176, 46, 34, 18


def _call_key(c: LineageCall) -> str:
    return f"call:{c.service}:{c.call_id}"


def _art_key(a: Artifact) -> str:
    return f"art:{a.uri}@{a.version or ''}"


def _matches(a: Artifact, b: Artifact) -> bool:
    return a.uri == b.uri and (a.version == b.version or not a.version or not b.version)


def graph_svg(graph: LineageGraph) -> str:
    """The graph laid out left (sources) to right (what came of them)."""
    edges: list[tuple[str, str]] = []  # (from, to) in data-flow direction
    labels: dict[str, tuple[str, str, str]] = {}  # key -> (title, subtitle, href)
    arts = {_art_key(a): a for a in graph.artifacts}
    for a in graph.artifacts:
        labels[_art_key(a)] = (a.uri, f"version {a.version}" if a.version else "no version",
                               "/console/lineage?" + urlencode({"uri": a.uri, **({"version": a.version} if a.version else {})}))
    for c in graph.calls:
        key = _call_key(c)
        labels[key] = (c.ref, f"{c.cluster or '?'} · {c.caller} · {c.duration_s:.2f}s",
                       f"{service_path(c.service)}/calls/{c.call_id}")
        for i in c.inputs:
            edges += [(k, key) for k, a in arts.items() if _matches(a, i)]
        for o in c.outputs:
            edges += [(key, k) for k, a in arts.items() if _matches(a, o)]
    edges = list(dict.fromkeys(edges))
    if not labels:
        return '<p class="muted">no lineage recorded</p>'
    # columns: distance from the root along the edges, against the flow for upstream, with it for downstream
    upstream = graph.direction == "upstream"
    nbrs: dict[str, list[str]] = {}
    for a, b in edges:
        nbrs.setdefault(b if upstream else a, []).append(a if upstream else b)
    roots = [k for k in labels if k.startswith("art:") and str(arts[k]) == graph.root] if upstream else \
        [_call_key(c) for c in graph.calls if c.ref == graph.root or c.service == graph.root]
    roots = roots or [next(iter(labels))]
    level: dict[str, int] = {}
    queue = deque((r, 0) for r in roots)
    while queue:
        key, d = queue.popleft()
        if key in level:
            continue
        level[key] = d
        queue.extend((n, d + 1) for n in nbrs.get(key, []))
    for key in labels:
        level.setdefault(key, max(level.values(), default=0) + 1)
    depth = max(level.values())
    columns: dict[int, list[str]] = {}
    for key, d in level.items():
        columns.setdefault(depth - d if upstream else d, []).append(key)
    pos = {}
    for col, keys in columns.items():
        for row, key in enumerate(sorted(keys)):
            pos[key] = (10 + col * (W + GAP_X), 10 + row * (H + GAP_Y))
    width = 20 + (depth + 1) * (W + GAP_X)
    height = 20 + max(len(k) for k in columns.values()) * (H + GAP_Y)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" id="lineage-graph">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#98a2b3"/></marker></defs>']
    for a, b in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        out.append(f'<line x1="{x1 + W}" y1="{y1 + H / 2}" x2="{x2}" y2="{y2 + H / 2}" stroke="#98a2b3" '
                   'stroke-width="1.5" marker-end="url(#arrow)"/>')
    for key, (x, y) in pos.items():
        title, sub, href = labels[key]
        is_call = key.startswith("call:")
        fill, stroke, rx = ("#eef4ff", "#3559e0", 4) if is_call else ("#fffaeb", "#f79009", 18)
        out.append(f'<a href="{escape(href)}"><g class="{"node-call" if is_call else "node-artifact"}">'
                   f'<rect x="{x}" y="{y}" width="{W}" height="{H}" rx="{rx}" fill="{fill}" stroke="{stroke}"/>'
                   f'<text x="{x + 10}" y="{y + 19}" font-weight="600">{escape(title[:27])}</text>'
                   f'<text x="{x + 10}" y="{y + 35}">{escape(sub[:30])}</text><title>{escape(title)}</title></g></a>')
    out.append("</svg>")
    return "".join(out)
