"""The two reference-answer losses of stage 07: after the prompt, and after the arm's own reasoning.

Checked against a plain forward pass written here (prompt, prefix and reference tokenised apart and
concatenated, cross-entropy over the reference tokens only), so the engine's spans cannot hide a shift.
"""

from __future__ import annotations

import math

import pytest

from reflection_lab.evaluate.answers import arm_losses, format_prefix, reference_answer_losses
from reflection_lab.evaluate.metrics import METRICS, arm_summary, verdict_sentence

THOUGHT = "<thinking>\n7 x 24 = 168.\n<reflection>\nCheck: 168 - 150 = 18.\n</reflection>\n</thinking>\n<output>\n18\n</output>"


def test_format_prefix_closes_the_arms_own_thinking_and_opens_output():
    prefix = format_prefix(THOUGHT)
    assert prefix.startswith("<thinking>\n7 x 24 = 168.") and prefix.endswith("</thinking>\n<output>\n")
    assert "<reflection>\nCheck: 168 - 150 = 18.\n</reflection>" in prefix  # reflections stay in the reasoning
    assert "18\n</output>" not in prefix  # its own answer is never part of the context


def test_format_prefix_of_an_unclosed_thinking_still_ends_in_output():
    prefix = format_prefix("<thinking>\nstill going when the budget ran out")
    assert prefix == "<thinking>\nstill going when the budget ran out\n</thinking>\n<output>\n"


def test_format_prefix_is_empty_without_thinking():
    assert format_prefix("The answer is 18.") == ""
    assert format_prefix("") == ""


def _plain_loss(lm, context: list[int], target: list[int]) -> float:
    """Mean cross-entropy of `target` after `context`, one sequence, no padding."""
    import torch

    ids = torch.tensor([context + target])
    with torch.no_grad():
        logits = lm.lm(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[len(context) - 1:-1], dim=-1)
    return float(-logp[torch.arange(len(target)), torch.tensor(target)].mean())


@pytest.fixture(scope="module")
def lm(tiny_llama_path):
    from reflection_lab.llm.local import LocalModel

    return LocalModel.from_spec(tiny_llama_path)


ROWS = [{"instruction": "A box holds 24 pencils. How many in 7 boxes, minus 150?", "input": "",
         "reference": "7 x 24 = 168 and 168 - 150 = 18."},
        {"instruction": "Name a prime number.", "input": "", "reference": "7 is prime."}]


def test_losses_equal_a_plain_forward_pass(lm):
    prefixes = [format_prefix(THOUGHT), ""]
    got = reference_answer_losses(lm, ROWS, max_length=512, prefixes=prefixes, key="ref_loss_format")
    plain = reference_answer_losses(lm, ROWS, max_length=512)
    tok = lm.tokenizer
    for row, prefix, g, p in zip(ROWS, prefixes, got, plain, strict=True):
        prompt = list(lm.prompt_ids(row["instruction"]))
        target = tok(row["reference"], add_special_tokens=False)["input_ids"]
        context = prompt + (tok(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
        assert g["ref_loss_format"] == pytest.approx(_plain_loss(lm, context, target), abs=1e-4)
        assert p["ref_loss"] == pytest.approx(_plain_loss(lm, prompt, target), abs=1e-4)
    assert got[1]["ref_loss_format"] == pytest.approx(plain[1]["ref_loss"], abs=1e-6)  # no thinking: same loss
    assert got[0]["ref_loss_format"] != pytest.approx(plain[0]["ref_loss"], abs=1e-6)


def test_arm_losses_flag_which_prompts_were_scored_after_their_own_reasoning(lm):
    gens = [{"text": THOUGHT}, {"text": "7."}]
    rows = arm_losses(lm, ROWS, gens, max_length=512)
    assert [r["ref_loss_format_prefixed"] for r in rows] == [True, False]
    assert all(math.isfinite(r["ref_loss"]) and math.isfinite(r["ref_loss_format"]) for r in rows)


def test_a_prompt_that_fills_max_length_has_a_missing_loss_with_its_reason(lm):
    rows = reference_answer_losses(lm, ROWS[:1], max_length=8, prefixes=[format_prefix(THOUGHT)],
                                   key="ref_loss_format")
    assert rows[0]["ref_loss_format"] is None and "fills max_length=8" in rows[0]["ref_loss_format_missing"]


def test_the_new_metric_is_summarised_and_lower_is_better():
    assert METRICS["ref_loss_format"][1] is False
    rows = [{"well_formed": True, "ref_loss": 2.0, "ref_loss_format": 1.0, "ref_loss_format_prefixed": True},
            {"well_formed": False, "ref_loss": 2.0, "ref_loss_format": 3.0, "ref_loss_format_prefixed": False}]
    s = arm_summary(rows, n_boot=200)
    assert s["metrics"]["ref_loss_format"]["mean"] == pytest.approx(2.0)
    assert s["counts"]["scored_after_own_reasoning"] == 1
    assert "selected is better" in verdict_sentence("selected", "base", "ref_loss_format",
                                                    {"mean": -0.5, "lo": -0.8, "hi": -0.2, "n": 8})
