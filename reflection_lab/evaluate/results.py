"""Stage 07's results: metrics.json built from the arms' rows, read back, and printed as a table.

Pure (rows in, numbers out) except the two readers, so the report, the notebook and the CLI share it.
"""

from __future__ import annotations

import json
from typing import Any

from ..core.runs import Run, read_jsonl
from .metrics import arm_order, arm_summary, differences, verdict_counts, winning_score

SCHEMA = "reflection-lab/evaluate/2"  # 2: ref_loss_format


def build_metrics(rows_by_arm: dict[str, list[dict]], arm_info: dict[str, dict], judge_rows: list[dict], *,
                  settings: Any, config: dict, wall_seconds: float) -> dict:
    """metrics.json: per-arm metrics with intervals, paired differences, judge counts, the setup, timings.

    settings: the stage's EvaluateConfig; config: its fingerprinted form (eval source, judge, pairs).
    """
    seed, n_boot, level, ft = settings.seed, settings.n_boot, settings.level, settings.finetune
    kw: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}
    arms: dict[str, dict] = {}
    for arm, info in arm_info.items():
        entry = {"title": info["title"], "status": info["status"], "source": info["source"],
                 "train_counts": info.get("train_counts", {})}
        if info["status"] == "skipped":
            entry["reason"] = info["reason"]
        else:
            entry.update(arm_summary(rows_by_arm[arm], **kw))
            entry["train_steps"] = info.get("train_steps")
            entry["final_train_loss"] = info.get("final_train_loss")
            entry["model"] = info.get("model")  # what answered: backend, model name, precision
        arms[arm] = entry
    judge: list[dict] = []
    for a, b in config.get("judge_pairs", []):
        verdicts = [r["verdict"] for r in judge_rows if r["a"] == a and r["b"] == b]
        if verdicts:
            judge.append({"a": a, "b": b, **verdict_counts(verdicts),
                          "winning_score": winning_score(verdicts, label=f"judge:{a}:{b}", **kw)})
    any_rows = next(iter(rows_by_arm.values()), [])
    setup = {"profile": settings.profile, "student": ft.student, "n_samples": settings.n_samples,
             "max_steps": ft.max_steps, "batch_size": ft.batch_size, "learning_rate": ft.learning_rate,
             "lora_r": ft.lora_r, "method": ft.method, "max_new_tokens": settings.max_new_tokens,
             "eval_source": config["eval"]["source"], "n_eval": config["eval"]["n"],
             "n_numeric": sum(bool(r.get("numeric")) for r in any_rows), "seed": seed, "n_boot": n_boot,
             "ci_level": level, "rel_tol": config["rel_tol"], "decoding": "greedy",
             "generator": config["generation"].get("generator", "local"),
             "base_system_prompt": config["generation"]["base_system_prompt"], "judge": config.get("judge")}
    per_arm = {a: {k: i.get(k) for k in ("train_seconds", "generate_seconds", "loss_seconds", "reused_training",
                                         "reused_generations", "answers_from")} for a, i in arm_info.items()}
    work = sum(float(t.get(k) or 0.0) for t in per_arm.values()
               for k in ("train_seconds", "generate_seconds", "loss_seconds"))
    timing = {"wall_seconds": round(wall_seconds, 1), "arm_work_seconds": round(work, 1), "arms": per_arm,
              "note": "wall_seconds: this call only. arm_work_seconds: each arm's training, generation and loss time "
                      "as measured when it ran (reused arms included; training = the trainer's own time when reused)."}
    return {"schema": SCHEMA, "setup": setup, "arm_order": list(arm_info), "arms": arms,
            "differences": {"vs_base": differences(rows_by_arm, "base", **kw),
                            "vs_random": differences(rows_by_arm, "random", **kw)},
            "judge": judge, "timing": timing}


def load_metrics(run: Run) -> dict:
    """metrics.json of a finished stage 07 (raises with what to run first otherwise)."""
    run.require("evaluate")
    return json.loads(run.path("evaluate", "metrics.json").read_text())


def load_generations(run: Run, arm: str) -> list[dict]:
    """One arm's scored generations (generations/<arm>.jsonl)."""
    run.require("evaluate")
    return read_jsonl(run.path("evaluate", f"generations/{arm}.jsonl"))


def load_arm_rows(run: Run) -> dict[str, list[dict]]:
    """Every finished arm's scored generations, in evaluation order (what the report and notebook 07 show)."""
    metrics = load_metrics(run)
    return {a: load_generations(run, a) for a in arm_order(metrics) if metrics["arms"][a]["status"] == "done"}


def _fmt(ci: dict | None, digits: int = 2) -> str:
    if not ci or ci.get("mean") is None:
        return "-"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def format_table(metrics: dict) -> str:
    """A plain-text table of every arm's metrics with intervals (what the CLI prints)."""
    s = metrics["setup"]
    judge = {j["a"]: j for j in metrics.get("judge", []) if j["b"] == "base"}
    head = ["arm", "pairs", "format", "exact match", "ref loss", "ref loss (own reasoning)", "judge vs base (W/T/L)"]
    lines = []
    for arm in arm_order(metrics):
        e = metrics["arms"][arm]
        pairs = str(e.get("train_counts", {}).get("pairs", "-"))
        if e["status"] != "done":
            lines.append([arm, pairs, f"skipped: {e.get('reason', '')[:70]}", "", "", "", ""])
            continue
        m = e["metrics"]
        j = judge.get(arm)
        jtxt = f"{j['wins']}/{j['ties']}/{j['losses']}" if j else "-"
        lines.append([arm, pairs, _fmt(m["format"]), _fmt(m["exact_match"]), _fmt(m["ref_loss"], 3),
                      _fmt(m.get("ref_loss_format"), 3), jtxt])
    full = [r for r in lines if not r[2].startswith("skipped:")]
    widths = [max(len(str(r[i])) for r in [head] + full) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for r in lines:
        cells = r[:3] if r[2].startswith("skipped:") else r
        out.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip())
    for a, b in [(j["a"], j["b"]) for j in metrics.get("judge", []) if j["b"] != "base"]:
        j = next(x for x in metrics["judge"] if x["a"] == a and x["b"] == b)
        out.append(f"judge {a} vs {b}: {j['wins']} wins / {j['ties']} ties / {j['losses']} losses "
                   f"({j['invalid']} unreadable); winning score {_fmt(j['winning_score'])}")
    out.append(f"{s['n_eval']} prompts ({s['n_numeric']} with a numeric answer) from {s['eval_source']}; profile "
               f"{s['profile']} ({s['student']}, n_samples={s['n_samples']}, max_steps={s['max_steps']}).")
    out.append(f"[lo, hi]: {int(s['ci_level'] * 100)}% Wilson score for shares, percentile bootstrap over prompts "
               f"({s['n_boot']} resamples, seed {s['seed']}) for losses and differences. "
               "Differences that stay inside these intervals are not evidence.")
    t = metrics["timing"]
    out.append(f"wall time of this call {t['wall_seconds']} s; the arms' training, generation and scoring took "
               f"{t.get('arm_work_seconds', '?')} s when they ran")
    return "\n".join(out)
