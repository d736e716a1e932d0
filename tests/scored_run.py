"""Test helper: fake but schema-valid scored runs (01_data, 02_reflect, 03_score) without a model.

Why: selection, figures and widgets only need the artifacts of stage 03 (docs/artifacts.md), so
their tests build those artifacts directly and stay fast and independent of the scoring engine.

    rows = [scored_row("a", {"original": (0.8, 0.9), "reflect_instruction": (0.85, 0.7),
                             "reflect_response": "empty answer", "reflect_both": (0.9, 0.6)})]
    write_scored_run(run, rows)

A variant spec is (ifd, rifd) with either value None (missing, reason "missing in test"), a
string (the whole variant is missing with that reason), or absent from the dict.
"""

from __future__ import annotations

import math
import random
from typing import Any

from reflection_lab.core.runs import Run, write_json_atomic, write_jsonl_atomic

VARIANTS = ("original", "reflect_instruction", "reflect_response", "reflect_both")
S_A, S_Q = 2.0, 3.0  # made-up direct losses; the conditioned ones follow from the wanted ratios


def variant_scores(instruction: str, input: str, output: str, ifd: float | None, rifd: float | None,
                   missing: str | None = None) -> dict:
    """One VariantScores record whose losses agree with the requested PPL-ratio IFD / r-IFD."""
    rec: dict[str, Any] = {"instruction": instruction, "input": input, "output": output,
                           "n_answer_tokens": len(output.split()), "n_instruction_tokens": len(instruction.split())}
    if ifd is None:
        rec.update(ifd=None, ifd_loss=None, s_a_q=None, s_a=None)
    else:
        s_a_q = S_A + math.log(ifd)
        rec.update(ifd=ifd, ifd_loss=s_a_q / S_A, s_a_q=s_a_q, s_a=S_A)
    if rifd is None:
        rec.update(rifd=None, rifd_loss=None, s_q_rev=None, s_q=None)
    else:
        s_q_rev = S_Q + math.log(rifd)
        rec.update(rifd=rifd, rifd_loss=s_q_rev / S_Q, s_q_rev=s_q_rev, s_q=S_Q)
    rec["missing"] = missing if missing else (None if ifd is not None and rifd is not None else "missing in test")
    return rec


def texts_for(sid: str, variant: str) -> tuple[str, str, str]:
    """Distinct, recognisable texts per variant."""
    q0, a0 = f"Explain topic {sid}.", f"Topic {sid} is short."
    q1, a1 = f"Explain topic {sid} in detail, with an example.", f"Topic {sid} is explained here with an example."
    return {"original": (q0, "", a0), "reflect_instruction": (q1, "", a1),
            "reflect_response": (q0, "", f"A better answer: topic {sid} means this, step by step."),
            "reflect_both": (q1, "", f"A better detailed answer about {sid}, with an example.")}[variant]


def scored_row(sid: str, spec: dict[str, Any], texts: dict[str, tuple[str, str, str]] | None = None) -> dict:
    """One scores.jsonl row from a compact spec (see the module docstring)."""
    variants = {}
    for v in VARIANTS:
        if v not in spec:
            continue
        q, i, a = (texts or {}).get(v) or texts_for(sid, v)
        s = spec[v]
        if isinstance(s, str):
            variants[v] = variant_scores(q, i, a, None, None, missing=s)
        else:
            variants[v] = variant_scores(q, i, a, s[0], s[1])
    return {"id": sid, "variants": variants}


def synthetic_rows(n: int, seed: int = 0, missing_rate: float = 0.01) -> list[dict]:
    """n scored rows with plausible spreads (IFD around 0.8, some above 1) and a few missing scores."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        sid = f"s{k:06d}"
        spec: dict[str, Any] = {}
        for v in VARIANTS:
            if rng.random() < missing_rate:
                spec[v] = "prompt longer than max_length"
                continue
            spec[v] = (round(math.exp(rng.gauss(-0.25, 0.2)), 4), round(math.exp(rng.gauss(-0.3, 0.25)), 4))
        words = " ".join(["word"] * rng.randint(1, 300))
        texts = {v: (f"Question {k} ({v})", "", f"{words} {v}") for v in VARIANTS}
        rows.append(scored_row(sid, spec, texts))
    return rows


def write_scored_run(run: Run, rows: list[dict], *, token_losses: bool = True, raw: bool = True) -> Run:
    """Write 01_data, 02_reflect and 03_score for these score rows, each with a complete manifest."""
    samples = []
    reflections = []
    for row in rows:
        vs = row["variants"]
        orig = vs.get("original") or {"instruction": f"q {row['id']}", "input": "", "output": f"a {row['id']}"}
        samples.append({"id": row["id"], "instruction": orig["instruction"], "input": orig["input"],
                        "output": orig["output"], "category": "test"})
        variants = {"original": {k: orig[k] for k in ("instruction", "input", "output")}}
        for v in VARIANTS[1:]:
            src = vs.get(v) or orig
            variants[v] = {**{k: src[k] for k in ("instruction", "input", "output")},
                           "parse_ok": v in vs, "parse_reason": None if v in vs else "no reply in test"}
        reflections.append({
            "id": row["id"], "category": "test", "variants": variants,
            "raw": {"reflect_instruction": f"[Critique] <b>raw</b> teacher text for {row['id']}" if raw else None,
                    "reflect_response": f"raw response reflection for {row['id']}" if raw else None,
                    "reflect_response_on_reflected": None},
            "teacher": {"backend": "replay", "model": "test", "style": "test", "prompt_version": "0"}})
    run.begin("data", {"test": True})
    write_jsonl_atomic(run.path("data", "samples.jsonl"), samples)
    run.complete("data", {"test": True}, ["samples.jsonl"], counts={"train": len(samples)})
    run.begin("reflect", {"test": True})
    write_jsonl_atomic(run.path("reflect", "reflections.jsonl"), reflections)
    run.complete("reflect", {"test": True}, ["reflections.jsonl"], counts={"samples": len(rows)})
    run.begin("score", {"test": True, "template": "plain"})
    write_jsonl_atomic(run.path("score", "scores.jsonl"), rows)
    outputs = ["scores.jsonl"]
    if token_losses:
        tl = []
        for row in rows:
            for v, rec in row["variants"].items():
                tokens = [(" " if j else "") + w for j, w in enumerate(rec["output"].split())]
                tl.append({"id": row["id"], "variant": v, "tokens": tokens,
                           "cond": [round(0.5 + (j % 5) * 0.7, 3) for j in range(len(tokens))],
                           "direct": [round(1.0 + (j % 3) * 0.9, 3) for j in range(len(tokens))]})
        write_jsonl_atomic(run.path("score", "token_losses.jsonl"), tl)
        outputs.append("token_losses.jsonl")
    run.complete("score", {"test": True, "template": "plain"}, outputs, counts={"samples": len(rows)})
    write_json_atomic(run.root / "test_marker.json", {"rows": len(rows)})
    return run
