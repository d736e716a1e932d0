"""Stage 07 with the tiny student: arms as sub-runs, outputs, reuse, reproducibility, resume, custom eval data."""

from __future__ import annotations

import json
import shutil

import pytest

from finetune_helpers import one_thread
from reflection_lab.core.runs import Run, read_jsonl
from reflection_lab.evaluate import EvaluateConfig, format_table, load_generations, load_metrics, run_evaluate
from reflection_lab.evaluate.arms import arm_data, subrun_root
from reflection_lab.evaluate.judge import scripted_judge
from reflection_lab.profiles import get_profile

PROFILE = get_profile("ci", max_steps=2, max_new_tokens=12)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A ci run with stages 01-04 finished (replay teacher, tiny student), built once per module."""
    import torch

    from reflection_lab.pipeline import run_pipeline

    torch.set_num_threads(1)
    run = Run(tmp_path_factory.mktemp("evalparent") / "run")
    res = run_pipeline(run, PROFILE, stages=["data", "reflect", "score", "select"], log=lambda *a: None)
    assert res["select"]["counts"]["kept"] >= 4
    return run


def _copy(parent: Run, dest) -> Run:
    shutil.copytree(parent.root, dest)
    return Run(dest)


def _numbers(metrics: dict) -> dict:
    """Everything in metrics.json except timings (the part a fixed seed must reproduce)."""
    return {k: v for k, v in metrics.items() if k != "timing"}


def test_arm_training_sets(parent):
    sel = arm_data(parent, "selected")
    rnd = arm_data(parent, "random", seed=0)
    refl = arm_data(parent, "reflected")
    orig = arm_data(parent, "original")
    assert arm_data(parent, "base").rows is None
    assert len(rnd.rows) == len(sel.rows) and rnd.counts["same_size_as_selected"]
    assert len(refl.rows) == len(orig.rows) == 12
    pool = {r["id"]: r for r in refl.rows}
    assert all(r["output"] == pool[r["id"]]["output"] for r in rnd.rows)  # drawn from the reflected pool
    assert [r["id"] for r in arm_data(parent, "random", seed=0).rows] == [r["id"] for r in rnd.rows]
    other_seed = [r["id"] for r in arm_data(parent, "random", seed=5).rows]
    assert other_seed != [r["id"] for r in rnd.rows] or len(pool) == len(sel.rows)
    assert all(r["outcome"] == "original" for r in orig.rows)


def test_full_evaluation_reproduces_and_resumes_after_a_kill(parent, tmp_path, monkeypatch):
    """Run A straight through; run B is killed mid-generation of an arm and resumed; both give the same numbers."""
    judge = scripted_judge(lambda q, f, s, r: (6, 6) if f == s else (7, 3), model="pairs")
    run_a = _copy(parent, tmp_path / "a")
    m_a = run_evaluate(run_a, EvaluateConfig.from_profile(PROFILE), judge=judge, progress=False)
    assert m_a["status"] == "complete" and m_a["counts"]["arms_done"] == 5
    stage = run_a.root / "07_evaluate"
    for name in ("metrics.json", "report.html", "report_offline.html", "judge.jsonl", "manifest.json"):
        assert (stage / name).exists(), name
    assert (stage / "report.html").stat().st_size < 400_000 < (stage / "report_offline.html").stat().st_size
    html = (stage / "report.html").read_text()
    assert "not evidence" in html and "max_steps=2" in html and "cdn.plot.ly" in html
    # first screen: the verdicts, then the per-arm figure, then base and selected answering the same prompts
    verdict_at, figure_at, side_at = (html.index("<h2>Verdict</h2>"), html.index("plotly-graph-div"),
                                      html.index("Same prompts, base and fine-tuned"))
    assert verdict_at < figure_at < side_at < html.index("What was measured")
    assert "selected (fine-tuned)" in html and html.count("<b>eval-") == 4
    metrics = load_metrics(run_a)
    assert set(metrics["arms"]) == {"base", "original", "reflected", "selected", "random"}
    for arm in ("original", "reflected", "selected", "random"):
        sub = Run(subrun_root(run_a, arm))
        assert all((sub.manifest(st) or {}).get("status") == "complete" for st in ("data", "select", "finetune"))
        assert not (sub.root / "05_finetune" / "checkpoints").exists()
    gens = load_generations(run_a, "selected")
    assert len(gens) == 6 and {"text", "parsed", "extracted", "correct", "ref_loss", "ref_loss_format",
                               "well_formed"} <= set(gens[0])
    assert all(g["ref_loss"] > 0 and g["ref_loss_format"] > 0 for g in gens)
    assert "ref_loss_format" in metrics["differences"]["vs_base"]["selected"]
    pairs = {(j["a"], j["b"]) for j in metrics["judge"]}
    assert pairs == {("original", "base"), ("reflected", "base"), ("selected", "base"), ("random", "base"),
                     ("selected", "random")}
    assert all(j["wins"] + j["ties"] + j["losses"] + j["invalid"] == 6 for j in metrics["judge"])
    table = format_table(metrics)
    assert "selected" in table and "not evidence" in table and "max_steps=2" in table
    names = [line.split()[0] for line in table.splitlines()[2:7]]
    assert names == ["base", "original", "reflected", "selected", "random"]

    # the same call again is a reuse: nothing regenerated, same manifest
    again = run_evaluate(run_a, EvaluateConfig.from_profile(PROFILE), judge=judge, progress=False)
    assert again["finished"] == m_a["finished"]

    # run B: killed while the 'reflected' arm generates its 4th answer
    from reflection_lab.core.runs import Journal

    run_b = _copy(parent, tmp_path / "b")
    real_append = Journal.append
    calls = {"n": 0}

    def dying_append(self, record):
        if self.path.name == "reflected.journal.jsonl":
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt("simulated kill")
        real_append(self, record)

    monkeypatch.setattr(Journal, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate(run_b, EvaluateConfig.from_profile(PROFILE, batch_size=2), judge=judge, progress=False)
    monkeypatch.setattr(Journal, "append", real_append)
    assert run_b.manifest("evaluate")["status"] == "running"
    assert len(read_jsonl(run_b.root / "07_evaluate/generations/reflected.journal.jsonl")) == 3

    from reflection_lab.llm.local import LocalModel

    asked: list[int] = []
    real_batch = LocalModel.generate_batch

    def counting(self, prompts, **kw):
        asked.append(len(prompts))
        return real_batch(self, prompts, **kw)

    monkeypatch.setattr(LocalModel, "generate_batch", counting)
    m_b = run_evaluate(run_b, EvaluateConfig.from_profile(PROFILE, batch_size=2), judge=judge, progress=False)
    assert asked == [3, 6, 6]  # reflected resumes with 3 prompts left; base and original are not regenerated
    timing = load_metrics(run_b)["timing"]["arms"]
    assert timing["base"]["reused_generations"] and timing["original"]["reused_generations"]
    assert timing["reflected"]["reused_training"] and not timing["selected"]["reused_training"]
    assert m_b["counts"]["arms_done"] == 5
    assert _numbers(load_metrics(run_b)) == _numbers(metrics)
    assert read_jsonl(run_b.root / "07_evaluate/generations/reflected.jsonl") == \
        read_jsonl(run_a.root / "07_evaluate/generations/reflected.jsonl")


def test_selected_arm_reuses_the_runs_own_finetune(parent, tmp_path):
    from reflection_lab.finetune import FinetuneConfig, run_finetune

    run = _copy(parent, tmp_path / "r")
    run_finetune(run, FinetuneConfig.from_profile(PROFILE), progress=False)
    m = run_evaluate(run, EvaluateConfig.from_profile(PROFILE, arms=("selected",)), progress=False)
    assert m["config"]["parent_finetune"] == run.manifest("finetune")["fingerprint"]
    assert not subrun_root(run, "selected").exists()
    info = load_metrics(run)["timing"]["arms"]["selected"]
    assert info["reused_training"] is True
    assert info["train_seconds"] == run.manifest("finetune")["counts"]["train_seconds"]


def test_selected_arm_takes_stage_06_answers_only_when_they_are_what_it_would_generate(parent, tmp_path):
    from reflection_lab.finetune import FinetuneConfig, run_finetune
    from reflection_lab.inference import InferConfig, load_generations as infer_generations, run_infer

    run = _copy(parent, tmp_path / "r")
    run_finetune(run, FinetuneConfig.from_profile(PROFILE), progress=False)
    run_infer(run, InferConfig.from_profile(PROFILE), progress=False)
    cfg = EvaluateConfig.from_profile(PROFILE, arms=("selected",))
    run_evaluate(run, cfg, progress=False)
    assert load_metrics(run)["timing"]["arms"]["selected"]["answers_from"] == "06_infer"
    from_06 = [g["text"] for g in load_generations(run, "selected")]
    assert from_06 == [g["text"] for g in infer_generations(run)]
    # another budget in stage 06: the arm generates its own answers, and they are the same texts
    run_infer(run, InferConfig.from_profile(PROFILE, max_new_tokens=PROFILE.max_new_tokens + 1), progress=False)
    run_evaluate(run, cfg, force=True, progress=False)
    assert load_metrics(run)["timing"]["arms"]["selected"]["answers_from"] == "generated"
    assert [g["text"] for g in load_generations(run, "selected")] == from_06


def test_any_eval_dataset_a_user_points_at(parent, tmp_path):
    data = tmp_path / "my_eval.jsonl"
    rows = [{"id": "a", "prompt": "What is 6 times 7?", "answer": "6 x 7 = 42", "answer_type": "numeric",
             "numeric_answer": 42},
            {"id": "b", "instruction": "Halve 10.", "reference": "5", "answer_type": "numeric", "numeric_answer": 5},
            {"id": "c", "instruction": "Write a haiku.", "reference": "Autumn moon...", "answer_type": "text"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = _copy(parent, tmp_path / "r")
    m = run_evaluate(run, EvaluateConfig.from_profile(PROFILE, arms=("base",), eval_data=str(data)), progress=False)
    metrics = load_metrics(run)
    assert m["counts"]["prompts"] == 3 and metrics["setup"]["n_numeric"] == 2
    assert metrics["setup"]["eval_source"].startswith(str(data))
    assert metrics["differences"]["vs_base"] == {} and metrics["judge"] == []
    # a smaller n_eval is a new evaluation that reuses the base answers it already has
    m2 = run_evaluate(run, EvaluateConfig.from_profile(PROFILE, arms=("base",), eval_data=str(data), n_eval=2),
                      progress=False)
    assert m2["counts"]["prompts"] == 2 and m2["fingerprint"] != m["fingerprint"]


def test_an_arm_without_enough_data_is_skipped_with_its_reason(parent, tmp_path):
    run = _copy(parent, tmp_path / "r")
    prof = get_profile("ci", max_steps=2, max_new_tokens=8, extra={"finetune": {"min_samples": 50}})
    m = run_evaluate(run, EvaluateConfig.from_profile(prof, arms=("base", "selected")), progress=False)
    metrics = load_metrics(run)
    assert metrics["arms"]["selected"]["status"] == "skipped" and "Not enough training data" in \
        metrics["arms"]["selected"]["reason"]
    assert m["counts"]["arms_skipped"] == 1 and "skipped" in format_table(metrics)


def test_bad_arguments_fail_early(parent, tmp_path):
    from reflection_lab.core.runs import MissingStageError

    with pytest.raises(ValueError, match="unknown arm"):
        run_evaluate(parent, EvaluateConfig.from_profile(PROFILE, arms=("base", "magic")), progress=False)
    with pytest.raises(ValueError, match="judge_pairs"):
        run_evaluate(parent, EvaluateConfig.from_profile(PROFILE, arms=("base",), judge_pairs=[("base", "random")]),
                     judge=scripted_judge(), progress=False)
    with pytest.raises(MissingStageError, match="reflect"):
        run_evaluate(Run(tmp_path / "empty"), EvaluateConfig.from_profile(PROFILE, arms=("reflected",)),
                     progress=False)


def test_run_stage_takes_cli_style_overrides(parent, tmp_path):
    from reflection_lab.pipeline import run_stage

    run = _copy(parent, tmp_path / "r")
    m = run_stage("evaluate", run, PROFILE, overrides={"arms": "base", "n_eval": 2, "seed": 3}, progress=False)
    assert m["status"] == "complete" and m["config"]["arms"] == ["base"] and m["config"]["seed"] == 3
    assert m["counts"]["prompts"] == 2


def test_cli_evaluate_subcommand_prints_the_table(parent, tmp_path):
    import os
    import subprocess
    import sys

    run = _copy(parent, tmp_path / "r")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "reflection_lab", "evaluate", "--profile", "ci", "--run", str(run.root),
           "--set", "max_steps=2", "--set", "max_new_tokens=12", "--arms", "base", "--n-eval", "2", "--seed", "4"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "exact match" in res.stdout and "\nbase " in res.stdout and "seed 4" in res.stdout
    assert "report: " in res.stdout and "report.html" in res.stdout  # the demo's closing lines name the report
    m = Run(run.root).manifest("evaluate")
    assert m["config"]["arms"] == ["base"] and m["counts"]["prompts"] == 2


def test_run_stage_takes_the_profiles_arms(parent, tmp_path):
    from reflection_lab.pipeline import run_stage

    run = _copy(parent, tmp_path / "r")
    m = run_stage("evaluate", run, get_profile("ci", max_steps=2, max_new_tokens=12, eval_arms="base"),
                  overrides={"n_eval": 2}, progress=False)
    assert m["config"]["arms"] == ["base"]
    assert get_profile("offline").eval_arms == "base,selected"  # the demo trains no extra arm


def test_kill_9_mid_generation_then_rerun_regenerates_no_finished_answer(parent, tmp_path, monkeypatch):
    from slow_stage import kill9_when

    from reflection_lab.core.runs import Journal
    from reflection_lab.llm.local import LocalModel
    from reflection_lab.pipeline import run_stage

    profile_overrides = {"max_steps": 2, "max_new_tokens": 12}
    overrides = {"arms": "base", "batch_size": 1}
    ref = _copy(parent, tmp_path / "ref")
    run_stage("evaluate", ref, PROFILE, overrides=overrides, progress=False)
    run = _copy(parent, tmp_path / "run")
    journal = run.root / "07_evaluate" / "generations" / "base.journal.jsonl"
    kill9_when("evaluate", run.root, "ci", profile_overrides, overrides, journal, lines=2)
    kept = len(Journal(journal, key="id").load())
    assert run.manifest("evaluate")["status"] == "running" and 2 <= kept < 6
    asked: list[int] = []
    real = LocalModel.generate_batch
    monkeypatch.setattr(LocalModel, "generate_batch", lambda self, prompts, **kw: (asked.append(len(prompts)),
                                                                                   real(self, prompts, **kw))[1])
    m = run_stage("evaluate", run, PROFILE, overrides=overrides, progress=False)
    assert m["status"] == "complete" and asked == [6 - kept]
    assert _numbers(load_metrics(run)) == _numbers(load_metrics(ref))
    assert read_jsonl(run.root / "07_evaluate/generations/base.jsonl") == \
        read_jsonl(ref.root / "07_evaluate/generations/base.jsonl")
