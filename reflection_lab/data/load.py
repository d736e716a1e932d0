"""Stage 01's reading half: instruction data from common formats into one schema, with a report of bad rows.

Why so strict about reporting: selection papers are judged by how many samples they keep, so a
loader that silently drops rows hides part of the story. Every row read is either kept or
listed in the report with a reason.

Schema of a training sample: id, instruction, input, output, category (may be ""), plus the
workshop's own `flaw` / `notes` when present. Eval samples have `reference` instead of
`output`, and `answer_type` / `numeric_answer` when known.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import LabError
from ..core.paths import repo_data_dir

# Column names seen in public instruction datasets, mapped to ours (used only when ours are absent).
ALIASES = {
    "instruction": ("instruction", "prompt", "question", "query"),
    "input": ("input", "context"),
    "output": ("output", "response", "completion", "answer"),
    "reference": ("reference", "output", "answer", "response"),
}
TEXT_FIELDS = {"train": ("instruction", "input", "output"), "eval": ("instruction", "input", "reference")}
KEEP_EXTRA = ("category", "flaw", "notes", "answer_type", "numeric_answer")


class DataError(LabError, ValueError):
    """Strict-mode failure: the message lists the bad rows."""


class DatasetSpecError(DataError):
    """A source that is neither a local path nor a well-formed hub spec `owner/dataset[:config][@revision][#split]`."""


@dataclass
class DataReport:
    source: str
    rows_read: int = 0
    kept: int = 0
    problems: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    origin: dict | None = None  # where the rows came from: local path, or hub name/config/split/resolved revision

    def add(self, row: int, reason: str, detail: str, sample_id: str | None = None) -> None:
        self.problems.append({"row": row, "id": sample_id, "reason": reason, "detail": detail})

    def counts_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p["reason"]] = out.get(p["reason"], 0) + 1
        return out

    def as_dict(self) -> dict:
        out = {"source": self.source, "rows_read": self.rows_read, "kept": self.kept,
               "dropped": len(self.problems), "counts_by_reason": self.counts_by_reason(),
               "problems": self.problems, "warnings": self.warnings}
        if self.origin is not None:
            out["origin"] = self.origin
        return out

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts_by_reason().items())) or "none"
        return (f"{self.source}: read {self.rows_read} rows, kept {self.kept}, dropped {len(self.problems)} "
                f"({reasons}); {len(self.warnings)} warning(s)")


NAMED_SOURCES = {"workshop": "workshop.jsonl", "workshop-eval": "workshop_eval.jsonl"}
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
DEFAULT_SPLIT = "train"
SPEC_GRAMMAR = "owner/dataset[:config][@revision][#split]"
SPEC_EXAMPLE = "e.g. tatsu-lab/alpaca, openai/gsm8k:main#test or owner/dataset@v1.0"

# Hub repo ids (an optional owner, then a name), builder config names, git revisions (branches, tags, shas,
# refs/convert/parquet), and `datasets` split expressions (train, train[:10%], train+validation).
_NAME = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*", re.ASCII)
_CONFIG = re.compile(r"[\w.+-]+", re.ASCII)
_REVISION = re.compile(r"[\w.-]+(?:/[\w.-]+)*", re.ASCII)
_SPLIT = re.compile(r"[\w.+%:\[\]-]+", re.ASCII)
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubSpec:
    """A hub dataset named by `owner/name[:config][@revision][#split]` (None: the hub's default)."""

    name: str
    config: str | None = None
    revision: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        return (self.name + (f":{self.config}" if self.config else "") + (f"@{self.revision}" if self.revision else "")
                + (f"#{self.split}" if self.split else ""))


def parse_hub_spec(text: str) -> HubSpec:
    """`owner/name[:config][@revision][#split]` -> HubSpec; a malformed spec is one DatasetSpecError line.

    Why one grammar for every place data is named (--train, --eval, --eval-data, the profile's train_data /
    eval_data, load_samples): the split and revision travel with the name, so no command needs flags of its own.
    The pieces are cut off from the right: '#' first (a split expression may hold ':'), then '@', then ':'.
    """
    rest, _, split = text.partition("#") if "#" in text else (text, "", None)
    rest, _, revision = rest.partition("@") if "@" in rest else (rest, "", None)
    name, _, config = rest.partition(":") if ":" in rest else (rest, "", None)
    problem = None
    if not _NAME.fullmatch(name) or ".." in name:
        problem = f"{name!r} is not a dataset id (owner/dataset of letters, digits, '-', '_', '.')"
    elif config is not None and not _CONFIG.fullmatch(config):
        problem = f"config {config!r} is empty or has characters a config cannot have"
    elif revision is not None and not _REVISION.fullmatch(revision):
        problem = f"revision {revision!r} is empty or not a branch, tag or commit"
    elif split is not None and not _SPLIT.fullmatch(split):
        problem = f"split {split!r} is empty or not a split expression like train or train[:10%]"
    if problem:
        raise DatasetSpecError(f"Data source {text!r}: {problem}. A hub dataset is {SPEC_GRAMMAR}, {SPEC_EXAMPLE}; "
                               "a local file needs its extension (.jsonl, .json, .csv, .parquet) or a path like "
                               "./data/file.")
    return HubSpec(name, config or None, revision or None, split or None)


def is_local_source(source: str | Path) -> bool:
    """True for a path (as the lab always read it), False for a hub spec.

    A local path: a Path, "workshop" / "workshop-eval", anything that exists, or text that looks like a path
    (starts with '.', '/' or '~', holds the platform's own separator or a drive, or ends in a data suffix).
    """
    if isinstance(source, Path) or source in NAMED_SOURCES:
        return True
    text = str(source)
    if text.startswith((".", "/", "~")) or os.path.splitdrive(text)[0]:
        return True
    if any(sep and sep != "/" and sep in text for sep in (os.sep, os.altsep)):
        return True
    return Path(text).suffix.lower() in DATA_SUFFIXES or Path(text).expanduser().exists()


def source_path(source: str | Path) -> Path:
    """The file or folder a source names ("workshop" and "workshop-eval" live in the project's data/)."""
    if isinstance(source, str) and source in NAMED_SOURCES:
        return repo_data_dir() / NAMED_SOURCES[source]
    return Path(source).expanduser()


def read_rows(source: str | Path, *, fmt: str | None = None, split: str | None = None) -> tuple[list[Any], list[dict]]:
    """Raw rows from a file, a saved `datasets` folder, or a hub spec (see parse_hub_spec).

    Returns (rows, problems) where problems are unreadable lines (invalid JSON) with their numbers.
    """
    rows, problems, _ = read_source(source, fmt=fmt, split=split)
    return rows, problems


def read_source(source: str | Path, *, fmt: str | None = None,
                split: str | None = None) -> tuple[list[Any], list[dict], dict]:
    """read_rows plus where the rows came from (the `origin` stage 01 writes into its manifest).

    split: the split of a hub dataset or of a saved DatasetDict (default "train"); a hub spec may carry its
    own ('#test'); giving both, different, is an error rather than a silent choice.
    """
    if fmt == "hub" or (fmt is None and not is_local_source(source)):
        spec = parse_hub_spec(str(source))
        if split and spec.split and split != spec.split:
            raise DatasetSpecError(f"Data source {str(source)!r} asks for split {spec.split!r} but split={split!r} "
                                   "was passed too: keep one of them.")
        rows, origin = load_hub_rows(spec, spec.split or split or DEFAULT_SPLIT)
        return rows, [], origin
    split = split or DEFAULT_SPLIT
    path = source_path(source)
    origin = {"type": "local", "source": str(source), "path": str(path)}
    if not path.exists() and fmt in (None, "jsonl", "json", "csv", "parquet"):
        raise DataError(f"Data file not found: {path}. Give a file (JSONL, JSON, CSV, Parquet), a saved `datasets` "
                        f"folder, a hub dataset ({SPEC_GRAMMAR}), or 'workshop'.")
    fmt = fmt or _guess_format(path)
    if fmt == "jsonl":
        return (*_read_jsonl_lines(path), origin)
    problems: list[dict] = []
    if fmt == "json":
        data = json.loads(_read_utf8(path))
        if isinstance(data, dict):
            data = data.get("data") or data.get("rows") or data.get(split)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records (Alpaca style)")
        return data, problems, origin
    if fmt in ("csv", "parquet"):
        import pandas as pd

        if fmt == "csv":
            import io

            df = pd.read_csv(io.StringIO(_read_utf8(path)), dtype=object, keep_default_na=False)
        else:
            df = pd.read_parquet(path)
        return df.to_dict(orient="records"), problems, origin
    if fmt == "datasets_disk":
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            ds = ds[split]
            origin["split"] = split
        return list(ds), problems, origin
    raise DataError(f"unknown data format {fmt!r} for {source}")


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as `datasets` read it at import (what decides whether it asks the hub)."""
    from datasets import config

    return bool(getattr(config, "HF_HUB_OFFLINE", False))


def load_hub_rows(spec: HubSpec, split: str) -> tuple[list[Any], dict]:
    """Rows of one split of a hub dataset, and its origin with the revision the hub resolved.

    Offline, `datasets` serves the newest copy in its cache whatever revision was asked for, so a pinned
    commit that differs from the cached one is refused instead of silently reading other data.
    """
    from datasets import load_dataset

    offline = _hub_offline()
    try:
        ds = load_dataset(spec.name, spec.config, split=split, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - re-raised as one line with a hint
        reason = " ".join(str(exc).split()) or type(exc).__name__
        hint = ("HF_HUB_OFFLINE=1 is set and the dataset is not in the `datasets` cache: load it once online, "
                "or use a local file or 'workshop'" if offline else
                "check the name, config, split and revision on the hub (and HF_TOKEN for a gated dataset), "
                "or use a local file or 'workshop'")
        raise DataError(f"Could not load dataset {str(spec)!r} ({reason}). {hint}.") from exc
    resolved, how = resolved_revision(ds, spec, offline)
    if offline and spec.revision and _SHA.fullmatch(spec.revision) and resolved and resolved != spec.revision:
        raise DataError(f"Dataset {spec.name!r} revision {spec.revision} was asked for, but offline the `datasets` "
                        f"cache holds {resolved}: load it once online, or pin @{resolved}.")
    origin = {"type": "hub", "name": spec.name, "config": spec.config, "split": split, "revision": spec.revision,
              "resolved_revision": resolved, "revision_from": how}
    return list(ds), origin


def resolved_revision(ds: Any, spec: HubSpec, offline: bool) -> tuple[str | None, str]:
    """The commit the loaded rows come from, and how it was learnt.

    `datasets` pins a hub dataset to one commit before reading it and caches the prepared Arrow files in a
    folder named after that commit (.../<config>/<version>/<commit>/), so the loaded files themselves say
    which commit was read ("cache files"; offline that is the newest cached copy: "cache files (offline)").
    With no cache files (an in-memory dataset), online, the hub is asked what `revision` points at now.
    """
    for f in getattr(ds, "cache_files", None) or []:
        folder = Path(f.get("filename", "")).parent.name
        if _SHA.fullmatch(folder):
            return folder, "cache files (offline)" if offline else "cache files"
    if offline:
        return None, "unknown (offline, no cache files)"
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(spec.name, revision=spec.revision).sha, "hub api"
    except Exception as exc:  # noqa: BLE001 - the rows are loaded; a missing sha is recorded, not fatal
        return None, f"unknown ({type(exc).__name__})"


class _BlankLine:
    def __repr__(self) -> str:
        return "BLANK_LINE"


BLANK_LINE = _BlankLine()  # a blank line of a JSONL file: keeps row numbers equal to line numbers, counts as no row


def _read_jsonl_lines(path: Path) -> tuple[list[Any], list[dict]]:
    """One entry per file line (so row numbers are line numbers): the record, None (reported) or BLANK_LINE.

    Each line is decoded on its own: a bad byte costs its line only (reported with its number), and a
    UTF-8 byte-order mark before the first line is dropped.
    """
    rows: list[Any] = []
    problems: list[dict] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append({"row": n, "id": None, "reason": "invalid_utf8",
                                 "detail": f"line {n}: byte {exc.start + 1} is not UTF-8 (save the file as UTF-8)"})
                rows.append(None)
                continue
            if not line.strip():
                rows.append(BLANK_LINE)
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                problems.append({"row": n, "id": None, "reason": "invalid_json", "detail": f"line {n}: {exc}"})
                rows.append(None)
    return rows, problems


def _read_utf8(path: Path) -> str:
    """A whole file as text (a byte-order mark dropped); a bad byte is a DataError naming its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}, line {line}: byte {exc.start + 1} is not UTF-8; save the file as UTF-8.") from None


def _guess_format(path: Path) -> str:
    if path.is_dir():
        if any((path / marker).exists() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return "datasets_disk"
        raise DataError(f"{path} is a folder but not a saved `datasets` dataset")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    raise DataError(f"cannot tell the format of {path}; pass fmt= one of jsonl, json, csv, parquet")


def _from_conversation(turns: list, report: DataReport, row: int) -> dict | None:
    """First user -> assistant exchange of a ShareGPT or chat-messages record."""
    role_of = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    msgs = []
    for t in turns:
        if not isinstance(t, dict):
            return None
        role = role_of.get(str(t.get("from", t.get("role", ""))).lower())
        msgs.append((role, t.get("value", t.get("content"))))
    users = [i for i, (r, _) in enumerate(msgs) if r == "user"]
    if not users or users[0] + 1 >= len(msgs) or msgs[users[0] + 1][0] != "assistant":
        return {}
    i = users[0]
    if len(users) > 1:
        report.warnings.append({"row": row, "reason": "multi_turn",
                                "detail": f"{len(users)} user turns; only the first exchange is used"})
    return {"instruction": msgs[i][1], "input": "", "output": msgs[i + 1][1]}


def _pick(rec: dict, name: str, column_map: dict[str, str]) -> tuple[bool, Any]:
    if name in column_map:
        col = column_map[name]
        return (col in rec), rec.get(col)
    for alias in ALIASES.get(name, (name,)):
        if alias in rec:
            return True, rec[alias]
    return False, None


def normalize(rows: list[Any], *, kind: str = "train", column_map: dict[str, str] | None = None,
              max_chars: int | None = 20000, source: str = "data",
              pre_problems: list[dict] | None = None) -> tuple[list[dict], DataReport]:
    """Map raw rows onto the schema; every dropped row is in the report with a reason."""
    column_map = column_map or {}
    report = DataReport(source=source, rows_read=sum(r is not BLANK_LINE for r in rows))
    report.problems.extend(pre_problems or [])
    text_fields = TEXT_FIELDS[kind]
    answer_field = text_fields[2]
    seen_content: dict[str, str] = {}
    seen_ids: set[str] = set()
    out: list[dict] = []
    for n, rec in enumerate(rows, 1):
        if rec is None or rec is BLANK_LINE:
            continue  # an unreadable line (already reported) or a blank one
        if not isinstance(rec, dict):
            report.add(n, "not_a_record", f"row is {type(rec).__name__}, not an object")
            continue
        given_id = rec.get("id")
        conv = rec.get("conversations") if "conversations" in rec else rec.get("messages")
        if isinstance(conv, list) and "instruction" not in column_map:
            fields = _from_conversation(conv, report, n)
            if fields is None:
                report.add(n, "bad_conversation", "turns must be objects with from/value or role/content", given_id)
                continue
            if not fields:
                report.add(n, "missing_field", "no user turn followed by an assistant turn", given_id)
                continue
            if kind == "eval":
                fields["reference"] = fields.pop("output")
        else:
            fields = {}
            for name in text_fields:
                present, value = _pick(rec, name, column_map)
                if not present and name == "input":
                    value = ""
                elif not present:
                    fields = None
                    report.add(n, "missing_field", f"no '{column_map.get(name, name)}' field", given_id)
                    break
                fields[name] = "" if value is None and name == "input" else value
            if fields is None:
                continue
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            report.add(n, "non_string", f"field(s) {bad} are not strings", given_id)
            continue
        empty = [k for k in (text_fields[0], answer_field) if not fields[k].strip()]
        if empty:
            report.add(n, "empty_field", f"field(s) {empty} are empty", given_id)
            continue
        total = sum(len(v) for v in fields.values())
        if max_chars and total > max_chars:
            report.add(n, "too_long", f"{total} characters > max_chars={max_chars}", given_id)
            continue
        content_key = hashlib.sha1("\0".join(" ".join(fields[k].split()) for k in text_fields).encode()).hexdigest()
        sid = str(given_id) if given_id not in (None, "") else f"s-{content_key[:10]}"
        if content_key in seen_content:
            report.add(n, "duplicate", f"same text as sample {seen_content[content_key]}", sid)
            continue
        if sid in seen_ids:
            report.add(n, "duplicate_id", f"id {sid!r} already used by another row", sid)
            continue
        seen_content[content_key] = sid
        seen_ids.add(sid)
        sample = {"id": sid, **fields, "category": str(rec.get("category") or "")}
        for extra in KEEP_EXTRA[1:]:
            if extra in rec:
                sample[extra] = rec[extra]
        out.append(sample)
    report.kept = len(out)
    return out, report


def load_samples(source: str | Path, *, kind: str = "train", fmt: str | None = None, split: str | None = None,
                 column_map: dict[str, str] | None = None, max_chars: int | None = 20000,
                 strict: bool = False) -> tuple[list[dict], DataReport]:
    """Read and normalise a dataset. strict=True raises DataError on the first bad rows instead of skipping.

    source: a local path, "workshop" / "workshop-eval", or a hub spec owner/name[:config][@revision][#split];
    split (default "train") picks the split of a hub dataset or a saved DatasetDict. report.origin says
    where the rows came from (for a hub dataset: the resolved commit).
    """
    rows, problems, origin = read_source(source, fmt=fmt, split=split)
    samples, report = normalize(rows, kind=kind, column_map=column_map, max_chars=max_chars,
                                source=str(source), pre_problems=problems)
    report.origin = origin
    if strict and report.problems:
        shown = "; ".join(f"row {p['row']} ({p['id'] or 'no id'}): {p['reason']} - {p['detail']}"
                          for p in report.problems[:10])
        more = f" (and {len(report.problems) - 10} more)" if len(report.problems) > 10 else ""
        raise DataError(f"{source}: {len(report.problems)} bad row(s): {shown}{more}. "
                        "Fix them, or load with strict=False to skip them and keep the report.")
    return samples, report


def check_unique_ids(rows: list[dict], source: str) -> None:
    """Refuse rows with a repeated id: later stages key journals and results by id."""
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source} has repeated ids; rerun stage 01 (it makes ids unique)")


def stratified_subset(samples: list[dict], n: int | None) -> list[dict]:
    """First n samples taking categories in turn, so a small workshop subset still covers every topic."""
    if n is None or n >= len(samples):
        return list(samples)
    by_cat: dict[str, list[dict]] = {}
    for s in samples:
        by_cat.setdefault(s.get("category", ""), []).append(s)
    picked: list[dict] = []
    queues = [list(v) for _, v in sorted(by_cat.items())]
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    order = {s["id"]: i for i, s in enumerate(samples)}
    return sorted(picked, key=lambda s: order[s["id"]])
