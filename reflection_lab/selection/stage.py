"""Stage 04 as a run step: read 03_score, decide, write the training set and the reasons.

Why a separate module: the table (table.py) is pure (rows in, decisions out) so the widgets can call
it thousands of times; this module is the part that touches the run directory.
"""

from __future__ import annotations

import html
import os
import shutil
from typing import Any

from ..core.runs import Run, read_jsonl, records_failure, write_json_atomic, write_jsonl_atomic, write_text_atomic
from .rules import SelectConfig
from .table import SelectionTable

OUTPUTS = ["selected.jsonl", "selected_dataset", "decisions.jsonl", "outcomes.json", "figures.html"]
SCATTER_POINTS = 20_000  # above this the scatter and length plots are thinned evenly (browsers choke on more)


def _features() -> Any:
    from datasets import Features, Value

    return Features({"id": Value("string"), "instruction": Value("string"), "input": Value("string"),
                     "output": Value("string"), "outcome": Value("string"), "ifd": Value("float64"),
                     "rifd": Value("float64")})


def _save_dataset(rows: list[dict], folder: Any) -> None:
    """Write a `datasets` folder atomically: build it next door, then swap it in."""
    from datasets import Dataset

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds = Dataset.from_list(rows, features=_features()) if rows else Dataset.from_dict(
        {k: [] for k in _features()}, features=_features())
    ds.save_to_disk(str(tmp), num_shards=1)  # 1 shard even when empty: 0 shards cannot be loaded back
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def write_figures(selection: Any, path: Any) -> Any:
    """figures.html: the stage's figures for a CLI user who never opens notebook 04.

    Why plotly.js from the CDN: the page stays ~100 kB per run; offline, notebook 04 draws the same
    figures from the run (its plotly.js ships with the Python package).
    """
    from . import figures

    figs = [figures.ifd_histogram(selection), figures.rifd_histogram(selection),
            figures.score_scatter(selection, max_points=SCATTER_POINTS), figures.selection_sankey(selection),
            figures.length_vs_ifd(selection, max_points=SCATTER_POINTS)]
    divs = "\n".join(f.to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False,  # the matching version
                               config={"displaylogo": False}) for i, f in enumerate(figs))
    cfg = selection.config
    head = (f"IFD max {cfg.ifd_max}, r-IFD max {cfg.rifd_max}, top-k {cfg.top_k_percent}%, "
            f"score form {cfg.score_form}")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>reflection-lab: selection</title>"
            "</head><body>"
            f"<h1>Stage 04: the student's selection</h1><p>{html.escape(head)}</p>{divs}</body></html>")
    write_text_atomic(path, page)
    return path


@records_failure("select")
def run_select(run: Run, config: SelectConfig | None = None, *, force: bool = False, progress: bool = True) -> dict:
    """Stage 04: write selected.jsonl, selected_dataset/, decisions.jsonl, outcomes.json and figures.html.

    Reuses the existing output when the config and 03_score's outputs are unchanged (force=True
    redoes it). Returns the stage manifest; its counts hold total, kept, dropped and every outcome.
    progress is accepted for the stage contract: deciding takes milliseconds.
    """
    config = config or SelectConfig()
    cfg = config.as_dict()
    if not force and run.is_current("select", cfg):
        return run.manifest("select")
    run.begin("select", cfg)  # raises MissingStageError naming 03_score when scores are absent
    table = SelectionTable(read_jsonl(run.path("score", "scores.jsonl")))
    selection = table.evaluate(config)
    rows = selection.selected_rows()
    write_jsonl_atomic(run.path("select", "selected.jsonl"), rows)
    _save_dataset(rows, run.path("select", "selected_dataset"))
    write_jsonl_atomic(run.path("select", "decisions.jsonl"), [d.as_dict() for d in selection.decisions()])
    summary = selection.summary()
    write_json_atomic(run.path("select", "outcomes.json"), summary)
    write_figures(selection, run.path("select", "figures.html"))
    counts = {k: v for k, v in summary.items() if isinstance(v, int) and (v or ":" not in k)}
    return run.complete("select", cfg, OUTPUTS, counts=counts,
                        extra={"passed_thresholds": summary["passed_thresholds"],
                               "student_choice": summary["student_choice"]})
