#!/usr/bin/env python3
"""IFD / r-IFD scoring: the reference-style loop vs the lab's engine, side by side in one run.

The reference-style loop does what the public IFD code does: one sequence at a time, each of
the four passes separately, fp32 weights, full-vocabulary logits with `output_hidden_states=True`,
loss from `labels` with the prompt masked. The engine scores the same token spans in
batches, deduplicated, with the LM head applied to answer positions only; in the `shared` layout
(the CPU default) each repeated prompt prefix is computed once.

Both see the same model and the same (prompt, target) token spans, so tokens/s compare like
for like; the script also checks that both give the same scores. Peak memory is the resident
set's high-water mark (reset between phases through /proc/self/clear_refs on Linux) on a CPU,
torch.cuda.max_memory_allocated on a GPU.

    python benchmarks/bench_scoring.py                       # tiny student + SmolLM2-135M
    python benchmarks/bench_scoring.py --models tiny-llama   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from reflection_lab.core.paths import repo_data_dir  # noqa: E402
from reflection_lab.models import load_model, load_tokenizer  # noqa: E402
from reflection_lab.scoring import PairEncoder  # noqa: E402
from reflection_lab.scoring.engine import LossEngine  # noqa: E402
from reflection_lab.scoring.items import Item  # noqa: E402
from reflection_lab.scoring.reference import reference_losses  # noqa: E402


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    from reflection_lab.core.devices import peak_rss_bytes

    return (peak_rss_bytes() or 0) / 2**20


def workload(tok, n: int, max_length: int) -> tuple[list[Item], int]:
    """Four passes for each of the 4 versions of n workshop samples (original + teacher replies)."""
    rows = [json.loads(x) for x in open(repo_data_dir() / "workshop.jsonl")]
    replay = {}
    for x in open(repo_data_dir() / "workshop_replay.jsonl"):
        r = json.loads(x)
        replay[(r["sample_id"], r["task"])] = r["text"]
    enc = PairEncoder(tok, template="chat", max_length=max_length)
    items: list[Item] = []
    for row in rows[:n]:
        answers = [row["output"]]
        for task in ("reflect_response", "reflect_instruction"):
            text = replay.get((row["id"], task), "")
            if "[Better Answer]" in text:
                answers.append(text.split("[Better Answer]", 1)[1].split("[End]")[0].strip())
        for ans in answers:
            its, _ = enc.items(row["instruction"], row["input"], ans)
            items += [x for x in its.values() if isinstance(x, Item)]
    return items, len(rows[:n])


def bench(model_name: str, n: int, max_length: int, batch_tokens: int, device: str,
          modes: list[str], repeat: int = 1) -> dict:
    tok = load_tokenizer(model_name)
    model = load_model(model_name)
    if device == "cuda":
        model.to("cuda")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    items, n_samples = workload(tok, n, max_length)
    ref_items = items  # the reference scores every pass, shared or not
    uniq = {it.key: it for it in items}
    tokens = sum(len(it) for it in ref_items)
    # Warm-up over the whole workload: the first pass over new shapes allocates and picks kernels, and
    # the reference loop meets far more distinct shapes than the engine (one per sequence length).
    reference_losses(model, ref_items, hidden_states=True)
    for mode in modes:
        LossEngine(model, pad_id=pad, batch_tokens=batch_tokens, padding_side=mode).score(ref_items)

    out = {"model": model_name, "samples": n_samples, "passes": len(ref_items), "unique_passes": len(uniq),
           "tokens": tokens, "engine": {}}
    # Rounds alternate reference and engine, so a slow spell on a shared machine hits both; the median
    # of the per-round ratios is reported.
    ref_times: list[float] = []
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeat):
        reset_peak()
        t0 = time.perf_counter()
        ref = reference_losses(model, ref_items, hidden_states=True)
        ref_times.append(time.perf_counter() - t0)
        out["ref_peak_mib"] = peak_mib()
        for mode in modes:
            reset_peak()
            t0 = time.perf_counter()
            engine = LossEngine(model, pad_id=pad, batch_tokens=batch_tokens, padding_side=mode)
            got = engine.score(ref_items)
            times[mode].append(time.perf_counter() - t0)
            if engine.padding_side != mode:
                raise SystemExit(f"the engine fell back from {mode!r} to {engine.padding_side!r} on {model_name}")
            out["engine"][mode] = {"peak_mib": peak_mib(), "computed": engine.tokens_computed,
                                   "max_abs_diff": max(abs(ref[k] - got[k].mean) for k in ref)}
    t_ref = statistics.median(ref_times)
    out.update({"ref_tok_s": tokens / t_ref, "ref_s": t_ref})
    for mode in modes:
        t_eng = statistics.median(times[mode])
        ratios = [r / e for r, e in zip(ref_times, times[mode])]
        out["engine"][mode].update({"tok_s": tokens / t_eng, "s": t_eng, "ratio": statistics.median(ratios),
                                    "ratios": ratios})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-llama,smollm2-135m")
    ap.add_argument("--n", type=int, default=0, help="samples per model (default: 100 tiny, 16 SmolLM2)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--modes", default="right,packed,shared",
                    help="engine layouts to time: right (padded batches, the GPU default), packed (rows without "
                         "padding), shared (one row, repeated prefixes computed once: the CPU default), left")
    ap.add_argument("--repeat", type=int, default=1, help="alternating rounds; the median ratio is reported")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}), "
          f"torch threads: {torch.get_num_threads()}")
    for name in args.models.split(","):
        n = args.n or (100 if name.startswith("tiny") else 16)
        r = bench(name, n, args.max_length, args.batch_tokens, device, args.modes.split(","), args.repeat)
        print(f"{r['model']}: {r['samples']} samples, {r['passes']} passes ({r['unique_passes']} unique), "
              f"{r['tokens']} tokens")
        print(f"  reference-style loop:   {r['ref_tok_s']:9.0f} tokens/s  ({r['ref_s']:.1f} s, "
              f"peak {r['ref_peak_mib']:.0f} MiB)")
        for mode, e in r["engine"].items():
            print(f"  lab engine ({mode:6s}):    {e['tok_s']:9.0f} tokens/s  ({e['s']:.1f} s, peak {e['peak_mib']:.0f} MiB)"
                  f"  speed-up {e['ratio']:.2f}x  max |score difference| {e['max_abs_diff']:.2e}"
                  f"  tokens computed {e['computed']}")
            if len(e["ratios"]) > 1:
                print(f"    per-round speed-ups: {', '.join(f'{x:.2f}x' for x in e['ratios'])}")


if __name__ == "__main__":
    main()
