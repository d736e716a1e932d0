"""From text to scoring items: the four passes of one (instruction, input, answer) version, and six scores.

Definitions (s = mean token cross-entropy of the scored span, PPL = exp(s)):

* s(A|Q): answer tokens after the templated instruction;  s(A): the same tokens after a start token only
  (the tokenizer's BOS, else its end-of-text token, never a chat-turn marker: `start_token_id`).
* IFD  = PPL(A|Q) / PPL(A) = exp(s(A|Q) - s(A))   (`ifd`, the default; Superfiltering / Selective
  Reflection-Tuning code)   and   s(A|Q) / s(A)   (`ifd_loss`, the loss ratio Selective Reflection-Tuning's
  code also stores; the first Cherry LLM code's ratio differs: its direct pass reads `### Response:`).
  Both cross 1 together but rank differently. Higher IFD = the instruction helps less = harder.
* r-IFD = PPL(Q | reverse prompt containing A) / PPL(Q) (`rifd`; `rifd_loss` likewise).
  Lower r-IFD = the answer makes its instruction easy to infer = a better-fitting answer.

Prefix and target are tokenised separately, so every span is exact by construction; a prompt's trailing
space goes to the first target token (`split_separator`), as in running text. When a sample
must be cut to max_length both passes of a ratio score the same target tokens. Any score that
cannot be computed is None with a reason in `missing`.
"""

from __future__ import annotations

import math

from ..format.templates import REVERSE_HEAD, REVERSE_TAIL, render_forward, render_split, split_separator, user_text
from .items import Item, ItemLoss, Missing

PASSES = ("a_q", "a", "q_rev", "q")


def _chat_markers(tokenizer) -> set[str]:
    """Special tokens the chat template writes (literally or built from parts): they open or close a turn."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return set()
    text = template
    try:
        text += str(tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant",
                                                   "content": "y"}], tokenize=False))
    except Exception:  # noqa: BLE001 - a template that needs other messages: its literal text still counts
        pass
    return {t for t in tokenizer.all_special_tokens if t and t in text}


END_OF_TEXT_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<|eos|>", "<eos>")


def start_token_id(tokenizer) -> int:
    """The token the direct passes s(A), s(Q) start from: the tokenizer's BOS, else its end-of-text token.

    Why: s(A) must predict an answer's first token from "no context", not from a token that announces
    a chat turn. SmolLM2 names `<|im_start|>` its BOS (Qwen2.5 would fall back to `<|im_end|>`); after
    a turn marker the first token costs 0.8-2.6 nats more, which biases IFD by answer length. So a
    chat-turn marker is never used: a BOS the tokenizer adds by itself, else one that is no turn marker,
    else the end-of-text token documents are separated by in pre-training.
    """
    markers = _chat_markers(tokenizer)
    bos = tokenizer.bos_token_id
    if bos is not None:
        added = tokenizer("a")["input_ids"]
        if (added and added[0] == bos) or tokenizer.bos_token not in markers:
            return bos
    vocab = tokenizer.get_vocab()
    candidates = [tokenizer.eos_token] + [n for n in END_OF_TEXT_NAMES if n in vocab]
    for name in candidates:
        if name and name not in markers and tokenizer.convert_tokens_to_ids(name) is not None:
            return tokenizer.convert_tokens_to_ids(name)
    raise ValueError("the tokenizer has no BOS and no end-of-text token that is not a chat-turn marker to start "
                     f"the direct passes with (looked for {END_OF_TEXT_NAMES}); use a student whose tokenizer has one")


def spaced_text_ids(tokenizer) -> bool:
    """True when a word after a space is tokenised as `encode(" " + word)` (byte-level BPE), False when
    `encode(word)` already carries the word-start space (SentencePiece's dummy prefix).

    Why: a prompt's trailing space is moved to its answer (`split_separator`); this says how to encode it.
    """
    def enc(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    head = enc("Answer:")
    for word in ("Paris", "The result", "hello"):
        joint = enc("Answer: " + word)
        if joint[:len(head)] == head and joint[len(head):] == enc(word) != enc(" " + word):
            return False
    return True


class PairEncoder:
    """Turns (instruction, input, answer) into the four scoring items with exact spans."""

    def __init__(self, tokenizer, *, template: str = "chat", max_length: int = 1024, start: int | None = None):
        self.tok = tokenizer
        self.template = template
        self.max_length = max_length
        self.start = start_token_id(tokenizer) if start is None else start  # `start=`: to measure another choice
        self.spaced = spaced_text_ids(tokenizer)
        before, after = render_split(tokenizer, template, REVERSE_HEAD, REVERSE_TAIL)
        after, self.rev_lead = split_separator(after)
        self.rev_before = self._with_start(self.encode(before))
        self.rev_after = self.encode(after)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _cached(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.encode(text)
        return self._cache[text]

    def _target(self, lead: str, text: str) -> list[int]:
        """A scored text's tokens, with the space its prompt ended in (empty if the text is blank)."""
        if not text.strip():
            return []
        return self._cached(lead + text if lead and self.spaced else text)

    def _with_start(self, ids: list[int]) -> list[int]:
        return ids if ids and ids[0] == self.start else [self.start] + ids

    def items(self, instruction: str, input: str, answer: str) -> tuple[dict[str, Item | Missing], dict]:
        """The four passes s(A|Q), s(A), s(Q|rev A), s(Q), plus token counts and truncation flags."""
        info = {"n_answer_tokens": 0, "n_instruction_tokens": 0, "answer_truncated": False,
                "reverse_answer_truncated": False}
        prompt_text, lead = split_separator(render_forward(self.tok, self.template, instruction, input))
        q_ids = self._target(self.rev_lead, user_text(instruction, input)) if instruction.strip() else []
        a_ids = self._target(lead, answer)
        if not a_ids:
            return {p: Missing("empty answer") for p in PASSES}, info
        if not q_ids:
            return {p: Missing("empty instruction") for p in PASSES}, info
        out: dict[str, Item | Missing] = {}
        L = self.max_length
        prompt = self._with_start(self._cached(prompt_text))
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
            rev_a = self._cached(answer)  # inside the reverse prompt the answer follows "Reply:\n", no space
            prefix = tuple(self.rev_before + rev_a[:room] + self.rev_after)
            out["q_rev"] = Item(prefix, tuple(q_ids))
            out["q"] = Item((self.start,), tuple(q_ids))
            info["n_instruction_tokens"] = len(q_ids)
            info["reverse_answer_truncated"] = room < len(rev_a)
        return out, info


SCORING_MODES = ("lab", "reference")
# Part of the score stage's fingerprint: bump when what a mode encodes changes, so old scores are redone.
ENCODING_VERSIONS = {"lab": "lab-2 (trailing space to the answer; start token never a chat marker)",
                     "reference": "reference-1 (published selection code)"}


def make_encoder(tokenizer, *, mode: str = "lab", template: str = "chat", max_length: int = 1024):
    """The encoder of a scoring mode: the lab's exact spans, or the published procedure's (published.py)."""
    if mode == "lab":
        return PairEncoder(tokenizer, template=template, max_length=max_length)
    if mode == "reference":
        from .published import PublishedEncoder

        return PublishedEncoder(tokenizer, template=template, max_length=max_length)
    raise ValueError(f"unknown scoring_mode {mode!r}; choose one of {SCORING_MODES}")


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
