"""Reports of an offline evaluation result (:func:`learn.offline_eval.run_evaluation`'s JSON).

:func:`render_html` gives one self-contained HTML file (inline CSS and SVG, no external assets):
a plot of each policy's estimate and interval per estimator, a plot of the paired differences
against the live policy, and tables of the estimates, diagnostics, differences, guardrail rates
(when the run estimated any) and training ranges. :func:`summary_table` gives the plain-text
table the CLI prints.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["render_html", "summary_table"]

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;
color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}.bad{color:#b00020}.good{color:#006400}.muted{color:#777}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, fmt: str = ".4f") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, fmt)


def _interval(est: dict[str, Any] | None) -> str:
    if not est:
        return "–"
    if "error" in est:
        return f"error: {est['error']}"
    return f"{_num(est['value'])} [{_num(est['ci_low'])}, {_num(est['ci_high'])}]"


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _forest(
    rows: Sequence[tuple[str, str, Sequence[tuple[str, dict[str, Any] | None]]]],
    estimators: Sequence[str],
    reference: float | None,
    title: str,
) -> str:
    """SVG: one group per label, one line (interval) and dot (value) per estimator."""
    points = [e for _, _, ests in rows for _, e in ests if e and "error" not in e]
    if not points:
        return '<p class="muted">Nothing to plot.</p>'
    lo = min(e["ci_low"] for e in points)
    hi = max(e["ci_high"] for e in points)
    if reference is not None:
        lo, hi = min(lo, reference), max(hi, reference)
    pad = (hi - lo) * 0.05 or max(abs(hi), 1.0) * 0.05
    lo, hi = lo - pad, hi + pad
    left, right, top, row_h, gap = 250, 30, 44, 15, 12
    width = 900
    plot_w = width - left - right
    height = top + sum(max(len(ests), 2) * row_h + gap for _, _, ests in rows) + 36

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" '
        'style="font:12px sans-serif">',
        f'<text x="{left}" y="16" font-weight="600">{_e(title)}</text>',
    ]
    for k, name in enumerate(estimators):
        color = _COLORS[k % len(_COLORS)]
        lx = left + k * 110
        parts.append(f'<circle cx="{lx + 5}" cy="30" r="4" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="34">{_e(name)}</text>')
    bottom = height - 30
    for t in _ticks(lo, hi):
        tx = x(t)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{bottom}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{tx:.1f}" y="{bottom + 14}" text-anchor="middle">{t:.3g}</text>')
    if reference is not None:
        rx = x(reference)
        parts.append(
            f'<line x1="{rx:.1f}" y1="{top - 4}" x2="{rx:.1f}" y2="{bottom}" stroke="#555" '
            'stroke-dasharray="4 3"/>'
        )
    y = top
    for label, sub, ests in rows:
        band = max(len(ests), 2) * row_h
        mid = y + band / 2
        short = label if len(label) <= 30 else label[:29] + "…"
        parts.append(
            f'<text x="{left - 8}" y="{mid - 1:.1f}" text-anchor="end">{_e(short)}'
            f"<title>{_e(label)}</title></text>"
        )
        parts.append(
            f'<text x="{left - 8}" y="{mid + 12:.1f}" text-anchor="end" fill="#777">'
            f"{_e(sub)}</text>"
        )
        for i, (name, est) in enumerate(ests):
            color = _COLORS[list(estimators).index(name) % len(_COLORS)]
            cy = mid + (i - (len(ests) - 1) / 2) * row_h
            if est and "error" not in est:
                parts.append(
                    f'<line x1="{x(est["ci_low"]):.1f}" y1="{cy:.1f}" x2="{x(est["ci_high"]):.1f}" '
                    f'y2="{cy:.1f}" stroke="{color}" stroke-width="2"/>'
                )
                parts.append(
                    f'<circle cx="{x(est["value"]):.1f}" cy="{cy:.1f}" r="4" fill="{color}">'
                    f"<title>{_e(label)} {_e(name)}: {_e(_interval(est))}</title></circle>"
                )
        y += band + gap
        parts.append(
            f'<line x1="{left}" y1="{y - gap / 2:.1f}" x2="{width - right}" '
            f'y2="{y - gap / 2:.1f}" stroke="#f4f4f4"/>'
        )
    parts.append(
        f'<line x1="{left}" y1="{bottom}" x2="{width - right}" y2="{bottom}" stroke="#999"/></svg>'
    )
    return "\n".join(parts)


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """`head` is escaped; the cells are HTML already."""
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _diff_cell(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    if "error" in d:
        return f'<span class="bad">{_e(d["error"])}</span>'
    diff = d["difference"]
    css = "good" if diff["ci_low"] > 0 else "bad" if diff["ci_high"] < 0 else ""
    return f'<span class="{css}">{_e(_interval(diff))}</span>'


def _rate_cell(entry: dict[str, Any] | None) -> str:
    """A guardrail's rate, and its difference with live (higher is worse)."""
    if not entry:
        return "–"
    if "error" in entry:
        return f'<span class="bad">{_e(entry["error"])}</span>'
    rate = _e(_interval(entry.get("candidate")))
    diff = entry.get("difference")
    if not diff:
        return rate
    css = "bad" if diff["ci_low"] > 0 else "good" if diff["ci_high"] < 0 else ""
    return f'{rate}<br><span class="{css}">vs live {_e(_interval(diff))}</span>'


def _guardrails(policies: Sequence[dict[str, Any]]) -> list[str]:
    """The section of guardrail rates, when the run estimated any."""
    metrics = list(dict.fromkeys(m for p in policies for m in p.get("guardrails") or {}))
    if not metrics:
        return []
    return [
        "<h2>Guardrail rates (share of events with a signal; IPS)</h2>",
        _table(
            ["policy", "n", *metrics],
            [
                [
                    _e(p["name"]),
                    str(p["n"]),
                    *(_rate_cell((p.get("guardrails") or {}).get(m)) for m in metrics),
                ]
                for p in policies
            ],
        ),
    ]


def _exploration(config: dict[str, Any] | None) -> str:
    if not config:
        return "–"
    if config.get("kind") == "softmax":
        detail = f"softmax, lambda {config.get('softmax_lambda')}"
    else:
        detail = f"epsilon-greedy, epsilon {config.get('epsilon')}"
    return f"{detail} (the loop's, for models and VW candidates not marked greedy)"


def _kind(p: dict[str, Any]) -> str:
    if "explore" not in p:
        return str(p["kind"])
    return f"{p['kind']}, {'explored' if p['explore'] else 'greedy'}"


def render_html(result: dict[str, Any]) -> str:
    """The self-contained HTML report of a result."""
    estimators: list[str] = list(result.get("estimators", []))
    policies: list[dict[str, Any]] = list(result.get("policies", []))
    live = next((p for p in policies if p.get("name") == result.get("live")), None)
    live_value = None
    if live and estimators:
        first = live["estimates"].get(estimators[0])
        live_value = first["value"] if first and "error" not in first else None
    window = result.get("window", {})
    skipped = result.get("skipped", {})
    rm = result.get("reward_model")
    facts = {
        "loop": result.get("loop"),
        "window": f"[{window.get('since') or 'open'}, {window.get('until') or 'open'})",
        "events used": f"{result.get('n_events')} (decided {window.get('first_decided_at')} "
        f"to {window.get('last_decided_at')})",
        "skipped": f"{skipped.get('slates', 0)} slates ({result.get('slates')}), "
        f"{skipped.get('bad', 0)} unusable",
        "as of": result.get("as_of"),
        "intervals": f"{result.get('interval')}, {100 * (1 - float(result.get('alpha', 0.05))):g}%",
        "reward model": "none" if not rm else f"VW {rm['vw_args']}, {rm['n_folds']}-fold cross-fit",
        "exploration of candidates": _exploration(result.get("exploration")),
        "seconds": result.get("seconds"),
    }
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Offline evaluation: {_e(result.get('loop'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Offline evaluation of loop {_e(result.get('loop'))}</h1><dl>",
        *(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts.items()),
        "</dl><h2>Estimated value of each policy</h2>",
        _forest(
            [
                (p["name"], f"n={p['n']}", [(e, p["estimates"].get(e)) for e in estimators])
                for p in policies
            ],
            estimators,
            live_value,
            "policy value: estimate and interval (dashed: live)",
        ),
        _table(
            ["policy", "kind", "n", "evaluated from", *estimators],
            [
                [
                    _e(p["name"]),
                    _e(_kind(p)),
                    str(p["n"]),
                    _e(p.get("eval_from") or "window start"),
                    *(_e(_interval(p["estimates"].get(e))) for e in estimators),
                ]
                for p in policies
            ],
        ),
        "<h2>Difference with the live policy on the same events</h2>",
    ]
    others = [p for p in policies if p.get("vs_live")]
    out.append(
        _forest(
            [
                (
                    f"{p['name']} - live",
                    f"n={p['n']}",
                    [(e, (p["vs_live"].get(e) or {}).get("difference")) for e in estimators],
                )
                for p in others
            ],
            estimators,
            0.0,
            "candidate - live: estimate and interval (dashed: no difference)",
        )
    )
    out.append(
        _table(
            ["policy", "n", *estimators],
            [
                [_e(p["name"]), str(p["n"]), *(_diff_cell(p["vs_live"].get(e)) for e in estimators)]
                for p in others
            ],
        )
    )
    out.extend(_guardrails(policies))
    out.append("<h2>Diagnostics of the importance weights</h2>")
    rows = []
    for p in policies:
        d = p.get("diagnostics") or {}
        problems = p.get("problems") or ([p["error"]] if p.get("error") else [])
        rows.append(
            [
                _e(p["name"]),
                str(d.get("n", p["n"])),
                _num(d.get("ess"), ".1f"),
                _num(d.get("ess_ratio"), ".3f"),
                f"{_num(d.get('mean_weight'))} ± {_num(d.get('mean_weight_se'))}",
                _num(d.get("max_weight"), ".4g"),
                _num(d.get("target_support"), ".3f"),
                _num(d.get("unsupported_mass"), ".3f"),
                f'<span class="bad">{_e("; ".join(problems))}</span>' if problems else "ok",
            ]
        )
    out.append(
        _table(
            [
                "policy",
                "n",
                "ESS",
                "ESS / n",
                "mean weight",
                "max weight",
                "support",
                "unsupported mass",
                "problems",
            ],
            rows,
        )
    )
    trained = [p for p in policies if p.get("training")]
    if trained:
        out.append("<h2>Training data (time split)</h2>")
        out.append(
            _table(
                ["policy", "time split", "evaluated from", "training", "warnings"],
                [
                    [
                        _e(p["name"]),
                        _e(p.get("time_split")),
                        _e(p.get("eval_from") or "–"),
                        _e(", ".join(f"{k}={v}" for k, v in p["training"].items())),
                        f'<span class="bad">{_e("; ".join(p["warnings"]))}</span>'
                        if p.get("warnings")
                        else "–",
                    ]
                    for p in trained
                ],
            )
        )
    out.append("</body></html>")
    return "\n".join(out)


def summary_table(result: dict[str, Any]) -> str:
    """Plain-text summary: one line per policy, value and interval per estimator, difference
    with live (first estimator), ESS and max weight."""
    estimators: list[str] = list(result.get("estimators", []))
    head = [
        "policy",
        "n",
        *estimators,
        f"vs live ({estimators[0]})" if estimators else "",
        "ESS",
        "max w",
    ]
    lines = [head]
    for p in result.get("policies", []):
        d = p.get("diagnostics") or {}
        diff = "–"
        if p.get("vs_live") and estimators:
            item = p["vs_live"].get(estimators[0]) or {}
            diff = _interval(item.get("difference")) if "difference" in item else "error"
        lines.append(
            [
                str(p["name"])[:40],
                str(p["n"]),
                *(_interval(p["estimates"].get(e)) for e in estimators),
                diff,
                _num(d.get("ess"), ".0f"),
                _num(d.get("max_weight"), ".3g"),
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
