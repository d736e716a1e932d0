"""An independent, plainly written transcription of the published IFD / r-IFD procedure, to hold
`scoring_mode="reference"` to.

Written from the published selection code's behaviour (tianyi-lab/Reflection_Tuning, selection_code/
data_analysis.py and put_analysis_to_data.py), sharing nothing with the lab: the prompt strings are
typed out here, every text is tokenised with the tokenizer's defaults, the answer is found with `rfind`,
and every loss is the `loss` a transformers model returns for `labels` (the prompt set to -100). One
sample at a time, four forward calls. Where the published code would return a placeholder (an
exception, or a loss over no token), this returns None.
"""

from __future__ import annotations

import math

import torch

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
PROMPTS = {
    "vicuna": (SYSTEM + " USER: {instruction} ASSISTANT:", SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:"),
    "alpaca": ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\n{instruction}\n\n### Response:",
               "Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
               "### Input:\n{input}\n\n### Response:"),
}
GUESS_HEAD = ("Below is the response to an instruction, please guess the corresponding instruction for the given "
              "response.\n")
GUESS_TAIL = "\nGenerate the instruction for the above response."


def _loss(model, ids: list[int], labels: list[int]) -> float | None:
    if sum(x != -100 for x in labels[1:]) == 0:
        return None  # the published code gets NaN (or its 0 placeholder) here
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    return out.loss.item()


def _whole(model, tok, text: str, max_length: int) -> float | None:
    if max_length < 1:
        return None
    ids = tok.encode(text, truncation=True, max_length=max_length)
    return _loss(model, ids, list(ids))


def _part(model, tok, text: str, span: str, max_length: int) -> float | None:
    ids = tok.encode(text, truncation=True, max_length=max_length)
    first = len(tok.encode(text[:text.rfind(span)]))
    labels = [-100 if i < first else t for i, t in enumerate(ids)]
    return _loss(model, ids, labels)


def published_scores(model, tok, instruction: str, input: str, answer: str, template: str = "vicuna",
                     max_length: int = 2048) -> dict:
    """s_a_q, s_a, s_q_rev, s_q and the two PPL ratios of one sample, the published way."""
    no_input, with_input = PROMPTS[template]
    prompt = with_input.format(instruction=instruction, input=input) if input else no_input.format(
        instruction=instruction)
    reverse = no_input.format(instruction=GUESS_HEAD + answer + GUESS_TAIL)
    prompt_len = len(tok.encode(prompt, truncation=True, max_length=max_length))
    reverse_len = len(tok.encode(reverse, truncation=True, max_length=max_length))
    s_q = _whole(model, tok, instruction + input, max_length - reverse_len + 1)
    s_a = _whole(model, tok, answer, max_length - prompt_len + 1)
    s_q_rev = _part(model, tok, reverse + instruction + input, instruction, max_length)
    s_a_q = _part(model, tok, prompt + answer, answer, max_length)
    ifd = math.exp(s_a_q) / math.exp(s_a) if None not in (s_a_q, s_a) else None
    rifd = math.exp(s_q_rev) / math.exp(s_q) if None not in (s_q_rev, s_q) else None
    return {"s_a_q": s_a_q, "s_a": s_a, "s_q_rev": s_q_rev, "s_q": s_q, "ifd": ifd, "rifd": rifd}
