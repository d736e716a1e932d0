"""The arms of stage 07: which training set each model saw, and how the lab trains the missing ones.

| arm | training set | question it answers |
| --- | --- | --- |
| `base` | none (the student as downloaded, asked for the format by its system message) | prompting alone? |
| `original` | every sample's original pair (01_data/samples.jsonl) | plain fine-tuning? |
| `reflected` | every sample's `reflect_both` pair, with stage 02's fallbacks | the rewrites, unselected? |
| `selected` | the student's selection (04_select/selected.jsonl) | the method itself |
| `random` | as many pairs as `selected`, seeded draw from the `reflected` pool | the *choice* vs chance? |

`selected` vs `random` isolates the student's choice (same size, same pool of reflected pairs);
`random` vs `reflected` shows the effect of size alone; `reflected` vs `original` the teacher's.

Why sub-runs: each trained arm is an ordinary run under `07_evaluate/arms/<arm>/`, whose
`01_data` .. `04_select` hold that arm's training set with complete manifests (stages 02 and 03
say "not run: built by stage 07 from <parent>"), and whose `05_finetune` is written by the same
`run_finetune` as the main pipeline at the profile's settings. So an arm inherits everything
stage 05 does: it is reused when its training set and settings are unchanged, resumes from its
last checkpoint after a kill, and keeps its MODEL_CARD.md. The `selected` arm reuses the parent
run's own 05_finetune when that is complete for the same settings and selection.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import ConfigError
from ..core.runs import (MissingStageError, Run, read_jsonl, sha256_path, stable_hash, write_json_atomic,
                         write_jsonl_atomic)

ARMS = ("base", "original", "reflected", "selected", "random")
ARM_TITLES = {
    "base": "base student (no training)",
    "original": "fine-tuned on all original pairs",
    "reflected": "fine-tuned on all reflected pairs (no selection)",
    "selected": "fine-tuned on the student-selected pairs",
    "random": "fine-tuned on a random subset of the reflected pairs, same size as the selection",
}
# stages of the parent run that each arm's training set is read from
ARM_NEEDS = {"base": ("data",), "original": ("data",), "reflected": ("data", "reflect"),
             "selected": ("data", "select"), "random": ("data", "reflect", "select")}
SUBRUN_DIR = "arms"


class ArmSkipped(RuntimeError):
    """An arm that cannot be trained here (e.g. its training set is empty); the reason is reported."""


@dataclass
class ArmData:
    """One arm's training set (None for base) and where it came from."""

    name: str
    rows: list[dict] | None
    source: str
    counts: dict[str, Any] = field(default_factory=dict)


def check_arms(arms: Any) -> tuple[str, ...]:
    arms = (arms,) if isinstance(arms, str) else tuple(arms)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"EvaluateConfig.arms: unknown arm(s) {bad}; choose from {ARMS}")
    if not arms:
        raise ConfigError(f"EvaluateConfig.arms is empty; choose from {ARMS}")
    if len(set(arms)) != len(arms):
        raise ConfigError(f"EvaluateConfig.arms lists an arm twice: {arms}")
    return arms


def required_stages(arms: tuple[str, ...]) -> tuple[str, ...]:
    need: list[str] = []
    for a in arms:
        need += [s for s in ARM_NEEDS[a] if s not in need]
    return tuple(need)


def _pair(sid: str, v: dict, outcome: str) -> dict:
    return {"id": sid, "instruction": v["instruction"], "input": v.get("input", "") or "", "output": v["output"],
            "outcome": outcome, "ifd": v.get("ifd"), "rifd": v.get("rifd")}


def reflected_pool(run: Run) -> list[dict]:
    """Every sample's reflect_both pair; where stage 02 fell back, the fallback it recorded (outcome says which)."""
    rows = []
    for r in read_jsonl(run.path("reflect", "reflections.jsonl")):
        v = r["variants"]["reflect_both"]
        outcome = "reflect_both" if v.get("parse_ok") else f"fallback:{v.get('parse_reason') or 'unknown'}"
        rows.append(_pair(str(r["id"]), v, outcome))
    return rows


def arm_data(run: Run, arm: str, seed: int = 0) -> ArmData:
    """The training set of one arm, read from the parent run's finished stages."""
    if arm == "base":
        return ArmData(arm, None, "no training")
    if arm == "original":
        rows = [_pair(str(s["id"]), s, "original") for s in read_jsonl(run.path("data", "samples.jsonl"))]
        return ArmData(arm, rows, "01_data/samples.jsonl", {"pairs": len(rows)})
    selected = [_pair(str(r["id"]), r, str(r.get("outcome", "selected")))
                for r in read_jsonl(run.path("select", "selected.jsonl"))] if arm in ("selected", "random") else []
    if arm == "selected":
        return ArmData(arm, selected, "04_select/selected.jsonl", {"pairs": len(selected)})
    pool = reflected_pool(run)
    fallbacks = sum(not r["outcome"].startswith("reflect_both") for r in pool)
    if arm == "reflected":
        return ArmData(arm, pool, "02_reflect/reflections.jsonl (reflect_both)",
                       {"pairs": len(pool), "fallbacks": fallbacks})
    k = min(len(selected), len(pool))
    rng = random.Random(f"random-arm:{seed}")
    picked = sorted(rng.sample(range(len(pool)), k))
    rows = [dict(pool[i], outcome="random:" + pool[i]["outcome"]) for i in picked]
    return ArmData(arm, rows, f"{k} of {len(pool)} reflect_both pairs, seed {seed}",
                   {"pairs": k, "pool": len(pool), "seed": seed, "same_size_as_selected": k == len(selected)})


def subrun_root(run: Run, arm: str) -> Path:
    return run.root / "07_evaluate" / SUBRUN_DIR / arm


def prepare_subrun(run: Run, data: ArmData) -> Run:
    """Write (or keep) the arm's run: 01_data .. 04_select holding its training set, complete manifests.

    An unchanged training set leaves the folder untouched, so its 05_finetune stays current.
    """
    assert data.rows is not None
    sub = Run(subrun_root(run, data.name))
    digest = stable_hash(data.rows)
    m = sub.manifest("select") or {}
    if m.get("status") == "complete" and (m.get("config") or {}).get("rows_sha256") == digest:
        try:
            sub.require("select")
            return sub
        except MissingStageError:  # a file was edited or deleted by hand: rewrite the set below
            sub = Run(sub.root)
    parent = str(run.root.resolve())
    base_cfg = {"arm": data.name, "parent": parent, "source": data.source}
    samples = [{"id": r["id"], "instruction": r["instruction"], "input": r["input"], "output": r["output"],
                "category": ""} for r in data.rows]
    write_jsonl_atomic(sub.path("data", "samples.jsonl"), samples)
    sub.complete("data", base_cfg, ["samples.jsonl"], {"train": len(samples)})
    note = f"not run: this training set was built by stage 07 of {parent} ({data.source})"
    for stage in ("reflect", "score"):
        sub.complete(stage, {**base_cfg, "note": note}, [], {"samples": len(samples)}, extra={"note": note})
    write_jsonl_atomic(sub.path("select", "selected.jsonl"), data.rows)
    outcomes: dict[str, int] = {}
    for r in data.rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    write_json_atomic(sub.path("select", "outcomes.json"), outcomes)
    sub.complete("select", {**base_cfg, "rows_sha256": digest},
                 ["selected.jsonl", "outcomes.json"], {"total": len(data.rows), "kept": len(data.rows), **outcomes})
    return sub


def train_arm(run: Run, data: ArmData, ft_config: Any, *, progress: bool = True) -> tuple[Run, dict, float]:
    """The run whose 05_finetune is this arm's model, training it if needed. Returns (run, manifest, seconds).

    Raises ArmSkipped when the arm has too little data to train.
    """
    from ..finetune import FinetuneDataError, run_finetune

    cfg = ft_config.as_dict()
    if data.name == "selected" and run.is_current("finetune", cfg):
        return run, run.manifest("finetune") or {}, 0.0
    if not data.rows:
        raise ArmSkipped(f"arm '{data.name}' has no training pairs ({data.source})")
    sub = prepare_subrun(run, data)
    if sub.is_current("finetune", cfg):
        return sub, sub.manifest("finetune") or {}, 0.0
    t0 = time.perf_counter()
    try:
        m = run_finetune(sub, ft_config, progress=progress)
    except FinetuneDataError as exc:
        raise ArmSkipped(f"arm '{data.name}': {exc}") from exc
    if m.get("status") == "complete":
        # checkpoints only serve a resume; a finished arm is reused from adapter/ (saves ~100 MB per arm)
        shutil.rmtree(sub.root / "05_finetune" / "checkpoints", ignore_errors=True)
    return sub, m, time.perf_counter() - t0


def parent_finetune_reusable(run: Run, ft_config: Any) -> str | None:
    """The fingerprint of the parent's 05_finetune when the selected arm can reuse it, else None."""
    cfg = ft_config.as_dict()
    return (run.manifest("finetune") or {}).get("fingerprint") if run.is_current("finetune", cfg) else None


def inputs_digest(run: Run, stages: tuple[str, ...]) -> dict[str, Any]:
    """Output hashes of the parent stages the arms read (part of the evaluation fingerprint)."""
    out = {}
    for s in stages:
        m = run.manifest(s) or {}
        out[s] = m.get("outputs")
    selected = run.root / "04_select" / "selected.jsonl"
    if "select" in stages and selected.exists():
        out["selected_sha256"] = sha256_path(selected)
    return out


__all__ = ["ARMS", "ARM_NEEDS", "ARM_TITLES", "ArmData", "ArmSkipped", "arm_data", "check_arms", "inputs_digest",
           "parent_finetune_reusable", "prepare_subrun", "reflected_pool", "required_stages", "subrun_root",
           "train_arm"]
