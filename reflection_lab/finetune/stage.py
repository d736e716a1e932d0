"""Stage 05: fine-tune the student on the selected pairs (QLoRA by default; plain LoRA or full for comparison).

Reads `04_select/selected.jsonl`, writes `05_finetune/`: `adapter/` (peft format, plus the
tokenizer when the Reflection tags were added as tokens), `train_log.jsonl`, `checkpoints/`,
`MODEL_CARD.md`, optionally `merged/`, and the manifest.

Why it is built this way:
* Loss only on the answer and the end-of-turn marker (data.py): the model should learn to answer
  and to stop, not to predict the prompt.
* Batches of similar length padded to their longest member, not packing: no attention can leak
  between samples, and most of packing's speed-up is kept on short, varied samples.
* The transformers Trainer does checkpoints, resume, accumulation and DDP (trainer.py); this module
  decides what to resume from (only checkpoints marked complete, only for the same fingerprint),
  keeps the previous finished adapter untouched until a new one is complete, and turns failures
  into messages that say what to change.
* 4-bit NF4 with double quantisation and the compute dtype from `core.devices.pick_device` (fp32 on
  a CPU, bf16 on Ampere+, fp16 on a T4).

Run it from Python (`run_finetune(run, FinetuneConfig.from_profile(p))`) or as a module, also
under several processes (`python -m reflection_lab.finetune`, see __main__.py).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Sequence

from ..core.devices import is_out_of_memory, memory_report
from ..core.runs import Run, read_jsonl, records_failure, write_json_atomic
from ..core.runtime import in_notebook, process_group
from ..format.chat import TrainingFormat, add_reflection_tokens, build_format, system_prompt_text
from .artifacts import save_result, write_model_card
from .config import OOM_ADVICE, FinetuneConfig, FinetuneDataError, FinetuneError, FinetuneOOMError
from .data import EncodeReport, ExampleDataset, PadToLongest, encode_rows, split_train_eval


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


@records_failure("finetune")
def run_finetune(run: Run, config: FinetuneConfig | None = None, *, force: bool = False, progress: bool = True,
                 live_plot: bool | None = None, callbacks: Sequence[Any] = ()) -> dict:
    """Stage 05. Returns the manifest. Resumes from the last complete checkpoint of an unfinished run
    with the same fingerprint; `force=True` starts over. Extra Trainer `callbacks` may be passed.
    """
    config = config or FinetuneConfig()
    cfg = config.as_dict()
    config.reporters()  # a missing logger package fails now, not after the model has loaded
    select_m = run.require("select")
    if not force and run.is_current("finetune", cfg):
        return run.manifest("finetune") or {}
    rank, world, barrier = process_group()
    if rank == 0:
        _begin(run, cfg, force, world)
    barrier()
    try:
        return _train(run, config, select_m, rank, world, barrier, progress, live_plot, list(callbacks))
    except KeyboardInterrupt:
        raise  # status stays "running": the next call resumes from the last checkpoint
    except BaseException as exc:
        err: BaseException = exc
        if not isinstance(exc, FinetuneError) and is_out_of_memory(exc):
            err = FinetuneOOMError(f"Out of memory while training {config.student} ({config.method}, batch_size="
                                   f"{config.batch_size}, max_length={config.max_length}): {str(exc)[:200]}. "
                                   f"To fit: {OOM_ADVICE}.")
        if rank == 0:
            run.fail("finetune", str(err), error_type=type(err).__name__)
        if err is exc:
            raise
        raise err from exc


def _begin(run: Run, cfg: dict, force: bool, world: int) -> None:
    """Mark the stage running; keep the checkpoints only when they belong to this very config and world size."""
    stage = run.stage_dir("finetune")
    ckpt_dir = stage / "checkpoints"
    old = run.manifest("finetune") or {}
    previous = old if old.get("status") == "complete" else old.get("previous_complete")
    resumable = (not force and old.get("status") in ("running", "failed")
                 and old.get("fingerprint") == run.fingerprint("finetune", cfg) and old.get("world_size", 1) == world)
    if not resumable and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run.begin("finetune", cfg)
    m = run.manifest("finetune") or {}
    m["world_size"] = world
    if previous:
        m["previous_complete"] = {k: previous.get(k) for k in ("fingerprint", "outputs", "finished", "counts")}
    write_json_atomic(stage / "manifest.json", m)


def _encode(rows: list[dict], config: FinetuneConfig, select_m: dict
            ) -> tuple[Any, TrainingFormat, list[dict], list[dict], EncodeReport]:
    """Tokenizer, prompt format, train and eval examples, and one report over both."""
    from ..models import load_tokenizer

    tok = load_tokenizer(config.student, padding_side="right")
    if config.tags_as_special_tokens:
        add_reflection_tokens(tok)
    fmt = build_format(tok, config.template, system_prompt=system_prompt_text(config.system_prompt),
                       tags_as_special_tokens=config.tags_as_special_tokens)
    train_rows, eval_rows = split_train_eval(rows, config.eval_fraction, config.seed)
    encode = dict(max_length=config.max_length, overflow=config.overflow, tag_weight=config.tag_loss_weight,
                  open_tag_unlikelihood=config.open_tag_unlikelihood)
    train_ex, report = encode_rows(train_rows, fmt, tok, **encode)
    eval_ex, eval_report = encode_rows(eval_rows, fmt, tok, **encode)
    report.rows += eval_report.rows
    report.kept += eval_report.kept
    report.truncated += eval_report.truncated
    for reason, ids in eval_report.dropped_ids.items():
        for sid in ids:
            report.drop(reason, sid)
    if len(train_ex) < max(1, config.min_samples):
        raise FinetuneDataError(_training_set_error(len(rows), report, config, select_m))
    return tok, fmt, train_ex, eval_ex, report


def _callbacks(log_path: Any, seeded: list[dict], progress: bool, live_plot: bool | None, extra: list) -> list:
    """The journalled loss log, checkpoint markers, and progress for people (a live curve in a notebook)."""
    from .callbacks import CheckpointMarkerCallback, JournalLogCallback, ProgressCallback

    notebook = in_notebook()
    show_plot = notebook if live_plot is None else (live_plot and notebook)
    prog = ProgressCallback(live_plot=bool(show_plot), notebook=notebook and progress) if progress else None
    before = float(seeded[-1].get("seconds", 0.0)) if seeded else 0.0  # the kept steps' time, when resuming
    cbs: list[Any] = [JournalLogCallback(log_path, [prog.add_row] if prog else [], start_seconds=before),
                      CheckpointMarkerCallback()]
    if prog:
        prog.seed_rows(seeded)
        cbs.append(prog)
    return cbs + extra


def _train(run: Run, config: FinetuneConfig, select_m: dict, rank: int, world: int, barrier: Any,
           progress: bool, live_plot: bool | None, extra_callbacks: list) -> dict:
    import torch

    from ..core.devices import pick_device
    from .callbacks import last_complete_checkpoint, trim_log
    from .model import build_model
    from .trainer import make_trainer, supports_logits_to_keep, training_args

    ckpt_dir = run.stage_dir("finetune") / "checkpoints"
    rows = read_jsonl(run.path("select", "selected.jsonl"))
    if len(rows) < max(1, config.min_samples):
        raise FinetuneDataError(_training_set_error(len(rows), None, config, select_m))
    info = pick_device(config.device, config.dtype)
    torch.manual_seed(config.seed)
    tok, fmt, train_ex, eval_ex, report = _encode(rows, config, select_m)
    mem_before = memory_report(info.device)
    model, facts = build_model(config, tok, info)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else fmt.end_ids[-1]
    collator = PadToLongest(pad_id, pad_to_multiple_of=8 if info.device == "cuda" else None,
                            keep_logits=config.answer_logits_only and supports_logits_to_keep(model))
    resume_from = last_complete_checkpoint(ckpt_dir)
    resumed_step = int(resume_from.name.split("-")[-1]) if resume_from else 0
    log_path = ckpt_dir / "train_log.jsonl"
    seeded = trim_log(log_path, resumed_step) if rank == 0 else []
    barrier()
    trainer = make_trainer(model, training_args(config, ckpt_dir, info, bool(eval_ex), world),
                           ExampleDataset(train_ex), ExampleDataset(eval_ex) if eval_ex else None, collator, config,
                           _callbacks(log_path, seeded, progress, live_plot, extra_callbacks))
    if progress and rank == 0:
        note = f" (resuming from {resume_from.name})" if resume_from else ""
        print(f"fine-tuning {config.student} ({config.method}) on {len(train_ex)} examples, {config.max_steps} "
              f"steps, {world} process(es), {info.device}/{info.dtype}{note}", flush=True)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t0
    memory = {"before": mem_before, "after": memory_report(info.device)}
    barrier()
    if rank != 0:
        return {"status": "shard-done", "rank": rank, "world": world}
    counts = _counts(read_jsonl(log_path) if log_path.exists() else [], trainer, resumed_step, seconds,
                     len(rows), train_ex, eval_ex, report, world)
    return _finish(run, config, trainer, tok, fmt, facts, info, counts, report, memory, select_m, log_path)


def _counts(log_rows: list[dict], trainer: Any, resumed_step: int, seconds: float, n_rows: int,
            train_ex: list, eval_ex: list, report: EncodeReport, world: int) -> dict:
    """The manifest's counts: data, steps, tokens, losses and time over the whole run; the speed of this session.

    After a resume, the train log holds the kept steps of earlier processes and this one's, so losses and
    time come from it (the Trainer's own training_loss and runtime cover the last process only).
    """
    train_losses = [r["loss"] for r in log_rows if r.get("kind") == "train"]
    eval_losses = [r["eval_loss"] for r in log_rows if r.get("kind") == "eval"]
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    tokens_session = tokens - next((int(r.get("tokens", 0)) for r in reversed(log_rows)
                                    if r.get("kind") == "train" and r["step"] <= resumed_step), 0)
    return {
        "selected_rows": n_rows, "train_samples": len(train_ex), "eval_samples": len(eval_ex),
        "dropped": sum(report.dropped.values()), "truncated": report.truncated, "steps": trainer.state.global_step,
        "resumed_from_step": resumed_step, "tokens_seen": tokens, "processes": world,
        "train_seconds": round(max(seconds, max((float(r.get("seconds", 0)) for r in log_rows), default=0.0)), 2),
        "session_seconds": round(seconds, 2),
        "tokens_per_second": round(tokens_session / seconds, 1) if seconds else 0.0,
        "first_train_loss": train_losses[0] if train_losses else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "train_loss_mean": round(sum(train_losses) / len(train_losses), 5) if train_losses else None,
    }


def _finish(run: Run, config: FinetuneConfig, trainer: Any, tok: Any, fmt: TrainingFormat, facts: dict, info: Any,
            counts: dict, report: EncodeReport, memory: dict, select_m: dict, log_path: Any) -> dict:
    """Save the adapter (swapped in whole), the log and the model card; mark the stage complete."""
    from ..models import resolve_model

    cfg = config.as_dict()
    stage = run.stage_dir("finetune")
    meta = {"base_model": config.student, "base_path": resolve_model(config.student), "method": config.method,
            "quant4": facts["quant4"], "compute_dtype": info.dtype, "fingerprint": run.fingerprint("finetune", cfg),
            "run": str(run.root), "tokenizer_saved": config.method == "full" or config.tags_as_special_tokens,
            "tags_as_special_tokens": config.tags_as_special_tokens,
            "tag_ids": fmt.tag_ids, "vocab_size": len(tok), "config": cfg,
            **{k: v for k, v in facts.items() if k not in ("quant4", "compute_dtype")}}
    outputs = save_result(trainer.model, tok, fmt, config, stage, meta)
    shutil.copy(log_path, stage / "train_log.jsonl.tmp")
    os.replace(stage / "train_log.jsonl.tmp", stage / "train_log.jsonl")
    write_model_card(stage / "MODEL_CARD.md", config=config, meta=meta, counts=counts, select_m=select_m,
                     report=report, fmt=fmt, memory=memory, device=f"{info.device} ({info.name})")
    notes = list(fmt.notes)
    if report.truncated:
        notes.append(f"{report.truncated} answers were truncated to max_length={config.max_length}")
    if report.dropped:
        notes.append(f"{sum(report.dropped.values())} samples dropped: {report.dropped}")
    extra = {"format": fmt.as_dict(), "encode_report": report.as_dict(), "memory": memory, "previous_complete": None,
             "device": info.as_dict(), "world_size": counts["processes"], "model": facts, "notes": notes}
    return run.complete("finetune", cfg, outputs + ["train_log.jsonl", "MODEL_CARD.md"], counts, extra=extra)
