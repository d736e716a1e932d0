"""Stage 05 as real processes: killed with SIGKILL and resumed on the same loss curve; two DDP processes on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_helpers import losses, make_selected_run, one_thread, tiny_rows
from reflection_lab.finetune import FinetuneConfig, load_finetuned, run_finetune
from reflection_lab.finetune.callbacks import COMPLETE_MARKER
from reflection_lab.core.runs import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

# 36 training rows / batch 4 = 9 steps per epoch: step 12 is in the second epoch, so the resumed run
# must also reproduce the second epoch's shuffle. Dropout is on, so the RNG state must be restored too.
CFG = dict(student="tiny-llama", max_steps=12, save_steps=4, eval_steps=4, batch_size=4, max_length=256,
           lora_r=8, lora_alpha=16, lora_dropout=0.1, learning_rate=5e-3)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + str(ROOT / "tests") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_kill9_then_rerun_continues_the_same_loss_curve(tmp_path, tiny_llama_path):
    rows = tiny_rows(40, seed=2)
    run = make_selected_run(tmp_path / "killed", rows)
    args = [sys.executable, str(ROOT / "tests" / "finetune_helpers.py"), "--run", str(run.root), "--sleep", "0.4",
            "--threads", "1"] + [f"--cfg={k}={json.dumps(v)}" for k, v in CFG.items()]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts = run.stage_dir("finetune") / "checkpoints"
    log = ckpts / "train_log.jsonl"
    deadline = time.time() + 120
    logged = 0
    while time.time() < deadline and proc.poll() is None:
        if (ckpts / "checkpoint-4" / COMPLETE_MARKER).exists() and log.exists():
            logged = max((r["step"] for r in read_jsonl(log) if "step" in r), default=0)
            if logged >= 6:  # a checkpoint exists and the run went on past it
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.kill()  # SIGKILL: no cleanup, no except blocks
    proc.wait()
    assert run.manifest("finetune")["status"] == "running"
    assert 6 <= logged < 12

    m = run_finetune(run, FinetuneConfig(**CFG), progress=False)
    assert m["status"] == "complete" and m["counts"]["resumed_from_step"] in (4, 8)
    train_log = [r for r in read_jsonl(run.path("finetune", "train_log.jsonl")) if r["kind"] == "train"]
    assert [r["step"] for r in train_log] == list(range(1, 13))  # steps after the checkpoint redone, not duplicated
    # the counts and the model card cover the whole run, not only the process that finished it
    c = m["counts"]
    assert c["train_loss_mean"] == pytest.approx(sum(r["loss"] for r in train_log) / 12, abs=1e-5)
    assert c["train_seconds"] >= c["session_seconds"] + 0.4 * c["resumed_from_step"]  # the killed one slept 0.4 s a step
    assert f"resumed at step {c['resumed_from_step']}" in run.path("finetune", "MODEL_CARD.md").read_text()

    clean = make_selected_run(tmp_path / "clean", rows)
    run_finetune(clean, FinetuneConfig(**CFG), progress=False)
    a, b = losses(run), losses(clean)
    assert a.keys() == b.keys()
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-4), step
    ea, eb = losses(run, "eval"), losses(clean, "eval")
    assert ea.keys() == eb.keys() == {4, 8, 12}
    for step in ea:
        assert ea[step] == pytest.approx(eb[step], abs=1e-4), step


def test_two_cpu_processes_under_accelerate_launch_train_a_loadable_adapter(tmp_path, tiny_llama_path):
    run = make_selected_run(tmp_path / "ddp", tiny_rows(24, seed=3))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "reflection_lab.finetune", "--run", str(run.root), "--profile", "ci", "--quiet",
              "--cfg", "max_steps=4", "--cfg", "save_steps=2", "--cfg", "eval_fraction=0"]
    res = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    m = run.manifest("finetune")
    assert m["status"] == "complete" and m["counts"]["processes"] == 2 and m["world_size"] == 2
    log = [r for r in read_jsonl(run.path("finetune", "train_log.jsonl")) if r["kind"] == "train"]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    # Step 1 saw the first two batches of the shared length-grouped order: one per process (real tokens
    # are gathered from both), so each process trained on its own half.
    from reflection_lab.models import load_tokenizer
    from reflection_lab.finetune.data import LengthGroupedSampler, encode_rows
    from reflection_lab.format.chat import build_format

    tok = load_tokenizer("tiny-llama")
    examples, _ = encode_rows(read_jsonl(run.path("select", "selected.jsonl")), build_format(tok, "chat"), tok,
                              max_length=512)
    lengths = [e["length"] for e in examples]
    order = LengthGroupedSampler(lengths, batch_size=4, seed=0).order(0)
    assert log[0]["tokens"] == sum(lengths[i] for i in order[:8])
    model, tok = load_finetuned(run)
    assert type(model).__name__ == "PeftModelForCausalLM"
