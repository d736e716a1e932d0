"""Plotly figures of the selection stage: score histograms, IFD vs r-IFD, the decision flow, lengths.

Why plain `go.Figure` (never FigureWidget): a Figure renders the same way in JupyterLab, the
classic notebook, Colab and an exported HTML report, and tests can read its traces without a
browser. Every function takes a `SelectionTable` (scores only) or a `Selection` (scores plus one
config's decisions) and returns a new figure.

Histograms are drawn as step outlines from counts computed here with numpy. That keeps the figure
small (one point per bin edge instead of 50,000 raw values) and lets a log x axis use log-spaced
bins, which plotly's own histogram trace cannot do.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from ..core.runs import VARIANTS
from .rules import FORM_TITLES, FORMS, FORMULAS, KEPT_OUTCOMES, OUTCOMES, SelectConfig
from .table import Selection, SelectionTable

VARIANT_COLORS = {"original": "#7f7f7f", "reflect_instruction": "#1f77b4", "reflect_response": "#ff7f0e",
                  "reflect_both": "#9467bd", "chosen": "#17becf", "selected": "#2ca02c"}
OUTCOME_COLORS = {"reflect_both": "#2ca02c", "reflect_response": "#98df8a", "reflect_instruction": "#1f77b4",
                  "original": "#aec7e8", "dropped:missing_score": "#c7c7c7", "dropped:ifd_too_high": "#d62728",
                  "dropped:rifd_too_high": "#ff9896", "dropped:answer_not_reflected": "#bcbd22",
                  "dropped:too_short": "#8c564b", "dropped:too_long": "#c49c94", "dropped:refusal": "#e377c2",
                  "dropped:below_top_k": "#7f7f7f"}
METRIC_NAMES = {"ifd": "IFD", "rifd": "r-IFD"}


def _selection(data: Selection | SelectionTable, config: SelectConfig | None) -> Selection:
    if isinstance(data, Selection):
        return data if config is None or config == data.config else data.table.evaluate(config)
    return data.evaluate(config)


def _values(sel: Selection, metric: str, variant: str) -> np.ndarray:
    """Scores of one variant ("chosen" = the student's pair, "selected" = kept pairs), NaN dropped."""
    key = FORMS[sel.config.score_form][0 if metric == "ifd" else 1]
    if variant == "chosen":
        x = sel.choice.ifd if metric == "ifd" else sel.choice.rifd
    elif variant == "selected":
        x = (sel.choice.ifd if metric == "ifd" else sel.choice.rifd)[sel.kept]
    else:
        x = sel.table.scores[key][VARIANTS.index(variant)]
    return x[~np.isnan(x)]


def _edges(table: SelectionTable, sel: Selection, metric: str, log: bool, bins: int) -> np.ndarray:
    """Bin edges fixed per table and metric, so moving a slider moves only the line and the kept trace."""
    key = ("edges", sel.config.score_form, metric, log, bins)
    cache = table.cache
    if key not in cache:
        allv = np.concatenate([_values(sel, metric, v) for v in VARIANTS])
        if log:
            allv = allv[allv > 0]
        if len(allv) == 0:
            allv = np.array([0.5, 1.5])
        lo, hi = np.quantile(allv, [0.001, 0.999])
        lo, hi = min(lo, 0.9), max(hi, 1.1)  # 1.0 is always on the axis
        if hi <= lo:
            hi = lo + 1.0
        cache[key] = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    return cache[key]


def _counts(values: np.ndarray, edges: np.ndarray, log: bool) -> tuple[np.ndarray, int]:
    if log:
        values = values[values > 0]
    clipped = int(((values < edges[0]) | (values > edges[-1])).sum())
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts, clipped


def score_histogram(data: Selection | SelectionTable, metric: str = "ifd", *, config: SelectConfig | None = None,
                    variants: Sequence[str] = ("original", "reflect_both"), log: bool = False, bins: int = 40,
                    show_selected: bool = True) -> go.Figure:
    """Overlaid histograms of one score for several variants, the kept pairs, and the threshold line.

    variants: any of VARIANTS, or "chosen" (the pair the student chose, before thresholds).
    The title names the IFD form (PPL ratio or loss ratio) the selection uses.
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be 'ifd' or 'rifd', not {metric!r}")
    sel = _selection(data, config)
    cfg = sel.config
    threshold = cfg.ifd_max if metric == "ifd" else cfg.rifd_max
    edges = _edges(sel.table, sel, metric, log, bins)
    cache = sel.table.cache
    traces = []
    notes = []
    for v in list(variants) + (["selected"] if show_selected else []):
        ckey = ("counts", cfg.score_form, metric, log, bins, v)
        if v == "selected" or ckey not in cache:  # per-variant counts never change with thresholds
            vals = _values(sel, metric, v)
            counts, clipped = _counts(vals, edges, log)
            cache[ckey] = (counts, clipped, len(vals))
        counts, clipped, n = cache[ckey]
        notes.append(clipped)
        label = "kept pairs" if v == "selected" else v
        traces.append(go.Scatter(
            x=edges, y=np.append(counts, counts[-1]), name=label, mode="lines", line_shape="hv",
            line={"color": VARIANT_COLORS.get(v), "width": 2 if v == "selected" else 1.5},
            fill="tozeroy", opacity=0.9 if v == "selected" else 0.5, meta={"n": n, "variant": v},
            hovertemplate=f"{label}<br>from %{{x:.3f}}: %{{y}} samples<extra></extra>"))
    fig = go.Figure(traces)
    name = METRIC_NAMES[metric]
    form = f"{FORM_TITLES[cfg.score_form][:-1]}: {FORMULAS[cfg.score_form, metric]}"
    fig.add_vline(x=threshold, line_dash="dash", line_color="black",
                  annotation_text=f"{name} max = {threshold:g}", annotation_position="top right")
    missing = int(np.isnan(sel.choice.ifd if metric == "ifd" else sel.choice.rifd).sum())
    sub = f"kept pairs must lie left of the line; {missing} chosen pairs have no {name}"
    if sum(notes):
        sub += f"; {sum(notes)} values beyond the axis are drawn in the end bins"
    fig.update_layout(
        title={"text": f"{name} ({form})<br><sup>{sub}</sup>"},
        xaxis_title=f"{name}" + (" (log scale)" if log else ""), yaxis_title="samples",
        xaxis_type="log" if log else "linear", legend_title="variant", template="plotly_white",
        margin={"t": 80}, height=360)
    return fig


def ifd_histogram(data: Selection | SelectionTable, **kwargs) -> go.Figure:
    """IFD of the original and reflected pairs; kept pairs lie left of the IFD max line."""
    kwargs.setdefault("variants", ("original", "reflect_instruction", "reflect_both"))
    return score_histogram(data, "ifd", **kwargs)


def rifd_histogram(data: Selection | SelectionTable, **kwargs) -> go.Figure:
    """r-IFD of the original and reflected answers; lower is better, kept pairs lie left of the line."""
    kwargs.setdefault("variants", ("original", "reflect_response", "reflect_both"))
    return score_histogram(data, "rifd", **kwargs)


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return html.escape(text if len(text) <= n else text[: n - 1] + "\u2026")


def score_scatter(data: Selection | SelectionTable, *, config: SelectConfig | None = None,
                  truncate: int = 80, max_points: int | None = None, log: bool = False) -> go.Figure:
    """IFD vs r-IFD of each student-chosen pair, one trace per outcome.

    customdata holds the sample id: copy it from the hover box into the inspector's id box.
    max_points thins every outcome evenly (for very large sets in slow browsers).
    """
    sel = _selection(data, config)
    t, cfg = sel.table, sel.config
    fi, fr = sel.choice.ifd, sel.choice.rifd
    finite = ~(np.isnan(fi) | np.isnan(fr))
    step = max(1, int(np.ceil(finite.sum() / max_points))) if max_points else 1
    traces = []
    for code, outcome in enumerate(OUTCOMES):
        idx = np.flatnonzero((sel.code == code) & finite)[::step]
        if len(idx) == 0:
            continue
        chosen = sel.choice.chosen[idx]
        hover = [_short((t.texts[c][i] or {}).get("instruction", ""), truncate) for c, i in zip(chosen, idx)]
        traces.append(go.Scattergl(
            x=fi[idx], y=fr[idx], mode="markers", name=f"{outcome} ({int((sel.code == code).sum())})",
            marker={"color": OUTCOME_COLORS[outcome], "size": 5, "opacity": 0.7},
            customdata=[t.ids[i] for i in idx], hovertext=hover, meta={"outcome": outcome},
            hovertemplate="id %{customdata}<br>IFD %{x:.4f} · r-IFD %{y:.4f}<br>%{hovertext}<extra>"
                          + outcome + "</extra>"))
    fig = go.Figure(traces)
    fig.add_vline(x=cfg.ifd_max, line_dash="dash", line_color="black")
    fig.add_hline(y=cfg.rifd_max, line_dash="dash", line_color="black")
    n_missing = int((~finite).sum())
    fig.update_layout(
        title={"text": f"IFD vs r-IFD of the student's chosen pair ({FORM_TITLES[cfg.score_form]})<br><sup>"
                       f"kept pairs sit in the lower-left box; {n_missing} pairs with a missing score not shown"
                       "</sup>"},
        xaxis_title="IFD (higher = more to learn)", yaxis_title="r-IFD (lower = answer fits its instruction)",
        xaxis_type="log" if log else "linear", yaxis_type="log" if log else "linear",
        template="plotly_white", legend_title="outcome", height=480, margin={"t": 80})
    return fig


def selection_sankey(data: Selection | SelectionTable, *, config: SelectConfig | None = None) -> go.Figure:
    """Flow of samples: all -> instruction choice -> chosen pair -> kept or a drop reason."""
    sel = _selection(data, config)
    ch = sel.choice
    labels: list[str] = [f"all samples ({sel.table.n})"]
    node: dict[str, int] = {}

    def idx(key: str, label: str) -> int:
        if key not in node:
            node[key] = len(labels)
            labels.append(label)
        return node[key]

    src, dst, val, colors = [], [], [], []

    def link(a: int, b: int, n: int, color: str) -> None:
        if n:
            src.append(a)
            dst.append(b)
            val.append(int(n))
            colors.append(color)

    take_q = ch.take_q
    instruction_nodes = ((False, "i:original", "original instruction"), (True, "i:reflect", "reflected instruction"))
    for flag, key, label in instruction_nodes:
        n = int((take_q == flag).sum())
        if n:
            link(0, idx(key, f"{label} ({n})"), n, "rgba(150,150,150,0.35)")
    for vi, v in enumerate(VARIANTS):
        mask = ch.chosen == vi
        n = int(mask.sum())
        if not n:
            continue
        parent = node["i:reflect" if vi in (1, 3) else "i:original"]
        link(parent, idx(f"v:{v}", f"{v} ({n})"), n, _rgba(VARIANT_COLORS[v]))
        for code, outcome in enumerate(OUTCOMES):
            m = int((mask & (sel.code == code)).sum())
            if not m:
                continue
            target = "kept" if outcome in KEPT_OUTCOMES else outcome
            total = sel.n_kept if target == "kept" else int((sel.code == code).sum())
            link(node[f"v:{v}"], idx(f"o:{target}", f"{target} ({total})"), m,
                 _rgba(OUTCOME_COLORS.get(outcome, "#999999")))
    fig = go.Figure(go.Sankey(
        node={"label": labels, "pad": 14, "thickness": 14},
        link={"source": src, "target": dst, "value": val, "color": colors}))
    fig.update_layout(title={"text": f"How the student chose: {sel.n_kept} of {sel.table.n} samples kept"},
                      height=440, template="plotly_white")
    return fig


def _rgba(hex_color: str, alpha: float = 0.45) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[k:k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def length_vs_ifd(data: Selection | SelectionTable, *, config: SelectConfig | None = None,
                  log_x: bool = True, max_points: int | None = None) -> go.Figure:
    """Answer length (words) of each chosen pair against its IFD: do long answers get easier?"""
    sel = _selection(data, config)
    t, cfg = sel.table, sel.config
    cols = np.arange(t.n)
    words = t.words[sel.choice.chosen, cols]
    fi = sel.choice.ifd
    finite = ~np.isnan(fi)
    traces = []
    for label, mask, color in (("kept", sel.kept, "#2ca02c"), ("dropped", ~sel.kept, "#d62728")):
        idx = np.flatnonzero(mask & finite)
        if max_points and len(idx) > max_points:
            idx = idx[:: int(np.ceil(len(idx) / max_points))]
        traces.append(go.Scattergl(
            x=np.maximum(words[idx], 1) if log_x else words[idx], y=fi[idx], mode="markers", name=label,
            customdata=[t.ids[i] for i in idx], marker={"color": color, "size": 4, "opacity": 0.6},
            hovertemplate="id %{customdata}<br>%{x} words · IFD %{y:.4f}<extra>" + label + "</extra>"))
    fig = go.Figure(traces)
    fig.add_hline(y=cfg.ifd_max, line_dash="dash", line_color="black")
    for w in (cfg.min_words, cfg.max_words):
        if w is not None:
            fig.add_vline(x=max(w, 1) if log_x else w, line_dash="dot", line_color="gray")
    fig.update_layout(title={"text": f"Answer length vs IFD of the chosen pair ({FORMULAS[cfg.score_form, 'ifd']})"},
                      xaxis_title="answer length (words)", yaxis_title="IFD", xaxis_type="log" if log_x else "linear",
                      template="plotly_white", height=400)
    return fig


def outcome_frame(sel: Selection):
    """Counts per outcome with shares, plus the student's choice before thresholds (a pandas DataFrame)."""
    import pandas as pd

    counts = sel.counts()
    choice = sel.student_choice()
    passed = sel.passed_thresholds()
    rows = []
    for o in OUTCOMES:
        if counts[o] or o in KEPT_OUTCOMES:
            rows.append({"outcome": o, "samples": counts[o], "share %": round(100 * counts[o] / max(sel.table.n, 1), 1),
                         "student chose": choice.get(o, ""), "passed limits": passed.get(o, "")})
    return pd.DataFrame(rows)
