"""QLoRA throughput on one GPU: the lab's batching against padding to the longest sample, on a 1B model.

Nothing is downloaded: the model is Llama-3.2-1B-shaped (hidden 2048, 16 layers, 32 heads / 8 KV heads,
intermediate 8192, vocabulary 128,256, tied embeddings) with random weights, saved once in bf16 and
reloaded in 4-bit NF4 (double quantisation, bf16 compute); the data are random token ids with
varied lengths (a prompt part masked out of the loss, an answer part trained). Random weights train
at the same speed as real ones, so tokens/s and memory are meaningful; the losses are not.

Both arms: the same 4-bit model (reloaded per arm), LoRA r=16 on all linear layers, gradient
checkpointing, AdamW, batch size, steps and data. Lab: `reflection_lab.finetune`'s Trainer (length-grouped
batches padded to their longest member, to a multiple of 8). Baseline: plain Trainer with every sample
padded to the longest in the dataset. Each arm first trains `--warmup` untimed steps (CUDA kernels,
allocator), then the timed run covers whole passes over the data, so both arms train on the same tokens.

Run on a GPU (under 5 minutes on one H100):   python benchmarks/gpu/bench_train_gpu.py
Check the script on a CPU with a tiny config:  python benchmarks/gpu/bench_train_gpu.py --dry-run

bitsandbytes on the GPU machine: its image lacks bitsandbytes, which this benchmark imports (4-bit NF4), and
the machine cannot reach a package index. Bring the wheel with you:

    pip download bitsandbytes==0.50.2 --no-deps -d .whl    # on the workstation: one 43 MB wheel in .whl/
    # carry .whl to the GPU machine (.whl/ is git-ignored, so a copy of the work tree leaves it out unless named)
    pip install .whl/*.whl                                 # on the GPU machine, before running the script

0.50.2 is the pin in constraints.txt. The wheel is tagged py3-none-manylinux_2_24_x86_64 and bundles the CUDA
11.8-13.2 kernels, so the one file fits the GPU machine's Python and CUDA; --no-deps keeps pip away from the
machine's own torch.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=4096,
                rope_theta=500000.0)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=512)


def synthetic_examples(n: int, min_len: int, max_len: int, vocab: int, seed: int = 0) -> list[dict]:
    """Token ids with log-uniform lengths; the first ~30% of each sample is prompt (label -100)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = int(math.exp(rng.uniform(math.log(min_len), math.log(max_len))))
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        n_prompt = max(1, int(length * rng.uniform(0.15, 0.45)))
        out.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:], "length": length})
    return out


def build_random_model(folder: Path, shape: dict, dtype) -> Path:
    """Random-weight Llama saved once (bf16 on a GPU), so both arms can reload it in 4-bit."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(folder)
    del model
    gc.collect()
    return folder


class _Timing:
    def __init__(self) -> None:
        from transformers import TrainerCallback

        timing = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
                _sync()
                timing.start, timing.tokens0 = time.perf_counter(), int(state.num_input_tokens_seen)

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                _sync()
                timing.end, timing.tokens = time.perf_counter(), int(state.num_input_tokens_seen)

        self.cb = CB()
        self.start = self.end = 0.0
        self.tokens0 = self.tokens = 0

    def rate(self) -> tuple[float, int, float]:
        tokens, seconds = self.tokens - self.tokens0, self.end - self.start
        return tokens / seconds, tokens, seconds


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_arm(arm: str, model_dir: Path, examples: list[dict], a: argparse.Namespace, info) -> dict:
    import torch
    from transformers import Trainer, default_data_collator

    from reflection_lab.finetune import FinetuneConfig
    from reflection_lab.finetune.trainer import make_trainer, training_args
    from reflection_lab.finetune.model import build_model
    from reflection_lab.finetune.data import ExampleDataset, PadToLongest

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg = FinetuneConfig(student=str(model_dir), method="qlora", max_steps=a.warmup, batch_size=a.batch_size,
                         learning_rate=2e-4, lora_r=16, lora_alpha=32, lora_dropout=0.05, save_steps=10**6,
                         eval_fraction=0.0, gradient_checkpointing=True, seed=0)
    model, facts = build_model(cfg, None, info)
    if arm == "lab":
        data = ExampleDataset(examples)
        collator = PadToLongest(0, pad_to_multiple_of=8 if info.device == "cuda" else None)
    else:
        longest = max(e["length"] for e in examples)
        data = [{"input_ids": e["input_ids"] + [0] * (longest - e["length"]),
                 "attention_mask": [1] * e["length"] + [0] * (longest - e["length"]),
                 "labels": e["labels"] + [-100] * (longest - e["length"])} for e in examples]
        collator = default_data_collator
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase, steps in (("warmup", a.warmup), ("timed", a.steps)):
            cfg = cfg.replace(max_steps=steps)
            args = training_args(cfg, Path(tmp) / phase, info, has_eval=False)  # save_steps 10**6: no saves
            timing = _Timing()
            if arm == "lab":
                trainer = make_trainer(model, args, data, None, collator, cfg, [timing.cb])
            else:
                from transformers.trainer_callback import PrinterCallback

                trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator,
                                  callbacks=[timing.cb])
                trainer.remove_callback(PrinterCallback)
            trainer.train()
            results[phase] = timing.rate()
    rate, tokens, seconds = results["timed"]
    out = {"arm": arm, "tokens_per_s": rate, "timed_tokens": tokens, "timed_seconds": seconds,
           "trainable_parameters": facts.get("trainable_parameters")}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        from reflection_lab.core.devices import peak_rss_bytes

        out["peak_rss_gib"] = (peak_rss_bytes() or 0) / 2**30
    del trainer, model
    gc.collect()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny config on the CPU: checks the script, times nothing")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: one pass over the data)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    import torch

    from reflection_lab.core.devices import pick_device

    if a.dry_run:
        shape, a.samples, a.batch_size, a.min_len, a.max_len, a.warmup = TINY, 32, 4, 8, 64, 1
        info = pick_device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no GPU: run with --dry-run to check the script on a CPU", file=sys.stderr)
            return 2
        shape, info = LLAMA_1B, pick_device("cuda")
    if not a.steps:
        a.steps = math.ceil(a.samples / a.batch_size)  # one pass: both arms train on the same tokens
    import bitsandbytes
    import transformers

    print(f"device: {info.device} ({info.name}), compute dtype {info.dtype}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}", flush=True)
    t0 = time.perf_counter()
    examples = synthetic_examples(a.samples, a.min_len, a.max_len, shape["vocab_size"])
    real = sum(e["length"] for e in examples)
    print(f"data: {a.samples} samples, lengths {a.min_len}-{a.max_len} (mean {real / a.samples:.0f}); padding to the "
          f"longest keeps {real / (a.samples * max(e['length'] for e in examples)):.0%} real tokens", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_random_model(Path(tmp) / "model", shape, info.torch_dtype())
        print(f"random {'Llama-3.2-1B' if not a.dry_run else 'tiny'}-shaped model saved in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        for arm in ("baseline", "lab"):
            r = run_arm(arm, model_dir, examples, a, info)
            results[arm] = r
            mem = r.get("peak_gpu_gib", r.get("peak_rss_gib"))
            print(f"  {arm:8s} {r['tokens_per_s']:10.1f} real tokens/s ({r['timed_tokens']} tokens in "
                  f"{r['timed_seconds']:.1f} s, {a.steps} steps x {a.batch_size}); peak "
                  f"{'GPU' if 'peak_gpu_gib' in r else 'RSS'} {mem:.2f} GiB", flush=True)
    key = "peak_gpu_gib" if "peak_gpu_gib" in results["lab"] else "peak_rss_gib"
    ratio = results["lab"]["tokens_per_s"] / results["baseline"]["tokens_per_s"]
    mem_ratio = results["lab"][key] / results["baseline"][key]
    print(f"ratio lab/baseline: {ratio:.2f}x tokens/s, {mem_ratio:.2f}x peak memory; total "
          f"{time.perf_counter() - t0:.0f} s" + ("  (dry run: CPU timings mean nothing)" if a.dry_run else ""))
    summary = {"device": info.as_dict(), "args": vars(a), "results": results, "ratio_tokens_per_s": ratio,
               "ratio_peak_memory": mem_ratio}
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
