"""Stage 01 as a run step: read the training and evaluation data, keep a subset, write the report.

Writes 01_data/samples.jsonl, eval.jsonl and data_report.json. The content hash of a local source
is part of the fingerprint, so editing the data file makes every later stage stale. The manifest's
`sources` says where each set came from: a local path, or a hub dataset's name, config, split and the
commit the hub resolved (pin `@<commit>` in the spec to make a rerun read the same rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, StageConfig
from ..core.runs import Run, records_failure, sha256_path, write_json_atomic, write_jsonl_atomic
from .load import DataError, is_local_source, load_samples, parse_hub_spec, source_path, stratified_subset


@dataclass(frozen=True)
class DataConfig(StageConfig):
    """Which data, how much of it, and how strictly to read it."""

    STAGE = "data"

    # a file (JSONL, JSON, CSV, Parquet), a saved `datasets` folder, "workshop", or a hub dataset
    # owner/name[:config][@revision][#split] (split default "train"; see data.load.parse_hub_spec)
    train: str = "workshop"
    eval: str | None = "workshop-eval"  # held-out prompts with reference answers (None: no eval set)
    n_samples: int | None = None  # a stratified subset of the training data (None: all)
    n_eval: int | None = None
    column_map: dict[str, str] = field(default_factory=dict)  # our field -> the file's column
    strict: bool = False  # stop at the first bad rows instead of skipping and reporting them
    max_chars: int | None = 20000

    def validate(self) -> None:
        for name in ("n_samples", "n_eval", "max_chars"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"DataConfig.{name} must be at least 1 (or None for all), not {value}")
        for source in (self.train, self.eval):  # a malformed hub spec fails here, before the stage starts
            if source is not None and not is_local_source(source):
                parse_hub_spec(source)

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        return {"train": profile.train_data, "eval": profile.eval_data, "n_samples": profile.n_samples,
                "n_eval": profile.n_eval}


def source_hash(source: str | Path | None) -> str | None:
    """Content hash of a local source (None for a hub name)."""
    if source is None:
        return None
    path = source_path(source)
    return sha256_path(path) if path.exists() else None


@records_failure("data")
def run_data(run: Run, config: DataConfig | None = None, *, force: bool = False, progress: bool = True) -> dict:
    """Stage 01: write samples.jsonl, eval.jsonl and data_report.json into the run.

    progress is accepted for the stage contract; reading data prints nothing.
    """
    c = config or DataConfig()
    fingerprinted = {**c.as_dict(), "source_hash": source_hash(c.train),
                     "eval_hash": source_hash(c.eval) if c.eval else None}
    if not force and run.is_current("data", fingerprinted):
        return run.manifest("data")
    run.begin("data", fingerprinted)
    samples, report = load_samples(c.train, column_map=c.column_map, strict=c.strict, max_chars=c.max_chars)
    samples = stratified_subset(samples, c.n_samples)
    reports = {"train": report.as_dict()}
    outputs = ["samples.jsonl", "data_report.json"]
    eval_samples: list[dict] = []
    eval_report = None
    if c.eval:
        eval_samples, eval_report = load_samples(c.eval, kind="eval", strict=c.strict, max_chars=c.max_chars)
        eval_samples = stratified_subset(eval_samples, c.n_eval)
        reports["eval"] = eval_report.as_dict()
        write_jsonl_atomic(run.path("data", "eval.jsonl"), eval_samples)
        outputs.append("eval.jsonl")
    write_jsonl_atomic(run.path("data", "samples.jsonl"), samples)
    write_json_atomic(run.path("data", "data_report.json"), reports)
    empty = [(name, r) for name, r, rows in (("training", report, samples), ("evaluation", eval_report, eval_samples))
             if r is not None and not rows]
    if empty:
        name, r = empty[0]
        error = (f"No usable {name} samples: {r.summary()}. The reasons per row are in "
                 f"{run.path('data', 'data_report.json')}; fix the rows or map the columns (--column-map).")
        run.fail("data", error)
        raise DataError(error)
    counts = {"train": len(samples), "eval": len(eval_samples), "train_dropped": len(report.problems)}
    sources = {"train": report.origin, "eval": eval_report.origin if eval_report else None}
    return run.complete("data", fingerprinted, outputs, counts, extra={"sources": sources})
