"""Stage 04's decisions: the student's selection of instruction/answer pairs (Selective Reflection-Tuning).

Per sample the student makes two choices and then a validity check:

1. Instruction: the teacher's reflected instruction replaces the original iff its IFD is strictly
   higher (a tie keeps the original). Higher IFD = the instruction helps the student less = more
   to learn.
2. Answer, for the chosen instruction: the reflected answer replaces the current one iff its r-IFD
   is strictly lower (reflect_both vs reflect_instruction, or reflect_response vs original).
   Lower r-IFD = the answer makes its instruction easier to guess.
3. The chosen pair is kept only if IFD < ifd_max and r-IFD < rifd_max (both 1.0 by default).

Then optional filters (answer length, refusal phrases) and an optional top-k% cut by IFD.

Why arrays: the widgets re-decide 50,000 samples every time a slider moves. The two choices do not
depend on any threshold, so `SelectionTable` computes them once per score form; a threshold change
is then a handful of numpy comparisons. Texts for the reasons are only built when asked for.

Missing scores are NaN inside the arrays and every comparison with NaN is False, so a missing
score can never make a sample pass: a choice that needs it keeps the current text, and a final
pair with a missing score is dropped with the recorded reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..core.runs import VARIANTS, read_jsonl
from .reasons import Decision, explain
from .rules import (FORMS, KEEP_CODE, KEPT_OUTCOMES, OUTCOME_INDEX, OUTCOMES, SCORE_KEYS, VARIANT_INDEX, SelectConfig,
                    normalize_answer)


@dataclass
class Choice:
    """The student's two threshold-free choices for one score form."""

    take_q: np.ndarray
    take_a: np.ndarray
    chosen: np.ndarray  # index into VARIANTS
    ifd: np.ndarray  # of the chosen pair (NaN = missing)
    rifd: np.ndarray


class SelectionTable:
    """Scores of every sample and variant as (4, n) arrays, built once from scores.jsonl rows."""

    def __init__(self, rows: Iterable[dict]):
        by_id: dict[str, dict] = {}
        for row in rows:
            by_id[str(row["id"])] = row  # a repeated id (resumed journal): the last row wins
        self.ids: list[str] = list(by_id)
        self.index: dict[str, int] = {sid: i for i, sid in enumerate(self.ids)}
        n = self.n = len(self.ids)
        nan = math.nan
        # plain lists while reading (numpy item assignment is slow), arrays at the end
        vals = {k: [[nan] * n for _ in VARIANTS] for k in SCORE_KEYS}
        present = [[False] * n for _ in VARIANTS]
        self.texts: list[list[dict | None]] = [[None] * n for _ in VARIANTS]
        self.missing: list[list[str | None]] = [[None] * n for _ in VARIANTS]
        self.notes: dict[tuple[int, int, str], str] = {}
        for i, row in enumerate(by_id.values()):
            variants = row.get("variants") or {}
            for v, vi in VARIANT_INDEX.items():
                vs = variants.get(v)
                if not vs:
                    continue
                present[vi][i] = True
                out = vs.get("output") or ""
                self.texts[vi][i] = {"instruction": vs.get("instruction") or "", "input": vs.get("input") or "",
                                     "output": out}
                self.missing[vi][i] = vs.get("missing")
                for k in SCORE_KEYS:
                    x = vs.get(k)
                    if x is None:
                        continue
                    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                        self.notes[(vi, i, k)] = f"{k} is not a finite number ({x!r})"
                        continue
                    vals[k][vi][i] = x
        self.scores = {k: np.array(vals[k], dtype=float).reshape(4, n) for k in SCORE_KEYS}
        self.present = np.array(present, dtype=bool).reshape(4, n)
        self._words: np.ndarray | None = None
        self._choices: dict[str, Choice] = {}
        self.cache: dict = {}  # derived data of figures (histogram bins and counts), kept with the table
        self._refusals: dict[tuple[str, ...], np.ndarray] = {}

    @classmethod
    def from_run(cls, run: Any) -> "SelectionTable":
        run.require("score")
        return cls(read_jsonl(run.path("score", "scores.jsonl")))

    def __len__(self) -> int:
        return self.n

    @property
    def words(self) -> np.ndarray:
        """(4, n) answer length in whitespace-separated words (computed on first use)."""
        if self._words is None:
            w = [[len(t["output"].split()) if t is not None else 0 for t in texts] for texts in self.texts]
            self._words = np.array(w, dtype=np.int64).reshape(4, self.n)
        return self._words

    def why_missing(self, variant: str, i: int, key: str) -> str:
        """The recorded reason a score is missing, in the words scoring wrote."""
        vi = VARIANT_INDEX[variant]
        if not self.present[vi, i]:
            return f"no '{variant}' variant in scores.jsonl"
        if (vi, i, key) in self.notes:
            return self.notes[(vi, i, key)]
        return self.missing[vi][i] or "no reason recorded"

    def choice(self, form: str = "ppl") -> Choice:
        """Steps 1 and 2 for every sample (cached: they depend on no threshold)."""
        if form not in self._choices:
            ifd_key, rifd_key = FORMS[form]
            ifd, rifd = self.scores[ifd_key], self.scores[rifd_key]
            take_q = ifd[1] > ifd[0]  # NaN on either side -> False -> original instruction
            current = np.where(take_q, rifd[1], rifd[0])
            new = np.where(take_q, rifd[3], rifd[2])
            take_a = new < current  # NaN -> False -> current answer
            chosen = take_q.astype(np.int8) + 2 * take_a.astype(np.int8)
            cols = np.arange(self.n)
            self._choices[form] = Choice(take_q, take_a, chosen, ifd[chosen, cols], rifd[chosen, cols])
        return self._choices[form]

    def refusals(self, phrases: tuple[str, ...]) -> np.ndarray:
        """(4, n) bool: the variant's answer contains one of the phrases (cached per phrase list)."""
        if phrases not in self._refusals:
            hit = np.zeros((4, self.n), dtype=bool)
            if phrases:
                pattern = re.compile("|".join(re.escape(p) for p in phrases))
                for vi in range(4):
                    for i, t in enumerate(self.texts[vi]):
                        if t is not None and pattern.search(normalize_answer(t["output"])):
                            hit[vi, i] = True
            self._refusals[phrases] = hit
        return self._refusals[phrases]

    def evaluate(self, config: SelectConfig | None = None) -> "Selection":
        """Apply thresholds, filters and the top-k cut: a few array operations."""
        config = config or SelectConfig()
        ch = self.choice(config.score_form)
        n = self.n
        cols = np.arange(n)
        code = np.full(n, -1, dtype=np.int8)
        fi, fr = ch.ifd, ch.rifd
        missing = np.isnan(fi) | np.isnan(fr)
        code[missing] = OUTCOME_INDEX["dropped:missing_score"]
        alive = ~missing

        def drop(mask: np.ndarray, reason: str) -> None:
            m = alive & mask
            code[m] = OUTCOME_INDEX[f"dropped:{reason}"]
            alive[m] = False

        with np.errstate(invalid="ignore"):
            drop(~(fi < config.ifd_max), "ifd_too_high")
            drop(~(fr < config.rifd_max), "rifd_too_high")
        passed = alive.copy()
        if not config.keep_unreflected_answers:
            drop(~ch.take_a, "answer_not_reflected")
        words = self.words[ch.chosen, cols]
        if config.min_words is not None:
            drop(words < config.min_words, "too_short")
        if config.max_words is not None:
            drop(words > config.max_words, "too_long")
        if config.drop_refusals:
            drop(self.refusals(config.refusal_phrases)[ch.chosen, cols], "refusal")
        rank = np.zeros(n, dtype=np.int64)
        top_k = None
        if config.top_k_percent is not None:
            idx = np.flatnonzero(alive)
            population = len(idx) if config.top_k_of == "kept" else n
            n_keep = int(population * config.top_k_percent / 100)
            order = idx[np.argsort(-fi[idx], kind="stable")]  # highest IFD first, ties in data order
            rank[order] = np.arange(1, len(order) + 1)
            drop(rank > n_keep, "below_top_k")
            top_k = (population, n_keep, len(idx))
        code[alive] = KEEP_CODE[ch.chosen[alive]]
        return Selection(self, config, ch, code, alive, passed, rank, top_k)


class Selection:
    """The result of one config on one table: per-sample outcome codes plus counts and reasons."""

    def __init__(self, table: SelectionTable, config: SelectConfig, choice: Choice, code: np.ndarray,
                 kept: np.ndarray, passed: np.ndarray, rank: np.ndarray, top_k: tuple[int, int, int] | None):
        self.table, self.config, self.choice = table, config, choice
        self.code, self.kept, self.passed, self.rank, self.top_k = code, kept, passed, rank, top_k

    def __len__(self) -> int:
        return self.table.n

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    def outcome(self, i: int) -> str:
        return OUTCOMES[self.code[i]]

    def outcomes(self) -> list[str]:
        return [OUTCOMES[c] for c in self.code]

    def counts(self) -> dict[str, int]:
        """Samples per outcome (every outcome listed, zeros included)."""
        bins = np.bincount(self.code.astype(np.int64), minlength=len(OUTCOMES))
        return {o: int(c) for o, c in zip(OUTCOMES, bins)}

    def student_choice(self) -> dict[str, int]:
        """Which pair the student preferred, before any threshold."""
        bins = np.bincount(self.choice.chosen.astype(np.int64), minlength=4)
        return {v: int(bins[VARIANT_INDEX[v]]) for v in KEPT_OUTCOMES}

    def passed_thresholds(self) -> dict[str, int]:
        """Pairs that pass IFD and r-IFD limits, by chosen variant (the reference's count_1..count_4)."""
        bins = np.bincount(self.choice.chosen[self.passed].astype(np.int64), minlength=4)
        return {v: int(bins[VARIANT_INDEX[v]]) for v in KEPT_OUTCOMES}

    def summary(self) -> dict:
        """outcomes.json: counts by outcome, plus how the student chose before and after thresholds."""
        counts = self.counts()
        out: dict[str, Any] = {"total": self.table.n, "kept": self.n_kept, "dropped": self.table.n - self.n_kept,
                               **counts, "student_choice": self.student_choice(),
                               "passed_thresholds": self.passed_thresholds(), "score_form": self.config.score_form}
        if self.top_k:
            out["top_k"] = {"percent": self.config.top_k_percent, "of": self.config.top_k_of,
                            "population": self.top_k[0], "kept": min(self.top_k[1], self.top_k[2])}
        return out

    def kept_ids(self) -> list[str]:
        return [self.table.ids[i] for i in np.flatnonzero(self.kept)]

    def dropped_ids(self) -> list[str]:
        return [self.table.ids[i] for i in np.flatnonzero(~self.kept)]

    def ids_with(self, outcome: str) -> list[str]:
        """Ids whose outcome is `outcome`, or starts with it ("dropped" matches every drop)."""
        codes = [c for c, o in enumerate(OUTCOMES) if o == outcome or o.startswith(outcome + ":")]
        return [self.table.ids[i] for i in np.flatnonzero(np.isin(self.code, codes))]

    def decisions(self) -> list[Decision]:
        return [self.decision(i) for i in range(self.table.n)]

    def decision(self, i: int | str) -> Decision:
        """The decision for one sample (by position or id), with its reasons spelled out."""
        return explain(self, self.table.index[i] if isinstance(i, str) else i)

    def selected_rows(self) -> list[dict]:
        """The training set: the chosen text of every kept pair, in data order."""
        t, rows = self.table, []
        for i in np.flatnonzero(self.kept):
            vi = int(self.choice.chosen[i])
            text = t.texts[vi][i] or {}
            rows.append({"id": t.ids[i], "instruction": text.get("instruction", ""), "input": text.get("input", ""),
                         "output": text.get("output", ""), "outcome": VARIANTS[vi],
                         "ifd": float(self.choice.ifd[i]), "rifd": float(self.choice.rifd[i])})
        return rows


def decide(scores_rows: Iterable[dict] | SelectionTable, config: SelectConfig | None = None) -> list[Decision]:
    """Pure function: scores.jsonl rows (or a prepared table) -> one Decision per sample, in order."""
    table = scores_rows if isinstance(scores_rows, SelectionTable) else SelectionTable(scores_rows)
    return table.evaluate(config).decisions()


def scores_frame(table: SelectionTable) -> "Any":
    import pandas as pd

    parts = []
    for v, vi in VARIANT_INDEX.items():
        cols = np.flatnonzero(table.present[vi])
        df = pd.DataFrame({k: table.scores[k][vi, cols] for k in SCORE_KEYS})
        df.insert(0, "variant", v)
        df.insert(0, "id", [table.ids[i] for i in cols])
        df["words"] = table.words[vi, cols]
        df["missing"] = [table.missing[vi][i] for i in cols]
        df["instruction"] = [table.texts[vi][i]["instruction"] for i in cols]
        df["output"] = [table.texts[vi][i]["output"] for i in cols]
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


__all__ = ["Choice", "Selection", "SelectionTable", "decide", "scores_frame"]
