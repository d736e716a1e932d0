#!/usr/bin/env python3
"""Which fine-tuning and decoding settings make SmolLM2-135M write the Reflection format (issue 16).

Builds stages 01-04 once with the `offline` profile (and the data sizes asked for), then, for each
setting, fine-tunes a student on the same selection in its own run directory and lets it answer the
held-out prompts of `01_data/eval.jsonl`. Prints and appends one JSON line per setting: training time,
the share of well-formed answers, the share that stopped on their own (not at the token budget) and the
share with a `<reflection>` block. These lines are what docs/finetune.md records.

    python benchmarks/format_sweep.py --n-samples 32 --n-eval 20 \\
        --setting '{"name": "default", "decodes": [{}, {"max_new_tokens": 384},
                                                   {"max_new_tokens": 384, "repetition_penalty": 1.2}]}'

A setting is a JSON object: "name", any Profile field that shapes the training (max_steps, learning_rate,
lora_r, lora_alpha, tags_as_special_tokens, train_system_prompt, tag_loss_weight, ...), "finetune": {FinetuneConfig
fields without a profile field, e.g. "eval_fraction": 0} and "decodes": a list of
{"max_new_tokens": N, "repetition_penalty": P, "stop": false, "quant4": false, "loop_guard": N,
"temperature": T, "top_p": P, "top_k": K, "seed": S} to answer with after that one
training (default: the profile's budget, greedy, ending at "</output>"; "stop": false generates on to the
end-of-turn token or the budget; "quant4": false answers with the adapter over the 4-bit base dequantized, the
same weights in full precision, now also the default on a CPU; see docs/finetune.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reflection_lab.core.runs import Run  # noqa: E402
from reflection_lab.finetune import FinetuneConfig, run_finetune  # noqa: E402
from reflection_lab.inference import InferConfig, run_infer  # noqa: E402
from reflection_lab.llm.sampling import SamplingPreset  # noqa: E402
from reflection_lab.pipeline import run_pipeline  # noqa: E402
from reflection_lab.profiles import Profile, get_profile  # noqa: E402

PREPARED = ("01_data", "02_reflect", "03_score", "04_select")


def prepare(root: Path, profile: Profile) -> Run:
    """Stages 01-04 once; every setting trains on this same selection."""
    run = Run(root / "prepared")
    run_pipeline(run, profile, stages=["data", "reflect", "score", "select"], progress=False)
    return run


def trial(prepared: Run, root: Path, profile: Profile, setting: dict) -> list[dict]:
    """Fine-tune once with one setting in its own run directory, then answer with each of its decodings."""
    setting = dict(setting)
    name = setting.pop("name")
    decodes = setting.pop("decodes", [{}])
    finetune_only = setting.pop("finetune", {})  # FinetuneConfig fields no profile field maps to (eval_fraction, ...)
    unknown = sorted(set(setting) - {f.name for f in fields(Profile)})
    if unknown:
        raise SystemExit(f"setting {name!r}: unknown field(s) {unknown}")
    prof = get_profile(profile.name, **{**_sizes(profile), **setting})
    run = Run(root / name)
    for stage_dir in PREPARED:
        if not (run.root / stage_dir).exists():
            shutil.copytree(prepared.root / stage_dir, run.root / stage_dir)
    t0 = time.perf_counter()
    ft = run_finetune(run, FinetuneConfig.from_profile(prof, **finetune_only), progress=False)
    train_s = time.perf_counter() - t0
    trained = {"name": name, **setting, **finetune_only, "train_rows": ft["counts"].get("train_samples"),
               "steps": ft["counts"].get("steps"), "final_train_loss": ft["counts"].get("final_train_loss"),
               "train_s": round(train_s, 1)}
    return [answer(run, prof, trained, decode) for decode in decodes] or [trained]


def answer(run: Run, prof: Profile, trained: dict, decode: dict) -> dict:
    """Answers to the held-out prompts with one decoding (greedy unless it sets a temperature)."""
    budget = decode.get("max_new_tokens", prof.max_new_tokens)
    penalty = decode.get("repetition_penalty")
    stop = ("</output>",) if decode.get("stop", True) else ()
    guard = decode.get("loop_guard", 0)
    temperature, top_p, seed = decode.get("temperature", 0.0), decode.get("top_p", 1.0), decode.get("seed", 0)
    preset = SamplingPreset(f"t{temperature}-p{top_p}-s{seed}-rp{penalty}-stop{len(stop)}-guard{guard}",
                            temperature=temperature, top_p=top_p, top_k=decode.get("top_k"), seed=seed,
                            repetition_penalty=penalty, stop=stop, loop_guard=guard)
    t0 = time.perf_counter()
    quant4 = decode.get("quant4")  # None: as trained (4-bit for QLoRA); false: over that base dequantized
    inf = run_infer(run, InferConfig.from_profile(prof, preset=preset, max_new_tokens=budget, quant4=quant4),
                    force=True, progress=False)
    c, n = inf["counts"], inf["counts"]["prompts"]
    return {**trained, "max_new_tokens": budget, "repetition_penalty": penalty, "stop": list(stop), "loop_guard": guard,
            "temperature": temperature, "top_p": top_p, "top_k": preset.top_k, "sampling_seed": seed,
            "answer_quant4": quant4,
            "infer_s": round(time.perf_counter() - t0, 1), "prompts": n,
            "well_formed_share": c["well_formed_share"],
            "stopped_share": round(c["finish_reasons"].get("stop", 0) / n, 4),
            "reflection_share": round(c["with_reflection"] / n, 4), "diagnostics": c["diagnostics"]}


def _sizes(profile: Profile) -> dict:
    return {"n_samples": profile.n_samples, "n_eval": profile.n_eval}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="runs/format-sweep", help="where the run directories go")
    ap.add_argument("--profile", default="offline")
    ap.add_argument("--n-samples", type=int, default=None, help="training samples (default: the profile's)")
    ap.add_argument("--n-eval", type=int, default=None, help="held-out prompts (default: the profile's)")
    ap.add_argument("--setting", action="append", default=[], help="a JSON object (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON lines file to append to (default: ROOT/results.jsonl)")
    args = ap.parse_args()
    root = Path(args.root)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile, n_samples=args.n_samples, n_eval=args.n_eval)
    settings = [json.loads(s) for s in args.setting] or [{"name": "profile-default"}]
    t0 = time.perf_counter()
    prepared = prepare(root, profile)
    print(f"stages 01-04 ready in {time.perf_counter() - t0:.0f} s "
          f"(n_samples={profile.n_samples}, n_eval={profile.n_eval})", flush=True)
    out = Path(args.out or root / "results.jsonl")
    for setting in settings:
        for row in trial(prepared, root, profile, setting):
            row.update(profile=profile.name, n_samples=profile.n_samples, n_eval=profile.n_eval)
            print(json.dumps(row), flush=True)
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
