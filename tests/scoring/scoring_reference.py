"""A deliberately plain, one-sample-at-a-time IFD / r-IFD implementation to check the engine against.

It checks the engine against the lab's own definition (it cannot see a wrong definition: the published
procedure has its own transcription, published_transcription.py). It shares nothing with the engine
but the tokenizer and the prompt text: the strings are rendered and
tokenised here, whole reverse prompt included (the encoder cuts it at token level), and every loss
comes from the package's plain reference loop (scoring.reference: full logits, labels with -100 on
the prompt, batch size 1, no padding), the same loop the benchmarks time the engine against.
"""

from __future__ import annotations

import math

from reflection_lab.format.templates import REVERSE_HEAD, REVERSE_TAIL, render, render_forward, user_text
from reflection_lab.scoring.reference import reference_loss as _mean_loss


def reference_scores(model, tok, instruction, input, answer, template="chat", max_length=10_000):
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    with_start = lambda ids: ids if ids and ids[0] == start else [start] + ids  # noqa: E731
    # A prompt's trailing space (vicuna's "ASSISTANT: ") is written before the scored text, not after the prompt.
    forward = render_forward(tok, template, instruction, input)
    rev_text = render(tok, template, REVERSE_HEAD + answer + REVERSE_TAIL)
    lead, rev_lead = forward[len(forward.rstrip(" ")):], rev_text[len(rev_text.rstrip(" ")):]
    a = enc(lead + answer)
    q = enc(rev_lead + user_text(instruction, input))
    prompt = with_start(enc(forward.rstrip(" ")))
    a = a[:max_length - len(prompt)]
    s_aq = _mean_loss(model, prompt, a)
    s_a = _mean_loss(model, [start], a)
    rev = with_start(enc(rev_text.rstrip(" ")))
    s_qr = _mean_loss(model, rev, q)
    s_q = _mean_loss(model, [start], q)
    return {"s_a_q": s_aq, "s_a": s_a, "s_q_rev": s_qr, "s_q": s_q,
            "ifd": math.exp(s_aq - s_a), "ifd_loss": s_aq / s_a,
            "rifd": math.exp(s_qr - s_q), "rifd_loss": s_qr / s_q}
