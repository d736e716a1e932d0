#!/usr/bin/env python3
"""Answering over a 4-bit base on a CPU: bitsandbytes' 4-bit kernels against the same weights dequantized.

What a user would otherwise pick is the 4-bit model as trained (QLoRA). The lab answers on a CPU with that
base dequantized before use (`models.load_dequantized`, `models.answers_from_dequantized`): the same weights.
This script times greedy batched generation of the same prompts, side by side in one process: the 4-bit
kernels as bitsandbytes picks them (on a CPU with AVX512-BF16 they repack the weights and compute in bf16),
the 4-bit kernels kept in fp32 (what training uses), and the dequantized weights; and checks which are the
same model as trained: the largest logit difference on one forward pass against the dequantized model, and
how many greedy answers come out identical.

    python benchmarks/bench_answer.py                       # SmolLM2-135M, 8 held-out prompts, 96 new tokens
    python benchmarks/bench_answer.py --model tiny-llama --n 2 --tokens 8   # a smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reflection_lab.core.devices import pick_device  # noqa: E402
from reflection_lab.finetune.model import keep_4bit_weights_trainable  # noqa: E402
from reflection_lab.llm.local import LocalModel  # noqa: E402
from reflection_lab.models import load_dequantized, load_model, load_tokenizer  # noqa: E402


def prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "data" / "workshop_eval.jsonl").read_text().splitlines() if line]
    return [r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "") for r in rows[:n]]


def timed_answers(lm: object, tok: object, questions: list[str], tokens: int, batch: int) -> tuple[float, list[str]]:
    model = LocalModel(lm, tok, name="bench")
    model.generate_batch(questions[:1], max_new_tokens=2, batch_size=1)  # warm-up (and the 4-bit CPU repack)
    t0 = time.perf_counter()
    out = model.generate_batch(questions, max_new_tokens=tokens, batch_size=batch)
    return time.perf_counter() - t0, [g.text for g in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=8, help="held-out prompts of data/workshop_eval.jsonl")
    ap.add_argument("--tokens", type=int, default=96, help="new tokens per answer")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    import torch

    info = pick_device("cpu", None)
    tok = load_tokenizer(args.model, padding_side="left")
    four_bit = load_model(args.model, quant4=True, info=info)
    four_bit_fp32 = load_model(args.model, quant4=True, info=info)
    keep_4bit_weights_trainable(four_bit_fp32)  # fp32 4-bit kernels, as in training
    dequantized = load_dequantized(args.model, info=info)
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False)["input_ids"]])
    questions = prompts(args.n)
    arms = {"4-bit kernels (default, bf16 where the CPU has it)": four_bit,
            "4-bit kernels in fp32 (as in training)": four_bit_fp32, "dequantized (the lab on a CPU)": dequantized}
    with torch.no_grad():
        want = dequantized(input_ids=ids).logits
        diffs = {name: (lm(input_ids=ids).logits - want).abs().max().item() for name, lm in arms.items()}
    results = {name: timed_answers(lm, tok, questions, args.tokens, args.batch_size) for name, lm in arms.items()}
    ref_s, ref_text = results["dequantized (the lab on a CPU)"]
    print(f"{args.model}, {len(questions)} prompts x {args.tokens} new tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    for name, (secs, texts) in results.items():
        same = sum(x == y for x, y in zip(texts, ref_text))
        print(f"{name:52s} {secs:6.1f} s  {secs / ref_s:5.2f}x the dequantized time; largest logit difference "
              f"{diffs[name]:.3g}; {same} of {len(texts)} greedy answers as dequantized")


if __name__ == "__main__":
    main()
