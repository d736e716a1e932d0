#!/usr/bin/env python3
"""Every GPU measurement the lab still lacks, in one command, with no model hub (issue 15).

    python benchmarks/gpu/run_all.py --wheel .whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl
    python benchmarks/gpu/run_all.py --dry-run     # CPU, tiny sizes: checks every step (a CI test runs this)

Steps, each timed and kept in one summary (<out>/summary.json and summary.md):
1. the scoring benchmark (bench_scoring_gpu.py: tokens/s, ratio to the reference loop, fraction of dense bf16 peak);
2. the QLoRA benchmark against plain peft + Trainer (bench_train_gpu.py: tokens/s, peak memory);
3. an fp16 pass as on a T4: profile colab-t4 (float16) through data, reflect and score;
4. a whole `reflection-lab run` with profile gpu, stage by stage: seconds and peak GPU memory per stage.
Students are random-weight models built here with the real shapes of the profiles' students (Qwen2.5-0.5B for
colab-t4, Qwen2.5-1.5B for gpu) and SmolLM2's tokenizer from its PyPI package: shapes decide speed, weights do not.
Why one script: a lent GPU comes for minutes; the sizes are chosen to fit 8 minutes on one H100 (an estimate, not
yet measured). The existing benchmark scripts run unchanged as subprocesses; this file only orchestrates them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Shapes of the profiles' students (public configs of Qwen2.5-0.5B/1.5B-Instruct); vocabulary kept at Qwen's size
# so the output head costs what it costs there, even though SmolLM2's tokenizer uses only its first 49152 ids.
QWEN_SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True)
# Sizes of the pipeline runs: small enough for the 8-minute budget, large enough that every stage does real work.
GPU_RUN = {"n_samples": 64, "n_eval": 16, "max_steps": 30, "max_new_tokens": 128}
T4_RUN = {"n_samples": 32, "n_eval": 8, "max_new_tokens": 96}
DRY_RUN = {"n_samples": 6, "n_eval": 2, "max_steps": 2, "batch_size": 2, "max_new_tokens": 12,
           "keep_unreflected_answers": True, "quant4": False, "dtype": "float32"}


def install_wheel(wheel: str | None) -> str:
    """pip install a carried wheel (bitsandbytes: the GPU image lacks it and cannot reach an index); --no-deps
    so pip leaves the machine's torch alone."""
    if not wheel:
        return "no wheel given"
    if not Path(wheel).is_file():
        sys.exit(f"error: wheel {wheel} not found; download it on a machine with PyPI access: "
                 "pip download bitsandbytes==0.50.2 --no-deps -d .whl, then carry .whl/ along")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True)
    return f"installed {Path(wheel).name}"


def build_student(out: Path, shape: dict, dtype: str) -> str:
    """A random-weight Qwen2 model with `shape`, saved with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from reflection_lab.models.loading import resolve_model

    if (out / "config.json").exists():
        return str(out)
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    cfg = Qwen2Config(**shape, max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def run_script(name: str, args: list[str], timeout: int) -> dict[str, Any]:
    """One of the existing benchmark scripts as a subprocess: its printed figures, exit code and seconds."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / name), *args], capture_output=True,
                              text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr[-2000:]
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timed out after {timeout} s\n{exc.stdout or ''}"
    return {"script": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "output": [line for line in text.splitlines() if line.strip()][-25:]}


def staged_run(run_dir: Path, profile_name: str, overrides: dict, stages: list[str] | None = None) -> dict:
    """Run the pipeline one stage at a time: seconds and peak GPU memory (GiB) of each, as `reflection-lab run`."""
    import torch

    from reflection_lab.core.runs import STAGES, Run
    from reflection_lab.pipeline import run_pipeline
    from reflection_lab.profiles import get_profile

    profile, run = get_profile(profile_name, **overrides), Run(run_dir)
    cuda = torch.cuda.is_available()
    per_stage = {}
    for stage in stages or list(STAGES):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = run_pipeline(run, profile, stages=[stage], progress=False, log=lambda *_: None)[stage]
        per_stage[stage] = {"seconds": round(time.perf_counter() - t0, 1),
                            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                            "counts": result.get("counts", {})}
        print(f"  {profile_name}: {stage:9s} {per_stage[stage]['seconds']:7.1f} s", flush=True)
    return {"profile": profile_name, "overrides": overrides, "stages": per_stage}


def markdown(summary: dict) -> str:
    """The summary as the table RESULTS.md takes, with the device's name."""
    lines = [f"# GPU run: {summary['device']}", "", f"torch {summary['torch']}; total {summary['seconds']} s; "
             f"{'DRY RUN (CPU, tiny sizes: no figure here is a measurement)' if summary['dry_run'] else ''}", ""]
    for key in ("scoring", "qlora"):
        step = summary[key]
        lines += [f"## {key} ({step['script']}, rc {step['rc']}, {step['seconds']} s)", "", "```",
                  *step["output"], "```", ""]
    for key in ("fp16_t4", "gpu_run"):
        step = summary[key]
        if "error" in step:
            lines += [f"## {key}: failed", "", step["error"], ""]
            continue
        lines += [f"## {key}: profile {step['profile']} {json.dumps(step['overrides'])}", "",
                  "| stage | seconds | peak GPU GiB |", "|---|---:|---:|"]
        lines += [f"| {s} | {r['seconds']} | {r['peak_gpu_gib']} |" for s, r in step["stages"].items()]
        lines.append("")
    return "\n".join(lines)


def guarded(fn, *args) -> dict:
    """A failed step is recorded with its one-line reason and the next step still runs (the GPU time is short)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the summary, not swallowed
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU and tiny sizes: checks every step, measures nothing")
    ap.add_argument("--out", default="gpu-results", help="folder for summary.json, summary.md, runs and students")
    ap.add_argument("--wheel", help="bitsandbytes wheel to pip install first (the GPU image lacks it)")
    a = ap.parse_args(argv)
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("error: no GPU visible; run with --dry-run to check the script on a CPU")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if not a.dry_run else "CPU (dry run)",
                               "torch": torch.__version__, "dry_run": a.dry_run, "wheel": install_wheel(a.wheel)}
    dry = ["--dry-run"] if a.dry_run else []
    print("1/4 scoring benchmark", flush=True)
    summary["scoring"] = run_script("bench_scoring_gpu.py", dry, timeout=150)
    print("2/4 QLoRA benchmark", flush=True)
    summary["qlora"] = run_script("bench_train_gpu.py", dry + ["--json", str(out / "qlora.json")], timeout=150)
    small, large = (TINY_SHAPE, TINY_SHAPE) if a.dry_run else (QWEN_SHAPES["qwen2.5-0.5b"],
                                                               QWEN_SHAPES["qwen2.5-1.5b"])
    print("3/4 fp16 pass as on a T4 (colab-t4, Qwen2.5-0.5B shapes)", flush=True)
    t4 = build_student(out / "students" / "t4", small, "float16" if not a.dry_run else "float32")
    summary["fp16_t4"] = guarded(staged_run, out / "runs" / "t4", "ci" if a.dry_run else "colab-t4",
                                 {**(DRY_RUN if a.dry_run else T4_RUN), "student": t4}, ["data", "reflect", "score"])
    print("4/4 whole run (gpu, Qwen2.5-1.5B shapes)", flush=True)
    big = build_student(out / "students" / "gpu", large, "bfloat16" if not a.dry_run else "float32")
    summary["gpu_run"] = guarded(staged_run, out / "runs" / "gpu", "ci" if a.dry_run else "gpu",
                                 {**(DRY_RUN if a.dry_run else GPU_RUN), "student": big})
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "summary.md").write_text(markdown(summary))
    print(f"summary: {out / 'summary.json'} and {out / 'summary.md'} ({summary['seconds']} s)")
    failed = [k for k in ("scoring", "qlora") if summary[k]["rc"]] + [k for k in ("fp16_t4", "gpu_run")
                                                                      if "error" in summary[k]]
    if failed:
        print(f"failed steps: {', '.join(failed)} (details in summary.md)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
