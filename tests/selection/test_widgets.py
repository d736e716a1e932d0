"""Widget state logic without a browser: sliders -> counts and ids; inspector browse/search/filter/show."""

from __future__ import annotations

import json
import re

import pytest
from scored_run import scored_row, synthetic_rows, write_scored_run

from reflection_lab.selection import SelectConfig, SelectionTable, run_select
from reflection_lab.selection.widgets import SelectionLab, ThresholdExplorer
from reflection_lab.selection.html import JsonlIndex, diff_html, token_heatmap_html
from reflection_lab.selection.inspector import SampleInspector, display_figures


def _rows() -> list[dict]:
    rows = [
        scored_row("both", {"original": (0.5, 0.6), "reflect_instruction": (0.7, 0.5), "reflect_response": (0.5, 0.9),
                            "reflect_both": (0.8, 0.3)}),
        scored_row("resp", {"original": (0.6, 0.6), "reflect_instruction": (0.5, 0.5), "reflect_response": (0.7, 0.4),
                            "reflect_both": (0.9, 0.3)}),
        scored_row("orig", {"original": (0.6, 0.4), "reflect_response": (0.7, 0.5)}),
        scored_row("high", {"original": (1.3, 0.6), "reflect_response": (1.2, 0.4)}),
        scored_row("miss", {"original": "empty answer", "reflect_response": (0.5, 0.4)}),
    ]
    rows.append(scored_row("html", {"original": (0.4, 0.9), "reflect_response": (0.45, 0.5)},
                           {"original": ("Use <b>bold</b> & co", "", "old <i>answer</i> text"),
                            "reflect_response": ("Use <b>bold</b> & co", "", "new <i>answer</i> text here")}))
    return rows


@pytest.fixture
def scored(run):
    return write_scored_run(run, _rows())


def test_explorer_sliders_drive_counts_and_ids(scored):
    ex = ThresholdExplorer(scored)
    assert ex.state.kept_ids == ["both", "resp", "html"]
    assert "<b>3</b> of 6" in ex.count.value
    ex.ifd_slider.value = 0.75  # resp (0.7) and html (0.45) stay, both (0.8) goes
    assert ex.state.config.ifd_max == 0.75
    assert ex.state.kept_ids == ["resp", "html"] and ex.state.counts["dropped:ifd_too_high"] == 2
    ex.rifd_slider.value = 0.45
    assert ex.state.kept_ids == ["resp"]
    ex.rifd_slider.value = 1.0
    ex.topk_slider.value = 50  # int(2 * 50 / 100) = 1: the higher IFD one (resp 0.7)
    assert ex.state.config.top_k_percent == 50 and ex.state.kept_ids == ["resp"]
    ex.topk_slider.value = 100
    assert ex.state.config.top_k_percent is None
    ex.unreflected.value = True
    assert ex.state.kept_ids == ["resp", "orig", "html"]
    assert "dropped:ifd_too_high" in ex.outcomes.value and "reflect_response" in ex.outcomes.value
    assert [f.layout.shapes[0].x0 for f in ex.state.figures] == [0.75, 1.0]


def test_explorer_figures_form_and_id_lists(scored):
    ex = ThresholdExplorer(scored)
    assert len(ex.state.figures) == 2 and "PPL ratio" in ex.state.figures[0].layout.title.text
    ex.form.value = "loss"
    assert ex.state.config.score_form == "loss" and "loss ratio" in ex.state.figures[0].layout.title.text
    for kind, n in (("scatter", 1), ("flow", 1), ("length", 1), ("histograms", 2)):
        ex.figure.value = kind
        assert len(ex.state.figures) == n
    ex.log.value = True
    assert ex.state.figures[0].layout.xaxis.type == "log"
    assert list(ex.id_list.options) == ["both", "resp", "html"]
    values = [v for _, v in ex.id_kind.options]
    assert values[:2] == ["kept", "dropped"] and "dropped:missing_score" in values
    ex.id_kind.value = "dropped:missing_score"
    assert list(ex.id_list.options) == ["miss"] and "1 ids" in ex.id_note.value
    ex.id_kind.value = "dropped"
    assert list(ex.id_list.options) == ["orig", "high", "miss"]


def test_explorer_writes_the_chosen_selection(scored):
    opened = []
    ex = ThresholdExplorer(scored, on_open=opened.append)
    ex.ifd_slider.value = 0.75
    ex.write_button.click()
    m = scored.manifest("select")
    assert m["status"] == "complete" and m["config"]["ifd_max"] == 0.75 and m["counts"]["kept"] == 2
    assert "Wrote 2 pairs" in ex.status.value
    lines = scored.path("select", "selected.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["resp", "html"]
    ex.id_list.value = "html"
    ex.open_button.click()
    assert opened == ["html"]
    again = ThresholdExplorer(scored)  # reopens with the written config
    assert again.ifd_slider.value == 0.75 and again.state.kept_ids == ["resp", "html"]


def test_explorer_on_a_table_cannot_write():
    ex = ThresholdExplorer(SelectionTable(_rows()))
    assert ex.write_button.disabled and ex.write() is None and "No run" in ex.status.value


def test_explorer_on_50k_follows_the_slider():
    """The 200 ms target is measured by benchmarks/bench_selection.py, not here (CI machines vary)."""
    ex = ThresholdExplorer(SelectionTable(synthetic_rows(50_000, seed=1)))
    for v in (0.9, 0.8, 0.95):
        ex.ifd_slider.value = v
        assert ex.state.config.ifd_max == v
        assert ex.state.selection.n_kept == ex.state.table.evaluate(ex.state.config).n_kept


def test_display_figures_outside_a_kernel_is_a_no_op():
    import ipywidgets as W

    assert display_figures(W.Output(), []) is False


# ----------------------------------------------------------------- inspector


def test_inspector_navigation_and_show(scored):
    ins = SampleInspector(scored)
    s = ins.state
    assert s.current_id == "both" and "1 / 6" in ins.position.value
    ins.next_button.click()
    ins.next_button.click()
    assert s.current_id == "orig"
    ins.prev_button.click()
    assert s.current_id == "resp"
    for _ in range(10):
        s.next()
    assert s.current_id == "html"  # stops at the end
    assert ins.show("high") and s.current_id == "high" and "high" in ins.body.value
    assert not ins.show("nope") and "No sample with id" in ins.body.value
    ins.id_box.value = "miss"  # pressing Enter in the id box
    assert s.current_id == "miss"


def test_inspector_search_and_filters(scored):
    ins = SampleInspector(scored)
    s = ins.state
    ins.search.value = "TOPIC RESP"
    assert s.current_id == "resp" and len(s.matches) == 1
    ins.search.value = "a better detailed answer about both"  # only in a reflected answer
    assert [s.table.ids[i] for i in s.matches] == ["both"]
    ins.search.value = ""
    ins.outcome.value = "dropped"
    assert [s.table.ids[i] for i in s.matches] == ["orig", "high", "miss"]
    ins.outcome.value = "dropped:missing_score"
    assert s.current_id == "miss"
    ins.outcome.value = "all"
    ins.ifd_range.value = (0.6, 0.85)
    ins.use_range.value = True
    assert [s.table.ids[i] for i in s.matches] == ["both", "resp", "orig"]  # chosen-pair IFD; missing never matches
    ins.search.value = "zzz"
    assert len(s.matches) == 0 and "No sample matches" in ins.body.value and "0 / 0" in ins.position.value
    ins.show("high")  # hidden by the filters: they are cleared, widgets follow
    assert s.current_id == "high" and ins.search.value == "" and not ins.use_range.value
    assert "Filters cleared to show high" in ins.body.value
    with pytest.raises(ValueError):
        s.set_filter(outcome="nonsense")


def test_inspector_page_contents(scored):
    ins = SampleInspector(scored)
    ins.show("html")
    page = ins.body.value
    assert "reflect_response (chosen)" in page and "Kept as reflect_response" in page
    assert "Reflected answer chosen" in page and "0.4500" in page  # scores table
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page  # sample text is escaped
    assert "<ins" in page and "here" in page
    assert "&lt;b&gt;raw&lt;/b&gt; teacher text for html" in page  # raw teacher text, escaped
    spans = re.findall(r'<span title="loss ([0-9.]+)"', page)
    assert len(spans) == len("new <i>answer</i> text here".split())
    assert "How much the instruction helped" in page
    ins.heatmap.value = "original"
    assert len(re.findall(r'<span title="loss', ins.body.value)) == 3
    ins.compare.value = "reflect_both"  # absent for this sample: the column is empty, nothing breaks
    assert "reflect_both" in ins.body.value
    ins.show("miss")
    assert "missing score: empty answer" in ins.body.value and "empty answer" in ins.body.value


def test_inspector_without_token_losses_or_raw(run):
    write_scored_run(run, _rows()[:2], token_losses=False, raw=False)
    ins = SampleInspector(run)
    assert "No per-token losses" in ins.body.value and "No raw teacher text stored" in ins.body.value


def test_lab_links_explorer_and_inspector(scored):
    lab = SelectionLab(scored)
    lab.explorer.id_kind.value = "dropped"
    lab.explorer.id_list.value = "high"
    lab.explorer.open_button.click()
    assert lab.inspector.state.current_id == "high" and lab.tabs.selected_index == 1
    lab.inspector.outcome.value = "kept"
    assert len(lab.inspector.state.matches) == 3
    lab.explorer.ifd_slider.value = 0.75  # the inspector follows the new thresholds
    assert len(lab.inspector.state.matches) == 2
    assert lab.inspector.state.selection is lab.explorer.state.selection


# ----------------------------------------------------------------- HTML helpers


def test_diff_html_marks_and_escapes():
    out = diff_html("keep <a> old", "keep <a> new & more")
    assert "<del" in out and ">old</del>" in out and "new &amp; more</ins>" in out
    assert "&lt;a&gt;" in out and "<a>" not in out
    assert "<ins" not in diff_html("same text", "same text")


def test_token_heatmap_escapes_and_scales():
    out = token_heatmap_html(["<x>", " y", "\n"], [0.0, 2.0, 1.0], mode="loss")
    assert "&lt;x&gt;" in out and "\u21b5<br>" in out
    assert 'title="loss 2.000"' in out and "rgba(214,39,40,0.85)" in out and "rgba(214,39,40,0.00)" in out
    gain = token_heatmap_html(["a", "b"], [1.0, -1.0], mode="gain")
    assert "rgba(44,160,44,0.85)" in gain and "rgba(214,39,40,0.85)" in gain
    assert "1 tokens without a value" in token_heatmap_html(["a", "b"], [1.0])


def test_jsonl_index_reads_one_row(tmp_path):
    p = tmp_path / "t.jsonl"
    rows = [{"tokens": ["x"], "id": 'q"1', "variant": "original"}, {"id": "b", "variant": "reflect_both", "cond": [1]}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "torn", "vari')
    idx = JsonlIndex(p, ("id", "variant"))
    assert idx.get('q"1', "original") == rows[0] and idx.get("b", "reflect_both") == rows[1]
    assert idx.get("torn", "x") is None and JsonlIndex(tmp_path / "none.jsonl").get("a") is None


def test_run_select_config_roundtrip_through_widgets(scored):
    run_select(scored, SelectConfig(ifd_max=0.65, top_k_percent=50.0))
    ins = SampleInspector(scored)
    assert ins.state.selection.config.ifd_max == 0.65 and ins.state.selection.config.top_k_percent == 50.0


def test_inspector_id_box_follows_next_and_prev(tmp_path):
    from scored_run import synthetic_rows, write_scored_run

    from reflection_lab.core.runs import Run
    from reflection_lab.selection.inspector import SampleInspector

    run = write_scored_run(Run(tmp_path / "run"), synthetic_rows(4))
    insp = SampleInspector(run)
    first = insp.state.current_id
    assert insp.id_box.value == first
    insp.next_button.click()
    assert insp.state.current_id != first and insp.id_box.value == insp.state.current_id
    insp.prev_button.click()
    assert insp.id_box.value == first
