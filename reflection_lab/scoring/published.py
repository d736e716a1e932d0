"""Reference scoring mode: the items of the published IFD / r-IFD procedure, for the lab's one loss engine.

Why a second encoder and not a second engine: a loss is a loss. What makes the published numbers
(tianyi-lab/Reflection_Tuning, selection code) differ from the lab's is only *which tokens* are
scored after *which context*, so this module rebuilds exactly those token spans and lets
`LossEngine` compute them. Described in words (the code here is the lab's own):

* Prompts: the published vicuna or alpaca prompt, answer appended with no separator, the whole text
  tokenised at once with the tokenizer's default special tokens, cut from the right at max_length.
* Span: the answer is located by searching its text from the right (`rfind`); the scored tokens start
  at the length of the tokenised text before it, so a token merged across the boundary shifts it.
* Direct passes s(A), s(Q): the bare text with the default special tokens; when the tokenizer adds
  no start token (SmolLM2, Qwen), its first token is context and not scored.
* r-IFD: the answer inside the published "guess the instruction" request, rendered as a no-input
  prompt, then instruction and input joined with nothing between them; the span starts where the
  instruction's text is found from the right, so the input is scored too.
* Truncation: s(A) keeps max_length - |prompt tokens| + 1 tokens, s(Q) max_length - |reverse prompt
  tokens| + 1 (each prompt counted after its own cut at max_length).

Where the published code would write a 0 or a NaN (an empty answer, a span cut away, a pass with no
scored token), the item is `Missing` with the reason: the selection rules never let it pass.
"""

from __future__ import annotations

from ..format.templates import PUBLISHED_TEMPLATES, published_prompt, published_reverse
from .items import Item, Missing

REFERENCE_PASSES = ("a_q", "a", "q_rev", "q")


class PublishedEncoder:
    """(instruction, input, answer) -> the four passes as the published procedure defines them."""

    def __init__(self, tokenizer, *, template: str = "vicuna", max_length: int = 2048):
        if template not in PUBLISHED_TEMPLATES:
            published_prompt(template, "")  # raises the one-line error that names the choices
        self.tok = tokenizer
        self.template = template
        self.max_length = max_length

    def _ids(self, text: str, limit: int | None = None) -> list[int]:
        """Tokenised with the tokenizer's default special tokens, cut from the right at `limit`."""
        if limit is None:
            return list(self.tok(text)["input_ids"])
        return list(self.tok(text, truncation=True, max_length=limit)["input_ids"])

    def _conditioned(self, whole: str, span_text: str, what: str) -> tuple[Item | Missing, bool]:
        """Score from where `span_text` is found (from the right) to the end of the cut text."""
        ids = self._ids(whole, self.max_length)
        start = len(self._ids(whole[:whole.rfind(span_text)]))
        cut = len(ids) < len(self._ids(whole))
        if start < 1 or start >= len(ids):
            return Missing(f"reference mode: no {what} token left within max_length={self.max_length}"), cut
        return Item(tuple(ids[:start]), tuple(ids[start:])), cut

    def _direct(self, text: str, limit: int, what: str) -> Item | Missing:
        """The whole text's loss; its first token is context (a start token when the tokenizer adds one)."""
        ids = self._ids(text, limit) if limit >= 1 else []
        if len(ids) < 2:
            return Missing(f"reference mode: the direct {what} pass has no token to score within "
                           f"max_length={self.max_length}")
        return Item(tuple(ids[:1]), tuple(ids[1:]))

    def items(self, instruction: str, input: str, answer: str) -> tuple[dict[str, Item | Missing], dict]:
        info = {"n_answer_tokens": 0, "n_instruction_tokens": 0, "answer_truncated": False,
                "reverse_answer_truncated": False}
        if answer == "":
            return {p: Missing("empty answer") for p in REFERENCE_PASSES}, info
        L = self.max_length
        prompt = published_prompt(self.template, instruction, input)
        reverse = published_reverse(self.template, answer)
        out: dict[str, Item | Missing] = {}
        out["a_q"], info["answer_truncated"] = self._conditioned(prompt + answer, answer, "answer")
        out["a"] = self._direct(answer, L - len(self._ids(prompt, L)) + 1, "answer")
        # r-IFD: the joint text is cut from the right, so a long answer cuts the instruction, not itself
        out["q_rev"], info["reverse_answer_truncated"] = self._conditioned(reverse + instruction + input, instruction,
                                                                           "instruction")
        out["q"] = self._direct(instruction + input, L - len(self._ids(reverse, L)) + 1, "instruction")
        if isinstance(out["a_q"], Item):
            info["n_answer_tokens"] = len(out["a_q"].target)
        if isinstance(out["q_rev"], Item):
            info["n_instruction_tokens"] = len(out["q_rev"].target)
        return out, info
