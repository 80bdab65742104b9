"""A lineage graph as inline SVG: artifacts and calls in columns by distance from the root, edges between them."""

from __future__ import annotations

from collections import deque
from html import escape
from urllib.parse import quote, urlencode

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
                       f"{service_path(c.service)}/calls/{quote(c.call_id, safe='')}")
        for i in c.inputs:
            edges += [(k, key) for k, a in arts.items() if _matches(a, i)]
        for o in c.outputs:
            edges += [(key, k) for k, a in arts.items() if _matches(a, o)]
    edges = list(dict.fromkeys(edges))
    if not labels:
        return '<p class="muted">no lineage recorded</p>'
    # columns: walk the edges both ways from the root, one column per hop along the flow (a → b: b one right)
    links: dict[str, list[tuple[str, int]]] = {}
    for a, b in edges:
        links.setdefault(a, []).append((b, 1))
        links.setdefault(b, []).append((a, -1))
    arts_by_text = {str(a): k for k, a in arts.items()}
    roots = [arts_by_text[graph.root]] if graph.direction == "upstream" and graph.root in arts_by_text else \
        [_call_key(c) for c in graph.calls if c.ref == graph.root or c.service == graph.root]
    column: dict[str, int] = {}
    for root in [*roots, *labels]:  # every part of the graph gets placed, the root's part first
        if root in column:
            continue
        column[root] = max(column.values(), default=-1) + 1 if column else 0
        queue = deque([root])
        while queue:
            key = queue.popleft()
            for other, step in links.get(key, []):
                if other not in column:
                    column[other] = column[key] + step
                    queue.append(other)
    low = min(column.values())
    columns: dict[int, list[str]] = {}
    for key, col in column.items():
        columns.setdefault(col - low, []).append(key)
    depth = max(columns)
    pos = {}
    for col, keys in columns.items():
        for row, key in enumerate(sorted(keys)):
            pos[key] = (10 + col * (W + GAP_X), 10 + row * (H + GAP_Y))
    width = 20 + (depth + 1) * (W + GAP_X)
    height = 20 + max(len(k) for k in columns.values()) * (H + GAP_Y)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'id="lineage-graph">',
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
