"""Stage 03: score every version of every sample with IFD and r-IFD under the student.

Reads 02_reflect/reflections.jsonl, writes 03_score/scores.jsonl (six scores and the four pass
losses per version, or a missing score with its reason) and token_losses.jsonl (per-token losses of
the answer passes, for the notebook's heat maps). Definitions: encode.py.

Why journals: scoring is the long stage on a CPU. Every finished batch of passes is appended to
`passes-<fingerprint>.rank<r>of<w>.jsonl`, so a killed run resumes with the passes not yet scored.
Under `accelerate launch` each process takes every world-th batch of one global plan and writes its
own journal; process 0 merges them in sample order once all are done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, StageConfig
from ..core.runs import VARIANTS, Journal, Run, read_jsonl, records_failure, write_jsonl_atomic
from ..core.runtime import process_group
from ..format.templates import PUBLISHED_TEMPLATES, TEMPLATES
from .encode import ENCODING_VERSIONS, SCORING_MODES, PairEncoder, combine, make_encoder
from .published import PublishedEncoder
from .items import Item, ItemLoss, Missing

LAYOUTS = ("auto", "right", "left", "packed", "shared")
DEFINITIONS = {"ifd": "PPL(A|Q)/PPL(A)", "ifd_loss": "s(A|Q)/s(A)", "rifd": "PPL(Q|reverse(A))/PPL(Q)",
               "rifd_loss": "s(Q|rev)/s(Q)"}


@dataclass(frozen=True)
class ScoreConfig(StageConfig):
    """The student, the prompt template, the length limit and the scoring mode decide the scores; the rest only
    the speed. `scoring_mode="reference"` reproduces the published selection code's numbers (published.py)."""

    STAGE = "score"
    # Knobs that change speed, not scores: left out of the fingerprint, so a run killed by an
    # out-of-memory error resumes with a smaller batch (or on another device) without rescoring.
    RUNTIME = ("batch_tokens", "max_batch_size", "padding_side", "device")

    student: str = "tiny-llama"
    template: str = "chat"
    max_length: int = 1024
    batch_tokens: int = 4096
    max_batch_size: int = 64
    quant4: bool = False
    dtype: str = "auto"
    device: str = "auto"
    padding_side: str = "auto"  # auto: shared-prefix rows on a CPU, right-padded batches on a GPU
    scoring_mode: str = "lab"  # "lab": exact spans; "reference": the published procedure (template vicuna/alpaca)

    def validate(self) -> None:
        if self.template not in TEMPLATES:
            raise ConfigError(f"ScoreConfig.template must be one of {TEMPLATES}, not {self.template!r}")
        if self.scoring_mode not in SCORING_MODES:
            raise ConfigError(f"ScoreConfig.scoring_mode must be one of {SCORING_MODES}, not {self.scoring_mode!r}")
        if self.scoring_mode == "reference" and self.template not in PUBLISHED_TEMPLATES:
            raise ConfigError(f"ScoreConfig.template={self.template!r} has no published counterpart: "
                              f"scoring_mode='reference' needs one of {PUBLISHED_TEMPLATES} "
                              "(set template='vicuna', the published default)")
        if self.padding_side not in LAYOUTS:
            raise ConfigError(f"ScoreConfig.padding_side must be one of {LAYOUTS}, not {self.padding_side!r}")
        for name in ("max_length", "batch_tokens", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ScoreConfig.{name} must be at least 1, not {getattr(self, name)}")

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        return {"student": profile.student, "template": profile.template, "max_length": profile.max_length,
                "batch_tokens": profile.score_batch_tokens, "quant4": profile.quant4_scoring,
                "dtype": profile.dtype, "device": profile.device, "scoring_mode": profile.scoring_mode}

    def fingerprinted(self) -> dict[str, Any]:
        """The config plus the version of what its mode encodes: a changed encoding rescored, never reused."""
        return self.as_dict() | {"encoding": ENCODING_VERSIONS[self.scoring_mode]}


def score_pair(model: Any, tokenizer: Any, instruction: str, answer: str, input: str = "", *, template: str = "chat",
               max_length: int = 1024, scoring_mode: str = "lab") -> dict:
    """All six scores of one pair: handy in a notebook cell."""
    return score_pairs(model, tokenizer, [(instruction, input, answer)], template=template, max_length=max_length,
                       scoring_mode=scoring_mode)[0]


def score_pairs(model: Any, tokenizer: Any, pairs: list[tuple[str, str, str]], *, template: str = "chat",
                max_length: int = 1024, scoring_mode: str = "lab") -> list[dict]:
    """The six scores of many (instruction, input, answer) triples with one engine: e.g. the same few
    samples in both scoring modes, side by side in notebook 03."""
    from .engine import LossEngine

    enc = make_encoder(tokenizer, mode=scoring_mode, template=template, max_length=max_length)
    plan = [enc.items(q, i, a) for q, i, a in pairs]
    losses = LossEngine(model, pad_id=tokenizer.pad_token_id).score(
        [it for items, _ in plan for it in items.values() if isinstance(it, Item)])
    return [combine(items, info, losses) for items, info in plan]


Plan = list[tuple[str, str, dict[str, Item | Missing], dict]]


def plan_items(rows: list[dict], enc: PairEncoder | PublishedEncoder) -> Plan:
    """(sample id, variant, its four passes, token counts) for every version of every sample."""
    plan: Plan = []
    for row in rows:
        for v in VARIANTS:
            var = row["variants"][v]
            items, info = enc.items(var["instruction"], var.get("input", ""), var["output"])
            plan.append((row["id"], v, items, info))
    return plan


def load_pass_journals(stage_dir: Path, fp: str) -> dict[str, ItemLoss]:
    """Every pass already scored for this fingerprint, by any process."""
    done: dict[str, ItemLoss] = {}
    for j in sorted(stage_dir.glob(f"passes-{fp[:12]}.*.jsonl")):
        for key, rec in Journal(j).load().items():
            done[key] = ItemLoss(rec["mean"], rec["losses"])
    return done


@records_failure("score")
def run_score(run: Run, config: ScoreConfig | None = None, *, force: bool = False, progress: bool = True,
              model: Any = None, tokenizer: Any = None) -> dict:
    """Stage 03. Resumable: finished passes are journalled per batch; a rerun skips them.

    `model` / `tokenizer` (already loaded, e.g. in notebook 03) skip loading the student.
    """
    from ..models import load_model, load_tokenizer
    from .engine import LossEngine

    config = config or ScoreConfig()
    cfg = config.fingerprinted()
    run.require("reflect")
    if not force and run.is_current("score", cfg):
        return run.manifest("score")
    rank, world, barrier = process_group()
    fp = run.fingerprint("score", cfg)
    if rank == 0:
        run.begin("score", cfg)
    barrier()
    tok = tokenizer if tokenizer is not None else load_tokenizer(config.student)
    mdl = model if model is not None else load_model(config.student, quant4=config.quant4, device=config.device,
                                                     dtype=config.dtype)
    plan = plan_items(read_jsonl(run.path("reflect", "reflections.jsonl")),
                      make_encoder(tok, mode=config.scoring_mode, template=config.template,
                                   max_length=config.max_length))
    stage_dir = run.stage_dir("score")
    mine = Journal(stage_dir / f"passes-{fp[:12]}.rank{rank}of{world}.jsonl")

    def save(pairs: list[tuple[Item, ItemLoss]]) -> None:
        for it, loss in pairs:
            mine.append({"key": it.key, "mean": loss.mean, "losses": [round(x, 5) for x in loss.losses]})

    engine = LossEngine(mdl, pad_id=tok.pad_token_id, batch_tokens=config.batch_tokens,
                        max_batch_size=config.max_batch_size, padding_side=config.padding_side)
    t0 = time.perf_counter()
    engine.score([it for _, _, items, _ in plan for it in items.values() if isinstance(it, Item)],
                 done=load_pass_journals(stage_dir, fp), on_batch=save, shard=(rank, world), progress=progress)
    seconds = time.perf_counter() - t0
    barrier()  # every shard's journal is complete before process 0 merges them
    if rank != 0:
        return {"status": "shard-done", "rank": rank, "world": world}
    runtime = config.runtime() | {"layout": engine.padding_side, "tokens_computed_this_session": engine.tokens_computed}
    return _write_scores(run, cfg, fp, plan, tok, seconds, engine.tokens_scored, runtime)


def _write_scores(run: Run, cfg: dict, fp: str, plan: Plan, tok: Any, seconds: float, tokens: int,
                  runtime: dict) -> dict:
    losses = load_pass_journals(run.stage_dir("score"), fp)
    by_id: dict[str, dict] = {}
    token_rows = []
    missing: dict[str, int] = {}
    reflections = {r["id"]: r for r in read_jsonl(run.path("reflect", "reflections.jsonl"))}
    for sid, variant, items, info in plan:
        scores = combine(items, info, losses)
        src = reflections[sid]["variants"][variant]
        scores = {"instruction": src["instruction"], "input": src.get("input", ""), "output": src["output"], **scores}
        by_id.setdefault(sid, {"id": sid, "variants": {}})["variants"][variant] = scores
        if scores["missing"]:
            missing[scores["missing"]] = missing.get(scores["missing"], 0) + 1
        a_q, a = items["a_q"], items["a"]
        if isinstance(a_q, Item) and isinstance(a, Item):
            # Reference mode's direct pass may score fewer tokens (no start token): align at the answer's end.
            n = min(len(a_q.target), len(a.target))
            token_rows.append({"id": sid, "variant": variant,
                               "tokens": [tok.decode([t]) for t in a_q.target[len(a_q.target) - n:]],
                               "cond": losses[a_q.key].losses[len(a_q.target) - n:],
                               "direct": losses[a.key].losses[len(a.target) - n:]})
    write_jsonl_atomic(run.path("score", "scores.jsonl"), list(by_id.values()))
    write_jsonl_atomic(run.path("score", "token_losses.jsonl"), token_rows)
    counts = {"samples": len(by_id), "versions": len(plan), "missing": sum(missing.values()),
              "unique_passes": len(losses), "tokens_scored_this_session": tokens,
              "seconds_this_session": round(seconds, 2)}
    return run.complete("score", cfg, ["scores.jsonl", "token_losses.jsonl"], counts,
                        extra={"missing_by_reason": missing, "runtime": runtime, "definitions": DEFINITIONS})


def load_scores(run: Run) -> list[dict]:
    run.require("score")
    return read_jsonl(run.path("score", "scores.jsonl"))


def scores_table(rows: list[dict]) -> Any:
    """Flatten scores.jsonl to one pandas row per (sample, variant), for figures."""
    import pandas as pd

    flat = [{"id": r["id"], "variant": v, **{k: x for k, x in s.items()}}
            for r in rows for v, s in r["variants"].items()]
    return pd.DataFrame(flat)
