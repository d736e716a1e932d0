"""The whole lab as one call: every stage through the same contract, in pipeline order.

Every stage is `run_<stage>(run, config, *, force, progress)` with a `<Stage>Config` built by
`from_profile(profile, **overrides)`. The CLI, the notebooks and the tests go through `run_stage`
or call the stage functions directly; nothing here translates settings by hand.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable, Sequence

from .core.errors import LabError
from .core.runs import STAGES, Run
from .profiles import Profile

# stage -> (module, config class, stage function); imported on first use, so `import pipeline` stays light
STAGE_FUNCTIONS: dict[str, tuple[str, str, str]] = {
    "data": ("data", "DataConfig", "run_data"),
    "reflect": ("reflect", "ReflectConfig", "run_reflect"),
    "score": ("scoring", "ScoreConfig", "run_score"),
    "select": ("selection", "SelectConfig", "run_select"),
    "finetune": ("finetune", "FinetuneConfig", "run_finetune"),
    "infer": ("inference", "InferConfig", "run_infer"),
    "evaluate": ("evaluate", "EvaluateConfig", "run_evaluate"),
}


def stage_parts(stage: str) -> tuple[type, Callable[..., dict]]:
    """(config class, stage function) of a stage."""
    if stage not in STAGE_FUNCTIONS:
        raise KeyError(f"stage {stage!r} is not available; stages: {', '.join(STAGE_FUNCTIONS)}")
    module, config_name, fn_name = STAGE_FUNCTIONS[stage]
    mod = importlib.import_module(f".{module}", __package__)
    return getattr(mod, config_name), getattr(mod, fn_name)


def run_stage(stage: str, run: Run, profile: Profile, *, overrides: dict[str, Any] | None = None,
              force: bool = False, progress: bool = True) -> dict:
    """One stage with the profile's settings (and overrides of its config fields); returns its manifest."""
    config_cls, fn = stage_parts(stage)
    return fn(run, config_cls.from_profile(profile, **(overrides or {})), force=force, progress=progress)


def run_pipeline(run: Run, profile: Profile, *, stages: list[str] | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None, force: bool = False, progress: bool = True,
                 log: Callable[[str], Any] = print) -> dict[str, dict]:
    """Run every stage in order; finished stages with unchanged inputs are reused, not recomputed.

    overrides: per stage, config fields to change, e.g. {"reflect": {"teacher": "openai:gpt-4o-mini"}}.
    Every stage's config is built (and checked) before the first stage starts, so a bad setting of a late
    stage fails at once instead of after an hour of scoring.
    """
    chosen = stages or list(STAGE_FUNCTIONS)
    plan = []
    for stage in chosen:
        config_cls, fn = stage_parts(stage)
        plan.append((stage, fn, config_cls.from_profile(profile, **(overrides or {}).get(stage, {}))))
    results = {}
    for stage, fn, config in plan:
        t0 = time.perf_counter()
        log(f"== {stage} ==")
        results[stage] = fn(run, config, force=force, progress=progress)
        counts = results[stage].get("counts", {})
        log(f"   done in {time.perf_counter() - t0:.1f} s; " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return results


def stages_needed(needs: str | Sequence[str]) -> list[str]:
    """`needs` and every stage they require, transitively, in pipeline order."""
    wanted, todo = set(), [needs] if isinstance(needs, str) else list(needs)
    while todo:
        stage = todo.pop()
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        if stage not in wanted:
            wanted.add(stage)
            todo.extend(STAGES[stage].requires)
    return [s for s in STAGES if s in wanted]


def missing_stages(run: Run, needs: str | Sequence[str]) -> list[str]:
    """The needed stages to run: from the first one the run lacks (or holds broken) on, in order.

    Why everything after the first gap: a rebuilt earlier stage changes the inputs of the later ones; their
    functions reuse a result whose inputs did not change, so running them again costs nothing then.
    """
    needed = stages_needed(needs)
    for i, stage in enumerate(needed):
        try:
            run.require(stage)
        except LabError:
            return needed[i:]
    return []


def ensure_stages(run: Run, profile: Profile, needs: str | Sequence[str], *, progress: bool = True,
                  log: Callable[[str], Any] = print) -> list[str]:
    """Run the earlier stages `needs` depends on that `run` lacks, with `profile`; returns the stages run.

    Why: a notebook opened alone (Colab gives each one a fresh runtime and disk) finds no earlier results;
    building them with the same profile lets it run top to bottom, and a run that has them loses nothing.
    """
    todo = missing_stages(run, needs)
    if todo:
        log(f"{run.root} lacks {', '.join(todo)}: running {'it' if len(todo) == 1 else 'them'} now "
            f"with profile {profile.name!r}")
        run_pipeline(run, profile, stages=todo, progress=progress, log=log)
    return todo
