"""Training throughput and peak memory: the lab's stage 05 against TRL's SFTTrainer and a plain peft + Trainer.

Run: ``python benchmarks/bench_train.py`` (tiny student, about a minute on 2 CPU cores) or
``python benchmarks/bench_train.py --model smollm2-135m --steps 8 --batch-size 4`` (the real one).

Both arms use the same model, the same token ids and labels (prompt masked, answer + end marker
trained), the same LoRA config (all linear layers, r=16), 4-bit NF4 unless ``--no-quant4``,
gradient checkpointing, batch size, learning rate, seed and number of optimizer steps. They
differ in batching and in the LoRA factors' dtype:

* lab: ``reflection_lab.finetune.run_finetune``: batches of similar length padded to their
  longest member (``LengthGroupedSampler`` + ``PadToLongest``); over a 4-bit base its LoRA factors are bf16
  (``adapter_dtype="auto"``, as TRL's QLoRA path; ``--adapter-dtype float32`` for fp32);
* baseline: every sample padded to the longest sample in the dataset, random order, transformers'
  ``default_data_collator`` (what many notebooks do with ``padding="max_length"``), peft's fp32 factors;
* trl (when ``trl`` is installed): ``SFTTrainer`` with ``completion_only_loss`` on the same token ids, its own
  QLoRA path (``peft_config``) and the best padding the model supports (padding-free with FlashAttention, else
  padding to the batch's longest with length-grouped batches).

Tokens/s counts real (non-padding) tokens only, over every step (the default 50 steps x 8 are two
full passes over the data, so both arms train on exactly the same tokens). Peak memory
is the process's peak RSS on a CPU (each arm runs in its own subprocess, so the peaks are separate)
and ``torch.cuda.max_memory_allocated`` on a GPU. Data: the workshop's training pairs with their
original (short) answers plus the replay teacher's Reflection-format answers (long), so lengths vary
the way they do after selection.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("REFLECTION_LAB_CACHE", str(ROOT / ".cache" / "reflection-lab"))


def bench_rows() -> list[dict]:
    """Workshop pairs twice: with the teacher's long Reflection answer and with the original short answer."""
    from finetune_helpers import workshop_reflection_rows

    from reflection_lab.core.runs import read_jsonl

    rows = [dict(r, id=f"r-{r['id']}") for r in workshop_reflection_rows()]
    rows += [{"id": f"o-{r['id']}", "instruction": r["instruction"], "input": r.get("input", ""),
              "output": r["output"]} for r in read_jsonl(ROOT / "data" / "workshop.jsonl")]
    return rows


def _timing_callback():
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        """Wall time from the start of training to the end of the last optimizer step, and the real tokens seen.

        Every step is timed (none is left out as warm-up): the lab puts its longest batch first, and
        leaving that one out would flatter it.
        """

        def __init__(self) -> None:
            self.start = 0.0
            self.end = 0.0
            self.tokens = 0

        def _sync(self) -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer signature
            self._sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self._sync()
            self.end = time.perf_counter()
            self.tokens = int(state.num_input_tokens_seen)

        def rate(self) -> tuple[float, int, float]:
            seconds = self.end - self.start
            return self.tokens / seconds, self.tokens, seconds

    return Timing()


def _peak_memory() -> dict:
    import torch

    from reflection_lab.core.devices import peak_rss_bytes

    out = {"peak_rss_mib": (peak_rss_bytes() or 0) / 2**20}
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _config(a: argparse.Namespace):
    from reflection_lab.finetune import FinetuneConfig

    return FinetuneConfig(student=a.model, method="qlora" if a.quant4 else "lora", max_steps=a.steps,
                          batch_size=a.batch_size, learning_rate=2e-4, lora_r=16, lora_alpha=32, lora_dropout=0.05,
                          max_length=a.max_length, eval_fraction=0.0, save_steps=10**6, seed=0,
                          gradient_checkpointing=True, min_samples=1, adapter_dtype=a.adapter_dtype)


def arm_lab(a: argparse.Namespace) -> dict:
    from finetune_helpers import make_selected_run

    from reflection_lab.finetune import run_finetune

    timing = _timing_callback()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_selected_run(Path(tmp) / "run", bench_rows())
        m = run_finetune(run, _config(a), progress=False, callbacks=[timing])
    rate, tokens, seconds = timing.rate()
    return {"arm": "lab", "tokens_per_s": rate, "timed_tokens": tokens, "timed_seconds": seconds,
            "steps": m["counts"]["steps"], **_peak_memory()}


def _load_kwargs(a: argparse.Namespace, info) -> dict:
    """from_pretrained arguments both non-lab arms share: the device's dtype, 4-bit NF4 as the lab's QLoRA."""
    from transformers import BitsAndBytesConfig

    kwargs: dict = {"dtype": info.torch_dtype()}
    if a.quant4:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=info.torch_dtype())
    return kwargs


def arm_baseline(a: argparse.Namespace) -> dict:
    """Plain peft + Trainer, the way a first notebook does it: pad everything to the dataset's longest sample."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from reflection_lab.core.devices import pick_device
    from reflection_lab.finetune.trainer import checkpointing_args
    from reflection_lab.models import load_tokenizer, resolve_model
    from reflection_lab.format.chat import build_format
    from reflection_lab.finetune.data import encode_rows, split_train_eval

    cfg = _config(a)
    info = pick_device()
    tok = load_tokenizer(a.model)
    fmt = build_format(tok, "chat")
    train, _ = split_train_eval(bench_rows(), 0.0, 0)
    examples, _ = encode_rows(train, fmt, tok, max_length=a.max_length)
    longest = max(e["length"] for e in examples)
    pad = tok.pad_token_id
    data = [{"input_ids": e["input_ids"] + [pad] * (longest - e["length"]),
             "attention_mask": [1] * e["length"] + [0] * (longest - e["length"]),
             "labels": e["labels"] + [-100] * (longest - e["length"])} for e in examples]
    torch.manual_seed(0)
    kwargs = _load_kwargs(a, info)
    if a.quant4:
        if info.device == "cuda":
            kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(a.model), **kwargs)
    if a.quant4:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif info.device == "cuda":
        model.to("cuda")
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    cuda = info.device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                                 learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                                 logging_steps=1, save_strategy="no", seed=0, use_cpu=not cuda,
                                 bf16=cuda and info.dtype == "bfloat16", fp16=cuda and info.dtype == "float16",
                                 **checkpointing_args(True),
                                 report_to=[], disable_tqdm=True, include_num_input_tokens_seen="non_padding",
                                 label_names=["labels"])
        timing = _timing_callback()
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                          callbacks=[timing])
        trainer.train()
    rate, tokens, seconds = timing.rate()
    return {"arm": "baseline", "tokens_per_s": rate, "timed_tokens": tokens, "timed_seconds": seconds,
            "steps": trainer.state.global_step, "padded_to": longest, **_peak_memory()}


def arm_trl(a: argparse.Namespace) -> dict:
    """TRL's SFTTrainer, what a user would pick instead of the lab: completion-only loss on the same token ids,
    its own QLoRA path (peft_config), and its best padding the model supports: padding-free where the attention is
    FlashAttention (sequences flattened into one row, no pads), else padding to the batch's longest with
    `group_by_length` (padding-free without FlashAttention would let the samples attend to each other)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from reflection_lab.core.devices import pick_device
    from reflection_lab.finetune.data import encode_rows, split_train_eval
    from reflection_lab.finetune.trainer import checkpointing_args
    from reflection_lab.format.chat import build_format
    from reflection_lab.models import load_tokenizer, resolve_model

    cfg = _config(a)
    info = pick_device()
    tok = load_tokenizer(a.model)
    train, _ = split_train_eval(bench_rows(), 0.0, 0)
    examples, _ = encode_rows(train, build_format(tok, "chat"), tok, max_length=a.max_length)
    data = Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": [int(x != -100) for x in e["labels"]]}
                              for e in examples])
    torch.manual_seed(0)
    kwargs = _load_kwargs(a, info)
    cuda = info.device == "cuda"
    if cuda:
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(a.model), **kwargs)
    padding_free = "flash" in str(getattr(model.config, "_attn_implementation", ""))
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                         learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                         logging_steps=1, save_strategy="no", seed=0, use_cpu=not cuda,
                         bf16=cuda and info.dtype == "bfloat16", fp16=cuda and info.dtype == "float16",
                         **checkpointing_args(True), report_to=[], disable_tqdm=True,
                         include_num_input_tokens_seen="non_padding", completion_only_loss=True,
                         padding_free=padding_free, max_length=a.max_length,
                         train_sampling_strategy="random" if padding_free else "group_by_length")
        timing = _timing_callback()
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timing],
                             peft_config=LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                    lora_dropout=cfg.lora_dropout, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"))
        trainer.train()
    rate, tokens, seconds = timing.rate()
    return {"arm": "trl", "tokens_per_s": rate, "timed_tokens": tokens, "timed_seconds": seconds,
            "steps": trainer.state.global_step, "padding": "padding-free" if padding_free else
            "longest in batch, group_by_length", **_peak_memory()}


ARMS = {"baseline": arm_baseline, "trl": arm_trl, "lab": arm_lab}


def run_arm(script: str, argv: list[str]) -> dict | None:
    """Run one arm of a benchmark script in its own process (so each has its own peak memory) and return the dict
    it printed on its `RESULT {...}` line; None, with the arm's stderr shown, when it failed."""
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(line[len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--steps", type=int, default=50, help="50 x 8 = two passes over the 196 pairs for both arms")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--no-quant4", dest="quant4", action="store_false", help="plain LoRA on a full-precision base")
    ap.add_argument("--adapter-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the lab's LoRA factors (auto: bf16 over a 4-bit base, as TRL's QLoRA path; float32 is the "
                         "lab before that change)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per arm (0: torch's default). 1 by default: the tiny model gains nothing from "
                         "more, and on a shared 2-core machine two spinning OpenMP threads ran 5x slower")
    ap.add_argument("--arms", default="baseline,trl,lab",
                    help="which arms to run, comma-separated (the lab always runs; the baseline pads to the longest "
                         "sample and is the slow one on a real model)")
    ap.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.arm:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        print("RESULT " + json.dumps(ARMS[a.arm](a)), flush=True)
        return 0
    results = {}
    asked = {x.strip() for x in a.arms.split(",") if x.strip()} | {"lab"}
    if asked - set(ARMS):
        raise SystemExit(f"--arms: unknown arm(s) {sorted(asked - set(ARMS))}; choose from {', '.join(ARMS)}")
    arms = [arm for arm in ARMS if arm in asked]
    if "trl" in arms and importlib.util.find_spec("trl") is None:
        arms.remove("trl")
        print("trl is not installed (pip install trl): the TRL SFTTrainer arm is left out")
    for arm in arms:
        t0 = time.perf_counter()
        result = run_arm(__file__, [*sys.argv[1:], "--arm", arm])
        if result is None:
            return 1
        results[arm] = result | {"wall_s": time.perf_counter() - t0}
    lab = results["lab"]
    mem = "peak_cuda_mib" if "peak_cuda_mib" in lab else "peak_rss_mib"
    padded = (f"; baseline pads every sample to {results['baseline']['padded_to']} tokens"
              if "baseline" in results else "")
    print(f"model {a.model}, {'4-bit QLoRA' if a.quant4 else 'LoRA'}, {a.steps} steps x batch {a.batch_size}, "
          f"lab's LoRA factors {a.adapter_dtype}, "
          f"torch threads {a.threads or 'default'}{padded}")
    for r in [results[arm] for arm in arms]:
        print(f"  {r['arm']:8s}  {r['tokens_per_s']:9.1f} real tokens/s  ({r['timed_tokens']} tokens in "
              f"{r['timed_seconds']:.1f} s)   peak {mem.split('_')[1]} "
              f"{r[mem]:8.1f} MiB   process wall {r['wall_s']:.1f} s")
    summary = dict(results)
    if "baseline" in results:
        base = results["baseline"]
        ratio, mem_ratio = lab["tokens_per_s"] / base["tokens_per_s"], lab[mem] / base[mem]
        print(f"  ratio lab/baseline: {ratio:.2f}x tokens/s, {mem_ratio:.2f}x peak memory "
              f"(target >= 1.3x tokens/s with memory no higher: "
              f"{'met' if ratio >= 1.3 and mem_ratio <= 1.0 else 'NOT met'})")
        summary.update(ratio_tokens_per_s=ratio, ratio_peak_memory=mem_ratio)
    if "trl" in results:
        trl = results["trl"]
        summary.update(ratio_tokens_per_s_vs_trl=lab["tokens_per_s"] / trl["tokens_per_s"],
                       ratio_peak_memory_vs_trl=lab[mem] / trl[mem])
        print(f"  ratio lab/TRL SFTTrainer ({trl['padding']}): {summary['ratio_tokens_per_s_vs_trl']:.2f}x tokens/s, "
              f"{summary['ratio_peak_memory_vs_trl']:.2f}x peak memory")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
