"""Stage 06: answer the evaluation prompts with the student and parse every answer.

Reads `01_data/eval.jsonl`, writes `06_infer/generations.jsonl` (one row per prompt, in eval order):
`{id, model, prompt, text, finish_reason, n_tokens, parsed: {thinking, reflections, output, answer,
output_complete, well_formed, diagnostics}}` and a manifest whose counts say how many answers were
well formed, had no tags at all, or were cut off by the token limit.

Why a journal: generation is the slow part on a CPU or a free Colab GPU. Every answer is appended
to `06_infer/journal.jsonl` as its batch finishes, so a killed run resumes with the prompts that
were not answered yet. A journal row is reused only for the same model, settings and prompt
(`generate_journalled`, which stage 07 uses for its arms too); a different configuration starts a
new journal.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, StageConfig
from ..core.runs import Journal, Run, read_jsonl, records_failure, stable_hash, write_jsonl_atomic
from ..data import check_unique_ids
from ..format.chat import REFLECTION_PROMPT, SystemPrompt, system_prompt_text
from ..format.templates import user_text
from ..llm.sampling import PRESETS, SamplingPreset, get_preset


@dataclass(frozen=True)
class InferConfig(StageConfig):
    """Which student answers (fine-tuned or base), how it decodes, and how many prompts."""

    STAGE = "infer"
    RUNTIME = ("batch_size", "device", "timeout_s", "max_retries", "concurrency")

    use_adapter: bool = True  # the run's stage 05 result; False: the base student
    student: str | None = None  # the base student (None: the one the run trained or scored)
    preset: str | SamplingPreset = "greedy"  # a sampling preset: greedy, reflection, creative (or your own)
    max_new_tokens: int = 256
    n: int | None = None  # the first n evaluation prompts (None: all)
    # "auto": the fine-tuned student gets the system message it was trained with, the base student the
    # lab's Reflection prompt; "trained", a preset name ("reflection", "none") or literal text override it
    system_prompt: str | SystemPrompt | None = "auto"
    batch_size: int = 8
    quant4: bool | None = None  # None: as trained (4-bit for QLoRA); the base student loads in full precision
    dtype: str = "auto"
    device: str = "auto"
    # "local" (transformers in this process) or an OpenAI-compatible endpoint: "openai" / "openai:<model>"
    # (model else REFLECTION_LAB_INFER_MODEL); its URL: generator_url, else REFLECTION_LAB_INFER_BASE_URL
    generator: str = "local"
    generator_url: str | None = None
    # an endpoint's limits (None: REFLECTION_LAB_INFER_TIMEOUT_S / _MAX_RETRIES / _CONCURRENCY, else 120 s, 6, 8);
    # a server that answers one request at a time wants concurrency 1 and a timeout that covers a whole answer
    timeout_s: float | None = None
    max_retries: int | None = None
    concurrency: int | None = None

    def validate(self) -> None:
        if self.generator != "local" and self.generator.partition(":")[0] != "openai":
            raise ConfigError(f"InferConfig.generator must be 'local', 'openai' or 'openai:<model>', "
                              f"not {self.generator!r}")
        if isinstance(self.preset, str) and self.preset not in PRESETS:
            raise ConfigError(f"InferConfig.preset must be one of {sorted(PRESETS)}, not {self.preset!r}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"InferConfig.{name} must be at least 1, not {getattr(self, name)}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"InferConfig.n must be at least 1 (or None for all), not {self.n}")
        for name, low in (("timeout_s", 0.001), ("max_retries", 0), ("concurrency", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"InferConfig.{name} must be at least {low:g} (or None for the default), not {value}")

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        return {"max_new_tokens": profile.max_new_tokens, "dtype": profile.dtype, "device": profile.device}

    @classmethod
    def adjust(cls, values: dict[str, Any], profile: Any) -> dict[str, Any]:
        """The base student (use_adapter=False) is the profile's student unless one is given."""
        if not values.get("use_adapter", True):
            values.setdefault("student", profile.student)
        return values


def student_for_run(run: Run, student: str | None = None) -> str:
    """The base student: `student`, else the one stage 05 trained, else the one stage 03 scored with."""
    if student:
        return student
    for stage in ("finetune", "score"):
        m = run.manifest(stage) or {}
        spec = (m.get("config") or {}).get("student")
        if spec:
            return str(spec)
    raise ValueError(f"No student model known for {run.root}: set InferConfig.student='tiny-llama' "
                     "(or a path / hub id)")


def generate_journalled(lm: Any, rows: list[dict], journal_path: Path, *, identity: Any,
                        preset: str | SamplingPreset = "greedy", max_new_tokens: int = 256,
                        batch_size: int | None = None, progress: bool = True, desc: str = "generations"
                        ) -> tuple[list[dict], set[str]]:
    """Answer every eval row with a local model, journalling each answer as its batch finishes.

    A journal row is reused only when it was made for the same `identity` (model and settings) and the
    same prompt. Returns (one record per row, in row order; the ids answered in this call).
    """
    from tqdm.auto import tqdm

    journal = Journal(journal_path, key="id")
    want = {str(r["id"]): stable_hash([identity, r.get("instruction", ""), r.get("input", "") or ""])[:24]
            for r in rows}
    done = {k: v for k, v in journal.load().items() if want.get(k) == v.get("answer_key")}
    todo = [r for r in rows if str(r["id"]) not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc, unit="prompt", disable=not progress)

    def save(i: int, gen: Any) -> None:
        sid = str(todo[i]["id"])
        rec = {"id": sid, "answer_key": want[sid], "prompt": user_text(todo[i].get("instruction", ""),
                                                                        todo[i].get("input", "") or ""),
               **gen.record()}
        journal.append(rec)
        done[sid] = rec
        bar.update(1)

    if todo:
        prompts = [lm.prompt_ids(r.get("instruction", ""), r.get("input", "") or "") for r in todo]
        lm.generate_batch(prompts, preset=preset, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          on_result=save)
    bar.close()
    return [done[str(r["id"])] for r in rows], {str(r["id"]) for r in todo}


def _model_for(run: Run, config: InferConfig) -> tuple[str, str | None, Any]:
    """(student spec, adapter fingerprint or None, the system prompt setting) this config asks for."""
    if config.use_adapter:
        ft = run.require("finetune")
        trained_on = (ft.get("config") or {}).get("student")
        if config.student and trained_on and config.student != trained_on:
            raise ValueError(f"the adapter in {run.root} was trained on {trained_on!r}, not {config.student!r}; "
                             "drop InferConfig.student or set use_adapter=False")
        spec, adapter = str(trained_on or config.student), ft.get("fingerprint")
    else:
        spec, adapter = student_for_run(run, config.student), None
    auto = "trained" if config.use_adapter else REFLECTION_PROMPT
    return spec, adapter, auto if config.system_prompt == "auto" else config.system_prompt


@records_failure("infer")
def run_infer(run: Run, config: InferConfig | None = None, *, force: bool = False, progress: bool = True,
              model: Any = None) -> dict:
    """Stage 06. Returns the manifest; reuses a finished stage with the same config and inputs.

    use_adapter=True needs a complete stage 05 and generates with its result (the base it was trained
    on; config.student may only repeat that name). use_adapter=False uses the base student and works
    without stage 05. `model` (an llm.LocalModel a notebook already holds) skips loading.
    """
    config = config or InferConfig()
    run.require("data")
    spec, adapter_fp, sys_arg = _model_for(run, config)
    rows = read_jsonl(run.path("data", "eval.jsonl"))
    rows = rows[:config.n] if config.n is not None else rows
    check_unique_ids(rows, "01_data/eval.jsonl")
    preset = get_preset(config.preset)
    endpoint = None if config.generator == "local" else _endpoint(run, config, sys_arg)
    fingerprinted = {"model": spec if endpoint is None else endpoint.identity(), "adapter": adapter_fp,
                     "use_adapter": config.use_adapter,
                     "preset": preset.fingerprint(), "max_new_tokens": config.max_new_tokens, "n": config.n,
                     "quant4": config.quant4, "dtype": config.dtype,
                     "system_prompt": sys_arg if sys_arg == "trained" else system_prompt_text(sys_arg)}
    if not force and run.is_current("infer", fingerprinted):
        return run.manifest("infer") or {}
    journal_path = run.path("infer", "journal.jsonl")
    old = run.manifest("infer") or {}
    if force or old.get("fingerprint") != run.fingerprint("infer", fingerprinted):
        journal_path.unlink(missing_ok=True)  # answers of another configuration must not pile up
    fp = run.begin("infer", fingerprinted, requires=("data", "finetune") if config.use_adapter else ("data",))
    if model is None:
        model = endpoint or _load(run, config, spec, sys_arg)
    t0 = time.perf_counter()
    out, fresh = generate_journalled(model, rows, journal_path, identity=fp, preset=preset,
                                       max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                       progress=progress)
    seconds = time.perf_counter() - t0
    out = [{k: v for k, v in rec.items() if k != "answer_key"} for rec in out]
    write_jsonl_atomic(run.path("infer", "generations.jsonl"), out)
    new_tokens = sum(r.get("n_tokens") or 0 for r in out if r["id"] in fresh)
    extra = {"model": model.describe(), "prompt_example": _prompt_example(model, rows), "seconds": round(seconds, 2),
             "tokens_per_second": round(new_tokens / seconds, 1) if seconds > 0 and new_tokens else None,
             "notes": _notes(out)}
    return run.complete("infer", fingerprinted, ["generations.jsonl"],
                        counts(out, generated=len(fresh), resumed=len(rows) - len(fresh)), extra=extra)


def _load(run: Run, config: InferConfig, spec: str, sys_arg: Any) -> Any:
    """The fine-tuned student of the run, or the base student asked for the format by its system prompt."""
    from ..llm.local import LocalModel

    if config.use_adapter:
        from ..finetune import finetuned_model

        return finetuned_model(run, quant4=config.quant4, system_prompt=sys_arg, device=config.device,
                               dtype=config.dtype)
    return LocalModel.from_spec(spec, system_prompt=sys_arg, quant4=bool(config.quant4), device=config.device,
                                dtype=config.dtype, batch_size=config.batch_size)


def _endpoint(run: Run, config: InferConfig, sys_arg: Any) -> Any:
    """The endpoint generator; "trained" sends the system message the adapter was trained with."""
    from .endpoint import EndpointGenerator

    if sys_arg == "trained":
        from ..finetune import training_format

        sys_arg = training_format(run).system_prompt
    limits = {k: getattr(config, k) for k in ("timeout_s", "max_retries", "concurrency") if getattr(config, k) is not None}
    return EndpointGenerator(config.generator, base_url=config.generator_url, system_prompt=system_prompt_text(sys_arg),
                             **limits)


def _prompt_example(model: Any, rows: list[dict]) -> str | None:
    """The first prompt exactly as the model saw it (special tokens included)."""
    if not rows:
        return None
    first = rows[0]
    if hasattr(model, "prompt_example"):
        return model.prompt_example(first.get("instruction", ""), first.get("input", "") or "")
    ids = model.prompt_ids(first.get("instruction", ""), first.get("input", "") or "")
    return model.tokenizer.decode(ids, skip_special_tokens=False)


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


def _notes(rows: list[dict]) -> list[str]:
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


__all__ = ["InferConfig", "counts", "generate_journalled", "load_generations", "run_infer", "student_for_run"]
