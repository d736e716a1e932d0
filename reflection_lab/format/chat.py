"""The chat format: the exact prompt a student is trained with and later asked with, and its system prompts.

Why one module: stage 05 trains on `prompt ids + answer ids + end-of-turn ids`, and stages 06 and 07
must rebuild exactly that prompt (same template, system message, BOS and token boundary), or the
fine-tuned student is asked in a format it never saw. `TrainingFormat` is saved next to every
adapter and loaded back by every later stage. The prompt and the answer are tokenised *separately*
and their ids concatenated, so the boundary never moves by a token.

Reflection tags (`<thinking>` ... `</output>`) are either plain text (several tokens each) or six
added special tokens (one token each, like Reflection 70B). Special tokens disappear under
`decode(..., skip_special_tokens=True)`; use `decode_keep_tags` wherever tags must survive.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .tags import REFLECTION_TAGS, strip_reasoning
from .templates import TEMPLATES, render_forward, user_text

# "### Instruction: ... ### Response:" (templates.py), used when a model has no chat template
FALLBACK_TEMPLATE = "alpaca"
FORMAT_FILE = "reflection_lab_format.json"
_SENTINEL = "\ue001"  # private-use character: where the answer goes inside a rendered conversation


@dataclass
class TrainingFormat:
    """Everything needed to rebuild the exact training prompt later (saved next to the adapter)."""

    template: str  # "chat" or one of templates.TEMPLATES
    end_text: str  # text appended after every answer (the end-of-turn marker), e.g. "<|im_end|>"
    end_ids: list[int]
    prepend_bos: bool  # the tokenizer adds BOS on its own and the rendered prompt lacks it
    bos_id: int | None
    system_prompt: str | None = None
    tags_as_special_tokens: bool = False
    tag_ids: list[int] = field(default_factory=list)  # one id per tag when they are special tokens
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def save(self, folder: str | Path) -> None:
        Path(folder, FORMAT_FILE).write_text(json.dumps(self.as_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, folder: str | Path) -> "TrainingFormat":
        return cls(**json.loads(Path(folder, FORMAT_FILE).read_text()))

    def prompt_text(self, tokenizer: Any, instruction: str, input: str = "") -> str:
        """The text before the answer: the chat template's generation prompt or the fallback template."""
        if self.template == "chat" and self.system_prompt:
            msgs = [{"role": "system", "content": self.system_prompt},
                    {"role": "user", "content": user_text(instruction, input)}]
            return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        text = render_forward(tokenizer, self.template, instruction, input)
        if self.system_prompt and self.template != "chat":
            text = self.system_prompt.rstrip() + "\n\n" + text
        return text

    def prompt_ids(self, tokenizer: Any, instruction: str, input: str = "") -> list[int]:
        """Prompt token ids exactly as in training (use these for generation, not a re-rendered string)."""
        ids = list(tokenizer(self.prompt_text(tokenizer, instruction, input), add_special_tokens=False)["input_ids"])
        if self.prepend_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids


def _end_of_turn_text(tokenizer: Any) -> str:
    """What the chat template writes right after an assistant message (stripped), e.g. '<|im_end|>'."""
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": _SENTINEL}]
    full = str(tokenizer.apply_chat_template(msgs, tokenize=False))
    if _SENTINEL not in full:
        return ""
    return full.split(_SENTINEL, 1)[1].strip()


def build_format(tokenizer: Any, template: str = "chat", *, system_prompt: str | None = None,
                 tags_as_special_tokens: bool = False) -> TrainingFormat:
    """Pick the template (with the fallback and a note when the model has no chat template) and the end marker.

    Call `add_reflection_tokens` first when the tags should be special tokens.
    """
    notes: list[str] = []
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        notes.append(f"The tokenizer has no chat template: used the fallback '{FALLBACK_TEMPLATE}' template "
                     "('### Instruction:' ... '### Response:'). Inference must use the same template "
                     "(TrainingFormat.prompt_ids does).")
        template = FALLBACK_TEMPLATE
    end_text = _end_of_turn_text(tokenizer) if template == "chat" else ""
    if not end_text:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no EOS token and no chat template end marker; cannot mark "
                             "where an answer ends")
        end_text = tokenizer.eos_token
        if template == "chat":
            notes.append(f"The chat template writes nothing after an answer: used the EOS token {end_text!r}.")
    end_ids = list(tokenizer(end_text, add_special_tokens=False)["input_ids"])
    probe = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    prepend = bos is not None and bool(probe) and probe[0] == bos
    tag_ids: list[int] = []
    if tags_as_special_tokens:
        tag_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in REFLECTION_TAGS]
        unk = tokenizer.unk_token_id
        if any(i is None or i == unk for i in tag_ids):
            raise ValueError("tags_as_special_tokens=True but the tags are not in the vocabulary; "
                             "call add_reflection_tokens(tokenizer, model) first")
    return TrainingFormat(template=template, end_text=end_text, end_ids=end_ids, prepend_bos=prepend, bos_id=bos,
                          system_prompt=system_prompt, tags_as_special_tokens=tags_as_special_tokens,
                          tag_ids=tag_ids, notes=notes)


# --- Reflection tags as special tokens ---------------------------------------------------------------


def add_reflection_tokens(tokenizer: Any, model: Any = None) -> list[int]:
    """Add the six tags as special tokens (one id each) and grow the model's embeddings to match.

    Each new row starts at the mean of the rows of the tokens the tag was spelled with before
    (`<`, `thinking`, `>`): the model already predicts those pieces where a tag belongs, so a tag token
    starts out likely there. (Rows at the mean of all embeddings, transformers' default, start unlikely
    everywhere: 24 steps did not teach SmolLM2-135M to emit them once, docs/finetune.md.)
    Returns the tag ids.
    """
    have = set(tokenizer.get_vocab())
    missing = [t for t in REFLECTION_TAGS if t not in have]
    spelled = {t: list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in missing}
    if missing:
        kwargs: dict[str, Any] = {}
        params = inspect.signature(tokenizer.add_special_tokens).parameters
        if "replace_extra_special_tokens" in params:
            kwargs["replace_extra_special_tokens"] = False
        elif "replace_additional_special_tokens" in params:
            kwargs["replace_additional_special_tokens"] = False
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, **kwargs)
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in REFLECTION_TAGS]
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
        _start_rows_at_their_spelling(model, {int(tokenizer.convert_tokens_to_ids(t)): s for t, s in spelled.items()})
    return ids


def _start_rows_at_their_spelling(model: Any, spelled: dict[int, list[int]]) -> None:
    """Set each new token's input (and untied output) row to the mean of the rows it was spelled with."""
    import torch

    tables = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not tables[0].weight and out.weight.shape[0] == tables[0].weight.shape[0]:
        tables.append(out)
    with torch.no_grad():
        for table in tables:
            for new_id, pieces in spelled.items():
                if pieces and max(pieces) < new_id:
                    table.weight[new_id] = table.weight[pieces].mean(dim=0)


def tags_are_single_tokens(tokenizer: Any) -> bool:
    return all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1 for t in REFLECTION_TAGS)


def tag_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tags that are single tokens of this vocabulary (none when the tags are plain text)."""
    vocab = tokenizer.get_vocab()
    return frozenset(int(vocab[t]) for t in REFLECTION_TAGS if t in vocab)


def special_ids_except_tags(tokenizer: Any) -> frozenset[int]:
    """Every special token id (pad, BOS/EOS, chat markers) except the tags: what decoding must drop.

    Added tokens flagged special but missing from `all_special_ids` (SmolLM2's <repo_name>, ...) count too.
    """
    special = {int(i) for i in tokenizer.all_special_ids}
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
    return frozenset(special - tag_token_ids(tokenizer))


def decode_keep_tags(tokenizer: Any, ids: Sequence[int], drop_ids: frozenset[int] | None = None) -> str:
    """Decode generated ids keeping the Reflection tags but dropping other special tokens (pad, EOS, chat markers).

    Why: `skip_special_tokens=True` deletes the tags when they are special tokens (Reflection 70B's
    pitfall), while `skip_special_tokens=False` leaves `<|im_end|>` and padding in the text.
    """
    drop = special_ids_except_tags(tokenizer) if drop_ids is None else drop_ids
    return str(tokenizer.decode([int(i) for i in ids if int(i) not in drop], skip_special_tokens=False,
                                clean_up_tokenization_spaces=False))


# --- system prompts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemPrompt:
    """A named system message. `text=None` sends none (what a student trained without one saw)."""

    name: str
    text: str | None
    note: str = ""


# The lab's own wording. It names the tags because a model that was not fine-tuned on the format
# can only learn them from here; when the tags are special tokens the prompt contains them as such.
REFLECTION_PROMPT = SystemPrompt(
    "reflection",
    "Before you answer, work through the problem step by step between <thinking> and </thinking>. "
    "If you spot an error in that reasoning, write the correction between <reflection> and "
    "</reflection>, still inside the thinking, then carry on. After </thinking>, put only the final "
    "answer between <output> and </output>.",
    note="asks a base model for the format; compare it with the fine-tuned student")
SYSTEM_PROMPTS: dict[str, SystemPrompt] = {
    "reflection": REFLECTION_PROMPT,
    "none": SystemPrompt("none", None, note="no system message"),
}


def system_prompt_text(prompt: str | SystemPrompt | None) -> str | None:
    """A preset name, a SystemPrompt, literal text or None -> the text to send (or None)."""
    if prompt is None or isinstance(prompt, SystemPrompt):
        return prompt.text if prompt else None
    return SYSTEM_PROMPTS[prompt].text if prompt in SYSTEM_PROMPTS else prompt


def history_for_model(messages: Sequence[dict], *, keep_reasoning: bool = False) -> list[dict]:
    """A copy of a chat history ready to send again: assistant turns keep only their output.

    Why: earlier reasoning would crowd the context and teach the model to copy it (DeepSeek's API
    rejects it outright); `tags.strip_reasoning` keeps the first <output> (or the untagged text).
    """
    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "assistant" and not keep_reasoning and isinstance(m.get("content"), str):
            m["content"] = strip_reasoning(m["content"])
        out.append(m)
    return out
