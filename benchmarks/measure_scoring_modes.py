#!/usr/bin/env python3
"""How much the scoring choices of issue 19 move the selection, on the workshop data.

Scores every version of every workshop sample (data + replayed teacher, as the `offline-full`
profile makes them) under one student with several encodings, runs the default selection rules
(`SelectConfig()`) on each, and prints, side by side with the first setting, how many decisions
(the kept variant or the drop reason) change and how far IFD / r-IFD move:

* `lab-old-start`: the lab's encoding with the direct passes s(A), s(Q) started from the
  tokenizer's `bos_token` whatever it is (before issue 19: `<|im_start|>` on SmolLM2);
* `lab`: the lab's encoding now (BOS the tokenizer adds, else end-of-text, never a chat marker);
* `reference`: the published procedure (scoring_mode="reference", vicuna template).

    python benchmarks/measure_scoring_modes.py                      # SmolLM2, template chat, all 100 samples
    python benchmarks/measure_scoring_modes.py --template vicuna --n 40
    python benchmarks/measure_scoring_modes.py --from-run runs/full  # reuse that run's stage 03 as `lab`

`--from-run` takes the samples from a run's 02_reflect and, when its finished 03_score was made with the same
student, template, max_length and the lab's mode in full precision, its scores as the `lab` setting (the
stage computes exactly what this script would; scoring SmolLM2 on 100 samples takes 10-20 minutes here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reflection_lab.core.runs import VARIANTS, Run, read_jsonl  # noqa: E402
from reflection_lab.models import load_model, load_tokenizer  # noqa: E402
from reflection_lab.pipeline import run_stage  # noqa: E402
from reflection_lab.profiles import get_profile  # noqa: E402
from reflection_lab.scoring import PairEncoder, combine  # noqa: E402
from reflection_lab.scoring.encode import make_encoder  # noqa: E402
from reflection_lab.scoring.engine import LossEngine  # noqa: E402
from reflection_lab.scoring.items import Item  # noqa: E402
from reflection_lab.selection import SelectConfig  # noqa: E402
from reflection_lab.selection.table import decide  # noqa: E402


def reflections(n: int | None) -> list[dict]:
    """The workshop samples and their replayed teacher versions, made by stages 01 and 02."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp) / "run")
        profile = get_profile("offline-full", n_samples=n)
        for stage in ("data", "reflect"):
            run_stage(stage, run, profile, progress=False)
        return read_jsonl(run.path("reflect", "reflections.jsonl"))


def stage_scores(run: Run, rows: list[dict], model: str, template: str, max_length: int) -> list[dict] | None:
    """A finished 03_score of `run` in `rows` order, when it was made with these settings (else None)."""
    m = run.manifest("score") or {}
    import torch

    want = {"student": model, "template": template, "max_length": max_length, "scoring_mode": "lab", "quant4": False}
    config = m.get("config", {})
    if m.get("status") != "complete" or any(config.get(k) != v for k, v in want.items()):
        return None
    # float32 as here: the manifest records the dtype asked for, not the one "auto" chose (bf16 on a GPU)
    if config.get("dtype") not in ("float32", "auto") or (config.get("dtype") == "auto" and torch.cuda.is_available()):
        return None
    by_id = {r["id"]: r for r in read_jsonl(run.path("score", "scores.jsonl"))}
    return [by_id[r["id"]] for r in rows] if all(r["id"] in by_id for r in rows) else None


def score_rows(rows: list[dict], enc, engine: LossEngine) -> list[dict]:
    """scores.jsonl-shaped rows (what stage 04 reads) under one encoder."""
    plan = [(r["id"], v, *enc.items(r["variants"][v]["instruction"], r["variants"][v].get("input", ""),
                                     r["variants"][v]["output"])) for r in rows for v in VARIANTS]
    losses = engine.score([it for _, _, items, _ in plan for it in items.values() if isinstance(it, Item)])
    out: dict[str, dict] = {}
    for sid, v, items, info in plan:
        out.setdefault(sid, {"id": sid, "variants": {}})["variants"][v] = combine(items, info, losses)
    return list(out.values())


def compare(base: list[dict], other: list[dict]) -> dict:
    d0, d1 = decide(base, SelectConfig()), decide(other, SelectConfig())
    diffs = {"ifd": [], "rifd": []}
    for a, b in zip(base, other):
        for v in VARIANTS:
            for k in diffs:
                x, y = a["variants"][v][k], b["variants"][v][k]
                if x is not None and y is not None:
                    diffs[k].append(abs(x - y))
    return {"changed": sum(x.outcome != y.outcome for x, y in zip(d0, d1)), "kept": sum(y.kept for y in d1),
            "changed_ids": [x.id for x, y in zip(d0, d1) if x.outcome != y.outcome],
            "ifd_mean": statistics.fmean(diffs["ifd"]), "ifd_max": max(diffs["ifd"]),
            "rifd_mean": statistics.fmean(diffs["rifd"]), "rifd_max": max(diffs["rifd"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--template", default="chat", help="template of the two lab settings (chat, plain, alpaca, vicuna)")
    ap.add_argument("--n", type=int, default=None, help="workshop samples (default: all)")
    ap.add_argument("--max-length", type=int, default=768, help="as the offline profiles")
    ap.add_argument("--from-run", help="a run directory: its 02_reflect samples and, if it matches, its 03_score")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--settings", default="lab-old-start,lab,reference",
                    help="comma-separated subset (lab-old-start vs lab is issue 19's start-token change)")
    args = ap.parse_args()
    args.settings = [x.strip() for x in args.settings.split(",") if x.strip()]
    bad = sorted(set(args.settings) - {"lab-old-start", "lab", "reference"})
    if bad:
        raise SystemExit(f"unknown setting(s) {bad}; choose from lab-old-start, lab, reference")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    source = Run(args.from_run) if args.from_run else None
    rows = read_jsonl(source.path("reflect", "reflections.jsonl"))[:args.n] if source else reflections(args.n)
    reused = stage_scores(source, rows, args.model, args.template, args.max_length) if source else None
    tok, model = load_tokenizer(args.model), load_model(args.model, dtype="float32")
    engine = LossEngine(model, pad_id=tok.pad_token_id)
    old_start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    settings = {
        "lab-old-start": PairEncoder(tok, template=args.template, max_length=args.max_length, start=old_start),
        "lab": make_encoder(tok, mode="lab", template=args.template, max_length=args.max_length),
        "reference": make_encoder(tok, mode="reference", template="vicuna", max_length=args.max_length),
    }
    print(f"{args.model}, {len(rows)} workshop samples x 4 versions, template {args.template!r} "
          f"(reference: 'vicuna'), max_length {args.max_length}, SelectConfig() defaults")
    print(f"start token of s(A), s(Q): old {tok.convert_ids_to_tokens(old_start)!r}, "
          f"now {tok.convert_ids_to_tokens(settings['lab'].start)!r}")
    scored: dict[str, list[dict]] = {}
    if reused is not None:
        scored["lab"] = reused
        print(f"  lab: the scores of {args.from_run}/03_score (same student, template and max_length)")
    print(f"\n{'setting':<28} {'kept':>5} {'decisions changed':>18} {'|dIFD| mean':>12} {'max':>7} "
          f"{'|dr-IFD| mean':>14} {'max':>7}", flush=True)
    pairs = [p for p in (("lab-old-start", "lab"), ("lab", "reference")) if set(p) <= set(args.settings)]
    printed: set[tuple[str, str]] = set()
    for name in sorted(args.settings, key=list(settings).index):
        if name not in scored:
            t0 = time.perf_counter()
            scored[name] = score_rows(rows, settings[name], engine)
            print(f"  scored {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        for base, other in [p for p in pairs if set(p) <= set(scored) and p not in printed]:
            printed.add((base, other))
            c = compare(scored[base], scored[other])  # printed as soon as both sides are scored
            print(f"{other + ' vs ' + base:<28} {c['kept']:>5} {c['changed']:>11} of {len(rows):<4} "
                  f"{c['ifd_mean']:>12.4f} {c['ifd_max']:>7.3f} {c['rifd_mean']:>14.4f} {c['rifd_max']:>7.3f}")
            print(f"    changed: {', '.join(c['changed_ids']) or 'none'}", flush=True)
    if "lab-old-start" in scored:
        print(f"(lab-old-start keeps {sum(d.kept for d in decide(scored['lab-old-start'], SelectConfig()))})")


if __name__ == "__main__":
    main()
