"""Stage 07 arithmetic: answer extraction, per-prompt scores, bootstrap intervals, both-orders verdicts.

Everything here is pure (rows in, numbers out) so it is tested without a model and reused by the
report, the notebook and the CLI table.

* Exact match reads the number from the ``<output>`` block only (``tags.parse(text).answer``).
  An answer without an output block is wrong, whatever numbers its reasoning contains: scoring
  the whole text would reward a model that merely *mentions* the right number while reasoning.
  ``exact_match_anywhere`` is that naive score, kept only to show the gap.
* Intervals are percentile bootstraps over prompts. Every arm is resampled with the *same*
  index matrix (seeded by the seed, the metric and the number of prompts), so the difference of
  two arms is a paired bootstrap: the prompt-to-prompt difficulty cancels out.
* An arm's own *share* (a 0/1 metric such as the well-formed share) gets a Wilson score interval
  instead: a bootstrap of 8 successes in 8 prompts is [1, 1], which claims a certainty 8 prompts
  cannot give; Wilson's is [0.68, 1].
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from fractions import Fraction
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..format.tags import parse

N_BOOT = 1000
CI_LEVEL = 0.95
REL_TOL = 1e-4  # 691.2 vs 691 fails (3e-4), 691.20 vs 691.2 passes
ABS_TOL = 1e-6
VERDICTS = ("win", "tie", "loss")

# A number as people write it in answers: optional sign (ASCII or Unicode minus) and currency,
# thousands separators in groups of three, decimals, a fraction a/b, a mixed number "1 5/12".
_NUM = re.compile(
    r"(?<![\w.,/])"                       # not the tail of a word, a decimal, a list or a fraction
    r"(?P<sign>[-\u2212])?"              # a minus sign sits right before the digits (or the currency)
    r"(?:(?P<cur>[$\u20ac\u00a3])\s?)?"
    r"(?:(?P<whole>\d+)\s+(?P<mnum>\d+)/(?P<mden>\d+)(?![\d/])"  # 1 5/12
    r"|(?P<num>\d+)/(?P<den>\d+)(?![\d/])"                     # 3/4
    r"|(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?"          # 1,234.5 / 42 / 0.35
    r"|(?P<lead>\.\d+))"                                          # .5
)


def _value(m: re.Match) -> float | None:
    g = m.groupdict()
    try:
        if g["whole"] is not None:
            if int(g["mden"]) == 0:
                return None
            v = float(int(g["whole"]) + Fraction(int(g["mnum"]), int(g["mden"])))
        elif g["num"] is not None:
            if int(g["den"]) == 0:
                return None
            v = float(Fraction(int(g["num"]), int(g["den"])))
        elif g["int"] is not None:
            v = float(g["int"].replace(",", "") + (g["dec"] or ""))
        else:
            v = float("0" + g["lead"])
    except (ValueError, OverflowError, ZeroDivisionError):
        return None
    return -v if g["sign"] else v


def numbers_in(text: str | None) -> list[float]:
    """Every number in a text, in order: "$1,200.50" -> 1200.5, "−3" -> -3, "3/4" -> 0.75, "12%" -> 12."""
    if not text:
        return []
    # "5-3", "2024-09-05": the look-behind refuses a sign right after a digit or a letter
    out = (_value(m) for m in _NUM.finditer(text))
    return [v for v in out if v is not None and math.isfinite(v)]


def extract_number(text: str | None) -> float | None:
    """The last number of a text (None when there is none). Call it on the <output> text only."""
    nums = numbers_in(text)
    return nums[-1] if nums else None


def numeric_match(pred: float | None, ref: float | None, *, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """Equal within a relative (and a tiny absolute) tolerance; a missing prediction is never a match."""
    if pred is None or ref is None:
        return False
    return math.isclose(float(pred), float(ref), rel_tol=rel_tol, abs_tol=abs_tol)


def score_answer(text: str, finish_reason: str, eval_row: dict) -> dict[str, Any]:
    """Per-prompt scores of one generation against one eval row (the parse is redone here, on purpose).

    Why reparse: the stored generation might come from another tool; the metric must not trust a
    field it did not compute. `answer` is the first <output> text, never the reasoning.
    """
    p = parse(text, truncated=finish_reason in ("length", "cancelled"))
    ref = _reference_number(eval_row)
    numeric = ref is not None
    extracted = extract_number(p.answer) if p.answer is not None else None
    return {
        "well_formed": p.well_formed, "has_output": p.answer is not None, "diagnostics": sorted(set(p.codes)),
        "numeric": numeric, "numeric_answer": ref, "extracted": extracted,
        "correct": numeric_match(extracted, ref) if numeric else None,
        "correct_anywhere": any(numeric_match(v, ref) for v in numbers_in(text)) if numeric else None,
    }


def _reference_number(eval_row: dict) -> float | None:
    """numeric_answer of a row with answer_type "numeric" (a number, or text such as "1,234" or "3/4")."""
    if eval_row.get("answer_type") != "numeric" or eval_row.get("numeric_answer") is None:
        return None
    value = eval_row["numeric_answer"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return extract_number(str(value))


# --- bootstrap -----------------------------------------------------------------------------------


def _seed_for(seed: int, label: str, n: int) -> int:
    """One seed per (seed, metric, n): arms with the same prompts share their resamples (a paired bootstrap)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}:{n}".encode()).digest()[:8], "little")


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = 0, label: str = "") -> np.ndarray:
    """(n_boot, n) indices drawn with replacement, the same for the same (seed, label, n)."""
    rng = np.random.default_rng(_seed_for(seed, label, n))
    return rng.integers(0, n, size=(n_boot, n))


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float | None], *, n_boot: int = N_BOOT, seed: int = 0, label: str = "",
                 level: float = CI_LEVEL) -> dict[str, Any]:
    """Mean and percentile bootstrap interval of the non-missing values: {mean, lo, hi, n}."""
    x = np.array(_present(values), dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    lo, hi = _interval(x[resample_indices(n, n_boot, seed, label)].mean(axis=1), level)
    return {"mean": mean, "lo": lo, "hi": hi, "n": n}


def wilson_ci(values: Sequence[float | None], *, level: float = CI_LEVEL) -> dict[str, Any]:
    """Share of 1s among the non-missing 0/1 values with its Wilson score interval: {mean, lo, hi, n}.

    Unlike a bootstrap it stays wide at 0 % or 100 % on a few prompts, where every resample is the same.
    """
    x = _present(values)
    if any(v not in (0.0, 1.0) for v in x):
        raise ValueError("a Wilson interval needs 0/1 values")
    n = len(x)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    p, z = sum(x) / n, NormalDist().inv_cdf(1 - (1 - level) / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": p, "lo": max(0.0, centre - half), "hi": min(1.0, centre + half), "n": n}


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], *, n_boot: int = N_BOOT, seed: int = 0,
                     label: str = "", level: float = CI_LEVEL) -> dict[str, Any]:
    """Mean of a - b over prompts where both exist, with a bootstrap interval that resamples prompts.

    `excludes_zero` says whether the interval lies entirely on one side of 0 (still not proof
    with 8 prompts, but the least a claim needs).
    """
    if len(a) != len(b):
        raise ValueError("paired values need the same prompts in the same order")
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True)
             if x is not None and y is not None and not _isnan(x) and not _isnan(y)]
    res = bootstrap_ci([x - y for x, y in pairs], n_boot=n_boot, seed=seed, label=label, level=level)
    res["excludes_zero"] = bool(res["n"] > 1 and (res["lo"] > 0 or res["hi"] < 0))
    return res


def _present(values: Sequence[float | None]) -> list[float]:
    """The values a metric has (a missing one is None or NaN, e.g. a loss that could not be computed)."""
    return [float(v) for v in values if v is not None and not _isnan(v)]


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# --- pairwise judge: two orders -> one verdict ---------------------------------------------------


def order_preference(score_first: float | None, score_second: float | None) -> str | None:
    """'first', 'second' or 'tie' for one judge reply; None if the reply had no readable scores."""
    if score_first is None or score_second is None:
        return None
    if score_first > score_second:
        return "first"
    return "second" if score_second > score_first else "tie"


def combine_orders(a_shown_first: str | None, a_shown_second: str | None) -> str:
    """Verdict for arm A from the two orders (A first, then A second), each 'A', 'B', 'tie' or None.

    Win: A better in both orders, or better in one and tied in the other. Loss: the mirror.
    Tie: tied in both, or each answer preferred once (the judge only followed the position).
    'invalid' when either order has no readable verdict.
    """
    votes = (a_shown_first, a_shown_second)
    if any(v not in ("A", "B", "tie") for v in votes):
        return "invalid"
    if "A" in votes and "B" in votes:
        return "tie"
    if "A" in votes:
        return "win"
    if "B" in votes:
        return "loss"
    return "tie"


def verdict_counts(verdicts: Iterable[str]) -> dict[str, int]:
    c = Counter(verdicts)
    return {"wins": c["win"], "ties": c["tie"], "losses": c["loss"], "invalid": c["invalid"]}


def winning_score(verdicts: Sequence[str], *, n_boot: int = N_BOOT, seed: int = 0, label: str = "",
                  level: float = CI_LEVEL) -> dict[str, Any]:
    """(wins - losses) / N + 1 over readable verdicts (AlpaGasus' "winning score"; 1 = even), with a CI."""
    signed = [{"win": 1.0, "tie": 0.0, "loss": -1.0}[v] for v in verdicts if v in VERDICTS]
    ci = bootstrap_ci(signed, n_boot=n_boot, seed=seed, label=label, level=level)
    return {k: (v + 1.0 if k in ("mean", "lo", "hi") and v is not None else v) for k, v in ci.items()}


# --- per-arm summaries ---------------------------------------------------------------------------

METRICS = {
    # name: (row field, higher is better, title)
    "format": ("well_formed", True, "format compliance (well-formed share)"),
    "exact_match": ("correct", True, "exact match (number in <output>)"),
    "ref_loss": ("ref_loss", False, "answer-token loss on references (nats)"),
    "ref_loss_format": ("ref_loss_format", False, "reference loss after the arm's own reasoning (nats)"),
}
NAIVE = {"exact_match_anywhere": ("correct_anywhere", True, "naive: reference number anywhere in the text")}
# 0/1 per prompt: an arm's interval on these is Wilson's (see the module docstring), differences stay paired bootstraps
SHARES = frozenset({"format", "exact_match", "exact_match_anywhere"})


def metric_values(rows: Sequence[dict], metric: str) -> list[float | None]:
    """One value per prompt (None where the metric does not apply, e.g. exact match on a text prompt)."""
    field = {**METRICS, **NAIVE}[metric][0]
    out: list[float | None] = []
    for r in rows:
        v = r.get(field)
        out.append(None if v is None else float(v))
    return out


def arm_summary(rows: Sequence[dict], *, n_boot: int = N_BOOT, seed: int = 0, level: float = CI_LEVEL) -> dict:
    """Every metric of one arm with its interval, and the parser's diagnostic codes as shares."""
    n = len(rows)
    metrics = {m: wilson_ci(metric_values(rows, m), level=level) if m in SHARES
               else bootstrap_ci(metric_values(rows, m), n_boot=n_boot, seed=seed, label=m, level=level)
               for m in (*METRICS, *NAIVE)}
    codes = Counter(c for r in rows for c in r.get("diagnostics", []))
    return {
        "metrics": metrics,
        "diagnostics": {c: {"count": k, "share": round(k / n, 4)} for c, k in sorted(codes.items())},
        "counts": {"prompts": n, "well_formed": sum(bool(r.get("well_formed")) for r in rows),
                   "with_output": sum(bool(r.get("has_output")) for r in rows),
                   "numeric_prompts": sum(bool(r.get("numeric")) for r in rows),
                   "correct": sum(bool(r.get("correct")) for r in rows),
                   "hit_token_limit": sum(r.get("finish_reason") == "length" for r in rows),
                   "errors": sum(r.get("finish_reason") == "error" for r in rows),
                   "ref_loss_missing": sum(r.get("ref_loss") is None for r in rows),
                   "ref_loss_format_missing": sum(r.get("ref_loss_format") is None for r in rows),
                   "scored_after_own_reasoning": sum(bool(r.get("ref_loss_format_prefixed")) for r in rows)},
    }


def arm_order(metrics: dict) -> list[str]:
    """Arms in evaluation order (metrics.json is written with sorted keys, so the order is stored apart)."""
    order = metrics.get("arm_order") or []
    return [a for a in order if a in metrics["arms"]] + [a for a in metrics["arms"] if a not in order]


def differences(rows_by_arm: Mapping[str, Sequence[dict]], reference: str, *, n_boot: int = N_BOOT, seed: int = 0,
                level: float = CI_LEVEL) -> dict[str, dict]:
    """arm - reference for every metric, paired over the same prompts (rows must be in eval order)."""
    if reference not in rows_by_arm:
        return {}
    ref_rows = rows_by_arm[reference]
    out = {}
    for arm, rows in rows_by_arm.items():
        if arm == reference:
            continue
        out[arm] = {m: paired_bootstrap(metric_values(rows, m), metric_values(ref_rows, m), n_boot=n_boot, seed=seed,
                                        label=f"diff:{m}", level=level) for m in (*METRICS, *NAIVE)}
    return out


def verdict_sentence(arm: str, reference: str, metric: str, diff: Mapping[str, Any]) -> str:
    """One plain sentence for `arm - reference` on one metric, from its paired interval.

    Why a sentence: a reader should not have to read an interval to learn whether it crosses 0.
    "not distinguishable" whenever the interval contains 0 (or fewer than 2 paired prompts exist).
    """
    spec = METRICS.get(metric) or NAIVE.get(metric)
    name = spec[2] if spec else metric
    higher_better = spec[1] if spec else True
    mean, lo, hi, n = diff.get("mean"), diff.get("lo"), diff.get("hi"), diff.get("n") or 0
    if mean is None or lo is None or hi is None or n < 2:
        return f"{arm} vs {reference} on {name}: not distinguishable (fewer than 2 paired prompts)."
    span = f"difference {mean:+.3g}, interval [{lo:+.3g}, {hi:+.3g}] over {n} prompts"
    if lo <= 0 <= hi:
        return f"{arm} vs {reference} on {name}: not distinguishable ({span})."
    better = (mean > 0) == higher_better
    return f"{arm} vs {reference} on {name}: {arm} is {'better' if better else 'worse'} ({span})."


def verdicts(metrics: Mapping[str, Any]) -> list[str]:
    """Every comparison stored in metrics.json (vs_base, vs_random) as one sentence per metric."""
    out = []
    for key, by_arm in (metrics.get("differences") or {}).items():
        reference = key.removeprefix("vs_")
        for arm, by_metric in by_arm.items():
            out += [verdict_sentence(arm, reference, m, by_metric[m]) for m in METRICS if m in by_metric]
    return out


__all__ = ["ABS_TOL", "CI_LEVEL", "METRICS", "NAIVE", "N_BOOT", "REL_TOL", "SHARES", "arm_order", "arm_summary",
           "bootstrap_ci", "combine_orders", "differences", "extract_number", "metric_values", "numbers_in",
           "numeric_match", "order_preference", "paired_bootstrap", "resample_indices", "score_answer",
           "verdict_counts", "verdict_sentence", "verdicts", "wilson_ci", "winning_score"]
