"""Scoring as real processes: killed mid-run and resumed; two processes under `accelerate launch`."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from reflection_lab.core.runs import read_jsonl
from reflection_lab.scoring import ScoreConfig, run_score
from reflection_lab.scoring.engine import LossEngine
from scored_helpers import make_reflected_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args):
    return [sys.executable, "-m", "reflection_lab", "score", *args]


def _scores(run):
    return {(r["id"], v): s for r in read_jsonl(run.path("score", "scores.jsonl")) for v, s in r["variants"].items()}


def _assert_same(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        for f in ("ifd", "rifd", "s_a_q", "s_a", "s_q_rev", "s_q"):
            assert a[k][f] == pytest.approx(b[k][f], abs=tol), (k, f)


def test_kill9_then_rerun_resumes_without_rescoring(tmp_path, tiny_llama_path, monkeypatch):
    run = make_reflected_run(tmp_path / "killed", n=60)
    shutil.copytree(run.root, tmp_path / "clean")
    args = ["--run", str(run.root), "--profile", "ci", "--set", "score_batch_tokens=40"]
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    journal_lines = 0
    while time.time() < deadline and proc.poll() is None:
        journals = list(run.stage_dir("score").glob("passes-*.jsonl"))
        journal_lines = sum(1 for j in journals for _ in open(j)) if journals else 0
        if journal_lines >= 40:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "scoring finished before it could be killed; make the workload bigger"
    proc.kill()
    proc.wait()
    assert run.manifest("score")["status"] == "running"
    from reflection_lab.core.runs import Journal

    done = sum(len(Journal(j).load()) for j in run.stage_dir("score").glob("passes-*.jsonl"))
    assert done >= 40

    forwarded = []
    real = LossEngine.forward_batch
    monkeypatch.setattr(LossEngine, "forward_batch", lambda self, b: forwarded.extend(b) or real(self, b))
    cfg = ScoreConfig(student="tiny-llama", max_length=512)  # a bigger batch than the killed run: same fingerprint
    m = run_score(run, cfg, progress=False)
    assert m["status"] == "complete"
    total = m["counts"]["unique_passes"]
    assert len(forwarded) == total - done  # nothing finished before the kill was scored again
    from reflection_lab.core.runs import Run

    clean = Run(tmp_path / "clean")
    run_score(clean, cfg, progress=False)
    _assert_same(_scores(run), _scores(clean), 1e-5)


def test_two_processes_under_accelerate_match_one_process(tmp_path, tiny_llama_path):
    run = make_reflected_run(tmp_path / "two", n=12)
    shutil.copytree(run.root, tmp_path / "one")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "reflection_lab",
              "score", "--run", str(run.root), "--profile", "ci"]
    res = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    journals = sorted(p.name for p in run.stage_dir("score").glob("passes-*.jsonl"))
    assert len(journals) == 2 and "rank0of2" in journals[0] and "rank1of2" in journals[1]
    one = subprocess.run(_cli("--run", str(tmp_path / "one"), "--profile", "ci"), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    from reflection_lab.core.runs import Run

    a, b = _scores(run), _scores(Run(tmp_path / "one"))
    _assert_same(a, b, 1e-6)
    assert [r["id"] for r in read_jsonl(run.path("score", "scores.jsonl"))] == [f"s{k:03d}" for k in range(12)]
