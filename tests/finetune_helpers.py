"""Build runs whose stage 04 is finished, for fine-tuning tests, without scoring anything.

Why: stage 05 only reads `04_select/selected.jsonl` and its manifest (docs/artifacts.md), so its
tests write those directly: fast, and independent of the scoring and selection code.

Also a tiny command line: the kill -9 test's slow training process, and the SmolLM2 end-to-end check
(QLoRA on the workshop's Reflection-format answers, then the share of well-formed eval answers):
    python tests/finetune_helpers.py --run DIR --sleep 0.3 --cfg max_steps=12 ...
    python tests/finetune_helpers.py smollm2-e2e --run DIR --steps 60 --lr 1e-3 --threads 1
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

from reflection_lab.core.runs import Run, read_jsonl, write_jsonl_atomic  # noqa: E402

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


def generate_answers(model, tok, fmt, prompts: list[dict], *, max_new_tokens: int = 320,
                     batch_size: int = 8) -> list[dict]:
    """Greedy answers to eval prompts, built with the training prompt format and decoded keeping the tags."""
    import torch

    from reflection_lab.format.tags import parse
    from reflection_lab.format.chat import decode_keep_tags

    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
    out = []
    for k in range(0, len(prompts), batch_size):
        chunk = prompts[k:k + batch_size]
        ids = [fmt.prompt_ids(tok, p["instruction"], p.get("input", "")) for p in chunk]
        width = max(len(i) for i in ids)
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        with torch.no_grad():
            gen = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad)
        for p, row in zip(chunk, gen[:, width:].tolist()):
            stop = next((j for j, t in enumerate(row) if t in eos), None)
            new = row if stop is None else row[:stop]
            text = decode_keep_tags(tok, new)
            parsed = parse(text, truncated=stop is None)
            out.append({"id": p["id"], "text": text, "finish_reason": "length" if stop is None else "stop",
                        "well_formed": parsed.well_formed, "codes": parsed.codes})
    return out


def smollm2_end_to_end(root: str | Path, *, steps: int = 60, lr: float = 1e-3, batch_size: int = 4,
                       tags_as_special_tokens: bool = False, n_eval: int = 40, max_new_tokens: int = 320,
                       baseline: bool = True) -> dict:
    """QLoRA SmolLM2 on the workshop's Reflection-format answers, then the well-formed share on eval prompts."""
    import time

    from reflection_lab.finetune import FinetuneConfig, load_finetuned, run_finetune, training_format

    run = make_selected_run(root, workshop_reflection_rows())
    cfg = FinetuneConfig(student="smollm2-135m", method="qlora", max_steps=steps, batch_size=batch_size,
                         learning_rate=lr, max_length=768, tags_as_special_tokens=tags_as_special_tokens,
                         eval_fraction=0.1, save_steps=max(1, steps // 3))
    t0 = time.perf_counter()
    m = run_finetune(run, cfg, progress=True)
    train_wall = time.perf_counter() - t0
    model, tok = load_finetuned(run)
    fmt = training_format(run)
    prompts = eval_prompts()[:n_eval]
    t1 = time.perf_counter()
    tuned = generate_answers(model, tok, fmt, prompts, max_new_tokens=max_new_tokens)
    gen_wall = time.perf_counter() - t1
    result = {"config": cfg.as_dict(), "counts": m["counts"], "train_wall_s": round(train_wall, 1),
              "generate_wall_s": round(gen_wall, 1), "n_prompts": len(prompts),
              "well_formed": sum(r["well_formed"] for r in tuned), "hit_length_limit": sum(
                  r["finish_reason"] == "length" for r in tuned)}
    result["well_formed_share"] = result["well_formed"] / len(prompts)
    if baseline:
        with model.disable_adapter():
            base = generate_answers(model, tok, fmt, prompts, max_new_tokens=max_new_tokens)
        result["base_well_formed_share"] = sum(r["well_formed"] for r in base) / len(prompts)
    write_jsonl_atomic(Path(root) / "e2e_generations.jsonl", tuned)
    (Path(root) / "e2e_result.json").write_text(json.dumps(result, indent=1))
    return result


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _main(argv: list[str]) -> int:
    import argparse

    from reflection_lab.finetune import FinetuneConfig, run_finetune
    from reflection_lab.finetune.callbacks import SleepCallback

    if argv[:1] == ["smollm2-e2e"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("--run", required=True)
        ap.add_argument("--steps", type=int, default=60)
        ap.add_argument("--lr", type=float, default=1e-3)
        ap.add_argument("--batch-size", type=int, default=4)
        ap.add_argument("--special-tokens", action="store_true")
        ap.add_argument("--n-eval", type=int, default=40)
        ap.add_argument("--max-new-tokens", type=int, default=320)
        ap.add_argument("--threads", type=int, default=0)
        ap.add_argument("--no-baseline", action="store_true")
        a = ap.parse_args(argv[1:])
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        res = smollm2_end_to_end(a.run, steps=a.steps, lr=a.lr, batch_size=a.batch_size,
                                 tags_as_special_tokens=a.special_tokens, n_eval=a.n_eval,
                                 max_new_tokens=a.max_new_tokens, baseline=not a.no_baseline)
        print(json.dumps(res, indent=1))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--cfg", action="append", default=[])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    over = {k: _value(v) for k, v in (s.split("=", 1) for s in args.cfg)}
    cbs = [SleepCallback(args.sleep)] if args.sleep else []
    m = run_finetune(Run(args.run), FinetuneConfig(**over), progress=False, callbacks=cbs)
    print(json.dumps(m.get("counts", {})))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
