"""reflection-lab: a Jupyter-first lab for reflection-tuning ideas (teacher reflection, IFD / r-IFD
selection, QLoRA in Reflection format, tag-parsed inference, honest evaluation).

The package is the pipeline: one subpackage per stage (data, reflect, scoring, selection, finetune,
inference, evaluate) over a base that imports no stage (core, models, format, llm). Every stage is
`run_<stage>(run, config, *, force=False, progress=True)` with a `<Stage>Config.from_profile(profile)`.

Importing the package is cheap on purpose (no torch): the names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (relative to this package); the one place of lazy exports
_EXPORTS = {
    "Run": "core.runs", "MissingStageError": "core.runs", "STAGES": "core.runs", "ConfigError": "core.config",
    "pick_device": "core.devices", "get_profile": "profiles", "PROFILES": "profiles", "run_pipeline": "pipeline",
    "run_stage": "pipeline", "make_backend": "llm", "parse": "format.tags",
    "DataConfig": "data", "run_data": "data",
    "ReflectConfig": "reflect", "run_reflect": "reflect",
    "ScoreConfig": "scoring", "run_score": "scoring",
    "SelectConfig": "selection", "run_select": "selection",
    "FinetuneConfig": "finetune", "run_finetune": "finetune",
    "InferConfig": "inference", "run_infer": "inference",
    "EvaluateConfig": "evaluate", "run_evaluate": "evaluate",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
