"""Inline SVG charts for the console: stacked bars per day, lines over time, duration percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["COLORS", "line_chart", "percentile", "stacked_bars"]

COLORS = ["#3559e0", "#f79009", "#12b76a", "#ee46bc", "#7a5af8", "#06aed4", "#f04438", "#667085"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` (0..100) percentile of ``values`` by linear interpolation; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stacked_bars(days: Sequence[str], series: dict[str, Sequence[int]], *, title: str, width: int = 540,
                 height: int = 180) -> str:
    """An SVG of one stacked bar per day (``series``: label → count per day), with a legend and a y scale."""
    left, bottom, top = 34, 28, 22
    inner_w, inner_h = width - left - 10, height - bottom - top
    totals = [sum(s[i] for s in series.values()) for i in range(len(days))]
    peak = max(totals, default=0) or 1
    bar_w = max(4.0, min(40.0, inner_w / max(len(days), 1) * 0.7))
    step = inner_w / max(len(days), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16 * len(series)}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="14" font-weight="600">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" stroke="#d0d5dd"/>',
             f'<text x="4" y="{top + 8}">{peak}</text><text x="4" y="{top + inner_h}">0</text>']
    for i, day in enumerate(days):
        x = left + i * step + (step - bar_w) / 2
        y: float = top + inner_h
        for n, (label, counts) in enumerate(series.items()):
            h = counts[i] / peak * inner_h
            if h > 0:
                y -= h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                             f'fill="{COLORS[n % len(COLORS)]}"><title>{escape(label)} {escape(day)}: '
                             f'{counts[i]}</title></rect>')
        if len(days) <= 14 or i % max(1, len(days) // 7) == 0:
            parts.append(f'<text x="{x:.1f}" y="{top + inner_h + 14}">{escape(day[5:])}</text>')
    for n, label in enumerate(series):
        y = height + 16 * n
        parts.append(f'<rect x="{left}" y="{y - 9}" width="10" height="10" fill="{COLORS[n % len(COLORS)]}"/>'
                     f'<text x="{left + 16}" y="{y}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(series: dict[str, Sequence[tuple[float, float]]], *, title: str, unit: str, start: float, end: float,
               width: int = 540, height: int = 160) -> str:
    """An SVG of one line (and a dot per sample) per label over ``start``..``end`` (epoch seconds; ``series``:
    label → (t, value)), with a y scale in ``unit``, time-before-``end`` ticks and a legend."""
    left, bottom, top, right = 66, 22, 22, 14
    inner_w, inner_h = width - left - right, height - bottom - top
    peak = max((v for pts in series.values() for _, v in pts), default=0.0) or 1.0
    scale = peak * 1.15  # headroom: the top line stays clear of the title
    span = end - start if end - start > 1e-6 else 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        return left + (t - start) / span * inner_w, top + inner_h - v / scale * inner_h

    legend_top = height + 12
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{legend_top + 16 * len(series)}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="14" font-weight="600">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" stroke="#d0d5dd"/>',
             f'<text x="2" y="{xy(start, peak)[1] + 4:.1f}">{peak:.4g}{escape(unit)}</text>'
             f'<text x="2" y="{top + inner_h}">0</text>']
    unit_s, name = (60.0, "m") if span >= 120 else (1.0, "s")
    step = next((n for n in (1, 2, 5, 10, 15, 30, 60) if span / unit_s / n <= 6), 60) * unit_s
    for k in range(int(span // step) + 1):
        x = left + inner_w - k * step / span * inner_w
        label = "now" if k == 0 else f"-{k * step / unit_s:g}{name}"
        parts.append(f'<text x="{x:.1f}" y="{top + inner_h + 14}" text-anchor="middle">{label}</text>')
    for n, (label, pts) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        coords = [xy(t, v) for t, v in pts]
        if len(coords) > 1:
            parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + f'"><title>{escape(label)}</title></polyline>')
        parts.extend(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in coords)
        y0 = legend_top + 16 * n
        parts.append(f'<rect x="{left}" y="{y0 - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + 16}" y="{y0}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
