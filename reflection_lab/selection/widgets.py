"""Notebook widgets for stage 04: a threshold explorer and (in inspector.py) a sample inspector.

Why only core ipywidgets and plain plotly figures: they behave the same in JupyterLab, the classic
notebook and Colab with no extension or custom JavaScript to install. A figure is redrawn into an
`ipywidgets.Output` when a slider is released (sliders use continuous_update=False, so a 50,000
sample set re-decides once per move, not on every pixel).

All logic lives in plain Python state objects (`ExplorerState`, `InspectorState`); the widget
classes only forward widget values to them and show what they return. Tests set `slider.value`
and read `.state` without a browser.
"""

from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as W

from ..core.runs import Run
from . import figures
from .inspector import InspectorState, SampleInspector, config_from_run, display_figures
from .rules import KEPT_OUTCOMES, OUTCOMES, SelectConfig
from .stage import run_select
from .table import Selection, SelectionTable

FIGURES = ("histograms", "scatter", "flow", "length")
__all__ = ["ExplorerState", "ThresholdExplorer", "SampleInspector", "InspectorState", "SelectionLab",
           "selection_lab"]


class ExplorerState:
    """The explorer's data: one table, the current config and its selection, and the figures to show."""

    def __init__(self, table: SelectionTable, config: SelectConfig | None = None, *,
                 figure: str = "histograms", log: bool = False):
        self.table = table
        self.config = config or SelectConfig()
        self.figure = figure
        self.log = log
        self.selection: Selection = table.evaluate(self.config)
        self.figures: list = []
        self.updates = 0
        self.listeners: list[Callable[[Selection], Any]] = []  # called with each new selection

    def update(self, **changes: Any) -> Selection:
        """Change config fields (and/or figure=, log=), re-decide, rebuild the figures."""
        self.figure = changes.pop("figure", self.figure)
        self.log = changes.pop("log", self.log)
        if changes:
            self.config = self.config.replace(**changes)
        self.selection = self.table.evaluate(self.config)
        self.figures = self.build_figures()
        self.updates += 1
        for listener in self.listeners:
            listener(self.selection)
        return self.selection

    def build_figures(self) -> list:
        s = self.selection
        if self.figure == "histograms":
            return [figures.ifd_histogram(s, log=self.log), figures.rifd_histogram(s, log=self.log)]
        if self.figure == "scatter":
            return [figures.score_scatter(s, log=self.log, max_points=20_000)]
        if self.figure == "flow":
            return [figures.selection_sankey(s)]
        if self.figure == "length":
            return [figures.length_vs_ifd(s, max_points=20_000)]
        raise ValueError(f"figure must be one of {FIGURES}, not {self.figure!r}")

    @property
    def counts(self) -> dict[str, int]:
        return self.selection.counts()

    @property
    def kept_ids(self) -> list[str]:
        return self.selection.kept_ids()

    def ids(self, which: str) -> list[str]:
        """'kept', 'dropped' or one outcome name."""
        if which == "kept":
            return self.selection.kept_ids()
        return self.selection.ids_with(which)

    def summary_html(self) -> str:
        s, c = self.selection, self.config
        parts = [f"IFD &lt; {c.ifd_max:g}", f"r-IFD &lt; {c.rifd_max:g}"]
        if c.top_k_percent is not None:
            parts.append(f"top {c.top_k_percent:g}% by IFD")
        if not c.keep_unreflected_answers:
            parts.append("reflected answers only")
        share = 100 * s.n_kept / max(s.table.n, 1)
        return (f"<b>{s.n_kept:,}</b> of {s.table.n:,} samples kept ({share:.1f}%) with "
                f"{', '.join(parts)} &middot; scores: {c.score_form} form")

    def table_html(self) -> str:
        return figures.outcome_frame(self.selection).to_html(index=False, border=0)


class ThresholdExplorer:
    """Sliders for IFD max, r-IFD max and top-k% with live figures, counts and id lists.

    `ThresholdExplorer(run).ui` is the widget; `.state` is the plain-Python state. "Write selection"
    calls `run_select(run, state.config)`. To look at one point of the scatter plot: hover it, copy
    its id (the hover box shows it; it is the trace's customdata), pick it in the id list below or
    type it into the inspector's id box and press Open.
    """

    def __init__(self, source: Run | SelectionTable, config: SelectConfig | None = None, *,
                 on_open: Callable[[str], Any] | None = None, max_ids: int = 500):
        self.run = source if isinstance(source, Run) else None
        table = SelectionTable.from_run(source) if self.run else source
        config = config or (config_from_run(self.run) if self.run else None) or SelectConfig()
        self.state = ExplorerState(table, config)
        self.on_open = on_open
        self.max_ids = max_ids
        hi = max(2.0, config.ifd_max, config.rifd_max)
        style = {"description_width": "90px"}
        layout = W.Layout(width="420px")
        self.ifd_slider = W.FloatSlider(value=config.ifd_max, min=0.0, max=hi, step=0.01, description="IFD max",
                                        continuous_update=False, readout_format=".2f", style=style, layout=layout)
        self.rifd_slider = W.FloatSlider(value=config.rifd_max, min=0.0, max=hi, step=0.01, description="r-IFD max",
                                         continuous_update=False, readout_format=".2f", style=style, layout=layout)
        self.topk_slider = W.FloatSlider(value=100.0 if config.top_k_percent is None else config.top_k_percent,
                                         min=0.0, max=100.0, step=0.5, description="top-k %",
                                         continuous_update=False, readout_format=".1f", style=style, layout=layout)
        self.unreflected = W.Checkbox(value=config.keep_unreflected_answers, description="keep unreflected answers",
                                      indent=False)
        self.form = W.ToggleButtons(options=[("PPL ratio", "ppl"), ("loss ratio", "loss")], value=config.score_form,
                                    description="IFD form", style=style)
        self.figure = W.Dropdown(options=FIGURES, value="histograms", description="figure", style=style)
        self.log = W.Checkbox(value=False, description="log scale", indent=False)
        self.count = W.HTML()
        self.outcomes = W.HTML()
        self.plot = W.Output()
        self.id_kind = W.Dropdown(description="ids", style=style)
        self.id_list = W.Select(options=[], rows=8, layout=W.Layout(width="260px"))
        self.id_note = W.HTML()
        self.open_button = W.Button(description="Open in inspector", disabled=on_open is None)
        self.write_button = W.Button(description="Write selection to run", button_style="primary",
                                     disabled=self.run is None, icon="save")
        self.status = W.HTML()
        for w in (self.ifd_slider, self.rifd_slider, self.topk_slider, self.unreflected, self.form, self.figure,
                  self.log):
            w.observe(self._on_change, names="value")
        self.id_kind.observe(lambda _: self._refresh_ids(), names="value")
        self.open_button.on_click(lambda _: self.open_selected())
        self.write_button.on_click(lambda _: self.write())
        help_text = W.HTML(
            "<small>A pair is kept when IFD &lt; IFD max (the instruction helps the student) and "
            "r-IFD &lt; r-IFD max (the answer points back to its instruction); top-k keeps the highest "
            "IFD among them (100 = off). Sliders apply when released.</small>")
        controls = W.VBox([self.ifd_slider, self.rifd_slider, self.topk_slider,
                           W.HBox([self.unreflected, self.log]), self.form, self.figure, help_text])
        ids = W.VBox([self.id_kind, self.id_list, self.id_note, self.open_button])
        self.ui = W.VBox([W.HBox([controls, ids]), self.count, self.plot, self.outcomes,
                          W.HBox([self.write_button, self.status])])
        _css_classes({self.ui: "rl-threshold-explorer", self.ifd_slider: "rl-ifd-max", self.rifd_slider: "rl-rifd-max",
                      self.topk_slider: "rl-topk", self.count: "rl-explorer-count", self.plot: "rl-explorer-plot",
                      self.outcomes: "rl-explorer-outcomes", self.write_button: "rl-write-selection"})
        self.state.update()
        self._refresh()

    def _config_from_widgets(self) -> dict:
        k = float(self.topk_slider.value)
        return {"ifd_max": float(self.ifd_slider.value), "rifd_max": float(self.rifd_slider.value),
                "top_k_percent": None if k >= 100 else k, "keep_unreflected_answers": bool(self.unreflected.value),
                "score_form": self.form.value}

    def _on_change(self, _change: Any = None) -> None:
        self.state.update(figure=self.figure.value, log=bool(self.log.value), **self._config_from_widgets())
        self._refresh()

    def _refresh(self) -> None:
        self.count.value = self.state.summary_html()
        self.outcomes.value = self.state.table_html()
        counts = self.state.counts
        kinds = [("kept", "kept"), ("dropped (all reasons)", "dropped")]
        kinds += [(f"{o} ({counts[o]})", o) for o in OUTCOMES if counts[o] and o not in KEPT_OUTCOMES]
        kinds += [(f"{o} ({counts[o]})", o) for o in KEPT_OUTCOMES if counts[o]]
        current = self.id_kind.value
        self.id_kind.options = kinds
        if current in [v for _, v in kinds]:
            self.id_kind.value = current
        self._refresh_ids()
        display_figures(self.plot, self.state.figures)

    def _refresh_ids(self) -> None:
        ids = self.state.ids(self.id_kind.value or "kept")
        self.id_list.options = ids[: self.max_ids]
        more = f" (first {self.max_ids} shown)" if len(ids) > self.max_ids else ""
        self.id_note.value = f"<small>{len(ids):,} ids{more}</small>"

    def open_selected(self) -> str | None:
        sid = self.id_list.value
        if sid and self.on_open:
            self.on_open(sid)
        return sid

    def write(self) -> dict | None:
        """Write the current selection into the run (04_select), as `run_select` would."""
        if self.run is None:
            self.status.value = "No run attached: build the explorer from a Run to write."
            return None
        manifest = run_select(self.run, self.state.config)
        self.status.value = (f"Wrote {manifest['counts'].get('kept', 0):,} pairs to "
                             f"{html.escape(str(self.run.path('select', 'selected.jsonl')))}")
        return manifest


class SelectionLab:
    """Explorer and inspector in two tabs, sharing one table; the inspector follows the thresholds."""

    def __init__(self, source: Run | SelectionTable, config: SelectConfig | None = None):
        self.tabs = W.Tab()
        self.explorer = ThresholdExplorer(source, config, on_open=self._open)
        state = self.explorer.state
        self.inspector = SampleInspector(self.explorer.run or state.table, selection=state.selection)
        state.listeners.append(self.inspector.set_selection)
        self.tabs.children = [self.explorer.ui, self.inspector.ui]
        self.tabs.set_title(0, "thresholds")
        self.tabs.set_title(1, "samples")
        self.tabs.add_class("rl-selection-lab")
        self.ui = self.tabs

    def _open(self, sample_id: str) -> None:
        self.inspector.show(sample_id)
        self.tabs.selected_index = 1


def _css_classes(widgets: dict[W.DOMWidget, str]) -> None:
    """Stable CSS classes (rl-...) so browser tests find widgets without depending on layout or labels."""
    for widget, name in widgets.items():
        widget.add_class(name)


def selection_lab(source: Run | SelectionTable, config: SelectConfig | None = None) -> SelectionLab:
    """Both widgets in two tabs; `display(selection_lab(run).ui)` in a notebook."""
    return SelectionLab(source, config)
