"""Stage 07 figures and the HTML report.

Figures are plain `go.Figure`s (same style as selection.figures: plotly_white, one colour per arm) built from
metrics.json alone, so a notebook can redraw them from a finished run without any model.

The report is one HTML file whose tables need no JavaScript. plotly.js itself is 4.8 MB, too
big to copy into every run by default for a page of four small charts, so the stage writes both:
`report.html` (about 100 KB) loads plotly.js from the CDN and says so at the top, and
`report_offline.html` carries plotly.js inline for rooms without internet.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..core.runs import write_text_atomic
from .metrics import METRICS, arm_order, verdicts

ARM_COLORS = {"base": "#7f7f7f", "original": "#aec7e8", "reflected": "#9467bd", "selected": "#2ca02c",
              "random": "#ff7f0e"}
VERDICT_COLORS = {"wins": "#2ca02c", "ties": "#c7c7c7", "losses": "#d62728"}
SHORT = {"format": "format compliance", "exact_match": "exact match", "ref_loss": "reference loss (lower = better)",
         "ref_loss_format": "reference loss after own reasoning (lower = better)"}
SIDE_BY_SIDE = 4  # prompts shown answered by the base and the tuned student on the report's first screen


def _done(metrics: dict) -> list[str]:
    return [a for a in arm_order(metrics) if metrics["arms"][a]["status"] == "done"]


def _err(ci: dict) -> dict:
    if ci.get("mean") is None:
        return {"array": [0], "arrayminus": [0]}
    return {"array": [ci["hi"] - ci["mean"]], "arrayminus": [ci["mean"] - ci["lo"]]}


def metrics_figure(metrics: dict) -> go.Figure:
    """One panel per metric: a bar per arm with its bootstrap interval as the error bar."""
    arms = _done(metrics)
    judge = {j["a"]: j for j in metrics.get("judge", []) if j["b"] == "base"}
    panels = list(METRICS) + (["judge"] if judge else [])
    titles = [SHORT[m] for m in METRICS] + (["judge winning score vs base (1 = even)"] if judge else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, horizontal_spacing=0.07)
    for col, panel in enumerate(panels, 1):
        for arm in arms:
            if panel == "judge":
                if arm not in judge:
                    continue
                ci = judge[arm]["winning_score"]
            else:
                ci = metrics["arms"][arm]["metrics"].get(panel) or {}
            if ci.get("mean") is None:
                continue
            fig.add_trace(go.Bar(x=[arm], y=[ci["mean"]], error_y={"type": "data", "symmetric": False, **_err(ci)},
                                 marker_color=ARM_COLORS.get(arm), name=arm, showlegend=False,
                                 hovertemplate=f"{arm}<br>{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}], "
                                               f"n={ci['n']}<extra></extra>"), row=1, col=col)
        if panel in ("format", "exact_match"):
            fig.update_yaxes(range=[0, 1.05], row=1, col=col)
        if panel == "judge":
            fig.add_hline(y=1.0, line_dash="dot", line_color="#555", row=1, col=col)
    s = metrics["setup"]
    fig.update_layout(template="plotly_white", height=420, margin={"t": 90},
                      title={"text": f"Per-arm metrics, {int(s['ci_level'] * 100)}% bootstrap intervals "
                                     f"({s['n_eval']} prompts, {s['n_numeric']} numeric)"})
    return fig


def diagnostics_figure(metrics: dict) -> go.Figure:
    """Share of answers carrying each parser diagnostic code, per arm (why answers were not well formed)."""
    arms = _done(metrics)
    codes = sorted({c for a in arms for c in metrics["arms"][a]["diagnostics"]})
    fig = go.Figure()
    for arm in arms:
        d = metrics["arms"][arm]["diagnostics"]
        fig.add_trace(go.Bar(x=codes, y=[d.get(c, {}).get("share", 0.0) for c in codes], name=arm,
                             marker_color=ARM_COLORS.get(arm),
                             customdata=[d.get(c, {}).get("count", 0) for c in codes],
                             hovertemplate=f"{arm}<br>%{{x}}: %{{customdata}} answers (%{{y:.0%}})<extra></extra>"))
    fig.update_layout(template="plotly_white", barmode="group", height=380, yaxis={"range": [0, 1.05],
                      "tickformat": ".0%"}, legend_title="arm",
                      title={"text": "Parser diagnostics: share of answers with each code" if codes
                             else "Parser diagnostics: no answer had any diagnostic"})
    return fig


def differences_figure(metrics: dict, reference: str = "base") -> go.Figure:
    """arm - reference per metric with paired intervals; an interval that crosses 0 shows no difference."""
    diffs = metrics["differences"].get(f"vs_{reference}", {})
    fig = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[SHORT[m] for m in METRICS],
                        horizontal_spacing=0.07)
    for col, m in enumerate(METRICS, 1):
        for arm in [a for a in arm_order(metrics) if a in diffs]:
            ci = diffs[arm].get(m) or {}
            if ci.get("mean") is None:
                continue
            fig.add_trace(go.Scatter(x=[arm], y=[ci["mean"]], mode="markers", marker={"size": 11,
                                     "color": ARM_COLORS.get(arm)}, showlegend=False,
                                     error_y={"type": "data", "symmetric": False, **_err(ci)},
                                     hovertemplate=f"{arm} - {reference}: {ci['mean']:+.3f} "
                                                   f"[{ci['lo']:+.3f}, {ci['hi']:+.3f}]<extra></extra>"),
                          row=1, col=col)
        fig.add_hline(y=0, line_color="#555", line_dash="dot", row=1, col=col)
    fig.update_layout(template="plotly_white", height=380, margin={"t": 90},
                      title={"text": f"Paired differences: arm - {reference} (same prompts resampled together)"})
    return fig


def judge_figure(metrics: dict) -> go.Figure:
    """Wins / ties / losses of each judged pair, stacked (the papers' way of showing it)."""
    rows = metrics.get("judge", [])
    labels = [f"{j['a']} vs {j['b']}" for j in rows]
    fig = go.Figure()
    for key in ("wins", "ties", "losses"):
        fig.add_trace(go.Bar(y=labels, x=[j[key] for j in rows], name=key, orientation="h",
                             marker_color=VERDICT_COLORS[key]))
    fig.update_layout(template="plotly_white", barmode="stack", height=120 + 40 * max(1, len(rows)),
                      title={"text": "Pairwise judge, both orders: wins / ties / losses of the first arm"},
                      xaxis_title="prompts")
    return fig


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.warn{background:#fff4e5;border-left:4px solid #f0a020;
padding:.6em 1em;margin:1em 0}.note{color:#555;font-size:14px}.ok{color:#2a7d2a}.bad{color:#b22}code{background:#f4f4f4;
padding:0 3px}.side td{width:50%}"""
# inline, so the side-by-side panes look the same in the report and in a notebook's HTML output
_PANE = "border-radius:4px;padding:.4em .6em;margin:.3em 0;white-space:pre-wrap;font-size:13px;color:#222;"
PANE_COLORS = {"thinking": "#f4f4f4", "reflection": "#f1e8fa", "output": "#e9f6e9", "no tags": "#fff4e5"}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _ci(ci: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not ci or ci.get("mean") is None:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(ci['mean'])} [{f.format(ci['lo'])}, {f.format(ci['hi'])}] (n={ci['n']})"


def _setup_html(metrics: dict) -> str:
    s, t = metrics["setup"], metrics["timing"]
    judge = s.get("judge")
    items = [
        ("profile", f"{s['profile']} — student {s['student']}, {s['method']}, n_samples={s['n_samples']}, "
                    f"max_steps={s['max_steps']}, batch_size={s['batch_size']}, learning_rate={s['learning_rate']}, "
                    f"lora_r={s['lora_r']}"),
        ("evaluation prompts", f"{s['n_eval']} from {s['eval_source']} ({s['n_numeric']} with a numeric answer)"),
        ("decoding", f"{s['decoding']}, max_new_tokens={s['max_new_tokens']}; base arm's system message: "
                     f"{s['base_system_prompt'] or '(none)'}; trained arms: the prompt format they were trained with"),
        ("intervals", f"{int(s['ci_level'] * 100)}%: Wilson score for an arm's shares (format, exact match), "
                      f"percentile bootstrap over prompts for losses and differences, {s['n_boot']} resamples, "
                      f"seed {s['seed']}; exact match within a relative tolerance of {s['rel_tol']:g}"),
        ("judge", f"{judge.get('backend')}:{judge.get('model')} ({judge.get('prompt_version')}, sees "
                  f"{judge.get('view')} text)" if judge else "not used"),
        ("wall time", f"{t['wall_seconds']} s for this call; the arms' training, generation and scoring took "
                      f"{t.get('arm_work_seconds', '?')} s when they ran (reused arms included)"),
    ]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</table>"


def _metrics_table(metrics: dict) -> str:
    head = "<tr><th>arm</th><th>trained on</th><th>format compliance</th><th>exact match</th>" \
           "<th>reference loss</th><th>reference loss after own reasoning</th>" \
           "<th>naive match (anywhere in text)</th></tr>"
    rows = []
    for arm in arm_order(metrics):
        e = metrics["arms"][arm]
        if e["status"] != "done":
            rows.append(f"<tr><td>{_e(arm)}</td><td colspan=6>skipped: {_e(e.get('reason', ''))}</td></tr>")
            continue
        m = e["metrics"]
        rows.append(f"<tr><td><b>{_e(arm)}</b><br><span class=note>{_e(e['title'])}</span></td>"
                    f"<td>{_e(e['source'])}</td><td>{_ci(m['format'], 2)}</td><td>{_ci(m['exact_match'], 2)}</td>"
                    f"<td>{_ci(m['ref_loss'])}</td><td>{_ci(m.get('ref_loss_format'))}</td>"
                    f"<td class=note>{_ci(m['exact_match_anywhere'], 2)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _diff_table(metrics: dict, reference: str) -> str:
    diffs = metrics["differences"].get(f"vs_{reference}", {})
    if not diffs:
        return f"<p class=note>No '{_e(reference)}' arm: no differences against it.</p>"
    head = "<tr><th>arm - " + _e(reference) + "</th>" + "".join(f"<th>{_e(SHORT[m])}</th>" for m in METRICS) + "</tr>"
    rows = []
    for arm in [a for a in arm_order(metrics) if a in diffs]:
        d = diffs[arm]
        cells = []
        for m in METRICS:
            ci = d.get(m) or {}
            mark = " <span class=ok>interval excludes 0</span>" if ci.get("excludes_zero") else ""
            cells.append(f"<td>{_ci(ci, 3, signed=True)}{mark}</td>")
        rows.append(f"<tr><td>{_e(arm)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _judge_table(metrics: dict) -> str:
    if not metrics.get("judge"):
        return "<p class=note>No judge was used (pass judge=... to run_evaluate).</p>"
    rows = "".join(f"<tr><td>{_e(j['a'])} vs {_e(j['b'])}</td><td>{j['wins']}</td><td>{j['ties']}</td>"
                   f"<td>{j['losses']}</td><td>{j['invalid']}</td><td>{_ci(j['winning_score'], 2)}</td></tr>"
                   for j in metrics["judge"])
    return ("<table><tr><th>pair</th><th>wins</th><th>ties</th><th>losses</th><th>unreadable</th>"
            f"<th>winning score (W-L)/N+1</th></tr>{rows}</table>")


def _per_prompt_table(rows_by_arm: dict[str, list[dict]]) -> str:
    arms = list(rows_by_arm)
    if not arms:
        return ""
    first = rows_by_arm[arms[0]]
    head = "<tr><th>prompt</th><th>reference</th>" + "".join(f"<th>{_e(a)}</th>" for a in arms) + "</tr>"
    body = []
    for i, r in enumerate(first):
        ref = r["numeric_answer"] if r.get("numeric") else "(text)"
        cells = []
        for a in arms:
            x = rows_by_arm[a][i]
            if not x.get("has_output"):
                val = "<span class=bad>no &lt;output&gt;</span>"
            elif x.get("numeric"):
                got = "-" if x.get("extracted") is None else f"{x['extracted']:g}"
                val = f"<span class={'ok' if x.get('correct') else 'bad'}>{_e(got)}</span>"
            else:
                val = "output"
            wf = "" if x.get("well_formed") else " <span class=note>(not well formed)</span>"
            cells.append(f"<td>{val}{wf}</td>")
        body.append(f"<tr><td title='{_e(r['instruction'])}'>{_e(r['id'])}</td><td>{_e(ref)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def verdicts_html(metrics: dict) -> str:
    """One sentence per comparison and metric ("not distinguishable" when the paired interval holds 0)."""
    items = "".join(f"<li>{_e(v)}</li>" for v in verdicts(metrics)) or "<li>No comparison to make.</li>"
    return f"<ul>{items}</ul>"


def tuned_arm(arms: list[str]) -> str | None:
    """The trained arm the first screen shows beside the base student: the lab's selection when it ran."""
    trained = [a for a in arms if a != "base"]
    return "selected" if "selected" in trained else (trained[0] if trained else None)


def _panes(row: dict) -> str:
    """One answer split into its parts: thinking, reflections and output panes (raw text when untagged)."""
    def pane(kind: str, text: str) -> str:
        return f"<div style='{_PANE}background:{PANE_COLORS[kind]}'><b>{kind}</b>\n{_e(text)}</div>"

    p = row.get("parsed") or {}
    parts = [pane("thinking", p["thinking"])] if p.get("thinking") else []
    parts += [pane("reflection", r) for r in p.get("reflections") or []]
    if p.get("output") is not None:
        parts.append(pane("output", p["output"]))
    if not parts:
        parts.append(pane("no tags", row.get("text", "")))
    status = "well formed" if row.get("well_formed") else "not well formed"
    stop = "hit the token limit" if row.get("finish_reason") == "length" else "stopped on its own"
    codes = ", ".join(row.get("diagnostics") or [])
    parts.append(f"<div style='color:#555;font-size:13px'>{status}; {stop}{'; ' + _e(codes) if codes else ''}</div>")
    return "".join(parts)


def side_by_side_html(rows_by_arm: dict[str, list[dict]], n: int = SIDE_BY_SIDE) -> str:
    """The same prompts answered by the base and the tuned student, parsed into their panes."""
    tuned = tuned_arm(list(rows_by_arm))
    if "base" not in rows_by_arm or tuned is None:
        return "<p class=note>Base and a trained arm are both needed for a side-by-side view.</p>"
    body = [f"<tr><td colspan=2><b>{_e(b['id'])}</b>: {_e(b['instruction'][:400])}</td></tr>"
            f"<tr><td>{_panes(b)}</td><td>{_panes(t)}</td></tr>"
            for b, t in list(zip(rows_by_arm["base"], rows_by_arm[tuned], strict=True))[:n]]
    return (f"<table class=side style='width:100%'><tr><th>base student</th><th>{_e(tuned)} (fine-tuned)</th></tr>"
            f"{''.join(body)}</table><p class=note>The first {min(n, len(rows_by_arm['base']))} evaluation prompts; "
            f"every answer: generations/&lt;arm&gt;.jsonl.</p>")


def render_report(metrics: dict, rows_by_arm: dict[str, list[dict]], *, plotlyjs: str = "cdn",
                  title: str = "reflection-lab: evaluation (stage 07)") -> str:
    """The report as one HTML string; plotlyjs="cdn" (small file, needs internet) or "inline" (offline)."""
    figs = [metrics_figure(metrics), differences_figure(metrics, "base"), diagnostics_figure(metrics)]  # first: top
    if "random" in _done(metrics):
        figs.insert(2, differences_figure(metrics, "random"))
    if metrics.get("judge"):
        figs.append(judge_figure(metrics))
    # plotly.js travels with the first figure through the public to_html switch ("cdn" or True = inline).
    js = True if plotlyjs == "inline" else "cdn"
    first, *rest = [f.to_html(full_html=False, include_plotlyjs=js if i == 0 else False,
                              config={"displaylogo": False}) for i, f in enumerate(figs)]
    divs = "\n".join(rest)
    script = ""
    if plotlyjs == "inline":
        js_note = "plotly.js is embedded: this file works offline."
    else:
        js_note = ("The charts load plotly.js from the CDN (this file stays small). Offline, open "
                   "report_offline.html next to it, which embeds plotly.js (4.8 MB). The tables need no script.")
    s = metrics["setup"]
    n_samples = "all" if s["n_samples"] is None else s["n_samples"]
    warn = (f"{s['n_eval']} evaluation prompts ({s['n_numeric']} with a numeric answer); each trained arm ran "
            f"max_steps={s['max_steps']} on n_samples={n_samples} samples (profile '{s['profile']}'). "
            + ("With so few prompts the intervals are wide. " if s["n_eval"] < 100 else "")
            + "Differences that stay inside the intervals are not evidence that one arm is better; "
            "only a paired interval that excludes 0, repeated on more prompts, supports a claim.")
    skipped = [f"<li>{_e(a)}: {_e(metrics['arms'][a].get('reason'))}</li>" for a in arm_order(metrics)
               if metrics["arms"][a]["status"] != "done"]
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{_CSS}</style>{script}</head><body>
<h1>{_e(title)}</h1>
<p class=note>Written {_e(time.strftime('%Y-%m-%d %H:%M'))}. {_e(js_note)}</p>
<h2>Verdict</h2>{verdicts_html(metrics)}
{first}
<h2>Same prompts, base and fine-tuned</h2>{side_by_side_html(rows_by_arm)}
<div class=warn>{_e(warn)}</div>
<h2>What was measured</h2>{_setup_html(metrics)}
<h2>Metrics per arm</h2>{_metrics_table(metrics)}
{'<p>Skipped arms:</p><ul>' + ''.join(skipped) + '</ul>' if skipped else ''}
<p class=note><b>How to read it.</b> Format compliance: the share of answers that parse into one closed
&lt;thinking&gt; and one closed &lt;output&gt; without errors. Exact match: the last number inside
&lt;output&gt; equals the reference number; an answer without &lt;output&gt; counts as wrong, even if its reasoning
contains the number. Reference loss: the mean cross-entropy (nats per token) of the reference answer after the
arm's own prompt; lower means the model finds the reference likelier. Reference loss after own reasoning: the
same, with the reference placed where the arm puts its answer: after its own closed &lt;thinking&gt; block and an
&lt;output&gt; tag (right after the prompt when it wrote no thinking), so it asks whether the arm's reasoning leads
to the right answer. The grey "naive match" column counts a hit
whenever the reference number appears anywhere in the text, reasoning included: it is shown only to make the
gap visible and is never the lab's score.</p>
<h2>More figures</h2>{divs}
<h2>Differences against the base student</h2>{_diff_table(metrics, 'base')}
<h2>Differences against the random control</h2>{_diff_table(metrics, 'random')}
<h2>Pairwise judge</h2>{_judge_table(metrics)}
<h2>Per prompt</h2><p class=note>The number read from each arm's &lt;output&gt; (green = matches the
reference). Full texts: generations/&lt;arm&gt;.jsonl.</p>{_per_prompt_table(rows_by_arm)}
</body></html>"""


def write_report(stage_dir: Path, metrics: dict, rows_by_arm: dict[str, list[dict]]) -> dict[str, Path]:
    """Write report.html (plotly.js from the CDN) and report_offline.html (inline); returns both paths."""
    out = {}
    for name, mode in (("report.html", "cdn"), ("report_offline.html", "inline")):
        path = Path(stage_dir) / name
        write_text_atomic(path, render_report(metrics, rows_by_arm, plotlyjs=mode))
        out[name] = path
    return out


__all__ = ["ARM_COLORS", "diagnostics_figure", "differences_figure", "judge_figure", "metrics_figure",
           "render_report", "side_by_side_html", "tuned_arm", "verdicts_html", "write_report"]
