"""Build small runs up to the reflect stage without a teacher, for tests of later stages."""

from __future__ import annotations

import random

from reflection_lab.core.runs import Run, write_jsonl_atomic

WORDS = "apples rivers code answer check total model city seven bridge loop sum".split()


def make_reflected_run(root, n: int = 5, seed: int = 0, empty_answer_ids: tuple[str, ...] = ()) -> Run:
    rng = random.Random(seed)
    run = Run(root)
    samples, rows = [], []
    for k in range(n):
        sid = f"s{k:03d}"
        q = "Explain " + " ".join(rng.choices(WORDS, k=rng.randint(2, 10)))
        a = "" if sid in empty_answer_ids else " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))
        q1 = q + " in detail, with an example"
        a1 = "<thinking>" + " ".join(rng.choices(WORDS, k=12)) + "</thinking><output>" + a + " more</output>"
        samples.append({"id": sid, "instruction": q, "input": "", "output": a, "category": "test"})
        rows.append({"id": sid, "category": "test", "variants": {
            "original": {"instruction": q, "input": "", "output": a},
            "reflect_instruction": {"instruction": q1, "input": "", "output": a1, "parse_ok": True, "parse_reason": None},
            "reflect_response": {"instruction": q, "input": "", "output": a1, "parse_ok": True, "parse_reason": None},
            "reflect_both": {"instruction": q1, "input": "", "output": a1 + " extra", "parse_ok": True,
                             "parse_reason": None}},
            "raw": {}, "teacher": {"backend": "test"}})
    run.begin("data", {"test": seed})
    write_jsonl_atomic(run.path("data", "samples.jsonl"), samples)
    run.complete("data", {"test": seed}, ["samples.jsonl"], {"train": n})
    run.begin("reflect", {"test": seed})
    write_jsonl_atomic(run.path("reflect", "reflections.jsonl"), rows)
    run.complete("reflect", {"test": seed}, ["reflections.jsonl"], {"samples": n})
    return run
