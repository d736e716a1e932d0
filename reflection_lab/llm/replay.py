"""The replay backend: the offline teacher, serving replies the project ships as data, by sample id and task.

Why: a workshop on a laptop without a GPU or an API key still needs realistic teacher replies,
including a few broken ones so learners see the parser's failure accounting. A missing entry is
an error reply naming the sample and task; it never invents text. It answers only requests that
carry their sample id and task in `meta` (stage 02's requests, or the lab's server with request
metadata): a free prompt has no entry to replay.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

from ..core.paths import repo_data_dir
from .base import ChatReply, ChatRequest, OnReply, error_reply


def default_replay_paths() -> list[Path]:
    """data/workshop_replay.jsonl when merged, else every data/parts/*_replay.jsonl."""
    root = repo_data_dir()
    merged = root / "workshop_replay.jsonl"
    if merged.exists():
        return [merged]
    parts = sorted((root / "parts").glob("*_replay.jsonl"))
    if not parts:
        raise FileNotFoundError(f"No replay data: neither {merged} nor {root / 'parts'}/*_replay.jsonl exists.")
    return parts


class ReplayBackend:
    """Answers a request from rows {"sample_id", "task", "text", ["malformed"]}.

    path: a file, a list of files, or None for the shipped workshop data. rows: rows given directly
    (tests, notebooks). delay_s: added per request, to make interruption tests and demos realistic.
    """

    kind = "replay"

    def __init__(self, path: str | Path | Sequence[str | Path] | None = None, *, rows: Sequence[dict] | None = None,
                 delay_s: float = 0.0, model: str | None = None):
        if rows is None:
            paths = default_replay_paths() if path is None else (
                [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path])
            rows = []
            for p in paths:
                with open(p, encoding="utf-8") as f:
                    rows.extend(json.loads(line) for line in f if line.strip())
            self.sources = [p.name for p in paths]
        else:
            self.sources = ["<rows>"]
        self.index: dict[tuple[str, str], dict] = {}
        self.duplicates: list[tuple[str, str]] = []
        for row in rows:
            k = (str(row["sample_id"]), str(row["task"]))
            if k in self.index:
                self.duplicates.append(k)  # first one wins, so the answer does not depend on file order edits
                continue
            self.index[k] = row
        digest = hashlib.sha256(json.dumps(sorted(self.index.items()), ensure_ascii=False).encode()).hexdigest()
        self.data_sha256 = digest
        # The data hash is part of the model name, so edited replay data never reuses journalled replies.
        self.model = model or f"workshop-replay@{digest[:12]}"
        self.delay_s = float(delay_s)

    def __repr__(self) -> str:
        return f"ReplayBackend({len(self.index)} entries from {', '.join(self.sources)})"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model, "sources": self.sources, "entries": len(self.index),
                "data_sha256": self.data_sha256}

    def lookup(self, sample_id: str | None, task: str | None) -> dict | None:
        return self.index.get((str(sample_id), str(task)))

    def reply_for(self, req: ChatRequest) -> ChatReply:
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        sid, task = req.meta.get("sample_id"), req.meta.get("task")
        row = self.lookup(sid, task)
        if row is None:
            return error_reply(req, f"replay: no entry for sample {sid!r} task {task!r} in {', '.join(self.sources)}",
                               latency_s=time.perf_counter() - t0)
        return ChatReply(key=req.key, text=row["text"], finish_reason="stop", latency_s=time.perf_counter() - t0,
                         meta=req.meta)

    def complete(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None, *,
                 concurrency: int | None = None) -> list[ChatReply]:
        out = []
        for req in requests:
            rep = self.reply_for(req)
            if on_reply:
                on_reply(rep)
            out.append(rep)
        return out
