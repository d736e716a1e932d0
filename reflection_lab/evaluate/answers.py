"""One arm's scores: the reference-answer loss and the per-prompt rows of generations/<arm>.jsonl.

(Its answers come from stage 06's `generate_journalled`, so a killed evaluation resumes with the
prompts not yet answered.) The loss of the reference answer after the arm's own prompt goes through
the scoring engine (exact spans).
"""

from __future__ import annotations

from typing import Any

from ..core.runs import stable_hash
from ..scoring.items import Item
from .metrics import score_answer


def prompt_sha(row: dict) -> str:
    """What a stored answer must match to be reused: the prompt and its reference."""
    return stable_hash([row.get("instruction", ""), row.get("input", "") or "", row.get("reference", "")])[:16]


def reference_answer_losses(lm: Any, rows: list[dict], *, max_length: int, batch_tokens: int = 4096) -> list[dict]:
    """Mean cross-entropy of each reference answer's tokens after the arm's own prompt (exact spans).

    The prompt and the reference are tokenised separately (no boundary shift); a reference longer
    than the room left under max_length is cut and flagged; a prompt that fills max_length gets a
    missing loss with its reason, never 0.
    """
    from ..scoring.engine import LossEngine

    tok = lm.tokenizer
    out: list[dict] = []
    items: list[Item | None] = []
    for r in rows:
        prompt = lm.prompt_ids(r.get("instruction", ""), r.get("input", "") or "")
        target = list(tok(str(r.get("reference", "")), add_special_tokens=False)["input_ids"])
        room = max_length - len(prompt)
        if not target or room < 1:
            reason = ("empty reference" if not target
                      else f"prompt of {len(prompt)} tokens fills max_length={max_length}")
            items.append(None)
            out.append({"ref_loss": None, "ref_tokens": 0, "ref_loss_missing": reason})
            continue
        items.append(Item(tuple(prompt), tuple(target[:room])))
        out.append({"ref_loss": None, "ref_tokens": min(room, len(target)),
                    "ref_loss_missing": None, "ref_truncated": room < len(target)})
    engine = LossEngine(lm.lm, pad_id=tok.pad_token_id, batch_tokens=batch_tokens, padding_side="right")
    losses = engine.score([it for it in items if it is not None])
    for rec, it in zip(out, items, strict=True):
        if it is not None:
            rec["ref_loss"] = round(float(losses[it.key].mean), 6)
    return out


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
