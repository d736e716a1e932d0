"""The selection's vocabulary and settings: outcomes, drop reasons, score forms, and `SelectConfig`.

Why apart from the table: the figures, the widgets and the reasons in words all name outcomes and
read the config, and none of them needs the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.config import ConfigError, StageConfig
from ..core.runs import VARIANTS

KEPT_OUTCOMES = ("reflect_both", "reflect_response", "reflect_instruction", "original")
DROP_REASONS = ("missing_score", "ifd_too_high", "rifd_too_high", "answer_not_reflected",
                "too_short", "too_long", "refusal", "below_top_k")
OUTCOMES = KEPT_OUTCOMES + tuple(f"dropped:{r}" for r in DROP_REASONS)
SCORE_KEYS = ("ifd", "ifd_loss", "rifd", "rifd_loss", "s_a_q", "s_a", "s_q_rev", "s_q",
              "n_answer_tokens", "n_instruction_tokens")
FORMS = {"ppl": ("ifd", "rifd"), "loss": ("ifd_loss", "rifd_loss")}
FORM_TITLES = {"ppl": "PPL ratios", "loss": "loss ratios"}
# what each score is, in each form (figure titles name the one they show)
FORMULAS = {("ppl", "ifd"): "PPL(A|Q) / PPL(A)", ("ppl", "rifd"): "PPL(Q | reverse prompt with A) / PPL(Q)",
            ("loss", "ifd"): "s(A|Q) / s(A)", ("loss", "rifd"): "s(Q | reverse prompt with A) / s(Q)"}

VARIANT_INDEX = {v: i for i, v in enumerate(VARIANTS)}
OUTCOME_INDEX = {o: i for i, o in enumerate(OUTCOMES)}
# chosen variant index (VARIANTS order) -> outcome code (OUTCOMES order)
KEEP_CODE = np.array([OUTCOME_INDEX[v] for v in VARIANTS], dtype=np.int8)

# Phrases that mark a refusal or a canned disclaimer rather than an answer (lower case; matched
# anywhere in the answer after lower-casing and straightening curly apostrophes).
REFUSAL_PHRASES: tuple[str, ...] = (
    "as an ai language model", "as an ai model", "as a language model", "as an ai assistant, i",
    "i'm just an ai", "i am just an ai", "i cannot help with", "i cannot help you",
    "i can't help with", "i cannot assist", "i can't assist", "i'm sorry, but i can",
    "i am sorry, but i can", "i'm unable to provide", "i am unable to provide",
    "i do not have personal opinions", "i don't have personal opinions", "i don't have personal feelings",
    "i do not have access to real-time", "my knowledge cutoff", "my training data only goes",
    "it is not appropriate for me to", "i must decline", "against my programming",
)


@dataclass(frozen=True)
class SelectConfig(StageConfig):
    """Every knob of the selection; recorded in the stage manifest so a run says how it chose.

    keep_unreflected_answers: the reference code (get_select_data.py) counts the pairs whose chosen
    answer is the original one ('original', 'reflect_instruction') but never writes them: only
    pairs with a reflected answer form the sRecycled sets. False reproduces that; True also trains
    on pairs where the student preferred the old answer.
    top_k_percent: keep the highest-IFD pairs; the count is int(P * k / 100) like the reference,
    where P is the number of pairs still kept before the cut (top_k_of="kept") or every scored
    sample (top_k_of="all", as in Cherry's select_from_ifd_json). Ties go to the earlier sample.
    score_form: "ppl" uses ifd / rifd (perplexity ratio, the default of the later reference code);
    "loss" uses ifd_loss / rifd_loss (the loss ratio Reflection-Tuning's code also stores). Both cross 1
    at the same point.
    """

    STAGE = "select"

    ifd_max: float = 1.0
    rifd_max: float = 1.0
    top_k_percent: float | None = None
    top_k_of: str = "kept"
    min_words: int | None = None
    max_words: int | None = None
    drop_refusals: bool = False
    refusal_phrases: tuple[str, ...] = REFUSAL_PHRASES
    keep_unreflected_answers: bool = False
    score_form: str = "ppl"

    def validate(self) -> None:
        if self.score_form not in FORMS:
            raise ConfigError(f"score_form must be one of {sorted(FORMS)}, not {self.score_form!r}")
        if self.top_k_of not in ("kept", "all"):
            raise ConfigError(f"top_k_of must be 'kept' or 'all', not {self.top_k_of!r}")
        if self.top_k_percent is not None and not 0 <= self.top_k_percent <= 100:
            raise ConfigError(f"top_k_percent must be in [0, 100] or None, not {self.top_k_percent}")
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ConfigError(f"min_words ({self.min_words}) is larger than max_words ({self.max_words})")
        object.__setattr__(self, "refusal_phrases", tuple(p.lower() for p in self.refusal_phrases))

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        return {"ifd_max": profile.ifd_max, "rifd_max": profile.rifd_max, "top_k_percent": profile.top_k_percent,
                "keep_unreflected_answers": profile.keep_unreflected_answers}

    def as_dict(self) -> dict:
        d = super().as_dict()
        d["refusal_phrases"] = list(self.refusal_phrases)
        return d


def normalize_answer(text: str) -> str:
    """Lower case with straight apostrophes: the form refusal phrases are matched in."""
    return text.lower().replace("\u2019", "'").replace("\u2018", "'")
