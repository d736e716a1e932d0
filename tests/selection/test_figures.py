"""Figure contents (no browser): traces, names, data lengths, threshold lines, titles."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from scored_run import scored_row, synthetic_rows, write_scored_run

from reflection_lab.selection import figures as viz
from reflection_lab.selection import SelectConfig, SelectionTable


@pytest.fixture(scope="module")
def table() -> SelectionTable:
    rows = synthetic_rows(400, seed=5, missing_rate=0.03)
    rows.append(scored_row("xss", {"original": (0.5, 0.9), "reflect_response": (0.6, 0.5)},
                           {"reflect_response": ("<script>alert(1)</script> " + "long " * 60, "", "fine answer")}))
    return SelectionTable(rows)


def _bins_total(trace) -> int:
    return int(np.sum(trace.y[:-1]))


def test_ifd_histogram_traces_line_and_title(table):
    sel = table.evaluate(SelectConfig(ifd_max=0.9))
    fig = viz.ifd_histogram(sel, bins=30)
    assert isinstance(fig, go.Figure) and not isinstance(fig, go.FigureWidget)
    assert [t.name for t in fig.data] == ["original", "reflect_instruction", "reflect_both", "kept pairs"]
    assert all(len(t.x) == 31 and len(t.y) == 31 for t in fig.data)
    for t, vi in zip(fig.data[:3], (0, 1, 3)):
        assert _bins_total(t) == int((~np.isnan(table.scores["ifd"][vi])).sum()) == t.meta["n"]
    assert _bins_total(fig.data[3]) == sel.n_kept
    assert fig.layout.shapes[0].x0 == fig.layout.shapes[0].x1 == 0.9
    assert "PPL ratio" in fig.layout.title.text and fig.layout.xaxis.type == "linear"


def test_histogram_follows_thresholds_with_fixed_bins(table):
    a = viz.rifd_histogram(table.evaluate(SelectConfig(rifd_max=1.0)))
    b = viz.rifd_histogram(table.evaluate(SelectConfig(rifd_max=0.7)))
    assert [t.name for t in a.data] == ["original", "reflect_response", "reflect_both", "kept pairs"]
    assert list(a.data[0].x) == list(b.data[0].x) and list(a.data[0].y) == list(b.data[0].y)
    assert _bins_total(b.data[3]) < _bins_total(a.data[3])
    assert b.layout.shapes[0].x0 == 0.7 and "r-IFD" in b.layout.title.text


def test_histogram_options(table):
    fig = viz.ifd_histogram(table, config=SelectConfig(score_form="loss"), log=True,
                            variants=("chosen",), show_selected=False)
    assert [t.name for t in fig.data] == ["chosen"]
    assert fig.layout.xaxis.type == "log" and "loss ratio" in fig.layout.title.text
    assert np.all(np.diff(np.log(fig.data[0].x)) == pytest.approx(np.diff(np.log(fig.data[0].x))[0]))
    with pytest.raises(ValueError):
        viz.score_histogram(table, "bleu")


def test_scatter_one_trace_per_outcome_with_ids(table):
    sel = table.evaluate()
    fig = viz.score_scatter(sel, truncate=20)
    counts = sel.counts()
    assert fig.data, "expected traces"
    finite = ~(np.isnan(sel.choice.ifd) | np.isnan(sel.choice.rifd))
    for t in fig.data:
        outcome = t.meta["outcome"]
        assert t.name == f"{outcome} ({counts[outcome]})"
        assert len(t.x) == len(t.y) == len(t.customdata) == len(t.hovertext)
        assert set(t.customdata) == {i for i in sel.ids_with(outcome) if finite[table.index[i]]}
    assert "dropped:missing_score" not in [t.meta["outcome"] for t in fig.data]
    xss = next(t for t in fig.data if "xss" in t.customdata)
    text = xss.hovertext[list(xss.customdata).index("xss")]
    assert "<script>" not in text and "&lt;script&gt;" in text and text.endswith("\u2026")
    assert fig.layout.shapes[0].x0 == 1.0 and fig.layout.shapes[1].y0 == 1.0
    thin = viz.score_scatter(sel, max_points=50)
    assert sum(len(t.x) for t in thin.data) <= 60


def test_sankey_flows_add_up(table):
    sel = table.evaluate()
    fig = viz.selection_sankey(sel)
    s = fig.data[0]
    labels = list(s.node.label)
    src, dst, val = list(s.link.source), list(s.link.target), list(s.link.value)
    assert labels[0] == f"all samples ({table.n})"
    assert sum(v for a, v in zip(src, val) if a == 0) == table.n
    kept = next(k for k, lab in enumerate(labels) if lab.startswith("kept"))
    assert sum(v for b, v in zip(dst, val) if b == kept) == sel.n_kept
    assert labels[kept] == f"kept ({sel.n_kept})"
    assert any(lab.startswith("reflected instruction") for lab in labels)
    assert all(v > 0 for v in val)


def test_length_vs_ifd(table):
    sel = table.evaluate(SelectConfig(min_words=20, max_words=250))
    fig = viz.length_vs_ifd(sel)
    assert [t.name for t in fig.data] == ["kept", "dropped"]
    assert len(fig.data[0].x) == sel.n_kept
    finite = ~np.isnan(sel.choice.ifd)
    assert len(fig.data[1].x) == int((~sel.kept & finite).sum())
    xs = sorted(sh.x0 for sh in fig.layout.shapes if sh.x0 == sh.x1 and sh.x0 is not None)
    assert xs == [20, 250] and fig.layout.xaxis.type == "log"


def test_outcome_frame(table):
    df = viz.outcome_frame(table.evaluate())
    assert list(df.outcome[:4]) == ["reflect_both", "reflect_response", "reflect_instruction", "original"]
    assert df.samples.sum() == table.n


def test_each_histogram_names_its_own_formula(run):
    from reflection_lab.selection import SelectConfig

    write_scored_run(run, [scored_row("a", {"original": (0.8, 0.9), "reflect_instruction": (0.9, 0.7),
                                            "reflect_response": (0.7, 0.6), "reflect_both": (0.85, 0.5)})])
    table = SelectionTable.from_run(run)
    assert "PPL(A|Q) / PPL(A)" in viz.ifd_histogram(table).layout.title.text
    rifd = viz.rifd_histogram(table).layout.title.text
    assert "PPL(Q | reverse prompt with A) / PPL(Q)" in rifd and "PPL(A|Q)" not in rifd
    assert "s(Q | reverse" in viz.rifd_histogram(table, config=SelectConfig(score_form="loss")).layout.title.text
