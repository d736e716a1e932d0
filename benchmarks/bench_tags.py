"""Throughput and scaling of reflection_lab.format.tags on realistic Reflection-format texts.

Run: ``python benchmarks/bench_tags.py [--quick]``.  For each input size it times
``parse`` and ``StreamParser`` fed in chunks of 1, 16 and 4096 characters (best
of a few repeats) and prints MB/s (1 MB = 10**6 bytes of UTF-8) plus the time
ratio against the previous, half-as-large input: ~2.0 means linear time.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reflection_lab.format.tags import StreamParser, parse

PROSE = [
    "Let me work through this carefully, one step at a time.",
    "The equation is 3x + 5 = 20, so 3x = 15 and x = 5; note that x < 6 holds.",
    "We compare a<b and b>c, then check the edge case where n = 0.",
    "In Python, `sorted(xs)` returns a new list while `xs.sort()` works in place.",
    "Café prices rose 12 % — roughly 1.5 € per cup (日本では約250円).",
    "The user asked for <div> markup, which is plain HTML, not a tag of ours.",
]
CODE = "```python\ndef f(n):\n    return n * (n + 1) // 2  # <output> here is code\n```"


def make_text(size: int, seed: int = 0) -> str:
    """A well-formed response of about ``size`` characters, mostly thinking."""
    rng = random.Random(seed)
    tail = "</thinking>\n<output>\nThe answer is x = 5, since 3·5 + 5 = 20.\n</output>"
    parts = ["<thinking>\n"]
    n = len(parts[0])
    budget = size - len(tail)
    while n < budget:
        if rng.random() < 0.15:
            piece = f"<reflection>\nWait, {rng.choice(PROSE).lower()}\n</reflection>\n"
        elif rng.random() < 0.05:
            piece = CODE + "\n"
        else:
            piece = " ".join(rng.choice(PROSE) for _ in range(rng.randint(1, 4))) + "\n\n"
        parts.append(piece)
        n += len(piece)
    parts.append(tail)
    return "".join(parts)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def streamer(text: str, chunk: int) -> Callable[[], object]:
    chunks = [text[k:k + chunk] for k in range(0, len(text), chunk)]

    def run() -> object:
        p = StreamParser()
        for c in chunks:
            p.feed(c)
        p.finish()
        return p.result()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 10-80 KB only")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = [10_000 * 2**k for k in range(4 if args.quick else 8)]  # 10 KB .. 1.28 MB
    methods: dict[str, Callable[[str], Callable[[], object]]] = {
        "parse": lambda t: (lambda: parse(t)),
        "chunk=1": lambda t: streamer(t, 1),
        "chunk=16": lambda t: streamer(t, 16),
        "chunk=4096": lambda t: streamer(t, 4096),
    }
    print(f"python {sys.version.split()[0]}, best of {args.repeats}; "
          "cells: MB/s (time ratio vs previous size)")
    print(f"{'size':>10}" + "".join(f"{m:>22}" for m in methods))
    previous: dict[str, float] = {}
    for size in sizes:
        text = make_text(size)
        assert parse(text).well_formed
        mb = len(text.encode("utf-8")) / 1e6
        row = f"{len(text) // 1000:>8}KB"
        for name, make in methods.items():
            t = best_time(make(text), args.repeats)
            ratio = f"({t / previous[name]:.2f}x)" if name in previous else ""
            row += f"{mb / t:>13.2f} {ratio:>8}"
            previous[name] = t
        print(row, flush=True)


if __name__ == "__main__":
    main()
