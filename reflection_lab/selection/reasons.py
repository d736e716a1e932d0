"""Reasons in words for each selection decision (decisions.jsonl and the inspector).

Why separate: the decisions themselves are array operations (table.py); the sentences that
explain one sample are only built when someone reads them (a file is written, a sample is shown).
`selection` is a table.Selection, read through its public fields only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..core.runs import VARIANTS
from .rules import FORMS, KEPT_OUTCOMES, OUTCOMES, VARIANT_INDEX, normalize_answer


@dataclass(frozen=True)
class Decision:
    """What happened to one sample, with the reason in words (one row of decisions.jsonl)."""

    id: str
    outcome: str
    kept: bool
    reason: str
    chosen_instruction_variant: str
    chosen_variant: str
    ifd: float | None
    rifd: float | None
    instruction_choice: str
    answer_choice: str

    def as_dict(self) -> dict:
        return asdict(self)


def _fmt(x: float | None) -> str:
    return "missing" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def explain(selection: Any, i: int) -> Decision:
    """Decision of sample i with the instruction choice, answer choice and verdict in plain words."""
    t, ch, cfg = selection.table, selection.choice, selection.config
    ifd_key, rifd_key = FORMS[cfg.score_form]
    ifd, rifd = t.scores[ifd_key][:, i], t.scores[rifd_key][:, i]
    chosen = VARIANTS[ch.chosen[i]]
    instr_variant = "reflect_instruction" if ch.take_q[i] else "original"
    # step 1
    if math.isnan(ifd[1]):
        step1 = (f"reflect_instruction IFD missing: {t.why_missing('reflect_instruction', i, ifd_key)}; "
                 "the original instruction is kept.")
    elif math.isnan(ifd[0]):
        step1 = (f"original IFD missing: {t.why_missing('original', i, ifd_key)}; the two instructions "
                 "cannot be compared, so the original instruction is kept.")
    elif ifd[1] > ifd[0]:
        step1 = (f"Reflected instruction chosen: its IFD {_fmt(ifd[1])} is higher than the original's "
                 f"{_fmt(ifd[0])}, so the new instruction leaves the student more to learn.")
    elif ifd[1] == ifd[0]:
        step1 = f"Original instruction kept: both instructions have IFD {_fmt(ifd[0])}, and a tie keeps the original."
    else:
        step1 = (f"Original instruction kept: the reflected instruction's IFD {_fmt(ifd[1])} is not higher "
                 f"than the original's {_fmt(ifd[0])}.")
    # step 2
    cur, new = (1, 3) if ch.take_q[i] else (0, 2)
    cur_name, new_name = VARIANTS[cur], VARIANTS[new]
    if math.isnan(rifd[new]):
        step2 = f"{new_name} r-IFD missing: {t.why_missing(new_name, i, rifd_key)}; the current answer is kept."
    elif math.isnan(rifd[cur]):
        step2 = (f"{cur_name} r-IFD missing: {t.why_missing(cur_name, i, rifd_key)}; the answers cannot be "
                 "compared, so the current answer is kept.")
    elif rifd[new] < rifd[cur]:
        step2 = (f"Reflected answer chosen: its r-IFD {_fmt(rifd[new])} is lower than {_fmt(rifd[cur])} for "
                 "the current answer, so it makes the instruction easier to guess.")
    elif rifd[new] == rifd[cur]:
        step2 = f"Current answer kept: both answers have r-IFD {_fmt(rifd[cur])}, and a tie keeps the current one."
    else:
        step2 = (f"Current answer kept: the reflected answer's r-IFD {_fmt(rifd[new])} is not lower than "
                 f"{_fmt(rifd[cur])} for the current answer.")
    outcome = OUTCOMES[selection.code[i]]
    fi, fr = float(ch.ifd[i]), float(ch.rifd[i])
    reason = _verdict(selection, i, outcome, chosen, fi, fr, ifd_key, rifd_key)
    return Decision(t.ids[i], outcome, bool(selection.kept[i]), reason, instr_variant, chosen,
                    _num(fi), _num(fr), step1, step2)


def _verdict(selection: Any, i: int, outcome: str, chosen: str, fi: float, fr: float, ifd_key: str,
             rifd_key: str) -> str:
    cfg, t = selection.config, selection.table
    pair = f"the chosen pair ({chosen})"
    if outcome in KEPT_OUTCOMES:
        text = (f"Kept as {outcome}: IFD {_fmt(fi)} < {cfg.ifd_max:g} and r-IFD {_fmt(fr)} < {cfg.rifd_max:g}")
        if selection.top_k:
            text += f", and rank {selection.rank[i]} by IFD is inside the top {cfg.top_k_percent:g}% ({selection.top_k[1]} pairs)"
        return text + "."
    reason = outcome.split(":", 1)[1]
    if reason == "missing_score":
        key = ifd_key if math.isnan(fi) else rifd_key
        return f"missing score: {t.why_missing(chosen, i, key)} ({pair} has no {key}); dropped."
    if reason == "ifd_too_high":
        text = f"Dropped: IFD {_fmt(fi)} of {pair} is not below the limit {cfg.ifd_max:g}."
        if fi >= 1:
            text += (" With IFD >= 1 the instruction does not help the student predict the answer at all, "
                     "which is read as an instruction and answer that do not belong together.")
        return text
    if reason == "rifd_too_high":
        text = f"Dropped: r-IFD {_fmt(fr)} of {pair} is not below the limit {cfg.rifd_max:g}."
        if fr >= 1:
            text += " With r-IFD >= 1 the answer gives no help in guessing its instruction."
        return text
    if reason == "answer_not_reflected":
        return (f"Dropped: the pair passes both limits, but the student kept an answer the teacher did not "
                f"rewrite ({chosen}). Like the reference code, only pairs with a reflected answer are written "
                "(set keep_unreflected_answers=True to keep them).")
    words = int(t.words[VARIANT_INDEX[chosen], i])
    if reason == "too_short":
        return f"Dropped: the answer has {words} words, fewer than min_words={cfg.min_words}."
    if reason == "too_long":
        return f"Dropped: the answer has {words} words, more than max_words={cfg.max_words}."
    if reason == "refusal":
        text = normalize_answer((t.texts[VARIANT_INDEX[chosen]][i] or {}).get("output", ""))
        hit = next((p for p in cfg.refusal_phrases if p in text), "?")
        return f"Dropped: the answer contains the refusal/disclaimer phrase {hit!r}."
    population, n_keep, _ = selection.top_k or (0, 0, 0)
    return (f"Dropped: rank {selection.rank[i]} by IFD is outside the top {cfg.top_k_percent:g}% "
            f"(int({population} * {cfg.top_k_percent:g} / 100) = {n_keep} pairs kept).")
