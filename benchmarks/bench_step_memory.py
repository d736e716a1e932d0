#!/usr/bin/env python3
"""Peak memory of one training step on the longest pairs: the lab's answer-only loss against plain peft.

Why: a whole run's peak RSS mixes model loading, batch order and what glibc keeps. This isolates one batch, the
`--batch-size` longest pairs of `bench_train.py`'s data (the lab trains that batch first), and measures the process's
RSS above the loaded model while `--passes` forward-backward passes run. Arms, each in its own process:

* lab: `finetune.trainer.answer_only_loss` with `--chunk` (the `loss_chunk_tokens` of stage 05; 0 = whole logits)
  and answer-only logits;
* peft: the same model with the model's own loss on full logits (what a plain peft + Trainer loop computes).

    python benchmarks/bench_step_memory.py --model smollm2-135m --chunks 0,1024     # about 3 minutes on 2 cores

The model is built as stage 05 builds it (4-bit QLoRA with gradient checkpointing unless `--no-quant4`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


class PeakRss:
    """Samples the process's RSS every few milliseconds in a thread; `peak` is the largest seen."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def one_arm(a: argparse.Namespace) -> dict:
    import torch

    from bench_train import bench_rows
    from reflection_lab.core.devices import pick_device
    from reflection_lab.finetune import FinetuneConfig
    from reflection_lab.finetune.data import PadToLongest, encode_rows, split_train_eval
    from reflection_lab.finetune.model import build_model
    from reflection_lab.finetune.trainer import answer_only_loss, supports_logits_to_keep
    from reflection_lab.format.chat import build_format
    from reflection_lab.models import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(a.model)
    train, _ = split_train_eval(bench_rows(), 0.0, 0)
    examples, _ = encode_rows(train, build_format(tok, "chat"), tok, max_length=a.max_length)
    longest = sorted(examples, key=lambda e: -e["length"])[:a.batch_size]
    cfg = FinetuneConfig(student=a.model, method="qlora" if a.quant4 else "lora", gradient_checkpointing=a.quant4,
                         lora_dropout=0.0, max_length=a.max_length)
    model, _ = build_model(cfg, tok, pick_device())
    model.train()
    keep = a.arm == "lab" and supports_logits_to_keep(model)
    batch = PadToLongest(tok.pad_token_id, keep_logits=keep)(longest)
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    t0 = time.perf_counter()
    with PeakRss() as rss:
        for _ in range(a.passes):
            if a.arm == "lab":
                total, n, _ = answer_only_loss(model, batch, a.chunk)
                loss = total / n
            else:
                loss = model(**batch).loss
            loss.backward()
    return {"arm": a.arm, "chunk": a.chunk if a.arm == "lab" else None, "loss": round(loss.item(), 5),
            "seconds": round(time.perf_counter() - t0, 1), "batch_tokens": int(batch["attention_mask"].sum()),
            "answer_tokens": answer_tokens, "rss_loaded_mib": round(rss.start / 2**20),
            "peak_above_loaded_mib": round((rss.peak - rss.start) / 2**20)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--chunks", default="0,1024", help="the lab's loss_chunk_tokens values to measure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-quant4", dest="quant4", action="store_false", help="LoRA on the full-precision base")
    ap.add_argument("--arm", choices=("lab", "peft"), help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.arm:
        import torch

        torch.set_num_threads(a.threads)
        print("RESULT " + json.dumps(one_arm(a)), flush=True)
        return 0
    arms = [["--arm", "lab", "--chunk", c.strip()] for c in a.chunks.split(",") if c.strip()] + [["--arm", "peft"]]
    from bench_train import run_arm

    results = [run_arm(__file__, [*sys.argv[1:], *arm]) for arm in arms]
    if None in results:
        return 1
    print(f"model {a.model}, {'4-bit QLoRA + gradient checkpointing' if a.quant4 else 'LoRA'}, the {a.batch_size} "
          f"longest pairs ({results[0]['batch_tokens']} tokens, {results[0]['answer_tokens']} trained), "
          f"{a.passes} forward-backward passes, {a.threads} threads")
    for r in results:
        name = f"lab, chunk {r['chunk']}" if r["arm"] == "lab" else "peft, model's own loss"
        print(f"  {name:24s} peak {r['peak_above_loaded_mib']:7d} MiB above the loaded model "
              f"({r['rss_loaded_mib']} MiB)   loss {r['loss']:.5f}   {r['seconds']:.1f} s")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
