"""Build runs whose stage 04 is finished, for fine-tuning tests, without scoring anything.

Why: stage 05 only reads `04_select/selected.jsonl` and its manifest (docs/artifacts.md), so its
tests write those directly: fast, and independent of the scoring and selection code.

Also a tiny command line used by the kill -9 test (a real process that trains slowly):
    python tests/finetune_helpers.py --run DIR --sleep 0.3 --cfg max_steps=12 ...
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reflection_lab.runs import Run, read_jsonl, write_jsonl_atomic  # noqa: E402

WORDS = "apples rivers code answer check total model city seven bridge loop sum".split()
_BETTER = re.compile(r"\[Better Answer\]\s*(.*?)\s*\[End\]", re.S)


def one_thread():
    """Generator for an autouse fixture: 1 torch thread while a test module runs, then restore.

    Why: the tiny model gains nothing from 2 threads, and on a shared 2-core machine OpenMP's
    spinning threads make every step 20x slower when another process holds a core.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_selected_run(root: str | Path, rows: list[dict], config: dict | None = None) -> Run:
    """A run whose 04_select is complete with exactly `rows` as selected.jsonl."""
    run = Run(root)
    full = [{"id": r.get("id", f"s{k:03d}"), "instruction": r["instruction"], "input": r.get("input", ""),
             "output": r["output"], "outcome": r.get("outcome", "reflect_response"), "ifd": r.get("ifd", 0.8),
             "rifd": r.get("rifd", 0.7)} for k, r in enumerate(rows)]
    write_jsonl_atomic(run.path("select", "selected.jsonl"), full)
    counts = {"total": max(len(full), (config or {}).get("total", len(full))), "kept": len(full),
              "reflect_response": len(full)}
    run.complete("select", config or {"test": True}, ["selected.jsonl"], counts)
    return run


def tiny_rows(n: int = 24, seed: int = 0, min_words: int = 2, max_words: int = 40) -> list[dict]:
    """Reflection-format pairs of very different lengths (so length grouping matters)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        q = "Explain " + " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
        think = " ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words)))
        ans = " ".join(rng.choices(WORDS, k=rng.randint(min_words, max(min_words, max_words // 2))))
        out = (f"<thinking>\n{think}\n<reflection>\ncheck {rng.choice(WORDS)}\n</reflection>\n</thinking>\n"
               f"<output>\n{ans}\n</output>")
        rows.append({"id": f"s{k:03d}", "instruction": q, "input": "", "output": out})
    return rows


def workshop_reflection_rows() -> list[dict]:
    """Workshop pairs whose answer is the replay teacher's [Better Answer] ... [End] (Reflection format).

    Rows whose reply was malformed on purpose or has no such block are skipped.
    """
    data = ROOT / "data"
    samples = {r["id"]: r for r in read_jsonl(data / "workshop.jsonl")}
    rows = []
    for rep in read_jsonl(data / "workshop_replay.jsonl"):
        if rep.get("task") != "reflect_response" or rep.get("malformed") or rep["sample_id"] not in samples:
            continue
        m = _BETTER.search(rep["text"])
        if not m or "<output>" not in m.group(1):
            continue
        s = samples[rep["sample_id"]]
        rows.append({"id": s["id"], "instruction": s["instruction"], "input": s.get("input", ""),
                     "output": m.group(1).strip(), "outcome": "reflect_response"})
    return rows


def eval_prompts() -> list[dict]:
    return read_jsonl(ROOT / "data" / "workshop_eval.jsonl")


def losses(run: Run, kind: str = "train") -> dict[int, float]:
    """step -> loss from a finished run's train_log.jsonl."""
    key = "loss" if kind == "train" else "eval_loss"
    return {r["step"]: r[key] for r in read_jsonl(run.path("finetune", "train_log.jsonl")) if r.get("kind") == kind}


def _main(argv: list[str]) -> int:
    import argparse

    from reflection_lab.finetune import FinetuneConfig, run_finetune
    from reflection_lab.finetune_callbacks import SleepCallback

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--cfg", action="append", default=[])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    over = {k: json.loads(v) if v[:1] in "0123456789-[{tf\"" or v in ("null",) else v
            for k, v in (s.split("=", 1) for s in args.cfg)}
    cbs = [SleepCallback(args.sleep)] if args.sleep else []
    m = run_finetune(Run(args.run), FinetuneConfig(**over), progress=False, callbacks=cbs)
    print(json.dumps(m.get("counts", {})))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
