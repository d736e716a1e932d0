"""From text to scoring items: the four passes of one (instruction, input, answer) version, and six scores.

Definitions (s = mean token cross-entropy of the scored span, PPL = exp(s)):

* s(A|Q): answer tokens after the templated instruction;  s(A): the same tokens after a start token only.
* IFD  = PPL(A|Q) / PPL(A) = exp(s(A|Q) - s(A))   (`ifd`, the default; Superfiltering / Selective
  Reflection-Tuning code)   and   s(A|Q) / s(A)   (`ifd_loss`, the first Cherry LLM code).
  Both cross 1 together but rank differently. Higher IFD = the instruction helps less = harder.
* r-IFD = PPL(Q | reverse prompt containing A) / PPL(Q) (`rifd`; `rifd_loss` likewise).
  Lower r-IFD = the answer makes its instruction easy to infer = a better-fitting answer.

Prefix and target are tokenised separately, so every span is exact by construction; when a sample
must be cut to max_length both passes of a ratio score the same target tokens. Any score that
cannot be computed is None with a reason in `missing`.
"""

from __future__ import annotations

import math

from ..format.templates import REVERSE_HEAD, REVERSE_TAIL, render_forward, render_split, user_text
from .items import Item, ItemLoss, Missing

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
