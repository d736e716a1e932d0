"""Prompt templates for scoring: how an instruction is shown to the student before its answer.

Why this matters: IFD compares the answer's loss with and without the instruction, so the
wrapper around the instruction is part of the measurement. An unfamiliar wrapper (e.g. a chat
template on a base model) pushes every IFD above 1. The template's name is recorded in every
score artifact.
"""

from __future__ import annotations

TEMPLATES = ("chat", "plain", "alpaca", "vicuna")

_ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
_ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
           "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions.")
_VICUNA = _VICUNA_SYSTEM + " USER: {instruction} ASSISTANT: "

# The project's own wording of "guess the instruction that this response answers" (r-IFD's reverse prompt).
REVERSE_HEAD = ("Here is a reply that an assistant wrote. Work out what the user asked for: write the exact "
                "instruction this reply is answering.\n\nReply:\n")
REVERSE_TAIL = "\n\nThe instruction was:"

# Reference scoring mode (scoring_mode="reference"): the prompts of the published selection code
# (tianyi-lab/Reflection_Tuning, selection_code/), needed verbatim to reproduce its numbers. They end
# with no separator: the answer's text follows the last colon directly, and the whole text is tokenised
# at once. Only these two of its prompts have a lab counterpart (its third, "wiz", has none here).
PUBLISHED_TEMPLATES = ("vicuna", "alpaca")
_PUBLISHED = {
    "vicuna": (_VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:",
               _VICUNA_SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:"),
    "alpaca": (_ALPACA.rstrip("\n"), _ALPACA_INPUT.rstrip("\n")),
}
# The published r-IFD request, quoted because reference mode must score exactly this text (the lab's own
# wording is REVERSE_HEAD / REVERSE_TAIL above).
_PUBLISHED_REVERSE = ("Below is the response to an instruction, please guess the corresponding instruction for the "
                      "given response.\n{answer}\nGenerate the instruction for the above response.")

_SLOT = "\ue000"  # a private-use character: marks where a truncatable text goes in a rendered prompt


def user_text(instruction: str, input: str = "") -> str:
    """Instruction and optional input as one user message (also the target text of r-IFD)."""
    return f"{instruction}\n{input}" if input else instruction


def render(tokenizer, template: str, content: str) -> str:
    """The prompt text that precedes an answer, for one user message."""
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template; this one has none. "
                             "Use template='plain' (or 'alpaca' / 'vicuna').")
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    if template == "plain":
        return content + "\n"
    if template == "alpaca":
        return _ALPACA.format(instruction=content)
    if template == "vicuna":
        return _VICUNA.format(instruction=content)
    raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")


def render_forward(tokenizer, template: str, instruction: str, input: str = "") -> str:
    if template == "alpaca" and input:
        return _ALPACA_INPUT.format(instruction=instruction, input=input)
    return render(tokenizer, template, user_text(instruction, input))


def render_split(tokenizer, template: str, head: str, tail: str) -> tuple[str, str]:
    """Render `head + <slot> + tail` and return the text before and after the slot.

    Why: the reverse prompt embeds the answer, which may have to be cut to fit max_length; cutting
    at token level needs the surrounding text as separate pieces.
    """
    text = render(tokenizer, template, head + _SLOT + tail)
    if text.count(_SLOT) != 1:
        raise ValueError(f"template {template!r} did not keep the content verbatim; cannot place the answer")
    before, after = text.split(_SLOT)
    return before, after


def split_separator(prompt: str) -> tuple[str, str]:
    """(prompt without its trailing spaces, those spaces).

    Why: in running text a word carries the space before it (" The"). A prompt that ends in a space
    ("ASSISTANT: "), tokenised apart from its answer, would put a lone space token before an answer
    token that has lost its space, a pair the model never saw; the space belongs to the answer.
    """
    core = prompt.rstrip(" ")
    return core, prompt[len(core):]


def published_prompt(template: str, instruction: str, input: str = "") -> str:
    """The published selection code's prompt before an answer (reference scoring mode)."""
    if template not in _PUBLISHED:
        raise ValueError(f"scoring_mode='reference' has the published prompts {PUBLISHED_TEMPLATES} only, "
                         f"not {template!r}; set template='vicuna' (the published default)")
    no_input, with_input = _PUBLISHED[template]
    return with_input.format(instruction=instruction, input=input) if input else no_input.format(
        instruction=instruction)


def published_reverse(template: str, answer: str) -> str:
    """The published r-IFD prompt: its request wrapping the answer, in the no-input prompt."""
    return published_prompt(template, _PUBLISHED_REVERSE.format(answer=answer))
