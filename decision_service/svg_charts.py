"""Server-rendered inline SVG charts for the dashboard (no JavaScript, no build step): a time
series (line, optional interval band, or bars) and an estimates-with-intervals plot. Every
text is escaped; the output is markup to embed as is."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

__all__ = ["Estimate", "Series", "interval_plot", "time_chart"]

W, H = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 22, 28


@dataclass(frozen=True)
class Series:
    """Points of a time chart: (time, value or None, interval low, interval high)."""

    title: str
    points: Sequence[tuple[datetime, float | None, float | None, float | None]]
    kind: str = "line"  # "line" or "bars"
    unit: str = ""


@dataclass(frozen=True)
class Estimate:
    label: str
    value: float
    low: float
    high: float


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def _range(values: Sequence[float], zero: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if zero:
        lo = min(lo, 0.0)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def time_chart(series: Series, since: datetime, until: datetime) -> str:
    """An SVG chart of `series` over [since, until]; empty points render "no data"."""
    title = escape(series.title)
    pts = [(t, v, lo, hi) for t, v, lo, hi in series.points if v is not None and math.isfinite(v)]
    head = (
        f'<svg class="chart" data-title="{title}" data-points="{len(pts)}" viewBox="0 0 {W} {H}" '
        f'width="{W}" height="{H}" role="img" aria-label="{title}">'
        f'<text x="{LEFT}" y="14" class="chart-title">{title}</text>'
    )
    if not pts:
        return head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text></svg>'
    t0, t1 = since.timestamp(), max(until.timestamp(), since.timestamp() + 1)
    bounds = [v for _, v, _, _ in pts] + [
        x for _, _, lo, hi in pts for x in (lo, hi) if x is not None and math.isfinite(x)
    ]
    y0, y1 = _range(bounds, zero=series.kind == "bars")

    def x(t: datetime) -> float:
        return LEFT + (W - LEFT - RIGHT) * (t.timestamp() - t0) / (t1 - t0)

    def y(v: float) -> float:
        return TOP + (H - TOP - BOTTOM) * (1 - (v - y0) / (y1 - y0))

    parts = [head]
    for v in (y0, (y0 + y1) / 2, y1):
        parts.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(_fmt(v))}{escape(series.unit)}</text>"
        )
    parts.append(
        f'<text x="{LEFT}" y="{H - 8}" class="tick">{escape(since.strftime("%m-%d %H:%M"))}</text>'
        f'<text x="{W - RIGHT}" y="{H - 8}" text-anchor="end" class="tick">'
        f"{escape(until.strftime('%m-%d %H:%M'))}</text>"
    )
    if series.kind == "bars":
        width = max(1.5, (W - LEFT - RIGHT) / max(len(pts), 1) * 0.8)
        for t, v, _, _ in pts:
            parts.append(
                f'<rect class="bar" x="{x(t):.1f}" y="{y(v):.1f}" width="{width:.1f}" '
                f'height="{max(y(y0) - y(v), 0):.1f}"><title>{escape(_fmt(v))}</title></rect>'
            )
    else:
        band = [(t, lo, hi) for t, _, lo, hi in pts if lo is not None and hi is not None]
        if band:
            upper = " ".join(f"{x(t):.1f},{y(hi):.1f}" for t, _, hi in band)
            lower = " ".join(f"{x(t):.1f},{y(lo):.1f}" for t, lo, _ in reversed(band))
            parts.append(f'<polygon class="band" points="{upper} {lower}"/>')
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v, _, _ in pts)
        parts.append(f'<polyline class="line" points="{line}"/>')
        for t, v, _, _ in pts:
            parts.append(
                f'<circle class="dot" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2">'
                f"<title>{escape(t.strftime('%H:%M'))} {escape(_fmt(v))}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def interval_plot(title: str, estimates: Sequence[Estimate], reference: float | None = 0.0) -> str:
    """Each estimate as a dot with its interval (one row each); a dashed line at `reference`."""
    rows = [e for e in estimates if all(math.isfinite(v) for v in (e.value, e.low, e.high))]
    height = TOP + 22 * max(len(rows), 1) + 20
    head = (
        f'<svg class="chart intervals" data-title="{escape(title)}" data-points="{len(rows)}" '
        f'viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><text x="8" y="14" class="chart-title">{escape(title)}'
        "</text>"
    )
    if not rows:
        return (
            head
            + f'<text x="{W / 2}" y="{TOP + 14}" text-anchor="middle">no estimates</text></svg>'
        )
    values = [v for e in rows for v in (e.low, e.high)] + (
        [reference] if reference is not None else []
    )
    lo, hi = _range(values, zero=False)
    x0 = 220

    def x(v: float) -> float:
        return x0 + (W - x0 - RIGHT) * (v - lo) / (hi - lo)

    parts = [head]
    if reference is not None:
        parts.append(
            f'<line class="reference" x1="{x(reference):.1f}" x2="{x(reference):.1f}" y1="{TOP}" '
            f'y2="{height - 16}"/>'
        )
    for i, e in enumerate(rows):
        cy = TOP + 22 * i + 11
        parts.append(
            f'<text x="8" y="{cy + 4}" class="tick">{escape(e.label[:34])}</text>'
            f'<line class="whisker" x1="{x(e.low):.1f}" x2="{x(e.high):.1f}" y1="{cy}" y2="{cy}"/>'
            f'<circle class="dot" cx="{x(e.value):.1f}" cy="{cy}" r="3.5"><title>'
            f"{escape(_fmt(e.value))} [{escape(_fmt(e.low))}, {escape(_fmt(e.high))}]"
            "</title></circle>"
        )
    parts.append(
        f'<text x="{x0}" y="{height - 4}" class="tick">{escape(_fmt(lo))}</text>'
        f'<text x="{W - RIGHT}" y="{height - 4}" text-anchor="end" class="tick">'
        f"{escape(_fmt(hi))}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
