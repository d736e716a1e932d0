"""One arm's scores: the reference-answer losses and the per-prompt rows of generations/<arm>.jsonl.

(Its answers come from stage 06's `generate_journalled`, so a killed evaluation resumes with the
prompts not yet answered.) The reference answer is scored twice through the scoring engine (exact
spans): right after the arm's own prompt (`ref_loss`), and inside the arm's own format, after the
reasoning it wrote itself (`ref_loss_format`): a student trained to think first is asked for the
reference where it would put its answer, so the loss moves with how well its reasoning leads there.
"""

from __future__ import annotations

from typing import Any

from ..core.runs import stable_hash
from ..format.tags import OUTPUT, THINKING, split_reasoning
from ..scoring.items import Item
from .metrics import score_answer


def prompt_sha(row: dict) -> str:
    """What a stored answer must match to be reused: the prompt and its reference."""
    return stable_hash([row.get("instruction", ""), row.get("input", "") or "", row.get("reference", "")])[:16]


def format_prefix(text: str) -> str:
    """Where the arm's own answer would start: its first thinking block closed, then `<output>`.

    An answer without a thinking block gets no prefix (the reference follows the prompt, as in
    `ref_loss`), so an arm that never learned the format is scored as it would answer.
    """
    reasoning, _ = split_reasoning(text)
    if reasoning is None:
        return ""
    return f"<{THINKING}>\n{reasoning}\n</{THINKING}>\n<{OUTPUT}>\n"


def reference_answer_losses(lm: Any, rows: list[dict], *, max_length: int, batch_tokens: int = 4096,
                            prefixes: list[str] | None = None, key: str = "ref_loss") -> list[dict]:
    """Mean cross-entropy of each reference answer's tokens after the arm's own prompt (exact spans).

    `prefixes`: text the arm wrote after the prompt, placed before the reference (see `format_prefix`);
    the fields are then named after `key`. The prompt, the prefix and the reference are tokenised
    separately (no boundary shift); a reference longer than the room left under max_length is cut and
    flagged; a prompt that fills max_length gets a missing loss with its reason, never 0.
    """
    from ..scoring.engine import LossEngine

    tok = lm.tokenizer
    out: list[dict] = []
    items: list[Item | None] = []
    for i, r in enumerate(rows):
        prompt = list(lm.prompt_ids(r.get("instruction", ""), r.get("input", "") or ""))
        if prefixes and prefixes[i]:
            prompt += tok(prefixes[i], add_special_tokens=False)["input_ids"]
        target = list(tok(str(r.get("reference", "")), add_special_tokens=False)["input_ids"])
        room = max_length - len(prompt)
        if not target or room < 1:
            reason = ("empty reference" if not target
                      else f"prompt of {len(prompt)} tokens fills max_length={max_length}")
            items.append(None)
            out.append({key: None, f"{key}_tokens": 0, f"{key}_missing": reason})
            continue
        items.append(Item(tuple(prompt), tuple(target[:room])))
        out.append({key: None, f"{key}_tokens": min(room, len(target)),
                    f"{key}_missing": None, f"{key}_truncated": room < len(target)})
    engine = LossEngine(lm.lm, pad_id=tok.pad_token_id, batch_tokens=batch_tokens, padding_side="right")
    losses = engine.score([it for it in items if it is not None])
    for rec, it in zip(out, items, strict=True):
        if it is not None:
            rec[key] = round(float(losses[it.key].mean), 6)
    return out


def arm_losses(lm: Any, rows: list[dict], gens: list[dict], *, max_length: int, batch_tokens: int = 4096
               ) -> list[dict]:
    """Both reference losses of one arm, per prompt: after the prompt, and inside the arm's own format."""
    plain = reference_answer_losses(lm, rows, max_length=max_length, batch_tokens=batch_tokens)
    prefixes = [format_prefix(g.get("text") or "") for g in gens]
    framed = reference_answer_losses(lm, rows, max_length=max_length, batch_tokens=batch_tokens,
                                     prefixes=prefixes, key="ref_loss_format")
    return [{**a, **b, "ref_loss_format_prefixed": bool(p)}
            for a, b, p in zip(plain, framed, prefixes, strict=True)]


def arm_rows(arm: str, rows: list[dict], gens: list[dict], losses: list[dict]) -> list[dict]:
    """What generations/<arm>.jsonl holds: the answer, its parse, its scores and its reference loss."""
    out = []
    for r, g, lo in zip(rows, gens, losses, strict=True):
        scores = score_answer(g["text"], g["finish_reason"], r)
        out.append({"id": str(r["id"]), "arm": arm, "category": r.get("category", ""),
                    "instruction": r.get("instruction", ""), "input": r.get("input", "") or "",
                    "reference": r.get("reference", ""), "text": g["text"], "finish_reason": g["finish_reason"],
                    "n_tokens": g.get("n_tokens"), "parsed": g["parsed"], **scores, **lo,
                    **({"error": g["error"]} if g.get("error") else {})})
    return out
