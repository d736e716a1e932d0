"""Stage 07 arithmetic without a model: extraction from <output> only, bootstrap, the both-orders judge."""

from __future__ import annotations

import itertools
import random

import pytest

from reflection_lab.evaluate.metrics import (arm_summary, bootstrap_ci, combine_orders, differences, extract_number,
                                             numbers_in, numeric_match, order_preference, paired_bootstrap,
                                             resample_indices, score_answer, verdict_counts, wilson_ci, winning_score)
from reflection_lab.evaluate.judge import (NO_ANSWER, Comparison, scripted_judge, answer_view, judge_messages,
                                           parse_verdict, run_judge, unpack_messages)

NUMERIC = {"id": "q1", "answer_type": "numeric", "numeric_answer": 18, "reference": "... = 18"}
TEXT = {"id": "q2", "answer_type": "text", "numeric_answer": None, "reference": "a poem"}


# --- number extraction ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("She has 18 pencils left.", 18), ("The total is $1,234.50.", 1234.5), ("It drops to -7 degrees", -7),
    ("x = \u22123", -3), ("3/4 of the cake", 0.75), ("1 5/12", 1 + 5 / 12), ("Growth was 12%.", 12),
    ("$ 28.00", 28), ("about .5 liters", 0.5), ("Answer: 691.20", 691.2), ("168 \u2212 150 = 18", 18),
    ("2024-09-05", 5), ("5x \u2212 9 = 2x + 15, so x = 8", 8), ("No numbers here.", None), ("", None),
    ("1/0 is undefined", None), ("12,345,678 people", 12345678), ("H2O and x2 but 3rd", 3),
])
def test_extract_number_takes_the_last_number(text, value):
    got = extract_number(text)
    assert (got is None and value is None) or got == pytest.approx(value)


def test_numbers_in_reads_every_number_in_order():
    assert numbers_in("8 \u00d7 $2.75 = $22.00, change $50 \u2212 $22 = $28") == [8, 2.75, 22, 50, 22, 28]
    assert numbers_in("lists 4,5 and 1,000") == [4, 1000]  # "4,5" is not a thousands group


def test_numeric_match_uses_a_relative_tolerance():
    assert numeric_match(691.2, 691.2000001) and numeric_match(18.0, 18)
    assert not numeric_match(691.0, 691.2) and not numeric_match(None, 18) and not numeric_match(18, None)
    assert numeric_match(0.0, 1e-9)  # the absolute floor near zero


# --- the answer is read from <output> only -------------------------------------------------------

def test_exact_match_reads_output_not_reasoning():
    text = ("<thinking>7 x 24 = 168, minus 150 is 18. <reflection>check: 18</reflection></thinking>"
            "<output>She has 20 left</output>")
    s = score_answer(text, "stop", NUMERIC)
    assert s["extracted"] == 20 and s["correct"] is False and s["well_formed"]
    assert s["correct_anywhere"] is True  # the naive whole-text score would have counted it


def test_missing_output_is_wrong_even_if_the_reasoning_has_the_number():
    for text, finish in [("<thinking>168 - 150 = 18</thinking>", "stop"),
                         ("<thinking>168 - 150 = 18 so the answer is 18", "length"),
                         ("The answer is 18.", "stop")]:
        s = score_answer(text, finish, NUMERIC)
        assert s["has_output"] is False and s["extracted"] is None and s["correct"] is False
        assert s["correct_anywhere"] is True


def test_output_with_the_right_number_is_correct_and_text_prompts_have_no_exact_match():
    s = score_answer("<thinking>ok</thinking>\n<output>\nThe answer is 18 pencils.\n</output>", "stop", NUMERIC)
    assert s["correct"] is True and s["diagnostics"] == []
    t = score_answer("<thinking>ok</thinking><output>Roses are red</output>", "stop", TEXT)
    assert t["correct"] is None and t["numeric"] is False and t["well_formed"]


def test_truncated_output_is_a_partial_answer_and_codes_are_kept():
    s = score_answer("<thinking>a</thinking><output>It is 18", "length", NUMERIC)
    assert s["correct"] is True and not s["well_formed"] and "truncated" in s["diagnostics"]
    assert "no_tags" in score_answer("just 18", "stop", NUMERIC)["diagnostics"]


# --- bootstrap -----------------------------------------------------------------------------------

def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    rng = random.Random(1)
    for trial in range(30):
        vals = [float(rng.random() < 0.4) if trial % 2 else rng.gauss(2, 1) for _ in range(rng.randint(2, 40))]
        ci = bootstrap_ci(vals, seed=trial, label="m")
        assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["n"] == len(vals)
        assert ci == bootstrap_ci(vals, seed=trial, label="m")
    vals = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert bootstrap_ci(vals, seed=0) != bootstrap_ci(vals, seed=1)


def test_bootstrap_edge_cases_and_missing_values():
    assert bootstrap_ci([]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert bootstrap_ci([None, 0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 1}
    ci = bootstrap_ci([1.0, None, 0.0, float("nan"), 1.0])
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(2 / 3)
    assert bootstrap_ci([1.0] * 5)["lo"] == bootstrap_ci([1.0] * 5)["hi"] == 1.0


def test_same_prompts_share_resamples_so_the_difference_is_paired():
    assert (resample_indices(8, 50, seed=3, label="x") == resample_indices(8, 50, seed=3, label="x")).all()
    base = [0, 0, 1, 0, 1, 0, 0, 1, 0, 0]
    better = [1, 1, 1, 0, 1, 1, 0, 1, 1, 0]  # better on 4 prompts, never worse
    d = paired_bootstrap(better, base, seed=0, label="em")
    assert d["mean"] == pytest.approx(0.4) and d["lo"] > 0 and d["excludes_zero"]
    same = paired_bootstrap(base, base, seed=0)
    assert same["mean"] == same["lo"] == same["hi"] == 0 and not same["excludes_zero"]
    # unpaired intervals of these two arms overlap, the paired one does not cross 0
    a, b = bootstrap_ci(better, label="em"), bootstrap_ci(base, label="em")
    assert a["lo"] < b["hi"]
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])


def test_paired_difference_skips_prompts_missing_in_either_arm():
    d = paired_bootstrap([1.0, None, 3.0, 2.0], [0.5, 1.0, None, 1.0])
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.75)


def test_arm_summary_and_differences():
    rows = [{"well_formed": True, "correct": True, "correct_anywhere": True, "ref_loss": 1.0, "numeric": True,
             "has_output": True, "diagnostics": []},
            {"well_formed": False, "correct": None, "correct_anywhere": None, "ref_loss": 2.0, "numeric": False,
             "has_output": False, "diagnostics": ["missing_output", "no_tags"]}]
    s = arm_summary(rows)
    assert s["metrics"]["format"]["mean"] == 0.5 and s["metrics"]["exact_match"]["n"] == 1
    assert s["diagnostics"]["no_tags"] == {"count": 1, "share": 0.5}
    assert s["counts"]["numeric_prompts"] == 1 and s["counts"]["correct"] == 1
    worse = [dict(r, ref_loss=r["ref_loss"] + 1) for r in rows]
    d = differences({"base": rows, "x": worse}, "base")
    assert d["x"]["ref_loss"]["mean"] == pytest.approx(1.0) and set(d) == {"x"}


# --- the both-orders judge -----------------------------------------------------------------------

EXPECTED = {  # (A's result with A shown first, with A shown second) -> verdict for A
    ("A", "A"): "win", ("A", "tie"): "win", ("tie", "A"): "win",
    ("B", "B"): "loss", ("B", "tie"): "loss", ("tie", "B"): "loss",
    ("tie", "tie"): "tie", ("A", "B"): "tie", ("B", "A"): "tie",
}


def test_combine_orders_every_combination():
    for (first, second), want in EXPECTED.items():
        assert combine_orders(first, second) == want, (first, second)
    for bad in itertools.product(("A", "B", "tie", None), repeat=2):
        if None in bad:
            assert combine_orders(*bad) == "invalid"
    assert order_preference(7, 4) == "first" and order_preference(4, 7) == "second" and order_preference(5, 5) == "tie"
    assert order_preference(None, 3) is None


def test_winning_score_and_counts():
    v = ["win"] * 5 + ["tie"] * 3 + ["loss"] * 2 + ["invalid"]
    assert verdict_counts(v) == {"wins": 5, "ties": 3, "losses": 2, "invalid": 1}
    ws = winning_score(v)
    assert ws["mean"] == pytest.approx((5 - 2) / 10 + 1) and ws["lo"] <= ws["mean"] <= ws["hi"] and ws["n"] == 10


@pytest.mark.parametrize("reply, scores", [
    ("A is right.\nScores: 8 3", (8, 3)), ("Scores: 7/10, 4/10", (7, 4)), ("**Scores:** 6 and 6", (6, 6)),
    ("score 9 vs 2", (9, 2)), ("Assistant 1: 5\nAssistant 2: 9\nthat is all", (5, 9)), ("8 2\nFirst is better", (8, 2)),
    ("Scores: 2 3\nOn reflection, Scores: 9 1", (9, 1)), ("I cannot decide.", None), ("Scores: 15 3", None), ("", None),
    (None, None),
])
def test_parse_verdict(reply, scores):
    assert parse_verdict(reply) == scores


def test_judge_prompt_round_trip_and_answer_view():
    msgs = judge_messages("What is 2+2?", "It is 4", "5", reference="4")
    assert msgs[0]["role"] == "system" and "Scores:" in msgs[1]["content"]
    assert unpack_messages(msgs) == {"question": "What is 2+2?", "reference": "4", "first": "It is 4", "second": "5"}
    assert unpack_messages(judge_messages("Q", "a", "b"))["reference"] is None
    assert answer_view("<thinking>18</thinking><output>20</output>") == "20"
    assert answer_view("<thinking>18</thinking>") == NO_ANSWER
    assert answer_view("<thinking>18</thinking>", "full") == "<thinking>18</thinking>"


def _scripted(table):
    """A judge whose scores depend on the answer texts only: table[text] = score."""
    return scripted_judge(lambda q, first, second, ref: (table[first], table[second]))


def test_run_judge_in_both_orders_all_outcomes(tmp_path):
    # answers named by what the judge gives them; "bias" judges prefer position 1 whatever the text
    comps = [Comparison("p1", "q", None, "x", "y", "good", "bad"), Comparison("p2", "q", None, "x", "y", "bad", "good"),
             Comparison("p3", "q", None, "x", "y", "ok", "ok2")]
    rows = run_judge(_scripted({"good": 8, "bad": 3, "ok": 5, "ok2": 5}), comps, tmp_path / "j.jsonl")
    assert [r["verdict"] for r in rows] == ["win", "loss", "tie"]
    biased = scripted_judge(lambda q, f, s, r: (9, 2), model="biased")
    assert [r["verdict"] for r in run_judge(biased, comps, tmp_path / "b.jsonl")] == ["tie"] * 3
    assert rows[0]["a_first"]["scores"] == (8, 3) and rows[0]["a_second"]["scores"] == (3, 8)

    def half_tie(q, first, second, ref):  # ties whenever "good" is shown second: win + tie -> win
        return (8, 3) if first == "good" else (5, 5)

    assert run_judge(scripted_judge(half_tie, model="half"), comps[:1], tmp_path / "h.jsonl")[0]["verdict"] == "win"
    unreadable = scripted_judge(lambda *a: "no idea", model="mute")
    assert run_judge(unreadable, comps[:1], tmp_path / "m.jsonl")[0]["verdict"] == "invalid"


def test_judge_replies_are_journalled_and_never_asked_twice(tmp_path):
    judge = _scripted({"good": 8, "bad": 3})
    comps = [Comparison("p1", "q", "ref", "x", "y", "good", "bad")]
    first = run_judge(judge, comps, tmp_path / "j.jsonl")
    assert len(judge.calls) == 2
    again = run_judge(judge, comps, tmp_path / "j.jsonl")
    assert len(judge.calls) == 2 and again == first


def test_reference_numbers_written_as_text():
    row = {"answer_type": "numeric", "numeric_answer": "1,234"}
    assert score_answer("<output>1234</output>", "stop", row)["correct"] is True
    assert score_answer("<output>0.75</output>", "stop", dict(row, numeric_answer="3/4"))["correct"] is True
    assert score_answer("<output>5</output>", "stop", dict(row, numeric_answer="n/a"))["numeric"] is False


def test_failed_judge_requests_are_invalid_and_asked_again(tmp_path):
    from reflection_lab.llm.base import error_reply

    class Flaky:
        """The scripted judge behind a failing endpoint, until `fail` is switched off."""

        def __init__(self, inner):
            self.inner, self.kind, self.model, self.fail = inner, inner.kind, inner.model, True

        def describe(self):
            return self.inner.describe()

        def complete(self, requests, on_reply=None, *, concurrency=None):
            if not self.fail:
                return self.inner.complete(requests, on_reply, concurrency=concurrency)
            reps = [error_reply(r, "HTTP 503: busy") for r in requests]
            for rep in reps:
                on_reply(rep)
            return reps

    judge = Flaky(scripted_judge(lambda q, f, s, r: (8, 3) if f == "good" else (3, 8), model="flaky"))
    comps = [Comparison("p1", "q", None, "x", "y", "good", "bad")]
    rows = run_judge(judge, comps, tmp_path / "j.jsonl")
    assert rows[0]["verdict"] == "invalid" and rows[0]["a_first"]["error"] == "HTTP 503: busy"
    judge.fail = False
    assert run_judge(judge, comps, tmp_path / "j.jsonl")[0]["verdict"] == "win"


def test_verdict_sentence_overlap_is_not_distinguishable():
    from reflection_lab.evaluate.metrics import verdict_sentence
    s = verdict_sentence("selected", "base", "format", {"mean": 0.1, "lo": -0.2, "hi": 0.4, "n": 8})
    assert "not distinguishable" in s and "selected vs base" in s and "8 prompts" in s


def test_verdict_sentence_direction_follows_metric_sense():
    from reflection_lab.evaluate.metrics import verdict_sentence
    assert "selected is better" in verdict_sentence("selected", "base", "format", {"mean": 0.5, "lo": 0.2, "hi": 0.8,
                                                                                    "n": 8})
    # lower reference loss is better: a negative difference that excludes 0 is an improvement
    assert "selected is better" in verdict_sentence("selected", "base", "ref_loss", {"mean": -0.4, "lo": -0.6,
                                                                                      "hi": -0.1, "n": 8})
    assert "selected is worse" in verdict_sentence("selected", "base", "ref_loss", {"mean": 0.4, "lo": 0.1, "hi": 0.6,
                                                                                     "n": 8})
    assert "not distinguishable" in verdict_sentence("selected", "base", "format", {"mean": None, "lo": None,
                                                                                     "hi": None, "n": 0})


def test_verdicts_covers_every_stored_comparison():
    from reflection_lab.evaluate.metrics import verdicts
    d = {"mean": 0.0, "lo": -0.1, "hi": 0.1, "n": 4}
    m = {"differences": {"vs_base": {"selected": {"format": d, "exact_match": d, "ref_loss": d}}, "vs_random": {}}}
    out = verdicts(m)
    assert len(out) == 3 and all("not distinguishable" in s for s in out)


def test_an_arms_share_gets_a_wilson_interval_that_stays_wide_at_100_percent():
    all_right = wilson_ci([1.0] * 8)
    assert all_right["mean"] == 1.0 and all_right["hi"] == 1.0 and all_right["lo"] == pytest.approx(0.676, abs=1e-3)
    none_right = wilson_ci([0.0] * 8)
    assert none_right["lo"] == 0.0 and none_right["hi"] == pytest.approx(1 - all_right["lo"])
    half = wilson_ci([1, 0] * 10)
    assert half["lo"] == pytest.approx(1 - half["hi"]) and half["lo"] == pytest.approx(0.2993, abs=1e-4)
    assert wilson_ci([None, float("nan")]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    with pytest.raises(ValueError):
        wilson_ci([0.5, 1.0])
    rows = [{"well_formed": True, "correct": None, "correct_anywhere": None, "ref_loss": 1.0 + i / 10,
             "diagnostics": []} for i in range(8)]
    s = arm_summary(rows)["metrics"]
    assert s["format"] == all_right  # a bootstrap would say [1, 1]
    assert s["ref_loss"]["lo"] > 1.0 and s["ref_loss"]["hi"] < 1.7  # losses keep the bootstrap
