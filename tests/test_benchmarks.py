"""Benchmarks are scripts, not timed tests: here they only have to run end to end in a quick mode,
so they do not rot. Their figures are read by people (benchmarks/RESULTS.md), never asserted."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

QUICK = {
    "bench_answer.py": ["--model", "tiny-llama", "--n", "2", "--tokens", "8"],
    "bench_tags.py": ["--quick", "--repeats", "1"],
    "bench_scoring.py": ["--models", "tiny-llama", "--n", "6"],
    "bench_selection.py": ["--n", "2000", "--repeats", "2"],
    "measure_scoring_modes.py": ["--model", "tiny-llama", "--n", "2"],
    "bench_reflect.py": ["--n", "8", "--latency-s", "0.05", "--concurrency", "1,4"],
    # 2 optimizer steps per arm still load the 4-bit model, build both trainers and time them (~12 s here).
    "bench_train.py": ["--steps", "2", "--batch-size", "2", "--max-length", "256"],
    "bench_step_memory.py": ["--batch-size", "2", "--max-length", "128", "--passes", "1", "--threads", "1"],
    "format_sweep.py": ["--profile", "ci", "--n-samples", "12", "--n-eval", "2", "--threads", "1",
                        "--root", str(Path(tempfile.gettempdir()) / "reflection-lab-format-sweep-test"),
                        "--setting", '{"name": "quick", "max_steps": 2, "decodes": [{"max_new_tokens": 8}]}'],
    "gpu/bench_scoring_gpu.py": ["--dry-run"],
    "gpu/bench_train_gpu.py": ["--dry-run"],  # tiny Llama on the CPU, both arms (~8 s here with one thread)
}
# The GPU script's dry run leaves torch at its default threads; on a busy 2-core machine two spinning OpenMP
# threads took it from 8 s to 66 s, so its smoke run gets one thread (the figures are not read here anyway).
EXTRA_ENV = {"gpu/bench_train_gpu.py": {"OMP_NUM_THREADS": "1"}}


@pytest.mark.parametrize("script", sorted(QUICK))
def test_benchmark_script_runs(script):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **EXTRA_ENV.get(script, {}))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *QUICK[script]], capture_output=True,
                         text=True, timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip()


def test_scoring_modes_reuses_a_matching_stage_03_which_equals_its_own_lab_scores(tmp_path):
    """`--from-run` skips scoring the `lab` setting only because stage 03 computes the same numbers: checked here."""
    import importlib.util

    from reflection_lab.core.runs import Run, read_jsonl
    from reflection_lab.models import load_model, load_tokenizer
    from reflection_lab.pipeline import run_pipeline
    from reflection_lab.profiles import get_profile
    from reflection_lab.scoring.encode import make_encoder
    from reflection_lab.scoring.engine import LossEngine

    path = ROOT / "benchmarks" / "measure_scoring_modes.py"
    spec = importlib.util.spec_from_file_location("measure_scoring_modes", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    profile = get_profile("ci", n_samples=3, quant4_scoring=False)
    run = Run(tmp_path / "run")
    run_pipeline(run, profile, stages=["data", "reflect", "score"], log=lambda *a: None)
    rows = read_jsonl(run.path("reflect", "reflections.jsonl"))
    reused = bench.stage_scores(run, rows, "tiny-llama", profile.template, profile.max_length)
    assert reused is not None and [r["id"] for r in reused] == [r["id"] for r in rows]
    assert bench.stage_scores(run, rows, "tiny-llama", profile.template, profile.max_length + 1) is None
    tok, model = load_tokenizer("tiny-llama"), load_model("tiny-llama", dtype="float32")
    enc = make_encoder(tok, mode="lab", template=profile.template, max_length=profile.max_length)
    fresh = bench.score_rows(rows, enc, LossEngine(model, pad_id=tok.pad_token_id))
    for a, b in zip(reused, fresh):
        for v, scores in b["variants"].items():
            for k in ("ifd", "rifd"):
                assert (a["variants"][v][k] is None) == (scores[k] is None), (a["id"], v, k)
                if scores[k] is not None:
                    assert abs(a["variants"][v][k] - scores[k]) < 1e-5, (a["id"], v, k)
