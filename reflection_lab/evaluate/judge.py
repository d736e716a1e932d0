"""Pairwise judge for stage 07: a chat model compares two arms' answers, asked in both orders.

Protocol (the one the Cherry / Selective Reflection-Tuning papers took from AlpaGasus): the judge
scores both answers from 1 to 10 at temperature 0; every comparison is asked twice with the
answers swapped, because judges favour a position. Per prompt, arm A *wins* if it scored higher
in both orders, or higher in one and tied in the other; it *ties* if both orders tie or the
preference follows the position (A better in one order, B in the other); *loses* otherwise.
Results are wins / ties / losses and the winning score (W - L) / N + 1 (1.0 = even).

The judge is any backend of the llm layer: an OpenAI-compatible endpoint
(`make_backend("openai:gpt-4o-mini")`, a vLLM / llama.cpp server, the lab's own server), a local
model, or `scripted_judge()` here (the scripted backend with a rule of thumb), which tests and
offline demos use. Replies are journalled by request key,
so a rerun never asks the same comparison twice, and an unreadable reply counts as `invalid`,
never as a tie.

By default the judge sees each answer's final `<output>` text only (what a user of a
Reflection-style model is shown); `view="full"` shows the whole generation instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core.runs import Journal
from ..format.tags import parse
from ..llm.base import ChatReply, ChatRequest
from ..llm.scripted import ScriptedModel
from .metrics import combine_orders, extract_number, numeric_match, order_preference

PROMPT_VERSION = "judge-v1"
NO_ANSWER = "(no final answer: the response has no <output> block)"
MAX_ANSWER_CHARS = 6000

JUDGE_SYSTEM = ("You grade answers to user requests. You are strict about correctness, you ignore the order in "
                "which answers are shown, and you do not reward length for its own sake.")

# Markers the scripted judge reads back; keep them stable (they are part of PROMPT_VERSION).
_Q, _REF, _A1, _A2 = "### Request", "### Reference answer", "### Answer of assistant 1", "### Answer of assistant 2"
_END = "### End of answers"

JUDGE_TEMPLATE = """Two assistants answered the same request. Decide how good each answer is.

{q}
{question}
{reference_block}
{a1}
{first}

{a2}
{second}

{end}

Score each answer from 1 to 10: 10 is correct, complete and clearly written; 1 is wrong, off-topic or empty.
Correctness comes first, then helpfulness, relevance and the right level of detail.
Write one or two sentences explaining the scores, then end with one line in exactly this form:
Scores: <score of assistant 1> <score of assistant 2>"""

_REFERENCE_BLOCK = """
{ref}
(written by the dataset author; it may be terse, and a different correct answer is fine)
{reference}
"""


def answer_view(text: str, view: str = "output") -> str:
    """What the judge is shown of one generation: its <output> text (default) or the whole text."""
    if view == "full":
        shown = text.strip()
    elif view == "output":
        ans = parse(text).answer
        shown = ans.strip() if ans is not None and ans.strip() else NO_ANSWER
    else:
        raise ValueError(f"view must be 'output' or 'full', not {view!r}")
    return shown[:MAX_ANSWER_CHARS] if shown else NO_ANSWER


def judge_messages(question: str, first: str, second: str, reference: str | None = None) -> list[dict[str, str]]:
    """The chat messages of one comparison (first = the answer shown as assistant 1)."""
    ref_block = _REFERENCE_BLOCK.format(ref=_REF, reference=reference.strip()) if reference else ""
    user = JUDGE_TEMPLATE.format(q=_Q, question=question.strip(), reference_block=ref_block, a1=_A1, first=first,
                                 a2=_A2, second=second, end=_END)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def unpack_messages(messages: Sequence[dict]) -> dict[str, str | None]:
    """Question, reference and both answers back out of `judge_messages` (for scripted judges)."""
    user = next(m["content"] for m in messages if m["role"] == "user")

    def between(start: str, stop: str) -> str:
        i = user.index(start) + len(start)
        return user[i:user.index(stop, i)].strip()

    has_ref = _REF in user
    question = between(_Q, _REF if has_ref else _A1)
    reference = None
    if has_ref:
        body = between(_REF, _A1)
        reference = body.split("\n", 1)[1].strip() if "\n" in body else ""
    return {"question": question, "reference": reference, "first": between(_A1, _A2), "second": between(_A2, _END)}


_NUM = r"(\d+(?:\.\d+)?)"
_SCORES_LINE = re.compile(
    rf"scores?\s*[:=\-]?\s*\**\s*{_NUM}\s*(?:/\s*10)?\s*\**\s*(?:[,;|&]|and|vs\.?)?\s*\**\s*{_NUM}", re.I)
_PER_ASSISTANT = re.compile(rf"assistant\s*([12])\s*(?:'s)?\s*(?:score)?\s*[:=\-]\s*\**\s*{_NUM}", re.I)
_TWO_NUMBERS = re.compile(rf"^\s*{_NUM}\s*[,\s]\s*{_NUM}\s*$")


def parse_verdict(text: str | None) -> tuple[float, float] | None:
    """(score of assistant 1, score of assistant 2) from a judge reply, or None if it cannot be read.

    Accepts, last occurrence first: "Scores: 7 4" (also "7/10, 4/10", "7 and 4", bold markup),
    "Assistant 1: 7 ... Assistant 2: 4", or a line holding just two numbers (AlpaGasus' format).
    Scores outside 0..10 are rejected rather than guessed.
    """
    if not text:
        return None
    found: tuple[float, float] | None = None
    matches = list(_SCORES_LINE.finditer(text))
    if matches:
        m = matches[-1]
        found = (float(m.group(1)), float(m.group(2)))
    else:
        per: dict[str, float] = {}
        for m in _PER_ASSISTANT.finditer(text):
            per[m.group(1)] = float(m.group(2))
        if "1" in per and "2" in per:
            found = (per["1"], per["2"])
        else:
            for line in text.splitlines():
                m2 = _TWO_NUMBERS.match(line)
                if m2:
                    found = (float(m2.group(1)), float(m2.group(2)))
                    break
    if found is None or not all(0 <= s <= 10 for s in found):
        return None
    return found


def scripted_judge(decide: Callable[..., Any] | None = None, *, model: str = "scripted-judge") -> ScriptedModel:
    """A judge without a model: the scripted backend, replying from `decide(question, first, second, reference)`.

    `decide` returns the reply text or a (score1, score2) pair. The default prefers an answer whose
    last number matches the reference's, else the longer one; good enough for demos, not for conclusions.
    """
    rule = decide or _reference_match

    def reply(messages: list[dict]) -> str:
        parts = unpack_messages(messages)
        out = rule(parts["question"], parts["first"], parts["second"], parts["reference"])
        return out if isinstance(out, str) else f"Scripted verdict.\nScores: {out[0]:g} {out[1]:g}"

    return ScriptedModel(reply, model=model)


def _reference_match(question: str | None, first: str | None, second: str | None,
                     reference: str | None) -> tuple[int, int]:
    ref = extract_number(reference) if reference else None
    s = []
    for ans in (first, second):
        if not ans or ans == NO_ANSWER:
            s.append(1)
        elif ref is not None and numeric_match(extract_number(ans), ref):
            s.append(8)
        else:
            s.append(4 if len(ans) > 40 else 3)
    return s[0], s[1]


@dataclass(frozen=True)
class Comparison:
    """One prompt, two arms: what the judge needs for both orders."""

    sample_id: str
    question: str
    reference: str | None
    arm_a: str
    arm_b: str
    answer_a: str
    answer_b: str


def _request(judge: Any, c: Comparison, order: str, max_tokens: int) -> ChatRequest:
    first, second = (c.answer_a, c.answer_b) if order == "AB" else (c.answer_b, c.answer_a)
    return ChatRequest.make(judge, judge_messages(c.question, first, second, c.reference), temperature=0.0,
                            max_tokens=max_tokens,
                            meta={"sample_id": c.sample_id, "task": f"judge:{c.arm_a}-vs-{c.arm_b}:{order}"})


def _preference(order: str, reply: dict | None) -> tuple[str | None, tuple[float, float] | None]:
    """'A', 'B', 'tie' or None for one order's reply."""
    scores = parse_verdict(reply.get("text")) if reply else None
    pref = order_preference(*scores) if scores else None
    if pref is None:
        return None, scores
    if pref == "tie":
        return "tie", scores
    return ("A" if (pref == "first") == (order == "AB") else "B"), scores


def run_judge(judge: Any, comparisons: Sequence[Comparison], journal_path: str | Path, *, max_tokens: int = 400,
              concurrency: int = 4, progress: bool = False) -> list[dict]:
    """Ask every comparison in both orders (journalled replies are reused); one verdict row each."""
    journal = Journal(journal_path, key="key")
    done = {k: r for k, r in journal.load().items() if r.get("text") is not None}
    reqs = {(i, order): _request(judge, c, order, max_tokens)
            for i, c in enumerate(comparisons) for order in ("AB", "BA")}
    pending = list({r.key: r for r in reqs.values() if r.key not in done}.values())
    errors: dict[str, str] = {}

    def on_reply(rep: ChatReply) -> None:
        rec = {**rep.record(), "backend": getattr(judge, "kind", "?"), "model": getattr(judge, "model", "?")}
        if rep.ok:
            journal.append(rec)
            done[rep.key] = rec
        else:
            errors[rep.key] = rep.error or "error"

    if pending:
        if progress:
            print(f"judge: asking {len(pending)} comparisons ({len(done)} already answered)", flush=True)
        judge.complete(pending, on_reply, concurrency=concurrency)
    rows = []
    for i, c in enumerate(comparisons):
        r_ab, r_ba = done.get(reqs[(i, "AB")].key), done.get(reqs[(i, "BA")].key)
        p_ab, s_ab = _preference("AB", r_ab)
        p_ba, s_ba = _preference("BA", r_ba)
        rows.append({"id": c.sample_id, "a": c.arm_a, "b": c.arm_b, "verdict": combine_orders(p_ab, p_ba),
                     "a_first": {"scores": s_ab, "preferred": p_ab, "error": errors.get(reqs[(i, "AB")].key)},
                     "a_second": {"scores": s_ba, "preferred": p_ba, "error": errors.get(reqs[(i, "BA")].key)}})
    return rows


def describe_judge(judge: Any, view: str, use_reference: bool) -> dict[str, Any]:
    """What goes into the stage config (never a secret: backends' describe() leaves keys out)."""
    desc = judge.describe() if hasattr(judge, "describe") else {"backend": type(judge).__name__}
    return {**desc, "prompt_version": PROMPT_VERSION, "view": view, "use_reference": use_reference}


__all__ = ["Comparison", "JUDGE_SYSTEM", "JUDGE_TEMPLATE", "NO_ANSWER", "PROMPT_VERSION", "scripted_judge",
           "answer_view", "describe_judge", "judge_messages", "parse_verdict", "run_judge", "unpack_messages"]
