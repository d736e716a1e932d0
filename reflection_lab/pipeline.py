"""The whole lab as one call: each stage function reads the run, writes its artifact, returns its manifest.

Why a table of small adapters: the CLI, the notebooks and the tests all run the same stage code
with a profile; the adapters only translate profile fields into the stage's arguments.
"""

from __future__ import annotations

import time
from typing import Callable

from .profiles import Profile
from .runs import Run

StageRunner = Callable[[Run, Profile, dict], dict]


def _data(run: Run, p: Profile, opts: dict) -> dict:
    from .data import run_data

    return run_data(run, train=opts.get("train") or p.train_data, eval=opts.get("eval", p.eval_data),
                    n_samples=p.n_samples, n_eval=p.n_eval, strict=bool(opts.get("strict")),
                    column_map=opts.get("column_map"), force=bool(opts.get("force")))


def _reflect(run: Run, p: Profile, opts: dict) -> dict:
    from .reflect import make_teacher, run_reflect

    teacher_spec = opts.get("teacher") or p.teacher
    kw = {"model": p.teacher_model} if p.teacher_model else {}
    teacher = make_teacher(teacher_spec, **kw)
    extra = {"max_tokens": p.max_new_tokens} if teacher_spec.startswith("local") else {}
    return run_reflect(run, teacher, style=opts.get("style") or "reflection",
                       concurrency=int(opts.get("concurrency") or 8), force=bool(opts.get("force")), **extra)


def _score(run: Run, p: Profile, opts: dict) -> dict:
    from .scoring import ScoreConfig, run_score

    cfg = ScoreConfig(student=p.student, template=p.template, max_length=p.max_length,
                      batch_tokens=p.score_batch_tokens, quant4=p.quant4_scoring, dtype=p.dtype, device=p.device)
    return run_score(run, cfg, force=bool(opts.get("force")))


def _select(run: Run, p: Profile, opts: dict) -> dict:
    from .selection import SelectionConfig, run_select

    fields = {"ifd_max": p.ifd_max, "rifd_max": p.rifd_max, "top_k_percent": p.top_k_percent,
              "keep_unreflected_answers": p.keep_unreflected_answers}
    fields.update(opts.get("selection") or {})
    return run_select(run, SelectionConfig(**fields), force=bool(opts.get("force")))


def _finetune(run: Run, p: Profile, opts: dict) -> dict:
    from .finetune import FinetuneConfig, run_finetune

    return run_finetune(run, FinetuneConfig.from_profile(p), force=bool(opts.get("force")))


def _infer(run: Run, p: Profile, opts: dict) -> dict:
    from .inference import run_infer

    base = bool(opts.get("base"))
    return run_infer(run, use_adapter=not base, model_spec=p.student if base else None,
                     preset=opts.get("preset") or "greedy", max_new_tokens=p.max_new_tokens,
                     device=p.device, dtype=p.dtype, force=bool(opts.get("force")))


def _evaluate(run: Run, p: Profile, opts: dict) -> dict:
    from .evaluate import stage_runner

    return stage_runner(run, p, opts)


STAGE_RUNNERS: dict[str, StageRunner] = {
    "data": _data,
    "reflect": _reflect,
    "score": _score,
    "select": _select,
    "finetune": _finetune,
    "infer": _infer,
    "evaluate": _evaluate,
}


def run_stage(stage: str, run: Run, profile: Profile, **opts) -> dict:
    if stage not in STAGE_RUNNERS:
        raise KeyError(f"stage {stage!r} is not available; stages: {', '.join(STAGE_RUNNERS)}")
    return STAGE_RUNNERS[stage](run, profile, opts)


def run_pipeline(run: Run, profile: Profile, *, stages: list[str] | None = None, log=print, **opts) -> dict[str, dict]:
    """Run every stage in order; finished stages with unchanged inputs are reused, not recomputed."""
    results = {}
    for stage in stages or list(STAGE_RUNNERS):
        t0 = time.perf_counter()
        log(f"== {stage} ==")
        results[stage] = run_stage(stage, run, profile, **opts)
        counts = results[stage].get("counts", {})
        log(f"   done in {time.perf_counter() - t0:.1f} s; " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return results
