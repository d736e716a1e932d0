#!/usr/bin/env python3
"""GPU scoring benchmark: reference-style loop vs the lab's engine on a Llama-3.2-1B-shaped model.

Nothing is downloaded: the model has random weights (shapes decide speed, values do not) and
the samples are random token ids with realistic prompt and answer lengths. Every shape the timed
passes use is run once before timing (first passes over new shapes were several times slower): the
engine's whole pass, and every item of the reference loop (batch 1, so each item is its own shape).

Prints tokens/s of both, the speed-up, peak memory, and the engine's fraction of the card's
dense bf16 peak (2 x parameters FLOPs per token; attention FLOPs are not counted, so the figure
slightly understates the work done). Finishes in a few minutes on one H100.

    python benchmarks/gpu/bench_scoring_gpu.py             # on a GPU
    python benchmarks/gpu/bench_scoring_gpu.py --dry-run   # tiny config on the CPU, checks the script

bitsandbytes: the GPU machine's image lacks it. This script scores in bf16 and fp32 and never imports it
(a --dry-run leaves it unloaded), so it runs on the bare image; the 4-bit paths (bench_train_gpu.py,
quant4_scoring) need it. The machine cannot reach a package index, so bring the wheel with you:

    pip download bitsandbytes==0.50.2 --no-deps -d .whl    # on the workstation: one 43 MB wheel in .whl/
    # carry .whl to the GPU machine (.whl/ is git-ignored, so a copy of the work tree leaves it out unless named)
    pip install .whl/*.whl                                 # on the GPU machine, before running

0.50.2 is the pin in constraints.txt; the wheel (py3-none-manylinux_2_24_x86_64) bundles the CUDA 11.8-13.2
kernels, and --no-deps keeps pip away from the machine's own torch.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from reflection_lab.scoring.engine import LossEngine  # noqa: E402
from reflection_lab.scoring.items import Item  # noqa: E402
from reflection_lab.scoring.reference import reference_losses  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' spec sheets, by device-name substring.
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("A10", 125e12), ("T4", 65e12)]


def peak_flops(name: str) -> float | None:
    return next((v for key, v in PEAK_BF16 if key in name), None)


def build_model(dry: bool, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if dry:
        cfg = LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                          max_position_embeddings=4096)
    else:  # Llama-3.2-1B shapes
        cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                          max_position_embeddings=131072, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    return model


def make_items(n: int, vocab: int, seed: int = 0, scale: float = 1.0) -> list[Item]:
    """Four passes per sample like IFD / r-IFD: (prompt, answer), (start, answer), (reverse, q), (start, q)."""
    rng = random.Random(seed)
    items = []
    tok = lambda k: tuple(rng.randrange(10, vocab) for _ in range(max(1, int(k * scale))))  # noqa: E731
    for _ in range(n):
        q, a = tok(rng.randint(20, 200)), tok(rng.randint(30, 600))
        template = tok(12)
        items += [Item((1,) + template + q, a), Item((1,), a), Item((1,) + template + a + template, q), Item((1,), q)]
    return items


def reference(model, items: list[Item]) -> float:
    """The package's plain reference loop: batch 1, full logits (+ hidden states, as the public code asks for)."""
    reference_losses(model, items, hidden_states=True)
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(it) for it in items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, to check the script runs")
    ap.add_argument("--samples", type=int, default=512, help="samples for the engine (4 passes each)")
    ap.add_argument("--ref-samples", type=int, default=24, help="samples for the slow reference loop")
    ap.add_argument("--batch-tokens", type=int, default=65536)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    device = "cuda" if cuda else "cpu"
    if not cuda and not args.dry_run:
        sys.exit("no GPU visible: run with --dry-run to check the script on a CPU")
    name = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
    n, n_ref, scale = (args.samples, args.ref_samples, 1.0) if not args.dry_run else (16, 4, 0.2)
    print(f"device: {name}; torch {torch.__version__}")

    engine_model = build_model(args.dry_run, torch.bfloat16 if cuda else torch.float32, device)
    params = sum(p.numel() for p in engine_model.parameters())
    vocab = engine_model.config.vocab_size
    items = make_items(n, vocab, scale=scale)
    ref_items = make_items(n_ref, vocab, seed=1, scale=scale)

    def engine_pass(model) -> tuple[float, float]:
        eng = LossEngine(model, pad_id=0, batch_tokens=args.batch_tokens, padding_side="right",
                         max_batch_size=256)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        eng.score(items)
        if cuda:
            torch.cuda.synchronize()
        return eng.tokens_scored, time.perf_counter() - t0

    engine_pass(engine_model)  # warm-up: every batch shape of the timed pass is seen once
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tokens, t_eng = engine_pass(engine_model)
    eng_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    eng_tps = tokens / t_eng

    del engine_model
    if cuda:
        torch.cuda.empty_cache()
    ref_model = build_model(args.dry_run, torch.float32, device)  # the public code loads fp32 weights
    # Warm-up over every item, not a few: at batch 1 each item is a (1, length) shape of its own, and the
    # engine's timed pass was warmed over all of its shapes too, so neither side pays first-shape costs.
    reference(ref_model, ref_items)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ref_tokens = reference(ref_model, ref_items)
    t_ref = time.perf_counter() - t0
    ref_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    ref_tps = ref_tokens / t_ref

    print(f"model: {params / 1e9:.2f} B parameters (Llama-3.2-1B shapes{' - DRY RUN, tiny' if args.dry_run else ''})")
    print(f"reference-style loop (fp32, batch 1, full logits): {ref_tps:10.0f} tokens/s  peak {ref_mem:.1f} GiB")
    print(f"lab engine (bf16, batched, answer-only head):       {eng_tps:10.0f} tokens/s  peak {eng_mem:.1f} GiB")
    print(f"speed-up: {eng_tps / ref_tps:.1f}x")
    peak = peak_flops(name)
    if cuda and peak:
        frac = eng_tps * 2 * params / peak
        print(f"engine compute: {eng_tps * 2 * params / 1e12:.0f} TFLOP/s = {100 * frac:.0f}% of {name}'s "
              f"dense bf16 peak ({peak / 1e12:.0f} TFLOP/s)")


if __name__ == "__main__":
    main()
