"""Stage 03: score every version of every sample with IFD and r-IFD under the student.

Definitions (s = mean token cross-entropy of the scored span, PPL = exp(s)):

* s(A|Q): answer tokens after the templated instruction;  s(A): the same tokens after a start token only.
* IFD  = PPL(A|Q) / PPL(A) = exp(s(A|Q) - s(A))   (`ifd`, the default; Superfiltering / Selective
  Reflection-Tuning code)   and   s(A|Q) / s(A)   (`ifd_loss`, the first Cherry LLM code).
  Both cross 1 together but rank differently. Higher IFD = the instruction helps less = harder.
* r-IFD = PPL(Q | reverse prompt containing A) / PPL(Q) (`rifd`; `rifd_loss` likewise).
  Lower r-IFD = the answer makes its instruction easy to infer = a better-fitting answer.

Any score that cannot be computed is None with a reason in `missing`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

from .prompting import REVERSE_HEAD, REVERSE_TAIL, render_forward, render_split, user_text
from .runs import Journal, Run, read_jsonl, write_jsonl_atomic
from .scoring_engine import Item, ItemLoss, LossEngine, Missing

VARIANTS = ("original", "reflect_instruction", "reflect_response", "reflect_both")
PASSES = ("a_q", "a", "q_rev", "q")


def start_token_id(tokenizer) -> int:
    """The token every sequence starts with, so a text's first token is always predicted from something."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    if tokenizer.eos_token_id is not None:  # GPT-2 style: <|endoftext|> doubles as the start token
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start sequences with")


class PairEncoder:
    """Turns (instruction, input, answer) into the four scoring items with exact spans."""

    def __init__(self, tokenizer, *, template: str = "chat", max_length: int = 1024):
        self.tok = tokenizer
        self.template = template
        self.max_length = max_length
        self.start = start_token_id(tokenizer)
        before, after = render_split(tokenizer, template, REVERSE_HEAD, REVERSE_TAIL)
        self.rev_before = self._with_start(self.encode(before))
        self.rev_after = self.encode(after)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _cached(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.encode(text)
        return self._cache[text]

    def _with_start(self, ids: list[int]) -> list[int]:
        return ids if ids and ids[0] == self.start else [self.start] + ids

    def items(self, instruction: str, input: str, answer: str) -> tuple[dict[str, Item | Missing], dict]:
        """The four passes s(A|Q), s(A), s(Q|rev A), s(Q), plus token counts and truncation flags."""
        info = {"n_answer_tokens": 0, "n_instruction_tokens": 0, "answer_truncated": False,
                "reverse_answer_truncated": False}
        q_ids = self._cached(user_text(instruction, input)) if instruction.strip() else []
        a_ids = self._cached(answer) if answer.strip() else []
        if not a_ids:
            return {p: Missing("empty answer") for p in PASSES}, info
        if not q_ids:
            return {p: Missing("empty instruction") for p in PASSES}, info
        out: dict[str, Item | Missing] = {}
        L = self.max_length
        prompt = self._with_start(self._cached(render_forward(self.tok, self.template, instruction, input)))
        if len(prompt) >= L:
            reason = f"prompt is {len(prompt)} tokens, no room for the answer within max_length={L}"
            out["a_q"] = out["a"] = Missing(reason)
        else:
            kept = tuple(a_ids[:L - len(prompt)])  # both passes score exactly these answer tokens
            out["a_q"] = Item(tuple(prompt), kept)
            out["a"] = Item((self.start,), kept)
            info["n_answer_tokens"] = len(kept)
            info["answer_truncated"] = len(kept) < len(a_ids)
        room = L - len(self.rev_before) - len(self.rev_after) - len(q_ids)
        if room < 1:
            reason = f"instruction ({len(q_ids)} tokens) leaves no room for the reverse prompt within max_length={L}"
            out["q_rev"] = out["q"] = Missing(reason)
        else:
            prefix = tuple(self.rev_before + a_ids[:room] + self.rev_after)
            out["q_rev"] = Item(prefix, tuple(q_ids))
            out["q"] = Item((self.start,), tuple(q_ids))
            info["n_instruction_tokens"] = len(q_ids)
            info["reverse_answer_truncated"] = room < len(a_ids)
        return out, info


def _ratio_scores(s_cond: float | None, s_direct: float | None) -> tuple[float | None, float | None, str | None]:
    """(PPL ratio, loss ratio, reason if missing)."""
    if s_cond is None or s_direct is None:
        return None, None, "a pass is missing"
    if not (math.isfinite(s_cond) and math.isfinite(s_direct)):
        return None, None, "non-finite loss"
    ppl_ratio = math.exp(s_cond - s_direct)
    loss_ratio = s_cond / s_direct if s_direct > 0 else None
    return ppl_ratio, loss_ratio, None if loss_ratio is not None else "direct loss is 0 (loss ratio undefined)"


def combine(items: dict[str, Item | Missing], info: dict, losses: dict[str, ItemLoss]) -> dict:
    """Six scores of one (instruction, answer) version from its four passes."""
    row: dict = {"ifd": None, "ifd_loss": None, "rifd": None, "rifd_loss": None}
    reasons = []
    means = {}
    for p in PASSES:
        it = items[p]
        if isinstance(it, Missing):
            means[p] = None
            reasons.append(it.reason)
        else:
            means[p] = losses[it.key].mean
    row.update({"s_a_q": means["a_q"], "s_a": means["a"], "s_q_rev": means["q_rev"], "s_q": means["q"]})
    if means["a_q"] is not None and means["a"] is not None:
        row["ifd"], row["ifd_loss"], why = _ratio_scores(means["a_q"], means["a"])
        if why and row["ifd"] is None:
            reasons.append(f"IFD: {why}")
    if means["q_rev"] is not None and means["q"] is not None:
        row["rifd"], row["rifd_loss"], why = _ratio_scores(means["q_rev"], means["q"])
        if why and row["rifd"] is None:
            reasons.append(f"r-IFD: {why}")
    row.update(info)
    row["missing"] = "; ".join(dict.fromkeys(reasons)) or None
    return row


def score_pair(model, tokenizer, instruction: str, answer: str, input: str = "", *, template: str = "chat",
               max_length: int = 1024) -> dict:
    """All six scores of one pair: handy in a notebook cell."""
    enc = PairEncoder(tokenizer, template=template, max_length=max_length)
    items, info = enc.items(instruction, input, answer)
    engine = LossEngine(model, pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else enc.start)
    losses = engine.score([it for it in items.values() if isinstance(it, Item)])
    return combine(items, info, losses)


@dataclass
class ScoreConfig:
    student: str = "tiny-llama"
    template: str = "chat"
    max_length: int = 1024
    batch_tokens: int = 4096
    max_batch_size: int = 64
    quant4: bool = False
    dtype: str = "auto"
    device: str = "auto"
    padding_side: str = "auto"  # auto: shared-prefix rows on a CPU, right-padded batches on a GPU

    # Knobs that change speed, not scores: left out of the fingerprint, so a run killed by an
    # out-of-memory error resumes with a smaller batch (or on another device) without rescoring.
    RUNTIME = ("batch_tokens", "max_batch_size", "padding_side", "device")

    def as_dict(self) -> dict:
        """The settings the scores depend on (the stage's fingerprint)."""
        return {k: v for k, v in self.__dict__.items() if k not in self.RUNTIME}

    def runtime(self) -> dict:
        return {k: self.__dict__[k] for k in self.RUNTIME}


def _dist():
    """(rank, world size, barrier) under `accelerate launch` / torchrun; (0, 1, no-op) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    # accelerate only forms a CPU process group when asked (cpu=True); on GPUs it picks NCCL itself.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone


def run_score(run: Run, config: ScoreConfig | None = None, *, model=None, tokenizer=None, force: bool = False,
              progress: bool = True) -> dict:
    """Stage 03. Resumable: finished passes are journalled per batch; a rerun skips them.

    Under `accelerate launch` each process takes every world-th batch of one global plan and writes its own
    journal; process 0 merges them in sample order once all are done.
    """
    from .models import load_model, load_tokenizer

    config = config or ScoreConfig()
    cfg = config.as_dict()
    run.require("reflect")
    if not force and run.is_current("score", cfg):
        return run.manifest("score")
    rank, world, barrier = _dist()
    fp = run.fingerprint("score", cfg)
    if rank == 0:
        run.begin("score", cfg)
    barrier()
    rows = read_jsonl(run.path("reflect", "reflections.jsonl"))
    tok = tokenizer or load_tokenizer(config.student)
    mdl = model
    if mdl is None:
        from .devices import pick_device

        mdl = load_model(config.student, quant4=config.quant4, info=pick_device(config.device, config.dtype))
    enc = PairEncoder(tok, template=config.template, max_length=config.max_length)
    plan: list[tuple[str, str, dict, dict]] = []
    for row in rows:
        for v in VARIANTS:
            var = row["variants"][v]
            items, info = enc.items(var["instruction"], var.get("input", ""), var["output"])
            plan.append((row["id"], v, items, info))
    all_items = [it for _, _, items, _ in plan for it in items.values() if isinstance(it, Item)]
    stage_dir = run.stage_dir("score")
    journals = sorted(stage_dir.glob(f"passes-{fp[:12]}.*.jsonl"))
    done: dict[str, ItemLoss] = {}
    for j in journals:
        for key, rec in Journal(j).load().items():
            done[key] = ItemLoss(rec["mean"], rec["losses"])
    mine = Journal(stage_dir / f"passes-{fp[:12]}.rank{rank}of{world}.jsonl")

    def save(pairs: list[tuple[Item, ItemLoss]]) -> None:
        for it, loss in pairs:
            mine.append({"key": it.key, "mean": loss.mean, "losses": [round(x, 5) for x in loss.losses]})

    engine = LossEngine(mdl, pad_id=tok.pad_token_id if tok.pad_token_id is not None else enc.start,
                        batch_tokens=config.batch_tokens, max_batch_size=config.max_batch_size,
                        padding_side=config.padding_side)
    t0 = time.perf_counter()
    engine.score(all_items, done=done, on_batch=save, shard=(rank, world), progress=progress)
    seconds = time.perf_counter() - t0
    barrier()  # every shard's journal is complete before process 0 merges them
    if rank != 0:
        return {"status": "shard-done", "rank": rank, "world": world}
    runtime = config.runtime() | {"layout": engine.padding_side, "tokens_computed_this_session": engine.tokens_computed}
    return _write_scores(run, cfg, fp, plan, tok, seconds, engine.tokens_scored, runtime)


def _write_scores(run: Run, cfg: dict, fp: str, plan, tok, seconds: float, tokens: int, runtime: dict) -> dict:
    stage_dir = run.stage_dir("score")
    losses: dict[str, ItemLoss] = {}
    for j in sorted(stage_dir.glob(f"passes-{fp[:12]}.*.jsonl")):
        for key, rec in Journal(j).load().items():
            losses[key] = ItemLoss(rec["mean"], rec["losses"])
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
            token_rows.append({"id": sid, "variant": variant,
                               "tokens": [tok.decode([t]) for t in a_q.target],
                               "cond": losses[a_q.key].losses, "direct": losses[a.key].losses})
    write_jsonl_atomic(run.path("score", "scores.jsonl"), list(by_id.values()))
    write_jsonl_atomic(run.path("score", "token_losses.jsonl"), token_rows)
    counts = {"samples": len(by_id), "versions": len(plan), "missing": sum(missing.values()),
              "unique_passes": len(losses), "tokens_scored_this_session": tokens,
              "seconds_this_session": round(seconds, 2)}
    return run.complete("score", cfg, ["scores.jsonl", "token_losses.jsonl"], counts,
                        extra={"missing_by_reason": missing, "runtime": runtime,
                               "definitions": {"ifd": "PPL(A|Q)/PPL(A)", "ifd_loss": "s(A|Q)/s(A)",
                                               "rifd": "PPL(Q|reverse(A))/PPL(Q)", "rifd_loss": "s(Q|rev)/s(Q)"}})


def load_scores(run: Run) -> list[dict]:
    run.require("score")
    return read_jsonl(run.path("score", "scores.jsonl"))


def scores_table(rows: list[dict]):
    """Flatten scores.jsonl to one pandas row per (sample, variant), for figures."""
    import pandas as pd

    flat = [{"id": r["id"], "variant": v, **{k: x for k, x in s.items()}}
            for r in rows for v, s in r["variants"].items()]
    return pd.DataFrame(flat)


def dumps_row(row: dict) -> str:  # pragma: no cover - debugging aid
    return json.dumps(row, ensure_ascii=False, indent=1)
