"""The sample inspector: one sample at a time, original vs reflected, with every score and reason.

Why a separate state object: browsing, searching and filtering are plain Python on arrays and
strings, so tests can drive them; the widget only shows `InspectorState.render()`.

Reaching a sample from the scatter plot: plotly click events need a FigureWidget, which the lab
avoids (it needs an extension that Colab and some JupyterLab installs lack). Instead the scatter's
hover box shows the sample id (its customdata): type or paste it into the id box and press Open,
pick it from the explorer's id list, or call `inspector.show("<id>")` in a cell.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

import ipywidgets as W
import numpy as np

from ..core.runs import VARIANTS, Run
from ..core.runtime import in_notebook
from .html import CELL, TEXT, JsonlIndex, diff_html, esc, prompt_text, token_heatmap_html
from .rules import FORMS, OUTCOMES, SelectConfig
from .table import Selection, SelectionTable

__all__ = ["InspectorState", "SampleInspector", "JsonlIndex", "diff_html", "token_heatmap_html", "config_from_run",
           "display_figures"]


def config_from_run(run: Run | None) -> SelectConfig | None:
    """The config of the run's last finished selection, so widgets open where the learner left off."""
    m = run.manifest("select") if run else None
    if not m or m.get("status") != "complete":
        return None
    known = SelectConfig.__dataclass_fields__
    try:
        return SelectConfig(**{k: v for k, v in (m.get("config") or {}).items() if k in known})
    except (TypeError, ValueError):
        return None


def display_figures(out: W.Output, figures: Sequence[Any]) -> bool:
    """Redraw figures into an Output widget; only inside a kernel (elsewhere display() would print)."""
    if not in_notebook():
        return False
    from IPython.display import display

    out.clear_output(wait=True)
    with out:
        for fig in figures:
            display(fig)
    return True


# ----------------------------------------------------------------- state


class InspectorState:
    """Which samples match the filters, which one is shown, and its HTML."""

    def __init__(self, selection: Selection, *, reflections: JsonlIndex | None = None,
                 token_losses: JsonlIndex | None = None):
        self.selection = selection
        self.table: SelectionTable = selection.table
        self.reflections = reflections
        self.token_losses = token_losses
        self.search = ""
        self.outcome = "all"
        self.ifd_range: tuple[float, float] | None = None
        self.message = ""
        self._haystack: list[str] | None = None
        self.matches = np.arange(self.table.n)
        self.pos = 0

    # --- filters and navigation
    @property
    def current(self) -> int | None:
        return int(self.matches[self.pos]) if len(self.matches) else None

    @property
    def current_id(self) -> str | None:
        i = self.current
        return None if i is None else self.table.ids[i]

    def _mask(self) -> np.ndarray:
        sel, n = self.selection, self.table.n
        mask = np.ones(n, dtype=bool)
        if self.outcome == "kept":
            mask &= sel.kept
        elif self.outcome == "dropped":
            mask &= ~sel.kept
        elif self.outcome != "all":
            mask &= sel.code == OUTCOMES.index(self.outcome)
        if self.ifd_range is not None:
            lo, hi = self.ifd_range
            with np.errstate(invalid="ignore"):
                mask &= (sel.choice.ifd >= lo) & (sel.choice.ifd <= hi)  # NaN (missing) never matches
        if self.search:
            if self._haystack is None:
                self._haystack = [
                    "\n".join([sid] + [prompt_text(self.table.texts[v][i]) + "\n" + (self.table.texts[v][i] or {}).get(
                        "output", "") for v in range(4)]).lower() for i, sid in enumerate(self.table.ids)]
            needle = self.search.lower()
            mask &= np.fromiter((needle in h for h in self._haystack), dtype=bool, count=n)
        return mask

    def set_filter(self, *, search: str | None = None, outcome: str | None = None,
                   ifd_range: tuple[float, float] | None | str = "keep") -> int:
        """Change filters and jump to the first match; returns the number of matches."""
        if search is not None:
            self.search = search.strip()
        if outcome is not None:
            if outcome not in ("all", "kept", "dropped") + OUTCOMES:
                raise ValueError(f"unknown outcome filter {outcome!r}")
            self.outcome = outcome
        if ifd_range != "keep":
            self.ifd_range = ifd_range  # type: ignore[assignment]
        self.matches = np.flatnonzero(self._mask())
        self.pos = 0
        self.message = "" if len(self.matches) else "No sample matches these filters."
        return len(self.matches)

    def set_selection(self, selection: Selection) -> None:
        """New thresholds: re-filter but stay on the same sample when it still matches."""
        keep = self.current_id
        self.selection = selection
        self.matches = np.flatnonzero(self._mask())
        hit = np.flatnonzero(self.matches == self.table.index[keep]) if keep is not None else []
        self.pos = int(hit[0]) if len(hit) else 0

    def next(self) -> str | None:
        self.pos = min(self.pos + 1, max(len(self.matches) - 1, 0))
        return self.current_id

    def prev(self) -> str | None:
        self.pos = max(self.pos - 1, 0)
        return self.current_id

    def show(self, sample_id: str) -> bool:
        """Jump to a sample by id; filters that hide it are cleared (and the message says so)."""
        sample_id = str(sample_id).strip()
        if sample_id not in self.table.index:
            self.message = f"No sample with id {sample_id!r}."
            return False
        i = self.table.index[sample_id]
        if i not in set(self.matches.tolist()):
            self.search, self.outcome, self.ifd_range = "", "all", None
            self.matches = np.arange(self.table.n)
            self.message = f"Filters cleared to show {sample_id}."
        else:
            self.message = ""
        self.pos = int(np.flatnonzero(self.matches == i)[0])
        return True

    # --- rendering
    def default_compare(self, i: int) -> str:
        chosen = VARIANTS[self.selection.choice.chosen[i]]
        if chosen != "original":
            return chosen
        present = [v for v in VARIANTS[1:][::-1] if self.table.present[VARIANTS.index(v), i]]
        return present[0] if present else "original"

    def render(self, compare: str | None = None, heatmap: str | None = None) -> str:
        i = self.current
        if i is None:
            return f"<p>{html.escape(self.message or 'No samples.')}</p>"
        sel = self.selection
        d = sel.decision(i)
        compare = compare if compare in VARIANTS else self.default_compare(i)
        heatmap = heatmap if heatmap in VARIANTS else d.chosen_variant
        color = "#2ca02c" if d.kept else "#d62728"
        parts = [
            f"<div><b>{html.escape(d.id)}</b> &middot; {self.pos + 1} of {len(self.matches)} matching &middot; "
            f'<span style="color:{color};font-weight:bold">{html.escape(d.outcome)}</span></div>',
            f"<p style='margin:4px 0'>{html.escape(d.reason)}</p>",
            f"<ol style='margin:4px 0'><li>{html.escape(d.instruction_choice)}</li>"
            f"<li>{html.escape(d.answer_choice)}</li></ol>",
            self._scores_html(i, d.chosen_variant), self._side_by_side(i, compare),
            self._heatmap(d.id, heatmap), self._raw(d.id)]
        if self.message:
            parts.insert(0, f"<p><i>{html.escape(self.message)}</i></p>")
        return "\n".join(parts)

    def _scores_html(self, i: int, chosen: str) -> str:
        t = self.table
        ifd_key, rifd_key = FORMS[self.selection.config.score_form]
        cols = [("IFD", "ifd"), ("IFD (loss)", "ifd_loss"), ("r-IFD", "rifd"), ("r-IFD (loss)", "rifd_loss"),
                ("s(A|Q)", "s_a_q"), ("s(A)", "s_a"), ("s(Q|rev A)", "s_q_rev"), ("s(Q)", "s_q"),
                ("answer tokens", "n_answer_tokens"), ("instruction tokens", "n_instruction_tokens")]
        head = "".join(f"<th style='{CELL}'>{c}</th>" for c, _ in cols)
        rows = []
        for vi, v in enumerate(VARIANTS):
            if not t.present[vi, i]:
                rows.append(f"<tr><td style='{CELL}'>{v}</td><td colspan={len(cols) + 1} style='{CELL}'>"
                            "not in scores.jsonl</td></tr>")
                continue
            cells = []
            for _, k in cols:
                x = t.scores[k][vi, i]
                bold = k in (ifd_key, rifd_key)
                txt = "&mdash;" if math.isnan(x) else (f"{x:.0f}" if k.startswith("n_") else f"{x:.4f}")
                cells.append(f"<td style='{CELL}{'font-weight:bold;' if bold else ''}'>{txt}</td>")
            miss = html.escape(t.missing[vi][i] or "")
            style = "background:#eef7ee;" if v == chosen else ""
            rows.append(f"<tr style='{style}'><td style='{CELL}'>{v}{' (chosen)' if v == chosen else ''}</td>"
                        + "".join(cells) + f"<td style='{CELL}'>{miss}</td></tr>")
        return (f"<table style='border-collapse:collapse;font-size:90%;margin:6px 0'><tr><th style='{CELL}'>"
                f"variant</th>{head}<th style='{CELL}'>missing</th></tr>{''.join(rows)}</table>")

    def _side_by_side(self, i: int, compare: str) -> str:
        t = self.table
        left, right = t.texts[0][i], t.texts[VARIANTS.index(compare)][i]
        rows = [("instruction", prompt_text(left), prompt_text(right)),
                ("answer", (left or {}).get("output", ""), (right or {}).get("output", ""))]
        body = "".join(
            f"<tr><td style='{CELL}'><b>{name}</b></td><td style='{CELL}'>{esc(a)}</td>"
            f"<td style='{CELL}'>{esc(b)}</td><td style='{CELL}'>{diff_html(a, b)}</td></tr>"
            for name, a, b in rows)
        return (f"<table style='border-collapse:collapse;width:100%;margin:6px 0'><tr><th style='{CELL}'></th>"
                f"<th style='{CELL}'>original</th><th style='{CELL}'>{html.escape(compare)}</th>"
                f"<th style='{CELL}'>word diff (<del>removed</del> / <ins>added</ins>)</th></tr>{body}</table>")

    def _heatmap(self, sid: str, variant: str) -> str:
        rec = self.token_losses.get(sid, variant) if self.token_losses else None
        if not rec:
            return (f"<p><small>No per-token losses for {html.escape(variant)} "
                    "(03_score/token_losses.jsonl).</small></p>")
        tokens, cond, direct = rec.get("tokens") or [], rec.get("cond") or [], rec.get("direct") or []
        gain = [d - c for c, d in zip(cond, direct)]
        mean = f"{np.mean(cond):.3f}" if cond else "n/a"
        return (f"<h4 style='margin:8px 0 2px'>Per-token loss of the {html.escape(variant)} answer, with the "
                f"instruction (mean {mean}; darker red = harder for the student)</h4>"
                + token_heatmap_html(tokens, cond, mode="loss")
                + "<h4 style='margin:8px 0 2px'>How much the instruction helped each token "
                  "(loss without minus loss with: green = easier with the instruction)</h4>"
                + token_heatmap_html(tokens, gain, mode="gain"))

    def _raw(self, sid: str) -> str:
        rec = self.reflections.get(sid) if self.reflections else None
        if not rec:
            return "<p><small>No teacher text (02_reflect/reflections.jsonl).</small></p>"
        parts = []
        for name, text in (rec.get("raw") or {}).items():
            if text:
                parts.append(f"<details><summary>raw teacher text: {html.escape(name)}</summary>"
                             f"<pre style='{TEXT}background:#f7f7f7;padding:6px'>{html.escape(text)}</pre></details>")
        for name, v in (rec.get("variants") or {}).items():
            if isinstance(v, dict) and v.get("parse_ok") is False:
                parts.append(f"<p><small>{html.escape(name)}: teacher reply not parsed "
                             f"({html.escape(str(v.get('parse_reason')))}); the original text was used.</small></p>")
        return "".join(parts) or "<p><small>No raw teacher text stored for this sample.</small></p>"


# ----------------------------------------------------------------- widget


class SampleInspector:
    """Browse, search and filter samples; `show(id)` jumps to one. `.ui` is the widget, `.state` the logic."""

    def __init__(self, source: Run | Selection | SelectionTable, config: SelectConfig | None = None, *,
                 selection: Selection | None = None):
        run = source if isinstance(source, Run) else None
        if selection is None:
            if isinstance(source, Selection):
                selection = source
            else:
                table = SelectionTable.from_run(run) if run else source
                selection = table.evaluate(config or config_from_run(run))
        reflections = JsonlIndex(run.root / "02_reflect" / "reflections.jsonl") if run else None
        token_losses = JsonlIndex(run.root / "03_score" / "token_losses.jsonl", ("id", "variant")) if run else None
        self.state = InspectorState(selection, reflections=reflections, token_losses=token_losses)
        style = {"description_width": "70px"}
        self.prev_button = W.Button(description="\u25c0 prev", layout=W.Layout(width="80px"))
        self.next_button = W.Button(description="next \u25b6", layout=W.Layout(width="80px"))
        self.position = W.HTML()
        self.id_box = W.Text(placeholder="sample id (from the scatter hover)", layout=W.Layout(width="260px"))
        self.open_button = W.Button(description="Open", layout=W.Layout(width="70px"))
        self.search = W.Text(placeholder="search text, Enter", description="search", continuous_update=False,
                             style=style)
        self.outcome = W.Dropdown(options=("all", "kept", "dropped") + OUTCOMES, value="all", description="outcome",
                                  style=style)
        self.use_range = W.Checkbox(value=False, description="IFD range", indent=False, layout=W.Layout(width="100px"))
        self.ifd_range = W.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=2.0, step=0.01, continuous_update=False,
                                            readout_format=".2f", layout=W.Layout(width="320px"))
        self.compare = W.Dropdown(options=("auto",) + VARIANTS, value="auto", description="compare", style=style)
        self.heatmap = W.Dropdown(options=("auto",) + VARIANTS, value="auto", description="heatmap", style=style)
        self.body = W.HTML()
        self._syncing = False
        self.prev_button.on_click(lambda _: self._step(self.state.prev))
        self.next_button.on_click(lambda _: self._step(self.state.next))
        self.open_button.on_click(lambda _: self.show(self.id_box.value))
        self.id_box.continuous_update = False  # Enter (or leaving the box) opens the id too
        self.id_box.observe(lambda ch: None if self._syncing or not ch["new"] else self.show(ch["new"]), names="value")
        for w in (self.search, self.outcome, self.use_range, self.ifd_range):
            w.observe(lambda _: self._filter(), names="value")
        for w in (self.compare, self.heatmap):
            w.observe(lambda _: self.refresh(), names="value")
        self.ui = W.VBox([
            W.HBox([self.prev_button, self.next_button, self.position, self.id_box, self.open_button]),
            W.HBox([self.search, self.outcome]), W.HBox([self.use_range, self.ifd_range]),
            W.HBox([self.compare, self.heatmap]), self.body])
        # stable CSS classes for browser tests (no behaviour)
        for widget, name in ((self.ui, "rl-sample-inspector"), (self.prev_button, "rl-inspector-prev"),
                             (self.next_button, "rl-inspector-next"), (self.position, "rl-inspector-position"),
                             (self.id_box, "rl-inspector-id"), (self.body, "rl-inspector-body")):
            widget.add_class(name)
        self.refresh()

    def _step(self, move) -> None:
        move()
        self.refresh()

    def _filter(self) -> None:
        if self._syncing:
            return
        rng = tuple(self.ifd_range.value) if self.use_range.value else None
        self.state.set_filter(search=self.search.value, outcome=self.outcome.value, ifd_range=rng)
        self.refresh()

    def show(self, sample_id: str) -> bool:
        """Show one sample by id (clears filters that would hide it)."""
        ok = self.state.show(sample_id)
        self._syncing = True  # mirror the state in the widgets without re-filtering
        try:
            s = self.state
            self.search.value, self.outcome.value = s.search, s.outcome
            self.use_range.value = s.ifd_range is not None
            if ok:
                self.id_box.value = str(sample_id).strip()
        finally:
            self._syncing = False
        self.refresh()
        return ok

    def set_selection(self, selection: Selection) -> None:
        self.state.set_selection(selection)
        self.refresh()

    def refresh(self) -> None:
        s = self.state
        n = len(s.matches)
        current = s.current_id
        if current and self.id_box.value != current:  # the id box follows prev/next as well as show()
            self._syncing = True
            try:
                self.id_box.value = current
            finally:
                self._syncing = False
        self.position.value = f"&nbsp;{s.pos + 1 if n else 0} / {n}&nbsp;"
        self.body.value = s.render(None if self.compare.value == "auto" else self.compare.value,
                                   None if self.heatmap.value == "auto" else self.heatmap.value)
