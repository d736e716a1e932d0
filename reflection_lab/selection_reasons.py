"""Reasons in words for each selection decision (decisions.jsonl and the inspector).

Why separate: the decisions themselves are array operations in `selection`; the sentences that
explain one sample are only built when someone reads them (a file is written, a sample is shown).
The parameter is called `self` on purpose: these are the text methods of `Selection`, kept apart.
"""

from __future__ import annotations

import math

from .selection import FORMS, KEPT_OUTCOMES, OUTCOMES, VARIANTS, Decision, Selection, _norm, _V


def _fmt(x: float | None) -> str:
    return "missing" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def explain(self: Selection, i: int) -> Decision:
    """Decision of sample i with the instruction choice, answer choice and verdict in plain words."""
    t, ch, cfg = self.table, self.choice, self.config
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
    outcome = OUTCOMES[self.code[i]]
    fi, fr = float(ch.ifd[i]), float(ch.rifd[i])
    reason = _verdict(self, i, outcome, chosen, fi, fr, ifd_key, rifd_key)
    return Decision(t.ids[i], outcome, bool(self.kept[i]), reason, instr_variant, chosen,
                    _num(fi), _num(fr), step1, step2)

def _verdict(self: Selection, i: int, outcome: str, chosen: str, fi: float, fr: float, ifd_key: str,
             rifd_key: str) -> str:
    cfg, t = self.config, self.table
    pair = f"the chosen pair ({chosen})"
    if outcome in KEPT_OUTCOMES:
        text = (f"Kept as {outcome}: IFD {_fmt(fi)} < {cfg.ifd_max:g} and r-IFD {_fmt(fr)} < {cfg.rifd_max:g}")
        if self.top_k:
            text += f", and rank {self.rank[i]} by IFD is inside the top {cfg.top_k_percent:g}% ({self.top_k[1]} pairs)"
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
    words = int(t.words[_V[chosen], i])
    if reason == "too_short":
        return f"Dropped: the answer has {words} words, fewer than min_words={cfg.min_words}."
    if reason == "too_long":
        return f"Dropped: the answer has {words} words, more than max_words={cfg.max_words}."
    if reason == "refusal":
        text = _norm((t.texts[_V[chosen]][i] or {}).get("output", ""))
        hit = next((p for p in cfg.refusal_phrases if p in text), "?")
        return f"Dropped: the answer contains the refusal/disclaimer phrase {hit!r}."
    population, n_keep, _ = self.top_k or (0, 0, 0)
    return (f"Dropped: rank {self.rank[i]} by IFD is outside the top {cfg.top_k_percent:g}% "
            f"(int({population} * {cfg.top_k_percent:g} / 100) = {n_keep} pairs kept).")
