"""Stage 07 end to end with SmolLM2-135M (4-bit QLoRA arms, real generations, reference losses). Slow: minutes."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.slow

# Small enough for a few minutes on 2 CPU cores. Stages 01-04 are made with the tiny student (ci profile, relaxed
# thresholds): this test is about stage 07 with a real model, and SmolLM2 scoring alone would take minutes.
DATA = {"n_samples": 8, "n_eval": 4}
OVERRIDES = {**DATA, "max_steps": 2, "max_new_tokens": 32}


# Three arms: the base, the run's own student and one more trained here (random: it also gives the paired
# differences against random). All five arms are exercised with the tiny student in test_evaluate.py.
ARMS = ("base", "selected", "random")


def test_smollm2_evaluation_base_selected_and_random_arms(tmp_path, smollm2_path):
    from reflection_lab.evaluate import EvaluateConfig, format_table, load_generations, load_metrics, run_evaluate
    from reflection_lab.evaluate.judge import scripted_judge
    from reflection_lab.pipeline import run_pipeline
    from reflection_lab.profiles import get_profile
    from reflection_lab.core.runs import Run

    profile = get_profile("offline", **OVERRIDES)
    run = Run(tmp_path / "run")
    run_pipeline(run, get_profile("ci", **DATA), stages=["data", "reflect", "score", "select"], log=lambda *a: None)
    assert run.manifest("select")["counts"]["kept"] >= 4
    m = run_evaluate(run, EvaluateConfig.from_profile(profile, arms=ARMS), judge=scripted_judge(), progress=False)
    metrics = load_metrics(run)
    print(format_table(metrics))
    assert m["counts"]["arms_done"] == 3, metrics["arms"]
    assert metrics["differences"]["vs_random"], "selected - random needs both arms"
    for arm, e in metrics["arms"].items():
        loss = e["metrics"]["ref_loss"]
        assert loss["n"] == 4 and math.isfinite(loss["mean"]) and 0 < loss["mean"] < 6, (arm, loss)
        for name in ("format", "exact_match"):
            assert e["metrics"][name]["mean"] is None or 0 <= e["metrics"][name]["mean"] <= 1
    base = load_generations(run, "base")
    assert all(r["text"] for r in base)  # SmolLM2 says something to every prompt
    assert metrics["setup"]["student"] == "smollm2-135m" and metrics["setup"]["max_steps"] == 2
    assert (run.root / "07_evaluate" / "report.html").exists()
