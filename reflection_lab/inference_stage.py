"""Stage 06: answer the evaluation prompts with the student and parse every answer.

Reads `01_data/eval.jsonl`, writes `06_infer/generations.jsonl` (one row per prompt, in eval order):
`{id, model, prompt, text, finish_reason, n_tokens, parsed: {thinking, reflections, output, answer,
output_complete, well_formed, diagnostics}}` and a manifest whose counts say how many answers were
well formed, had no tags at all, or were cut off by the token limit.

Why a journal: generation is the slow part on a CPU or a free Colab GPU. Every answer is appended
to `06_infer/journal.jsonl` as its batch finishes, so a killed run resumes with the prompts that
were not answered yet. The journal belongs to one fingerprint (model, adapter, preset, limits,
inputs); a different configuration starts a new one.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .inference import REFLECTION_PROMPT, SamplingPreset, get_preset, parsed_record, system_prompt_text
from .runs import Journal, Run, package_versions, read_jsonl, write_json_atomic, write_jsonl_atomic


def student_for_run(run: Run, model_spec: str | None = None) -> str:
    """The base student: model_spec, else the one stage 05 trained, else the one stage 03 scored with."""
    if model_spec:
        return model_spec
    for stage in ("finetune", "score"):
        m = run.manifest(stage) or {}
        spec = (m.get("config") or {}).get("student")
        if spec:
            return str(spec)
    raise ValueError(f"No student model known for {run.root}: pass model_spec='tiny-llama' (or a path / hub id)")


def _begin(run: Run, config: dict, needs: tuple[str, ...]) -> str:
    """Mark the stage running. Like Run.begin, but requires only the stages this config reads.

    Why: runs.STAGES lists 'finetune' as an input of 'infer', yet the base student needs no adapter.
    """
    for dep in needs:
        run.require(dep)
    fp = run.fingerprint("infer", config)
    old = run.manifest("infer") or {}
    write_json_atomic(run.stage_dir("infer") / "manifest.json", {
        "stage": "infer", "status": "running", "fingerprint": fp, "config": config,
        "started": old.get("started") if old.get("fingerprint") == fp else time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": package_versions()})
    return fp


def run_infer(run: Run, *, model_spec: str | None = None, use_adapter: bool = True,
              preset: str | SamplingPreset = "greedy", max_new_tokens: int = 256, n: int | None = None,
              system_prompt: Any = "auto", batch_size: int = 8, force: bool = False, progress: bool = True,
              quant4: bool | None = None, device: str | None = None, dtype: str | None = None,
              model: Any = None) -> dict:
    """Stage 06. Returns the manifest; reuses a finished stage with the same config and inputs.

    use_adapter=True needs a complete stage 05 and generates with its result (the base it was trained
    on; model_spec may only repeat that name). use_adapter=False uses the base student (model_spec,
    or the student the run trained or scored) and works without stage 05.
    system_prompt="auto": the fine-tuned student gets the system message it was trained with, the
    base student the lab's REFLECTION_PROMPT; a preset name, text or None overrides both.
    `model` (a LocalModel) skips loading, for notebooks that already hold one.
    """
    from .inference_local import LocalModel

    run.require("data")
    preset = get_preset(preset)
    adapter_fp = None
    if use_adapter:
        ft = run.require("finetune")
        trained_on = (ft.get("config") or {}).get("student")
        if model_spec and trained_on and model_spec != trained_on:
            raise ValueError(f"the adapter in {run.root} was trained on {trained_on!r}, not {model_spec!r}; "
                             "drop model_spec or pass use_adapter=False")
        spec, adapter_fp = str(trained_on or model_spec), ft.get("fingerprint")
    else:
        spec = student_for_run(run, model_spec)
    sys_arg = ("trained" if use_adapter else REFLECTION_PROMPT) if system_prompt == "auto" else system_prompt
    rows = read_jsonl(run.path("data", "eval.jsonl"))
    rows = rows[:n] if n is not None else rows
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("01_data/eval.jsonl has repeated ids; rerun stage 01 (it makes ids unique)")
    config = {"model": spec, "adapter": adapter_fp, "use_adapter": use_adapter, "preset": preset.as_dict(),
              "max_new_tokens": int(max_new_tokens), "n": n,
              "system_prompt": sys_arg if sys_arg == "trained" else system_prompt_text(sys_arg)}
    if not force and run.is_current("infer", config):
        return run.manifest("infer") or {}
    journal = Journal(run.path("infer", "journal.jsonl"), key="id")
    old = run.manifest("infer") or {}
    if force or old.get("fingerprint") != run.fingerprint("infer", config):
        journal.path.unlink(missing_ok=True)  # answers of another configuration must not be reused
    _begin(run, config, ("data", "finetune") if use_adapter else ("data",))
    done = {k: v for k, v in journal.load().items() if k in set(ids)}
    resumed = len(done)
    if model is None:
        model = (LocalModel.from_finetuned(run, quant4=quant4, system_prompt=sys_arg, device=device, dtype=dtype)
                 if use_adapter else LocalModel.from_spec(spec, system_prompt=sys_arg, quant4=bool(quant4),
                                                          device=device, dtype=dtype))
    label = model.name
    todo = [r for r in rows if str(r["id"]) not in done]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), initial=resumed, desc="generations", unit="prompt", disable=not progress)

    def save(i: int, gen: Any) -> None:
        r = todo[i]
        rec = {"id": str(r["id"]), "model": label, "prompt": _user_text(r), "text": gen.text,
               "finish_reason": gen.finish_reason, "n_tokens": gen.n_tokens, "parsed": parsed_record(gen.parsed)}
        if gen.error:
            rec["error"] = gen.error
        journal.append(rec)
        done[rec["id"]] = rec
        bar.update(1)

    t0 = time.perf_counter()
    prompts = [model.prompt_ids(r.get("instruction", ""), r.get("input", "") or "") for r in todo]
    model.generate_batch(prompts, preset=preset, max_new_tokens=max_new_tokens, batch_size=batch_size, on_result=save)
    seconds = time.perf_counter() - t0
    bar.close()
    out = [done[i] for i in ids]
    write_jsonl_atomic(run.path("infer", "generations.jsonl"), out)
    first = rows[0] if rows else None
    example = (model.tokenizer.decode(model.prompt_ids(first.get("instruction", ""), first.get("input", "") or ""),
                                      skip_special_tokens=False) if first else None)
    fresh = {str(t["id"]) for t in todo}
    new_tokens = sum(r.get("n_tokens") or 0 for r in out if r["id"] in fresh)
    extra = {"model": model.describe(), "prompt_example": example, "seconds": round(seconds, 2),
             "tokens_per_second": round(new_tokens / seconds, 1) if seconds > 0 and new_tokens else None,
             "notes": _notes(out, model)}
    return run.complete("infer", config, ["generations.jsonl"], counts(out, generated=len(todo), resumed=resumed),
                        extra=extra)


def _user_text(row: dict) -> str:
    return f"{row.get('instruction', '')}\n{row['input']}" if row.get("input") else str(row.get("instruction", ""))


def counts(rows: list[dict], **more: int) -> dict[str, Any]:
    """Format statistics of generation rows (also used by evaluation and the notebooks)."""
    n = len(rows)
    codes = Counter(c for r in rows for c in set(r["parsed"]["diagnostics"]))
    wf = sum(bool(r["parsed"]["well_formed"]) for r in rows)
    return {"prompts": n, **more, "well_formed": wf, "well_formed_share": round(wf / n, 4) if n else None,
            "no_tags": codes.get("no_tags", 0), "truncated": sum(r["finish_reason"] == "length" for r in rows),
            "errors": sum(r["finish_reason"] == "error" for r in rows),
            "with_answer": sum(r["parsed"]["answer"] is not None for r in rows),
            "with_reflection": sum(bool(r["parsed"]["reflections"]) for r in rows),
            "finish_reasons": dict(sorted(Counter(r["finish_reason"] for r in rows).items())),
            "diagnostics": dict(sorted(codes.items()))}


def _notes(rows: list[dict], model: Any) -> list[str]:
    notes = []
    c = counts(rows)
    if rows and c["no_tags"] == len(rows):
        notes.append("No answer contains a single tag. An untrained base student usually cannot follow the "
                     "format; a fine-tuned one that shows this was probably decoded with skip_special_tokens=True.")
    if c["truncated"]:
        notes.append(f"{c['truncated']} answers hit max_new_tokens; they were parsed with truncated=True "
                     "(reasoning cut off is never taken as the answer). Raise max_new_tokens to see them end.")
    if c["errors"]:
        notes.append(f"{c['errors']} prompts did not fit the model's context; see their 'error' field.")
    return notes


def load_generations(run: Run) -> list[dict]:
    """The rows of a finished stage 06 (raises with what to run first otherwise)."""
    run.require("infer")
    return read_jsonl(run.path("infer", "generations.jsonl"))


__all__ = ["counts", "load_generations", "run_infer", "student_for_run"]
