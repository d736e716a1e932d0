"""How fast the threshold explorer reacts on a 50,000-sample scored table.

Run: ``python benchmarks/bench_selection.py [--n 50000] [--repeats 7]``.

It builds a synthetic, schema-valid scores table (four variants per sample, ~1% missing scores,
IFD spread around 0.8 with a tail above 1), then times what one slider move costs:

* decide: `SelectionTable.evaluate` (thresholds, filters, top-k) alone;
* update: the explorer's update path = re-decide + recount + rebuild both histogram figures
  (`ExplorerState.update` plus the count text and the outcome table);
* widget: the same through a real `ThresholdExplorer` slider (adds the id list refresh; drawing
  in the browser is not included: there is no browser here).

Each figure is the minimum over several repeats, each with a different threshold. The target is
< 200 ms per update.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reflection_lab.core.runs import VARIANTS  # noqa: E402
from reflection_lab.selection import SelectConfig, SelectionTable
from reflection_lab.selection.widgets import ExplorerState, ThresholdExplorer  # noqa: E402

TARGET_MS = 200.0


def synthetic_rows(n: int, seed: int = 0, missing_rate: float = 0.01) -> list[dict]:
    """Schema-valid scores.jsonl rows (docs/artifacts.md) with made-up but plausible numbers."""
    rng = np.random.default_rng(seed)
    ifd = np.exp(rng.normal(-0.25, 0.2, (4, n)))
    rifd = np.exp(rng.normal(-0.3, 0.25, (4, n)))
    missing = rng.random((4, n)) < missing_rate
    words = rng.integers(5, 400, (4, n))
    rows = []
    for i in range(n):
        variants = {}
        for vi, v in enumerate(VARIANTS):
            out = " ".join(["token"] * int(words[vi, i]))
            if missing[vi, i]:
                scores = dict(ifd=None, ifd_loss=None, rifd=None, rifd_loss=None, s_a_q=None, s_a=None,
                              s_q_rev=None, s_q=None, missing="prompt longer than max_length")
            else:
                s_a, s_q = 2.0, 3.0
                s_a_q, s_q_rev = s_a + np.log(ifd[vi, i]), s_q + np.log(rifd[vi, i])
                scores = dict(ifd=float(ifd[vi, i]), ifd_loss=float(s_a_q / s_a), rifd=float(rifd[vi, i]),
                              rifd_loss=float(s_q_rev / s_q), s_a_q=float(s_a_q), s_a=s_a, s_q_rev=float(s_q_rev),
                              s_q=s_q, missing=None)
            variants[v] = {"instruction": f"question {i} ({v})", "input": "", "output": out,
                           "n_answer_tokens": int(words[vi, i]), "n_instruction_tokens": 4, **scores}
        rows.append({"id": f"s{i:06d}", "variants": variants})
    return rows


def best_ms(fn, values) -> float:
    times = []
    for v in values:
        t0 = time.perf_counter()
        fn(v)
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    values = [round(0.8 + 0.03 * k, 3) for k in range(args.repeats)]

    t0 = time.perf_counter()
    rows = synthetic_rows(args.n)
    t1 = time.perf_counter()
    table = SelectionTable(rows)
    t2 = time.perf_counter()
    print(f"{args.n:,} samples: rows built in {t1 - t0:.2f} s, SelectionTable in {t2 - t1:.2f} s (once per notebook)")

    decide_ms = best_ms(lambda v: table.evaluate(SelectConfig(ifd_max=v)), values)
    decide_topk_ms = best_ms(lambda v: table.evaluate(SelectConfig(ifd_max=v, top_k_percent=10)), values)

    state = ExplorerState(table)
    state.update()  # first draw: fills the per-variant histogram caches

    def update(v: float) -> None:
        state.update(ifd_max=v)
        state.summary_html()
        state.table_html()

    update_ms = best_ms(update, values)
    topk_ms = best_ms(lambda v: (state.update(top_k_percent=v * 10), state.summary_html(), state.table_html()),
                      values)

    explorer = ThresholdExplorer(table)
    widget_ms = best_ms(lambda v: setattr(explorer.ifd_slider, "value", v), values)

    print(f"decide only (IFD max):           {decide_ms:7.1f} ms")
    print(f"decide only (IFD max + top-k):   {decide_topk_ms:7.1f} ms")
    print(f"explorer update (IFD max):       {update_ms:7.1f} ms   re-decide + recount + 2 histogram figures")
    print(f"explorer update (top-k %):       {topk_ms:7.1f} ms")
    print(f"widget slider move (no browser): {widget_ms:7.1f} ms")
    payload_kb = sum(len(f.to_json()) for f in state.figures) / 1000
    print(f"histogram payload sent to the browser per update: {payload_kb:.0f} kB")
    state.update(figure="scatter")
    scatter_ms = best_ms(lambda v: state.update(ifd_max=v), values[:3])
    print(f"(scatter view instead of histograms, 20k points shown: {scatter_ms:.0f} ms per update)")
    worst = max(update_ms, topk_ms, widget_ms)
    verdict = "meets" if worst < TARGET_MS else "MISSES"
    print(f"slowest update path {worst:.1f} ms: {verdict} the < {TARGET_MS:.0f} ms target (min of {args.repeats})")


if __name__ == "__main__":
    main()
