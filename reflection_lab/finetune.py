"""Stage 05: fine-tune the student on the selected pairs (QLoRA by default; plain LoRA or full for comparison).

Reads `04_select/selected.jsonl`, writes `05_finetune/`: `adapter/` (peft format, plus the
tokenizer when the Reflection tags were added as tokens), `train_log.jsonl`, `checkpoints/`,
`MODEL_CARD.md`, optionally `merged/`, and the manifest.

Why it is built this way:
* Loss only on the answer and the end-of-turn marker (see training_data): the model should learn
  to answer and to stop, not to predict the prompt.
* Batches of similar length padded to their longest member, not packing: no attention can leak
  between samples, and most of packing's speed-up is kept on short, varied samples.
* The transformers Trainer does checkpoints, resume, accumulation and DDP; this module decides
  what to resume from (only checkpoints marked complete, only for the same fingerprint), keeps the
  previous finished adapter untouched until a new one is complete, and turns failures into
  messages that say what to change.
* 4-bit NF4 with double quantisation and the compute dtype from `devices.pick_device` (fp32 on a
  CPU, bf16 on Ampere+, fp16 on a T4).

Run it from Python (`run_finetune(run, FinetuneConfig.from_profile(p))`) or as a module, also
under several processes:
`accelerate launch --multi_gpu --num_processes 2 -m reflection_lab.finetune --run runs/ci --profile ci`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from .finetune_artifacts import (META_FILE, _memory, _save_result, adapter_dir, load_finetuned, merge_adapter,
                                 read_train_log, training_format, write_model_card)
from .runs import Run, read_jsonl, write_json_atomic
from .training_data import (REFLECTION_TAGS, EncodeReport, ExampleDataset, LengthGroupedSampler, PadToLongest,
                            add_reflection_tokens, build_format, encode_rows, split_train_eval)

__all__ = ["META_FILE", "METHODS", "REFLECTION_TAGS", "FinetuneConfig", "FinetuneDataError", "FinetuneError",
           "FinetuneOOMError", "adapter_dir", "build_model", "keep_4bit_weights_trainable", "load_finetuned", "main",
           "merge_adapter", "read_train_log", "run_finetune", "training_format", "write_model_card"]

METHODS = ("qlora", "lora", "full")
OOM_ADVICE = ("lower batch_size (and raise grad_accum to keep the effective batch), lower max_length, "
              "use quant4 (method='qlora'), and keep gradient_checkpointing=True")


class FinetuneError(RuntimeError):
    """A training problem with a message that names its cause and what to change."""


class FinetuneDataError(FinetuneError):
    """The training set is empty or too small to train on."""


class FinetuneOOMError(FinetuneError):
    """Training ran out of memory."""


@dataclass
class FinetuneConfig:
    """Everything the result depends on (it is the stage fingerprint's config)."""

    student: str = "tiny-llama"
    method: str = "qlora"  # "qlora" (4-bit base + LoRA), "lora" (full-precision base + LoRA), "full"
    max_steps: int = 30
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    tags_as_special_tokens: bool = False
    template: str = "chat"  # the chat template, or the '### Instruction' fallback when a model has none
    system_prompt: str | None = None
    max_length: int = 1024
    overflow: str = "truncate"  # an answer over max_length: "truncate" it or "drop" the sample
    min_samples: int = 4
    eval_fraction: float = 0.1
    eval_steps: int | None = None  # None: about 5 evaluations per run
    save_steps: int | None = None  # None: about 5 checkpoints per run (at most every 50 steps)
    save_total_limit: int = 2
    gradient_checkpointing: bool = True
    group_by_length: bool = True
    answer_logits_only: bool = True  # project only answer-predicting positions onto the vocabulary (same loss)
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    merge: bool = False  # also write merged fp16 weights to 05_finetune/merged/

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_profile(cls, profile: Any, **overrides: Any) -> "FinetuneConfig":
        """The fine-tuning fields of a Profile; `profile.extra['finetune']` and keyword overrides win."""
        base = dict(student=profile.student, method="qlora" if profile.quant4 else "lora",
                    max_steps=profile.max_steps, batch_size=profile.batch_size, grad_accum=profile.grad_accum,
                    learning_rate=profile.learning_rate, lora_r=profile.lora_r, lora_alpha=profile.lora_alpha,
                    lora_dropout=profile.lora_dropout, tags_as_special_tokens=profile.tags_as_special_tokens,
                    template=profile.template, max_length=profile.max_length, seed=profile.seed,
                    dtype=profile.dtype, device=profile.device)
        base.update((getattr(profile, "extra", None) or {}).get("finetune", {}))
        base.update(overrides)
        known = {f.name for f in fields(cls)}
        bad = sorted(set(base) - known)
        if bad:
            raise TypeError(f"unknown FinetuneConfig field(s) {bad}; known: {sorted(known)}")
        return cls(**base)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be at least 1")
        if self.overflow not in ("truncate", "drop"):
            raise ValueError(f"overflow must be 'truncate' or 'drop', not {self.overflow!r}")

    def auto_steps(self) -> tuple[int, int]:
        every = max(1, min(50, self.max_steps // 5))
        return self.save_steps or every, self.eval_steps or every


# --- processes ---------------------------------------------------------------------------------------


def _dist() -> tuple[int, int, Any]:
    """(rank, world size, barrier). Under `accelerate launch` on a CPU the process group must be gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone


# --- manifest helpers --------------------------------------------------------------------------------


def _mark_failed(run: Run, exc: BaseException) -> None:
    m = run.manifest("finetune") or {"stage": "finetune"}
    m.update(status="failed", error=str(exc), error_type=type(exc).__name__,
             failed=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json_atomic(run.stage_dir("finetune") / "manifest.json", m)


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _training_set_error(n_rows: int, report: EncodeReport | None, config: FinetuneConfig, select_m: dict) -> str:
    counts = select_m.get("counts", {})
    total = counts.get("total")
    where = f"selection kept {n_rows} sample{'s' if n_rows != 1 else ''}"
    if total is not None:
        where += f" of {total}"
    if n_rows < config.min_samples or report is None:
        fix = ("loosen thresholds in notebooks/04_select.ipynb (or `reflection-lab select`), or lower "
               "FinetuneConfig.min_samples for a smoke test")
        return f"Not enough training data: {where} (min_samples={config.min_samples}); {fix}."
    return (f"Not enough training data: {where}, but after encoding only {report.kept} remain "
            f"({report.summary()}); raise max_length (now {config.max_length}) or use overflow='truncate', "
            f"or lower FinetuneConfig.min_samples.")


# --- model -------------------------------------------------------------------------------------------


def _embedding_name(model: Any) -> str:
    emb = model.get_input_embeddings()
    for name, mod in model.named_modules():
        if mod is emb:
            return name.split(".")[-1]
    return "embed_tokens"


def keep_4bit_weights_trainable(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for fast CPU inference while we train.

    Why: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight the first time it
    runs in eval mode without grad (an eval-loss pass, a sample generation). The repacked layer then
    uses a kernel with no autograd support, so later training steps silently get no gradient through
    the frozen 4-bit weights (LoRA factors of earlier layers train on wrong gradients). Measured here:
    after one eval pass, layer-0 LoRA gradients differ by as much as their own size. Returns how many
    layers were switched.
    """
    n = 0
    for mod in model.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def build_model(config: FinetuneConfig, tokenizer: Any, info: Any) -> tuple[Any, dict]:
    """Load the base (4-bit for QLoRA), add tag rows when needed, wrap with LoRA. Returns (model, facts)."""
    from .models import load_model

    quant4 = config.method == "qlora"
    # A full fine-tune keeps fp32 master weights (bf16/fp16 only as autocast on a GPU); pure bf16 AdamW
    # updates round small steps away.
    load_info = dataclasses.replace(info, dtype="float32") if config.method == "full" else info
    model = load_model(config.student, quant4=quant4, info=load_info)
    facts: dict[str, Any] = {"quant4": quant4, "compute_dtype": info.dtype}
    if quant4:
        keep_4bit_weights_trainable(model)
    tag_ids: list[int] = []
    if config.tags_as_special_tokens:
        tag_ids = add_reflection_tokens(tokenizer, model)
        facts["embeddings_resized_to"] = int(model.get_input_embeddings().weight.shape[0])
    model.config.use_cache = False
    if config.method == "full":
        if quant4:
            raise ValueError("method='full' trains every weight and cannot use a 4-bit base")
        model.train()
        facts["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model, facts
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quant4:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_kwargs: dict[str, Any] = {}
    if tag_ids:
        # Only the six new rows of the (possibly tied) embedding train, not the whole matrix.
        lora_kwargs["trainable_token_indices"] = {_embedding_name(model): tag_ids}
    lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM", bias="none", **lora_kwargs)
    model = get_peft_model(model, lcfg)
    if tag_ids:
        # peft would save the whole resized embedding (and the tied head) with every checkpoint because the
        # vocabulary grew; the six trained rows already hold everything the base lacks.
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    trainable, total = model.get_nb_trainable_parameters()
    facts.update(trainable_parameters=int(trainable), all_parameters=int(total))
    return model, facts


def checkpointing_args(enabled: bool) -> dict:
    """Activation checkpointing under the TrainingArguments name this transformers knows.

    Why: transformers 5.24 renamed gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs) and
    warns on the old names; 5.0, the lab's floor, knows only the old ones.
    """
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: enabled, f"{key}_kwargs": {"use_reentrant": False}}


def _training_args(config: FinetuneConfig, out_dir: Path, info: Any, has_eval: bool, world: int = 1) -> Any:
    from transformers import TrainingArguments

    save_steps, eval_steps = config.auto_steps()
    cuda = info.device == "cuda"
    return TrainingArguments(
        output_dir=str(out_dir), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=float(config.warmup_ratio),  # a float below 1 is a fraction of max_steps
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, optim=config.optim,
        logging_steps=1, eval_strategy="steps" if has_eval else "no", eval_steps=eval_steps if has_eval else None,
        save_strategy="steps", save_steps=save_steps, save_total_limit=config.save_total_limit,
        seed=config.seed, data_seed=config.seed,
        use_cpu=not cuda, ddp_backend="gloo" if world > 1 and not cuda else None,  # CPU DDP needs both
        bf16=cuda and info.dtype == "bfloat16", fp16=cuda and info.dtype == "float16",
        **checkpointing_args(config.gradient_checkpointing), ddp_find_unused_parameters=False,
        report_to=[], disable_tqdm=True, remove_unused_columns=False, label_names=["labels"],
        prediction_loss_only=True,  # eval needs the loss only; keeping eval logits costs batch x length x vocab
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, save_only_model=False,
    )


def supports_logits_to_keep(model: Any) -> bool:
    """True when the causal LM's forward takes `logits_to_keep` (transformers 5 models do)."""
    import inspect

    base = model
    while hasattr(base, "get_base_model") and base is not getattr(base, "get_base_model")():
        base = base.get_base_model()
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def answer_only_loss(model: Any, inputs: dict) -> tuple[Any, int, Any]:
    """(summed cross-entropy, number of trained tokens, outputs) with logits only where a trained token is next.

    `inputs` holds input_ids, attention_mask, labels (unshifted, -100 where untrained) and the boolean
    `logits_to_keep` mask from `PadToLongest(keep_logits=True)`. The result equals the model's own
    loss on full logits (tests check it) without materialising batch x length x vocabulary logits.
    """
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = inputs["logits_to_keep"]
    outputs = model(**inputs)
    target = labels[:, 1:][keep[:, :-1]]  # row-major, the order in which the kept logits come back
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
    return F.cross_entropy(logits.float(), target, reduction="sum"), int(target.numel()), outputs


def _make_trainer(model: Any, args: Any, train: ExampleDataset, eval_ds: ExampleDataset | None, collator: Any,
                  config: FinetuneConfig, callbacks: list) -> Any:
    from transformers import Trainer

    class LabTrainer(Trainer):
        """Trainer with length-grouped batches in an order fixed by (seed, epoch), and answer-only logits."""

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if not config.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(train.lengths, config.batch_size, seed=config.seed)

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if "logits_to_keep" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            total, n, outputs = answer_only_loss(model, inputs)
            # the same normalisation as Trainer.compute_loss with a model that takes num_items_in_batch
            if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            else:
                loss = total / max(n, 1)
            return (loss, outputs) if return_outputs else loss

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = LabTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_ds, data_collator=collator,
                         callbacks=callbacks)
    for cb in (PrinterCallback, ProgressCallback):  # the lab's own progress replaces the raw log dicts
        trainer.remove_callback(cb)
    return trainer


# --- the stage ---------------------------------------------------------------------------------------


def run_finetune(run: Run, config: FinetuneConfig | None = None, *, force: bool = False, progress: bool = True,
                 live_plot: bool | None = None, callbacks: Sequence[Any] = ()) -> dict:
    """Stage 05. Returns the manifest. Resumes from the last complete checkpoint of an unfinished run
    with the same fingerprint; `force=True` starts over. Extra Trainer `callbacks` may be passed.
    """
    config = config or FinetuneConfig()
    config.validate()
    cfg = config.as_dict()
    select_m = run.require("select")
    if not force and run.is_current("finetune", cfg):
        return run.manifest("finetune") or {}
    rank, world, barrier = _dist()
    stage = run.stage_dir("finetune")
    ckpt_dir = stage / "checkpoints"
    fp = run.fingerprint("finetune", cfg)
    if rank == 0:
        old = run.manifest("finetune") or {}
        previous = old if old.get("status") == "complete" else old.get("previous_complete")
        resumable = (not force and old.get("status") in ("running", "failed") and old.get("fingerprint") == fp
                     and old.get("world_size", 1) == world)
        if not resumable and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        run.begin("finetune", cfg)
        m = run.manifest("finetune") or {}
        m["world_size"] = world
        if previous:
            m["previous_complete"] = {k: previous.get(k) for k in ("fingerprint", "outputs", "finished", "counts")}
        write_json_atomic(stage / "manifest.json", m)
    barrier()
    try:
        return _train(run, config, cfg, select_m, rank, world, barrier, progress, live_plot, list(callbacks))
    except KeyboardInterrupt:
        raise  # status stays "running": the next call resumes from the last checkpoint
    except BaseException as exc:
        err: BaseException = exc
        if not isinstance(exc, FinetuneError) and _is_oom(exc):
            err = FinetuneOOMError(f"Out of memory while training {config.student} ({config.method}, batch_size="
                                   f"{config.batch_size}, max_length={config.max_length}): {str(exc)[:200]}. "
                                   f"To fit: {OOM_ADVICE}.")
        if rank == 0:
            _mark_failed(run, err)
        if err is exc:
            raise
        raise err from exc


def _train(run: Run, config: FinetuneConfig, cfg: dict, select_m: dict, rank: int, world: int, barrier: Any,
           progress: bool, live_plot: bool | None, extra_callbacks: list) -> dict:
    import torch

    from .devices import pick_device
    from .finetune_callbacks import (CheckpointMarkerCallback, JournalLogCallback, ProgressCallback, in_notebook,
                                     last_complete_checkpoint, trim_log)
    from .models import load_tokenizer, resolve_model

    stage = run.stage_dir("finetune")
    ckpt_dir = stage / "checkpoints"
    rows = read_jsonl(run.path("select", "selected.jsonl"))
    if len(rows) < max(1, config.min_samples):
        raise FinetuneDataError(_training_set_error(len(rows), None, config, select_m))
    info = pick_device(config.device, config.dtype)
    torch.manual_seed(config.seed)
    tok = load_tokenizer(config.student, padding_side="right")
    if config.tags_as_special_tokens:
        add_reflection_tokens(tok)
    fmt = build_format(tok, config.template, system_prompt=config.system_prompt,
                       tags_as_special_tokens=config.tags_as_special_tokens)
    train_rows, eval_rows = split_train_eval(rows, config.eval_fraction, config.seed)
    train_ex, report = encode_rows(train_rows, fmt, tok, max_length=config.max_length, overflow=config.overflow)
    eval_ex, eval_report = encode_rows(eval_rows, fmt, tok, max_length=config.max_length, overflow=config.overflow)
    report.rows += eval_report.rows
    report.kept += eval_report.kept
    report.truncated += eval_report.truncated
    for reason, ids in eval_report.dropped_ids.items():
        for sid in ids:
            report.drop(reason, sid)
    if len(train_ex) < max(1, config.min_samples):
        raise FinetuneDataError(_training_set_error(len(rows), report, config, select_m))

    mem_before = _memory(info.device)
    model, facts = build_model(config, tok, info)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else fmt.end_ids[-1]
    collator = PadToLongest(pad_id, pad_to_multiple_of=8 if info.device == "cuda" else None,
                            keep_logits=config.answer_logits_only and supports_logits_to_keep(model))
    args = _training_args(config, ckpt_dir, info, bool(eval_ex), world)

    resume_from = last_complete_checkpoint(ckpt_dir)
    log_path = ckpt_dir / "train_log.jsonl"
    seeded: list[dict] = []
    if rank == 0:
        seeded = trim_log(log_path, int(resume_from.name.split("-")[-1]) if resume_from else 0) if resume_from \
            else trim_log(log_path, 0)
    barrier()
    notebook = in_notebook()
    show_plot = notebook if live_plot is None else (live_plot and notebook)
    prog = ProgressCallback(live_plot=bool(show_plot), notebook=notebook and progress) if progress else None
    listeners = [prog.add_row] if prog else []
    cbs: list[Any] = [JournalLogCallback(log_path, listeners), CheckpointMarkerCallback()]
    if prog:
        prog.seed_rows(seeded)
        cbs.append(prog)
    cbs += extra_callbacks
    trainer = _make_trainer(model, args, ExampleDataset(train_ex), ExampleDataset(eval_ex) if eval_ex else None,
                            collator, config, cbs)
    if progress and rank == 0:
        note = f" (resuming from {resume_from.name})" if resume_from else ""
        print(f"fine-tuning {config.student} ({config.method}) on {len(train_ex)} examples, {config.max_steps} "
              f"steps, {world} process(es), {info.device}/{info.dtype}{note}", flush=True)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t0
    mem_after = _memory(info.device)
    barrier()
    if rank != 0:
        return {"status": "shard-done", "rank": rank, "world": world}

    log_rows = read_jsonl(log_path) if log_path.exists() else []
    train_losses = [r["loss"] for r in log_rows if r.get("kind") == "train"]
    eval_losses = [r["eval_loss"] for r in log_rows if r.get("kind") == "eval"]
    resumed_step = int(resume_from.name.split("-")[-1]) if resume_from else 0
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    tokens_session = tokens - next((int(r.get("tokens", 0)) for r in reversed(log_rows)
                                    if r.get("kind") == "train" and r["step"] <= resumed_step), 0)
    counts = {
        "selected_rows": len(rows), "train_samples": len(train_ex), "eval_samples": len(eval_ex),
        "dropped": sum(report.dropped.values()), "truncated": report.truncated, "steps": trainer.state.global_step,
        "resumed_from_step": resumed_step, "tokens_seen": tokens, "processes": world,
        "train_seconds": round(seconds, 2), "tokens_per_second": round(tokens_session / seconds, 1) if seconds else 0.0,
        "first_train_loss": train_losses[0] if train_losses else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "train_loss_mean": round(float(result.training_loss), 5) if result.training_loss is not None else None,
    }
    base_path = resolve_model(config.student)
    meta = {"base_model": config.student, "base_path": base_path, "method": config.method,
            "quant4": facts["quant4"], "compute_dtype": info.dtype, "fingerprint": run.fingerprint("finetune", cfg),
            "run": str(run.root), "tokenizer_saved": config.method == "full" or config.tags_as_special_tokens,
            "tags_as_special_tokens": config.tags_as_special_tokens,
            "tag_ids": fmt.tag_ids, "vocab_size": len(tok), "config": cfg,
            **{k: v for k, v in facts.items() if k not in ("quant4", "compute_dtype")}}
    outputs = _save_result(trainer.model, tok, fmt, config, stage, meta)
    shutil.copy(log_path, stage / "train_log.jsonl.tmp")
    os.replace(stage / "train_log.jsonl.tmp", stage / "train_log.jsonl")
    memory = {"before": mem_before, "after": mem_after}
    write_model_card(stage / "MODEL_CARD.md", config=config, meta=meta, counts=counts, select_m=select_m,
                     report=report, fmt=fmt, memory=memory, device=f"{info.device} ({info.name})")
    extra = {"format": fmt.as_dict(), "encode_report": report.as_dict(), "memory": memory, "previous_complete": None,
             "device": info.as_dict(), "world_size": world, "model": facts,
             "notes": fmt.notes + ([f"{report.truncated} answers were truncated to max_length={config.max_length}"]
                                   if report.truncated else [])
             + ([f"{sum(report.dropped.values())} samples dropped: {report.dropped}"] if report.dropped else [])}
    return run.complete("finetune", cfg, outputs + ["train_log.jsonl", "MODEL_CARD.md"], counts, extra=extra)


# --- command line (also the entry point for `accelerate launch -m reflection_lab.finetune`) -----------


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def main(argv: list[str] | None = None) -> int:
    from .profiles import get_profile
    from .runs import MissingStageError

    ap = argparse.ArgumentParser(prog="python -m reflection_lab.finetune", description="Stage 05: fine-tune.")
    ap.add_argument("--run", required=True)
    ap.add_argument("--profile", default="offline")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a profile field")
    ap.add_argument("--cfg", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a FinetuneConfig field, e.g. --cfg method=lora")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    prof = get_profile(args.profile, **{k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)})
    cfg = FinetuneConfig.from_profile(prof, **{k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.cfg)})
    try:
        m = run_finetune(Run(args.run), cfg, force=args.force, progress=not args.quiet)
    except (MissingStageError, FinetuneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if m.get("status") == "complete":
        print(json.dumps({"stage": "finetune", "status": m["status"], "counts": m.get("counts")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
