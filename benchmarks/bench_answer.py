#!/usr/bin/env python3
"""Answering over a 4-bit base on a CPU: bitsandbytes' 4-bit kernels against the same weights dequantized.

What a user would otherwise pick is the 4-bit model as trained (QLoRA). The lab answers on a CPU with that
base dequantized before use (`models.load_dequantized`, `models.answers_from_dequantized`): the same weights.
This script times greedy batched generation of the same prompts with both, side by side in one process,
and checks that they are the same model: the largest logit difference on one forward pass, and how many
greedy answers come out identical (the 4-bit kernels compute in bf16 on CPUs that have it, so a few answers
may part after some tokens).

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
    dequantized = load_dequantized(args.model, info=info)
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        diff = (four_bit(input_ids=ids).logits - dequantized(input_ids=ids).logits).abs().max().item()
    questions = prompts(args.n)
    s4, a4 = timed_answers(four_bit, tok, questions, args.tokens, args.batch_size)
    sd, ad = timed_answers(dequantized, tok, questions, args.tokens, args.batch_size)
    same = sum(x == y for x, y in zip(a4, ad))
    print(f"{args.model}, {len(questions)} prompts x {args.tokens} new tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"4-bit kernels:        {s4:7.1f} s")
    print(f"dequantized (lab):    {sd:7.1f} s")
    print(f"ratio 4-bit / dequantized: {s4 / sd:.2f}x")
    print(f"same model: largest logit difference {diff:.3g}; {same} of {len(questions)} greedy answers identical")


if __name__ == "__main__":
    main()
