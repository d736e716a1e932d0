"""The run directory: how stages hand work to each other and survive interruptions.

Why: notebooks are run on different days, in different kernels, on Colab sessions that
disconnect. Every stage writes fixed-name artifacts into `<run>/<NN_stage>/` plus a
`manifest.json` (config, a fingerprint of its inputs, package versions, counts, output
hashes). A stage whose manifest is complete for the same fingerprint is reused; a stage whose
inputs are missing says which notebook or command to run first; long stages append to a
`Journal` so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
import functools
from typing import Any, Callable, Iterator, TypeVar

from .errors import LabError, RunDirError
from .runtime import package_version


@dataclass(frozen=True)
class StageInfo:
    folder: str
    notebook: str
    command: str
    requires: tuple[str, ...]
    table: str | None = None  # the stage's main JSONL output, what Run.dataset(stage) reads by default


STAGES: dict[str, StageInfo] = {
    "data": StageInfo("01_data", "01_data.ipynb", "reflection-lab data", (), "samples.jsonl"),
    "reflect": StageInfo("02_reflect", "02_reflect.ipynb", "reflection-lab reflect", ("data",), "reflections.jsonl"),
    "score": StageInfo("03_score", "03_score.ipynb", "reflection-lab score", ("reflect",), "scores.jsonl"),
    "select": StageInfo("04_select", "04_select.ipynb", "reflection-lab select", ("score",), "selected.jsonl"),
    "finetune": StageInfo("05_finetune", "05_finetune.ipynb", "reflection-lab finetune", ("select",),
                          "train_log.jsonl"),
    # infer can use the base student, so it only requires data; with an adapter it fingerprints 05 itself.
    "infer": StageInfo("06_infer", "06_inference.ipynb", "reflection-lab infer", ("data",), "generations.jsonl"),
    "evaluate": StageInfo("07_evaluate", "07_evaluate.ipynb", "reflection-lab evaluate", ("data", "select"),
                          "judge.jsonl"),
}

# The four versions every sample has from stage 02 on (02_reflect/reflections.jsonl, 03_score/scores.jsonl).
VARIANTS = ("original", "reflect_instruction", "reflect_response", "reflect_both")

TRACKED_PACKAGES = ("reflection-lab", "torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "trl")


class MissingStageError(LabError, RuntimeError):
    """Raised when a stage's inputs are not in the run; the message says what to run first."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """Hash of a file, or of every file under a folder (names and contents, sorted)."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    return {name: package_version(name) for name in TRACKED_PACKAGES}


def write_text_atomic(path: Path, text: str) -> None:
    """Write next door, then rename: a reader never sees half a file, even after a kill."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Journal:
    """Append-only JSONL, flushed and fsynced per record, so `kill -9` loses at most one record.

    On load, a torn last line (the process died mid-write) is cut off, then appending resumes.
    """

    def __init__(self, path: str | Path, key: str = "key"):
        self.path = Path(path)
        self.key = key

    def load(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        good_bytes = 0
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except ValueError:
                    break
                if not raw.endswith(b"\n"):
                    break
                records[rec[self.key]] = rec
                good_bytes += len(raw)
        if good_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
        return records

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __iter__(self) -> Iterator[dict]:
        return iter(self.load().values())


class Run:
    """One experiment's folder. Stages read earlier artifacts and write their own here."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"The run directory {self.root} is a file, not a folder: choose another --run "
                              "(or RUN_DIR in a notebook).")
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def stage_dir(self, stage: str) -> Path:
        d = self.root / STAGES[stage].folder
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path(self, stage: str, name: str) -> Path:
        return self.stage_dir(stage) / name

    def manifest_path(self, stage: str) -> Path:
        return self.root / STAGES[stage].folder / "manifest.json"

    def manifest(self, stage: str) -> dict | None:
        """The stage's manifest; None when absent or unreadable (a corrupt one counts as not run: rerunning
        the stage rewrites it, and its journals keep the work already done)."""
        p = self.manifest_path(stage)
        try:
            m = json.loads(p.read_text(encoding="utf-8")) if p.exists() else None
        except (ValueError, UnicodeDecodeError):
            return None
        return m if isinstance(m, dict) else None

    def _corrupt(self, stage: str) -> bool:
        return self.manifest_path(stage).exists() and self.manifest(stage) is None

    def require(self, stage: str) -> dict:
        """The manifest of a finished earlier stage, or an error naming what to run first."""
        m = self.manifest(stage)
        info = STAGES[stage]
        if self._corrupt(stage):
            raise RunDirError(f"{self.manifest_path(stage)} is not a readable manifest (a write cut off, or edited "
                              f"by hand): rerun `{info.command} --run {self.root}` (or notebooks/{info.notebook}); "
                              "it rewrites the manifest and reuses the journalled work.")
        if not m or m.get("status") != "complete":
            state = "has not been run" if not m else f"did not finish (status: {m.get('status')})"
            raise MissingStageError(
                f"Stage '{stage}' {state} in {self.root}. Run notebooks/{info.notebook} "
                f"or `{info.command} --run {self.root}` first."
            )
        for name, digest in m.get("outputs", {}).items():
            p = self.root / info.folder / name
            if not p.exists() or sha256_path(p) != digest:
                raise MissingStageError(
                    f"Stage '{stage}' output {name} is missing or was changed after the stage finished. "
                    f"Rerun notebooks/{info.notebook} or `{info.command} --run {self.root}`."
                )
        return m

    def fingerprint(self, stage: str, config: dict) -> str:
        """What a stage's result depends on: its config and the outputs of the stages it reads."""
        upstream = {}
        for dep in STAGES[stage].requires:
            m = self.manifest(dep)
            upstream[dep] = m.get("outputs") if m else None
        return stable_hash({"stage": stage, "config": config, "upstream": upstream})

    def is_current(self, stage: str, config: dict) -> bool:
        """True when the stage finished with exactly this config and these inputs (reuse it)."""
        m = self.manifest(stage)
        if not m or m.get("status") != "complete" or m.get("fingerprint") != self.fingerprint(stage, config):
            return False
        try:
            self.require(stage)
        except MissingStageError:
            return False
        return True

    def begin(self, stage: str, config: dict, requires: tuple[str, ...] | None = None) -> str:
        """Mark a stage as running; returns the fingerprint a journal can be keyed on.

        `requires`: the earlier stages this call reads, when they differ from STAGES (the base student
        needs no 05_finetune; some evaluation arms need no 02_reflect). Each must be complete.
        """
        for dep in STAGES[stage].requires if requires is None else requires:
            self.require(dep)
        fp = self.fingerprint(stage, config)
        old = self.manifest(stage) or {}
        write_json_atomic(self.stage_dir(stage) / "manifest.json", {
            "stage": stage, "status": "running", "fingerprint": fp, "config": config,
            "started": old.get("started") if old.get("fingerprint") == fp else time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": package_versions(),
        })
        return fp

    def complete(self, stage: str, config: dict, outputs: list[str], counts: dict | None = None,
                 extra: dict | None = None) -> dict:
        d = self.stage_dir(stage)
        m = self.manifest(stage) or {}
        m.update({
            "stage": stage, "status": "complete", "config": config, "fingerprint": self.fingerprint(stage, config),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": package_versions(),
            "counts": counts or {}, "outputs": {name: sha256_path(d / name) for name in outputs},
        })
        if extra:
            m.update(extra)
        write_json_atomic(d / "manifest.json", m)
        return m

    def fail(self, stage: str, error: str, **extra: Any) -> None:
        """Mark a started stage failed, with the reason (a rerun with the same settings resumes its journals)."""
        m = self.manifest(stage) or {"stage": stage}
        m.update(status="failed", error=error, failed=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
        write_json_atomic(self.stage_dir(stage) / "manifest.json", m)

    def dataset(self, stage: str, name: str | None = None) -> Any:
        """A finished stage's JSONL output as a `datasets.Dataset` (default: the stage's main table).

        name: another JSONL output of the stage, e.g. run.dataset("data", "eval.jsonl") or
        run.dataset("evaluate", "generations/base.jsonl"). Why through the manifest: the rows are the ones the
        stage finished with (require() checks their hashes), not a half-written rerun.
        """
        if stage not in STAGES:
            raise LabError(f"Unknown stage {stage!r}: run.dataset takes one of {', '.join(STAGES)}.")
        info = STAGES[stage]
        manifest = self.require(stage)
        name = name or info.table
        folder = self.root / info.folder
        tables = sorted(str(p.relative_to(folder)) for out in manifest.get("outputs", {})
                        for p in ([folder / out] if (folder / out).is_file() else (folder / out).rglob("*.jsonl"))
                        if p.suffix == ".jsonl" and not p.name.endswith(".journal.jsonl"))
        if name is None or Path(name).as_posix() not in {Path(t).as_posix() for t in tables}:
            raise MissingStageError(f"Stage '{stage}' in {self.root} has no JSONL output {name!r}; it has: "
                                    f"{', '.join(tables) or 'none'} (pass one as run.dataset({stage!r}, name)).")
        return rows_to_dataset(read_jsonl(folder / name))

    def status(self) -> dict[str, str]:
        out = {}
        for stage in STAGES:
            m = self.manifest(stage)
            if self._corrupt(stage):
                out[stage] = "corrupt manifest (rerun the stage)"
            else:
                out[stage] = m.get("status", "?") if m else "not run"
        return out


def rows_to_dataset(rows: list[dict]) -> Any:
    """JSONL records as a `datasets.Dataset`, every key of every row a column (None where a row lacks it).

    Why not Dataset.from_list alone: it takes the columns from the first row only, and Arrow refuses a
    column whose rows mix types (a string in one, an object in another). Such a column is stored as JSON
    text instead (json.loads gives the value back); its name is listed in `ds.info.description`.
    """
    from datasets import Dataset

    columns = list(dict.fromkeys(k for row in rows for k in row))
    data = {c: [row.get(c) for row in rows] for c in columns}
    try:
        return Dataset.from_dict(data)
    except Exception:  # noqa: BLE001 - find the columns Arrow cannot type, encode only those
        encoded = []
        for c in columns:
            try:
                Dataset.from_dict({c: data[c]})
            except Exception:  # noqa: BLE001
                data[c] = [None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in data[c]]
                encoded.append(c)
        ds = Dataset.from_dict(data)
        ds.info.description = f"JSON-encoded columns (json.loads each value): {', '.join(encoded)}"
        return ds


StageFn = TypeVar("StageFn", bound=Callable[..., dict])


def records_failure(stage: str) -> Callable[[StageFn], StageFn]:
    """Decorator for `run_<stage>(run, ...)`: an error after the stage began marks it "failed" with the reason.

    Why: a stage left "running" by a bad input looks like an interrupted run. An interrupt (Ctrl-C, a
    stopped cell) is not an error: the stage stays "running" and the next call resumes its journals.
    """
    def wrap(fn: StageFn) -> StageFn:
        @functools.wraps(fn)
        def run_stage(run: "Run", *args: Any, **kwargs: Any) -> dict:
            try:
                return fn(run, *args, **kwargs)
            except Exception as exc:
                if (run.manifest(stage) or {}).get("status") == "running":
                    run.fail(stage, " ".join(str(exc).split()) or type(exc).__name__, error_type=type(exc).__name__)
                raise
        return run_stage  # type: ignore[return-value]
    return wrap
