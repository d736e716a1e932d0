"""Selection rules (Selective Reflection-Tuning student decisions), filters, top-k and stage artifacts."""

from __future__ import annotations

import json
import math
import random

import pytest
from scored_run import scored_row, synthetic_rows, write_scored_run

from reflection_lab.core.runs import MissingStageError
from reflection_lab.selection import OUTCOMES, SelectConfig, SelectionTable, decide, run_select, scores_frame

FULL = ("original", "reflect_instruction", "reflect_response", "reflect_both")


def one(spec: dict, config: SelectConfig | None = None, sid: str = "x"):
    return decide([scored_row(sid, spec)], config)[0]


# ----------------------------------------------------------------- step 1: instruction


def test_reflected_instruction_wins_on_strictly_higher_ifd():
    d = one({"original": (0.5, 0.5), "reflect_instruction": (0.6, 0.5), "reflect_response": (0.5, 0.9),
             "reflect_both": (0.6, 0.7)}, SelectConfig(keep_unreflected_answers=True))
    assert d.chosen_instruction_variant == "reflect_instruction"
    assert d.chosen_variant == "reflect_instruction" and d.outcome == "reflect_instruction" and d.kept
    assert "Reflected instruction chosen" in d.instruction_choice and "0.6000" in d.instruction_choice


def test_ifd_tie_keeps_original_instruction():
    d = one({"original": (0.6, 0.5), "reflect_instruction": (0.6, 0.1), "reflect_response": (0.6, 0.4),
             "reflect_both": (0.6, 0.1)})
    assert d.chosen_instruction_variant == "original" and d.chosen_variant == "reflect_response"
    assert "tie keeps the original" in d.instruction_choice


def test_lower_reflected_ifd_keeps_original_instruction():
    d = one({"original": (0.7, 0.5), "reflect_instruction": (0.6, 0.1), "reflect_response": (0.7, 0.6),
             "reflect_both": (0.6, 0.1)}, SelectConfig(keep_unreflected_answers=True))
    assert d.chosen_variant == "original" and "not higher" in d.instruction_choice


# ----------------------------------------------------------------- step 2: answer


@pytest.mark.parametrize("rb, want", [(0.4, "reflect_both"), (0.5, "reflect_instruction"),
                                      (0.6, "reflect_instruction")])
def test_answer_choice_after_reflected_instruction(rb, want):
    # compares reflect_both against reflect_instruction (r-IFD 0.5); the original's r-IFD is irrelevant here
    d = one({"original": (0.5, 0.1), "reflect_instruction": (0.6, 0.5), "reflect_response": (0.5, 0.01),
             "reflect_both": (0.7, rb)}, SelectConfig(keep_unreflected_answers=True))
    assert d.chosen_variant == want and d.kept
    if rb == 0.5:
        assert "tie keeps the current" in d.answer_choice


@pytest.mark.parametrize("rr, want", [(0.4, "reflect_response"), (0.5, "original"), (0.6, "original")])
def test_answer_choice_with_original_instruction(rr, want):
    d = one({"original": (0.5, 0.5), "reflect_instruction": (0.4, 0.01), "reflect_response": (0.8, rr),
             "reflect_both": (0.4, 0.01)}, SelectConfig(keep_unreflected_answers=True))
    assert d.chosen_variant == want
    assert d.ifd == (0.8 if want == "reflect_response" else 0.5)


# ----------------------------------------------------------------- step 3: thresholds


@pytest.mark.parametrize("ifd, kept", [(0.9999, True), (1.0, False), (1.2, False)])
def test_final_ifd_must_be_strictly_below_one(ifd, kept):
    d = one({"original": (0.5, 0.6), "reflect_response": (ifd, 0.5)})
    assert d.chosen_variant == "reflect_response" and d.kept is kept
    if not kept:
        assert d.outcome == "dropped:ifd_too_high" and "do not belong together" in d.reason


@pytest.mark.parametrize("rifd, kept", [(0.9999, True), (1.0, False), (1.5, False)])
def test_final_rifd_must_be_strictly_below_one(rifd, kept):
    d = one({"original": (0.5, 2.0), "reflect_response": (0.5, rifd)})
    assert d.chosen_variant == "reflect_response" and d.kept is kept
    if not kept:
        assert d.outcome == "dropped:rifd_too_high"


def test_thresholds_are_configurable():
    spec = {"original": (0.5, 0.9), "reflect_response": (0.85, 0.7)}
    assert one(spec).kept
    assert one(spec, SelectConfig(ifd_max=0.85)).outcome == "dropped:ifd_too_high"
    assert one(spec, SelectConfig(rifd_max=0.7)).outcome == "dropped:rifd_too_high"
    assert one({"original": (0.5, 0.6), "reflect_response": (1.1, 0.5)}, SelectConfig(ifd_max=1.2)).kept


def test_ifd_checked_before_rifd():
    d = one({"original": (0.5, 2.0), "reflect_response": (1.5, 1.5)})
    assert d.outcome == "dropped:ifd_too_high"


# ----------------------------------------------------------------- missing scores


def test_missing_reflected_ifd_keeps_original_instruction():
    d = one({"original": (0.5, 0.6), "reflect_instruction": "teacher reply unparsable",
             "reflect_response": (0.5, 0.4), "reflect_both": (0.9, 0.1)})
    assert d.chosen_instruction_variant == "original" and d.chosen_variant == "reflect_response" and d.kept
    assert d.instruction_choice.startswith("reflect_instruction IFD missing: teacher reply unparsable")


def test_missing_original_ifd_never_passes():
    d = one({"original": (None, 0.6), "reflect_instruction": (0.9, 0.5), "reflect_response": (0.5, 0.9),
             "reflect_both": (0.5, 0.1)}, SelectConfig(keep_unreflected_answers=True))
    assert d.chosen_variant == "original" and not d.kept and d.outcome == "dropped:missing_score"
    assert d.instruction_choice.startswith("original IFD missing: missing in test")
    assert d.reason.startswith("missing score: missing in test") and d.ifd is None


def test_missing_reflected_answer_rifd_keeps_current_answer():
    d = one({"original": (0.5, 0.6), "reflect_instruction": (0.7, 0.5), "reflect_response": (0.5, 0.1),
             "reflect_both": (0.9, None)}, SelectConfig(keep_unreflected_answers=True))
    assert d.chosen_variant == "reflect_instruction" and d.kept
    assert d.answer_choice.startswith("reflect_both r-IFD missing: missing in test")


def test_missing_reflect_response_rifd_keeps_original_answer():
    d = one({"original": (0.5, 0.6), "reflect_response": "prompt longer than max_length"})
    assert d.chosen_variant == "original" and d.outcome == "dropped:answer_not_reflected"
    assert d.answer_choice.startswith("reflect_response r-IFD missing: prompt longer than max_length")


@pytest.mark.parametrize("take_q", [True, False])
def test_missing_current_rifd_drops_the_pair(take_q):
    spec = {"original": (0.5, 0.6), "reflect_instruction": (0.7 if take_q else 0.4, 0.5),
            "reflect_response": (0.5, 0.1), "reflect_both": (0.8, 0.1)}
    cur = "reflect_instruction" if take_q else "original"
    spec[cur] = (spec[cur][0], None)
    d = one(spec, SelectConfig(keep_unreflected_answers=True))
    assert d.chosen_variant == cur and d.outcome == "dropped:missing_score" and d.rifd is None
    assert d.answer_choice.startswith(f"{cur} r-IFD missing")


@pytest.mark.parametrize("take_q", [True, False])
def test_chosen_reflected_pair_with_missing_ifd_is_dropped(take_q):
    # the reflected answer wins on r-IFD, but its own IFD is missing: the final check must not pass it
    spec = {"original": (0.5, 0.6), "reflect_instruction": (0.7 if take_q else 0.4, 0.5),
            "reflect_response": (None, 0.1), "reflect_both": (None, 0.1)}
    d = one(spec)
    assert d.chosen_variant == ("reflect_both" if take_q else "reflect_response")
    assert d.outcome == "dropped:missing_score" and d.ifd is None and d.rifd == 0.1
    assert d.reason.startswith("missing score: missing in test") and "has no ifd" in d.reason


def test_absent_variants_and_bad_numbers_count_as_missing():
    d = one({"original": (0.5, 0.6)}, SelectConfig(keep_unreflected_answers=True))
    assert "no 'reflect_instruction' variant" in d.instruction_choice and d.kept
    row = scored_row("n", {"original": (0.5, 0.6), "reflect_response": (0.5, 0.1)})
    row["variants"]["reflect_response"]["rifd"] = float("nan")  # schema violation: must not pass < 1
    row["variants"]["original"]["ifd"] = True
    d = decide([row], SelectConfig(keep_unreflected_answers=True))[0]
    assert "not a finite number" in d.answer_choice and d.outcome == "dropped:missing_score"
    assert "ifd is not a finite number (True)" in d.reason


# ----------------------------------------------------------------- keep_unreflected_answers, filters, top-k


def test_keep_unreflected_answers():
    rows = [scored_row("o", {"original": (0.5, 0.5)}),
            scored_row("q", {"original": (0.4, 0.5), "reflect_instruction": (0.6, 0.5)}),
            scored_row("a", {"original": (0.5, 0.5), "reflect_response": (0.5, 0.4)})]
    t = SelectionTable(rows)
    sel = t.evaluate()
    assert sel.kept_ids() == ["a"] and sel.counts()["dropped:answer_not_reflected"] == 2
    assert sel.passed_thresholds() == {"reflect_both": 0, "reflect_response": 1, "reflect_instruction": 1,
                                       "original": 1}
    assert t.evaluate(SelectConfig(keep_unreflected_answers=True)).kept_ids() == ["o", "q", "a"]


def test_word_filters_are_inclusive():
    rows = [scored_row(f"w{n}", {"original": (0.5, 0.5), "reflect_response": (0.5, 0.4)},
                       {"reflect_response": ("q", "", " ".join(["w"] * n))}) for n in (2, 3, 5, 6)]
    sel = SelectionTable(rows).evaluate(SelectConfig(min_words=3, max_words=5))
    assert sel.kept_ids() == ["w3", "w5"]
    assert sel.outcomes() == ["dropped:too_short", "reflect_response", "reflect_response", "dropped:too_long"]
    assert "2 words, fewer than min_words=3" in sel.decision("w2").reason


def test_refusal_filter_matches_case_and_curly_apostrophes():
    answers = {"r1": "As an AI language model, I think...", "r2": "Sorry \u2014 I can\u2019t help with that.",
               "ok": "Paris is the capital of France."}
    rows = [scored_row(k, {"original": (0.5, 0.5), "reflect_response": (0.5, 0.4)},
                       {"reflect_response": ("q", "", a)}) for k, a in answers.items()]
    t = SelectionTable(rows)
    assert t.evaluate().n_kept == 3  # off by default
    sel = t.evaluate(SelectConfig(drop_refusals=True))
    assert sel.kept_ids() == ["ok"]
    assert "i can't help with" in sel.decision("r2").reason
    assert SelectionTable(rows).evaluate(SelectConfig(drop_refusals=True, refusal_phrases=("paris",))).kept_ids() \
        == ["r1", "r2"]


def _topk_rows(n_pass: int, n_fail: int) -> list[dict]:
    rows = [scored_row(f"p{k}", {"original": (0.5, 0.5), "reflect_response": (0.1 + 0.1 * k, 0.4)})
            for k in range(n_pass)]
    rows += [scored_row(f"f{k}", {"original": (0.5, 0.5), "reflect_response": (1.5, 0.4)}) for k in range(n_fail)]
    return rows


def test_top_k_rounds_down_over_kept_pairs():
    t = SelectionTable(_topk_rows(7, 3))  # IFD 0.1 .. 0.7 pass, 3 fail
    sel = t.evaluate(SelectConfig(top_k_percent=50))
    assert sel.kept_ids() == ["p4", "p5", "p6"]  # int(7 * 50 / 100) = 3, the highest IFD, data order kept
    assert sel.counts()["dropped:below_top_k"] == 4 and sel.counts()["dropped:ifd_too_high"] == 3
    assert "int(7 * 50 / 100) = 3" in sel.decision("p0").reason
    assert "rank 1 by IFD" in sel.decision("p6").reason
    assert sel.summary()["top_k"] == {"percent": 50, "of": "kept", "population": 7, "kept": 3}


def test_top_k_of_all_samples_and_edges():
    t = SelectionTable(_topk_rows(7, 3))
    assert t.evaluate(SelectConfig(top_k_percent=50, top_k_of="all")).n_kept == 5  # int(10 * 0.5)
    assert t.evaluate(SelectConfig(top_k_percent=90, top_k_of="all")).n_kept == 7  # at most the eligible
    assert t.evaluate(SelectConfig(top_k_percent=100)).n_kept == 7
    assert t.evaluate(SelectConfig(top_k_percent=0)).n_kept == 0
    assert t.evaluate(SelectConfig(top_k_percent=14.3)).n_kept == 1  # int(7 * 14.3 / 100) = int(1.001)


def test_top_k_ties_go_to_the_earlier_sample():
    rows = [scored_row(f"t{k}", {"original": (0.5, 0.5), "reflect_response": (0.6, 0.4)}) for k in range(4)]
    assert SelectionTable(rows).evaluate(SelectConfig(top_k_percent=50)).kept_ids() == ["t0", "t1"]


def test_paper_two_percent_count():
    assert int(46325 * 2 / 100) == 926  # the same rounding gives the paper's 2% subset size


# ----------------------------------------------------------------- vectorised path = plain rules


def _oracle(row: dict, cfg: SelectConfig) -> str:
    """The rules written out one sample at a time, as in the reference script (NaN = missing)."""
    def get(v, k):
        x = (row["variants"].get(v) or {}).get(k)
        return math.nan if x is None else x
    ifd = {v: get(v, "ifd") for v in FULL}
    rifd = {v: get(v, "rifd") for v in FULL}
    take_q = ifd["reflect_instruction"] > ifd["original"]
    cur, new = ("reflect_instruction", "reflect_both") if take_q else ("original", "reflect_response")
    chosen = new if rifd[new] < rifd[cur] else cur
    fi, fr = ifd[chosen], rifd[chosen]
    if math.isnan(fi) or math.isnan(fr):
        return "dropped:missing_score"
    if not fi < cfg.ifd_max:
        return "dropped:ifd_too_high"
    if not fr < cfg.rifd_max:
        return "dropped:rifd_too_high"
    if not cfg.keep_unreflected_answers and chosen == cur:
        return "dropped:answer_not_reflected"
    return chosen


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_matches_plain_rules_with_ties_and_missing(seed):
    rng = random.Random(seed)
    grid = [0.5, 0.7, 0.9, 1.0, 1.1, None]  # coarse values: many ties, exact 1.0, missing
    rows = [scored_row(f"r{k}", {v: (rng.choice(grid), rng.choice(grid)) for v in FULL if rng.random() > 0.05})
            for k in range(600)]
    for cfg in (SelectConfig(), SelectConfig(keep_unreflected_answers=True, ifd_max=0.95, rifd_max=1.05)):
        got = [d.outcome for d in decide(rows, cfg)]
        assert got == [_oracle(r, cfg) for r in rows]


def test_loss_form_uses_loss_columns():
    row = scored_row("l", {"original": (0.5, 0.5), "reflect_response": (0.9, 0.4)})
    row["variants"]["reflect_response"]["ifd_loss"] = 1.2  # disagreeing on purpose
    assert decide([row])[0].kept
    d = decide([row], SelectConfig(score_form="loss"))[0]
    assert d.outcome == "dropped:ifd_too_high" and d.ifd == 1.2


def test_repeated_ids_last_row_wins_and_counts_are_complete():
    rows = [scored_row("a", {"original": (0.5, 0.5)}), scored_row("a", {"original": (0.5, 0.5),
                                                                         "reflect_response": (0.5, 0.1)})]
    sel = SelectionTable(rows).evaluate()
    assert len(sel) == 1 and sel.kept_ids() == ["a"]
    assert set(sel.counts()) == set(OUTCOMES) and sum(sel.counts().values()) == 1


def test_config_validation_and_record():
    with pytest.raises(ValueError):
        SelectConfig(score_form="bits")
    with pytest.raises(ValueError):
        SelectConfig(top_k_percent=120)
    with pytest.raises(ValueError):
        SelectConfig(min_words=10, max_words=5)
    with pytest.raises(ValueError):
        SelectConfig(top_k_of="some")
    cfg = SelectConfig(top_k_percent=5, refusal_phrases=("As An AI",))
    assert cfg.refusal_phrases == ("as an ai",)
    assert json.loads(json.dumps(cfg.as_dict()))["top_k_percent"] == 5
    assert cfg.replace(ifd_max=0.9).ifd_max == 0.9 and cfg.ifd_max == 1.0


def test_threshold_updates_on_50k_stay_consistent():
    """Speed is benchmarks/bench_selection.py's job; here: a looser threshold never keeps fewer pairs."""
    t = SelectionTable(synthetic_rows(50_000, seed=3))
    kept = [t.evaluate(SelectConfig(ifd_max=0.9 + k / 100)).n_kept for k in range(5)]
    assert kept == sorted(kept) and kept[0] < kept[-1]
    half = t.evaluate(SelectConfig(ifd_max=0.94, top_k_percent=50))
    assert half.n_kept <= kept[4] and half.n_kept >= kept[4] // 2 - 1


# ----------------------------------------------------------------- the stage


def _rows() -> list[dict]:
    return [
        scored_row("both", {"original": (0.5, 0.6), "reflect_instruction": (0.7, 0.5), "reflect_response": (0.5, 0.9),
                            "reflect_both": (0.8, 0.3)}),
        scored_row("resp", {"original": (0.6, 0.6), "reflect_instruction": (0.5, 0.5), "reflect_response": (0.7, 0.4),
                            "reflect_both": (0.9, 0.3)}),
        scored_row("orig", {"original": (0.6, 0.4), "reflect_response": (0.7, 0.5)}),
        scored_row("high", {"original": (1.3, 0.6), "reflect_response": (1.2, 0.4)}),
        scored_row("miss", {"original": "empty answer", "reflect_response": (0.5, 0.4)}),
    ]


def test_run_select_writes_every_artifact(run):
    from datasets import load_from_disk

    write_scored_run(run, _rows())
    m = run_select(run)
    d = run.stage_dir("select")
    selected = [json.loads(x) for x in (d / "selected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in selected] == ["both", "resp"]
    assert selected[0]["outcome"] == "reflect_both" and selected[0]["ifd"] == 0.8 and selected[0]["rifd"] == 0.3
    assert selected[0]["instruction"].startswith("Explain topic both in detail")
    assert selected[0]["output"].startswith("A better detailed answer")
    ds = load_from_disk(str(d / "selected_dataset"))
    assert ds.num_rows == 2 and ds[1]["id"] == "resp" and set(ds.column_names) == set(selected[0])
    decisions = [json.loads(x) for x in (d / "decisions.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in decisions] == ["reflect_both", "reflect_response", "dropped:answer_not_reflected",
                                                  "dropped:ifd_too_high", "dropped:missing_score"]
    assert decisions[4]["reason"].startswith("missing score: empty answer")
    assert {"id", "outcome", "kept", "reason", "chosen_instruction_variant", "chosen_variant", "ifd", "rifd"} \
        <= set(decisions[0])
    outcomes = json.loads((d / "outcomes.json").read_text())
    assert outcomes["reflect_both"] == 1 and outcomes["reflect_response"] == 1 and outcomes["kept"] == 2
    assert outcomes["dropped:ifd_too_high"] == 1 and outcomes["total"] == 5
    assert m["status"] == "complete" and m["counts"]["kept"] == 2 and m["counts"]["dropped:missing_score"] == 1
    assert m["config"]["ifd_max"] == 1.0 and set(m["outputs"]) == {"selected.jsonl", "selected_dataset",
                                                                   "decisions.jsonl", "outcomes.json", "figures.html"}
    page = (d / "figures.html").read_text()
    assert page.count('class="plotly-graph-div"') == 5 and "IFD max 1.0" in page and "cdn.plot.ly" in page
    run.require("select")


def test_run_select_reuses_current_output_and_redoes_on_change(run):
    write_scored_run(run, _rows())
    first = run_select(run)
    again = run_select(run)
    assert again["finished"] == first["finished"] and again["fingerprint"] == first["fingerprint"]
    other = run_select(run, SelectConfig(keep_unreflected_answers=True))
    assert other["counts"]["kept"] == 3 and other["fingerprint"] != first["fingerprint"]
    forced = run_select(run, SelectConfig(keep_unreflected_answers=True), force=True)
    assert forced["counts"]["kept"] == 3


def test_run_select_empty_selection_still_writes_a_dataset(run):
    from datasets import load_from_disk

    write_scored_run(run, [scored_row("h", {"original": (1.5, 0.5)})])
    m = run_select(run)
    assert m["counts"]["kept"] == 0
    assert load_from_disk(str(run.path("select", "selected_dataset"))).num_rows == 0


def test_run_select_without_scores_names_the_stage(run):
    with pytest.raises(MissingStageError, match="03_score"):
        run_select(run)


def test_scores_frame(run):
    write_scored_run(run, _rows())
    df = scores_frame(SelectionTable.from_run(run))
    assert len(df) == 4 + 4 + 2 + 2 + 2
    assert {"id", "variant", "ifd", "rifd", "ifd_loss", "missing", "words"} <= set(df.columns)
    assert df.loc[df.id == "miss"].missing.iloc[0] == "empty answer"
