"""Stage 06 on the tiny students: artifact and counts, reuse, resume after a crash, the base student without
stage 05, and the fine-tuned student (plain-text tags and tags as special tokens)."""

from __future__ import annotations

import json

import pytest

from finetune_helpers import make_selected_run, one_thread, tiny_rows
from reflection_lab.core.runs import Journal, MissingStageError, Run, read_jsonl, write_jsonl_atomic
from reflection_lab.finetune import finetuned_model
from reflection_lab.inference import InferConfig, counts, load_generations, run_infer
from reflection_lab.llm.local import LocalModel

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
CPU = {"device": "cpu", "dtype": "float32"}  # byte-equal resumes rely on exact fp32 greedy text

EVAL = [{"id": f"e-{i}", "instruction": q, "input": inp, "reference": "x", "category": "math"}
        for i, (q, inp) in enumerate([("What is 3 plus 4?", ""), ("Summarise the text.", "The river is long."),
                                      ("Why?", ""), ("Write a function that adds 7 and 9 in Python.", ""),
                                      ("Translate 'good morning' into Spanish.", "")])]


def with_data(run: Run, rows=EVAL) -> Run:
    write_jsonl_atomic(run.path("data", "eval.jsonl"), rows)
    run.complete("data", {"test": len(rows)}, ["eval.jsonl"], {"eval": len(rows)})
    return run


@pytest.fixture(scope="module")
def sharp_llama(sharp_students):
    return sharp_students["llama"]


def test_base_student_writes_generations_and_counts(tmp_path, sharp_llama, monkeypatch):
    run = with_data(Run(tmp_path / "run"))
    with pytest.raises(MissingStageError, match="finetune"):
        run_infer(run, InferConfig(student=sharp_llama, **CPU), progress=False)  # use_adapter=True needs stage 05
    m = run_infer(run, InferConfig(student=sharp_llama, use_adapter=False, max_new_tokens=8, **CPU, batch_size=2),
                  progress=False)
    assert m["status"] == "complete" and set(m["outputs"]) == {"generations.jsonl"}
    rows = load_generations(run)
    assert [r["id"] for r in rows] == [e["id"] for e in EVAL]
    assert rows[1]["prompt"] == "Summarise the text.\nThe river is long." and rows[0]["model"] == sharp_llama
    assert set(rows[0]) == {"id", "model", "prompt", "text", "finish_reason", "n_tokens", "parsed"}
    assert set(rows[0]["parsed"]) == {"thinking", "reflections", "output", "answer", "output_complete", "well_formed",
                                      "diagnostics"}
    c = m["counts"]
    assert c == counts(rows, generated=5, resumed=0)
    assert c["prompts"] == 5 and c["no_tags"] == 5 and c["well_formed_share"] == 0.0  # an untrained student
    assert c["truncated"] == sum(r["finish_reason"] == "length" for r in rows)
    assert m["config"]["system_prompt"].startswith("Before you answer") and m["config"]["adapter"] is None
    assert "<|system|>" in m["prompt_example"] and any("No answer contains" in n for n in m["notes"])
    # same config and inputs: reused, nothing generated
    monkeypatch.setattr(LocalModel, "generate_batch", lambda *a, **k: pytest.fail("regenerated a current stage"))
    again = run_infer(run, InferConfig(student=sharp_llama, use_adapter=False, max_new_tokens=8, **CPU), progress=False)
    assert again == m


def test_a_crashed_run_resumes_with_the_missing_prompts_only(tmp_path, sharp_llama):
    ref = with_data(Run(tmp_path / "ref"))
    run_infer(ref, InferConfig(student=sharp_llama, use_adapter=False, max_new_tokens=8, **CPU), progress=False)
    run = with_data(Run(tmp_path / "run"))

    class Crashing(LocalModel):
        def generate_batch(self, prompts, *, on_result=None, **kw):
            def save(i, gen):
                on_result(i, gen)
                if save.n == 2:
                    raise KeyboardInterrupt  # what a closed laptop or a stopped cell looks like
                save.n += 1
            save.n = 0
            return super().generate_batch(prompts, on_result=save, **kw)

    crashing = Crashing.from_spec(sharp_llama, device="cpu", dtype="float32")
    crashing.model = sharp_llama
    with pytest.raises(KeyboardInterrupt):
        run_infer(run, InferConfig(student=sharp_llama, use_adapter=False, max_new_tokens=8, **CPU, batch_size=1),
                  progress=False, model=crashing)
    assert run.manifest("infer")["status"] == "running"
    journal = run.path("infer", "journal.jsonl")
    assert len(read_jsonl(journal)) == 3
    with open(journal, "ab") as f:
        f.write(b'{"id": "e-4", "text": "torn')  # a write cut off by kill -9
    m = run_infer(run, InferConfig(student=sharp_llama, use_adapter=False, max_new_tokens=8, **CPU, batch_size=3),
                  progress=False)
    assert (m["counts"]["resumed"], m["counts"]["generated"]) == (3, 2)
    assert run.path("infer", "generations.jsonl").read_bytes() == ref.path("infer", "generations.jsonl").read_bytes()
    # another configuration never reuses those answers
    m2 = run_infer(run, InferConfig(student=sharp_llama, use_adapter=False, max_new_tokens=6, n=2, **CPU),
                   progress=False)
    assert (m2["counts"]["resumed"], m2["counts"]["generated"], m2["counts"]["prompts"]) == (0, 2, 2)


def test_the_student_comes_from_the_run_when_not_named(tmp_path):
    run = with_data(Run(tmp_path / "run"))
    with pytest.raises(ValueError, match="InferConfig.student"):
        run_infer(run, InferConfig(use_adapter=False, **CPU), progress=False)


@pytest.fixture(scope="module", params=[False, True], ids=["plain-tags", "special-tags"])
def finetuned(request, tmp_path_factory, tiny_llama_path):
    from reflection_lab.finetune import FinetuneConfig, run_finetune

    run = make_selected_run(tmp_path_factory.mktemp("ft") / "run", tiny_rows(12))
    cfg = FinetuneConfig(student="tiny-llama", method="lora", max_steps=2, eval_fraction=0, max_length=192, lora_r=4,
                         lora_alpha=8, learning_rate=1e-2, tags_as_special_tokens=request.param)
    run_finetune(run, cfg, progress=False)
    return with_data(run), request.param


def test_fine_tuned_student_generates_with_its_training_prompt(finetuned):
    run, special = finetuned
    with pytest.raises(ValueError, match="trained on"):
        run_infer(run, InferConfig(student="tiny-gpt2", **CPU), progress=False)
    m = run_infer(run, InferConfig(max_new_tokens=6, n=3, **CPU), progress=False)
    ft = run.manifest("finetune")
    assert m["config"]["adapter"] == ft["fingerprint"] and m["config"]["system_prompt"] == "trained"
    assert m["model"]["tags_as_special_tokens"] is special and m["model"]["model"] == "tiny-llama+lora"
    rows = read_jsonl(run.path("infer", "generations.jsonl"))
    assert len(rows) == 3 and all(r["model"] == "tiny-llama+lora" for r in rows)
    lm = finetuned_model(run)
    assert m["prompt_example"] == lm.tokenizer.decode(lm.prompt_ids(EVAL[0]["instruction"]), skip_special_tokens=False)
    assert "Before you answer" not in m["prompt_example"]  # trained without a system prompt, asked without one
    # the same run, base student
    base = run_infer(run, InferConfig(use_adapter=False, max_new_tokens=6, n=3, **CPU), progress=False)
    assert base["config"]["model"] == "tiny-llama" and base["config"]["adapter"] is None
    json.dumps(base)  # the manifest is plain JSON


def test_kill_9_mid_run_then_rerun_loses_nothing_and_regenerates_no_finished_answer(tmp_path, sharp_llama,
                                                                                      monkeypatch):
    from slow_stage import kill9_when

    from reflection_lab.pipeline import run_stage
    from reflection_lab.profiles import get_profile

    overrides = {"use_adapter": False, "student": sharp_llama, "max_new_tokens": 8, "batch_size": 1, **CPU}
    ref = with_data(Run(tmp_path / "ref"))
    run_stage("infer", ref, get_profile("ci"), overrides=overrides, progress=False)
    run = with_data(Run(tmp_path / "run"))
    journal = run.path("infer", "journal.jsonl")
    kill9_when("infer", run.root, "ci", {}, overrides, journal, lines=2)
    kept = len(Journal(journal, key="id").load())  # the answers that were complete when the process died
    assert run.manifest("infer")["status"] == "running" and 2 <= kept < len(EVAL)
    asked: list[int] = []
    real = LocalModel.generate_batch
    monkeypatch.setattr(LocalModel, "generate_batch", lambda self, prompts, **kw: (asked.append(len(prompts)),
                                                                                   real(self, prompts, **kw))[1])
    m = run_stage("infer", run, get_profile("ci"), overrides=overrides, progress=False)
    assert asked == [len(EVAL) - kept] and m["counts"]["resumed"] == kept
    assert run.path("infer", "generations.jsonl").read_bytes() == ref.path("infer", "generations.jsonl").read_bytes()
