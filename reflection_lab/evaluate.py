"""Stage 07: did reflection and selection help? Five arms, the same prompts, intervals on every number.

    from reflection_lab.evaluate import run_evaluate, format_table, load_metrics
    manifest = run_evaluate(Run("runs/workshop"), profile=get_profile("offline"))
    print(format_table(load_metrics(run)))

Arms (evaluate_arms.py): `base` (no training), `original`, `reflected`, `selected`, `random`
(same size as `selected`, fixed seed). The lab trains every missing arm itself with stage 05 at the
profile's settings, each in a sub-run `07_evaluate/arms/<arm>/` (01_data..04_select hold the arm's
training set; 05_finetune is the ordinary stage), so a killed evaluation resumes mid-training and
a finished arm is reused, not retrained. The `selected` arm reuses the run's own 05_finetune when
it is complete for the same settings.

Per arm and prompt (greedy decoding, the prompt format the arm was trained with; the base student
gets the lab's Reflection system message, the only way it can know the format):
* format compliance: the answer parses into one closed thinking and one closed output with no
  error (`tags.parse(...).well_formed`); the parser's diagnostic codes give the breakdown;
* exact match: the last number of the `<output>` text equals the reference number (relative
  tolerance 1e-4); no output block = wrong, never read from the reasoning;
* answer-token loss: teacher-forced mean cross-entropy of the reference answer's tokens after the
  arm's own prompt (scoring engine, exact spans), averaged over prompts; lower is better;
* optionally a pairwise judge through a teacher endpoint, both orders (judge.py).
Every metric gets a 95% percentile bootstrap interval (1000 resamples over prompts, fixed seed);
arm - base and arm - random are paired bootstraps. With a fixed seed a rerun gives the same numbers.

Writes 07_evaluate/: metrics.json, report.html (+ report_offline.html with plotly.js inline),
generations/<arm>.jsonl, judge.jsonl, and the manifest. Generations are journalled per arm
(generations/<arm>.journal.jsonl), so a killed evaluation resumes with the prompts not yet answered.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from .evaluate_arms import (ARM_TITLES, ARMS, ArmSkipped, arm_data, check_arms, inputs_digest,
                            parent_finetune_reusable, required_stages, train_arm)
from .evaluate_metrics import (CI_LEVEL, METRICS, N_BOOT, REL_TOL, arm_order, arm_summary, differences, score_answer,
                               verdict_counts, winning_score)
from .runs import Journal, Run, package_versions, read_jsonl, stable_hash, write_json_atomic, write_jsonl_atomic

SCHEMA = "reflection-lab/evaluate/1"
OUTPUTS = ["metrics.json", "report.html", "report_offline.html", "generations"]


# --- inputs --------------------------------------------------------------------------------------


def load_eval_rows(run: Run, eval_data: Any = None, n_eval: int | None = None) -> tuple[list[dict], str]:
    """The prompts to evaluate on: the run's 01_data/eval.jsonl, or any dataset `data.load_samples` reads."""
    from .data import load_samples, stratified_subset

    if eval_data is None:
        rows, source = read_jsonl(run.path("data", "eval.jsonl")), "01_data/eval.jsonl"
    else:
        rows, report = load_samples(eval_data, kind="eval")
        source = f"{eval_data} ({report.summary()})"
    rows = stratified_subset(rows, n_eval)
    if not rows:
        raise ValueError(f"no evaluation prompts in {source}; stage 01 needs an eval set (eval='workshop-eval')")
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source} has repeated ids")
    return rows, source


def _prompt_sha(row: dict) -> str:
    return stable_hash([row.get("instruction", ""), row.get("input", "") or "", row.get("reference", "")])[:16]


# --- one arm: model, generations, losses ----------------------------------------------------------


def _load_model(arm: str, source: Run | None, profile: Any, base_system: Any) -> Any:
    from .inference_local import LocalModel

    if source is None:
        return LocalModel.from_spec(profile.student, system_prompt=base_system, template=profile.template,
                                    quant4=bool(profile.quant4), dtype=profile.dtype, device=profile.device)
    return LocalModel.from_finetuned(source, system_prompt="trained", dtype=profile.dtype, device=profile.device)


def generate_arm(lm: Any, rows: list[dict], journal_path: Path, arm_key: str, *, max_new_tokens: int,
                 batch_size: int = 8, progress: bool = True, label: str = "") -> list[dict]:
    """Greedy answers for every row, journalled one by one; rows answered before (same key) are reused."""
    from .inference import parsed_record

    journal = Journal(journal_path, key="id")
    want = {str(r["id"]): _prompt_sha(r) for r in rows}
    done = {k: v for k, v in journal.load().items()
            if v.get("arm_key") == arm_key and want.get(k) == v.get("prompt_sha")}
    todo = [r for r in rows if str(r["id"]) not in done]
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"{label} generations", unit="prompt",
                   disable=not progress)

        def save(i: int, gen: Any) -> None:
            r = todo[i]
            rec = {"id": str(r["id"]), "arm_key": arm_key, "prompt_sha": want[str(r["id"])], "text": gen.text,
                   "finish_reason": gen.finish_reason, "n_tokens": gen.n_tokens, "parsed": parsed_record(gen.parsed)}
            if gen.error:
                rec["error"] = gen.error
            journal.append(rec)
            done[rec["id"]] = rec
            bar.update(1)

        prompts = [lm.prompt_ids(r.get("instruction", ""), r.get("input", "") or "") for r in todo]
        lm.generate_batch(prompts, preset="greedy", max_new_tokens=max_new_tokens, batch_size=batch_size,
                          on_result=save)
        bar.close()
    return [done[str(r["id"])] for r in rows]


def reference_losses(lm: Any, rows: list[dict], *, max_length: int, batch_tokens: int = 4096) -> list[dict]:
    """Mean cross-entropy of each reference answer's tokens after the arm's own prompt (exact spans).

    The prompt and the reference are tokenised separately (no boundary shift); a reference longer
    than the room left under max_length is cut and flagged; a prompt that fills max_length gets a
    missing loss with its reason, never 0.
    """
    from .scoring_engine import Item, LossEngine

    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(lm.policy.stop_ids)
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
    engine = LossEngine(lm.model, pad_id=int(pad), batch_tokens=batch_tokens, padding_side="right")
    losses = engine.score([it for it in items if it is not None])
    for rec, it in zip(out, items, strict=True):
        if it is not None:
            rec["ref_loss"] = round(float(losses[it.key].mean), 6)
    return out


def _arm_rows(arm: str, rows: list[dict], gens: list[dict], losses: list[dict]) -> list[dict]:
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


# --- the stage -----------------------------------------------------------------------------------


def _begin(run: Run, config: dict, needs: tuple[str, ...]) -> None:
    """Mark the stage running, requiring only the parent stages these arms read (not always 04_select)."""
    for dep in needs:
        run.require(dep)
    fp = run.fingerprint("evaluate", config)
    old = run.manifest("evaluate") or {}
    write_json_atomic(run.stage_dir("evaluate") / "manifest.json", {
        "stage": "evaluate", "status": "running", "fingerprint": fp, "config": config,
        "started": old.get("started") if old.get("fingerprint") == fp else time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": package_versions()})


def default_judge_pairs(arms: Sequence[str]) -> list[tuple[str, str]]:
    """Every trained arm against the base, and the selection against its random control."""
    pairs = [(a, "base") for a in arms if a != "base" and "base" in arms]
    if "selected" in arms and "random" in arms:
        pairs.append(("selected", "random"))
    return pairs


def run_evaluate(run: Run, *, profile: Any, arms: Sequence[str] = ARMS, judge: Any = None, n_eval: int | None = None,
                 seed: int = 0, force: bool = False, progress: bool = True, eval_data: Any = None,
                 judge_pairs: Sequence[tuple[str, str]] | None = None, judge_view: str = "output",
                 judge_reference: bool = True, n_boot: int = N_BOOT, level: float = CI_LEVEL,
                 base_system_prompt: Any = "reflection", batch_size: int = 8) -> dict:
    """Stage 07. Returns the manifest; a finished evaluation with the same config and inputs is reused.

    eval_data: any dataset `data.load_samples(kind="eval")` reads (default: the run's eval.jsonl);
    n_eval: a stratified subset of it. judge: a teacher backend (or judge.ScriptedJudge) for the
    pairwise comparison, asked in both orders; None skips it. force=True regenerates and rescores
    every arm (finished arm training is still reused; delete 07_evaluate/arms/<arm> to retrain).
    """
    from .evaluate_report import write_report
    from .finetune import FinetuneConfig
    from .inference import system_prompt_text
    from .judge import describe_judge

    t_start = time.perf_counter()
    arms = check_arms(arms)
    needs = required_stages(arms)
    for dep in needs:
        run.require(dep)
    rows, eval_source = load_eval_rows(run, eval_data, n_eval)
    ft_cfg = FinetuneConfig.from_profile(profile)
    base_system = system_prompt_text(base_system_prompt)
    pairs = [tuple(p) for p in (judge_pairs if judge_pairs is not None else default_judge_pairs(arms))]
    bad_pairs = [p for p in pairs if len(p) != 2 or p[0] not in arms or p[1] not in arms or p[0] == p[1]]
    if bad_pairs:
        raise ValueError(f"judge pairs must name two different evaluated arms: {bad_pairs}")
    generation = {"preset": "greedy", "max_new_tokens": int(profile.max_new_tokens), "base_system_prompt": base_system,
                  "base_quant4": bool(profile.quant4), "template": profile.template}
    config = {"schema": SCHEMA, "arms": list(arms), "seed": int(seed), "n_boot": int(n_boot), "level": float(level),
              "rel_tol": REL_TOL, "eval": {"source": eval_source, "n": len(rows), "rows_sha256": stable_hash(rows)},
              "finetune": ft_cfg.as_dict(), "generation": generation, "max_length": int(profile.max_length),
              "judge": describe_judge(judge, judge_view, judge_reference) if judge is not None else None,
              "judge_pairs": [list(p) for p in pairs] if judge is not None else [],
              "inputs": inputs_digest(run, needs),
              "parent_finetune": parent_finetune_reusable(run, ft_cfg) if "selected" in arms else None}
    if not force and run.is_current("evaluate", config) and not (run.manifest("evaluate") or {}).get(
            "counts", {}).get("judge_errors"):
        return run.manifest("evaluate") or {}  # (a judge that failed is asked again: journalled replies are kept)
    stage = run.stage_dir("evaluate")
    gen_dir = stage / "generations"
    if force and gen_dir.exists():
        shutil.rmtree(gen_dir)
    gen_dir.mkdir(parents=True, exist_ok=True)
    _begin(run, config, needs)

    arm_info: dict[str, dict] = {}
    rows_by_arm: dict[str, list[dict]] = {}
    for arm in arms:
        info, arm_rows = _evaluate_arm(run, arm, rows, profile, ft_cfg, base_system, generation, seed, gen_dir,
                                       batch_size, progress)
        arm_info[arm] = info
        if arm_rows is not None:
            rows_by_arm[arm] = arm_rows

    judge_rows: list[dict] = []
    if judge is not None and pairs:
        judge_rows = _run_judge(judge, pairs, rows_by_arm, stage, judge_view, judge_reference, progress)
    write_jsonl_atomic(stage / "judge.jsonl", judge_rows)
    wall = time.perf_counter() - t_start
    metrics = build_metrics(rows_by_arm, arm_info, judge_rows, profile=profile, config=config, seed=seed,
                            n_boot=n_boot, level=level, wall_seconds=wall)
    write_json_atomic(stage / "metrics.json", metrics)
    write_report(stage, metrics, rows_by_arm)
    counts = {"prompts": len(rows), "numeric_prompts": sum(r.get("answer_type") == "numeric" for r in rows),
              "arms_done": len(rows_by_arm), "arms_skipped": len(arms) - len(rows_by_arm),
              "judge_comparisons": len(judge_rows), "wall_seconds": round(wall, 1),
              "judge_errors": sum(bool(r["a_first"]["error"] or r["a_second"]["error"]) for r in judge_rows)}
    summary = {a: {m: metrics["arms"][a]["metrics"][m]["mean"] for m in METRICS} for a in rows_by_arm}
    if progress:
        print(f"[evaluate] {len(rows_by_arm)} arms on {len(rows)} prompts in {wall:.0f} s; report: "
              f"{stage / 'report.html'} (print the table with format_table(load_metrics(run)))", flush=True)
    return run.complete("evaluate", config, OUTPUTS + ["judge.jsonl"], counts,
                        extra={"summary": summary, "timing": metrics["timing"],
                               "skipped": {a: i["reason"] for a, i in arm_info.items() if i["status"] == "skipped"}})


def _evaluate_arm(run: Run, arm: str, rows: list[dict], profile: Any, ft_cfg: Any, base_system: str | None,
                  generation: dict, seed: int, gen_dir: Path, batch_size: int, progress: bool
                  ) -> tuple[dict, list[dict] | None]:
    """Train (or reuse) one arm, then generate and score; a finished arm with the same key is read back."""
    import gc

    data = arm_data(run, arm, seed)
    info: dict[str, Any] = {"title": ARM_TITLES[arm], "source": data.source, "train_counts": data.counts,
                            "train_seconds": 0.0, "generate_seconds": 0.0, "loss_seconds": 0.0}
    t0 = time.perf_counter()
    source: Run | None = None
    if arm == "base":
        identity: dict[str, Any] = {"student": profile.student, **generation}
    else:
        if progress:
            print(f"[evaluate] arm {arm}: {ARM_TITLES[arm]} ({data.source})", flush=True)
        try:
            source, ft_m, secs = train_arm(run, data, ft_cfg, progress=progress)
        except ArmSkipped as exc:
            if progress:
                print(f"[evaluate] arm {arm}: skipped ({exc})", flush=True)
            return {**info, "status": "skipped", "reason": str(exc)}, None
        first = (ft_m.get("counts") or {}).get("train_seconds")  # when reused: the time it took back then
        info.update(train_seconds=round(secs, 2) if secs else first, model_run=str(source.root),
                    reused_training=secs == 0.0,
                    train_steps=(ft_m.get("counts") or {}).get("steps"),
                    final_train_loss=(ft_m.get("counts") or {}).get("final_train_loss"))
        identity = {"finetune": ft_m.get("fingerprint"), "outputs": ft_m.get("outputs"), **generation}
    arm_key = stable_hash({"arm": arm, **identity})[:24]
    meta_path, out_path = gen_dir / f"{arm}.meta.json", gen_dir / f"{arm}.jsonl"
    shas = [_prompt_sha(r) for r in rows]
    if meta_path.exists() and out_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("arm_key") == arm_key and meta.get("prompt_shas") == shas:
            return {**info, **meta["info"], "status": "done", "reused_generations": True}, read_jsonl(out_path)
    if progress:
        print(f"[evaluate] arm {arm}: generating {len(rows)} answers", flush=True)
    lm = _load_model(arm, source, profile, base_system)
    t1 = time.perf_counter()
    gens = generate_arm(lm, rows, gen_dir / f"{arm}.journal.jsonl", arm_key,
                        max_new_tokens=generation["max_new_tokens"], batch_size=batch_size, progress=progress,
                        label=arm)
    t2 = time.perf_counter()
    losses = reference_losses(lm, rows, max_length=profile.max_length, batch_tokens=profile.score_batch_tokens)
    t3 = time.perf_counter()
    info.update(generate_seconds=round(t2 - t1, 2), loss_seconds=round(t3 - t2, 2), model=lm.describe(),
                arm_seconds=round(t3 - t0, 2))
    del lm
    gc.collect()
    arm_rows = _arm_rows(arm, rows, gens, losses)
    write_jsonl_atomic(out_path, arm_rows)
    keep = {k: info[k] for k in ("generate_seconds", "loss_seconds", "model", "arm_seconds")}
    write_json_atomic(meta_path, {"arm_key": arm_key, "prompt_shas": shas, "info": keep})
    return {**info, "status": "done", "reused_generations": False}, arm_rows


def _run_judge(judge: Any, pairs: list[tuple], rows_by_arm: dict[str, list[dict]], stage: Path, view: str,
               use_reference: bool, progress: bool) -> list[dict]:
    from .judge import Comparison, answer_view, run_judge

    comps = []
    for a, b in pairs:
        if a not in rows_by_arm or b not in rows_by_arm:
            continue
        for ra, rb in zip(rows_by_arm[a], rows_by_arm[b], strict=True):
            question = ra["instruction"] + (f"\n\n{ra['input']}" if ra["input"] else "")
            comps.append(Comparison(ra["id"], question, ra["reference"] if use_reference else None, a, b,
                                    answer_view(ra["text"], view), answer_view(rb["text"], view)))
    return run_judge(judge, comps, stage / "judge_replies.jsonl", progress=progress)


def build_metrics(rows_by_arm: dict[str, list[dict]], arm_info: dict[str, dict], judge_rows: list[dict], *,
                  profile: Any, config: dict, seed: int, n_boot: int, level: float, wall_seconds: float) -> dict:
    """metrics.json: per-arm metrics with intervals, paired differences, judge counts, the setup, timings."""
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
        arms[arm] = entry
    judge: list[dict] = []
    for a, b in config.get("judge_pairs", []):
        verdicts = [r["verdict"] for r in judge_rows if r["a"] == a and r["b"] == b]
        if verdicts:
            judge.append({"a": a, "b": b, **verdict_counts(verdicts),
                          "winning_score": winning_score(verdicts, label=f"judge:{a}:{b}", **kw)})
    any_rows = next(iter(rows_by_arm.values()), [])
    setup = {"profile": profile.name, "student": profile.student, "n_samples": profile.n_samples,
             "max_steps": profile.max_steps, "batch_size": profile.batch_size, "learning_rate": profile.learning_rate,
             "lora_r": profile.lora_r, "method": config["finetune"]["method"], "max_new_tokens": profile.max_new_tokens,
             "eval_source": config["eval"]["source"], "n_eval": config["eval"]["n"],
             "n_numeric": sum(bool(r.get("numeric")) for r in any_rows), "seed": seed, "n_boot": n_boot,
             "ci_level": level, "rel_tol": config["rel_tol"], "decoding": "greedy",
             "base_system_prompt": config["generation"]["base_system_prompt"], "judge": config.get("judge")}
    per_arm = {a: {k: i.get(k) for k in ("train_seconds", "generate_seconds", "loss_seconds", "reused_training",
                                         "reused_generations")} for a, i in arm_info.items()}
    work = sum(float(t.get(k) or 0.0) for t in per_arm.values()
               for k in ("train_seconds", "generate_seconds", "loss_seconds"))
    timing = {"wall_seconds": round(wall_seconds, 1), "arm_work_seconds": round(work, 1), "arms": per_arm,
              "note": "wall_seconds: this call only. arm_work_seconds: each arm's training, generation and loss time "
                      "as measured when it ran (reused arms included; training = the trainer's own time when reused)."}
    return {"schema": SCHEMA, "setup": setup, "arm_order": list(arm_info), "arms": arms,
            "differences": {"vs_base": differences(rows_by_arm, "base", **kw),
                            "vs_random": differences(rows_by_arm, "random", **kw)},
            "judge": judge, "timing": timing}


# --- reading results -----------------------------------------------------------------------------


def load_metrics(run: Run) -> dict:
    """metrics.json of a finished stage 07 (raises with what to run first otherwise)."""
    run.require("evaluate")
    return json.loads(run.path("evaluate", "metrics.json").read_text())


def load_generations(run: Run, arm: str) -> list[dict]:
    """One arm's scored generations (generations/<arm>.jsonl)."""
    run.require("evaluate")
    return read_jsonl(run.path("evaluate", f"generations/{arm}.jsonl"))


def _fmt(ci: dict | None, digits: int = 2) -> str:
    if not ci or ci.get("mean") is None:
        return "-"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def format_table(metrics: dict) -> str:
    """A plain-text table of every arm's metrics with intervals (what the CLI prints)."""
    s = metrics["setup"]
    judge = {j["a"]: j for j in metrics.get("judge", []) if j["b"] == "base"}
    head = ["arm", "pairs", "format", "exact match", "ref loss", "judge vs base (W/T/L)"]
    lines = []
    for arm in arm_order(metrics):
        e = metrics["arms"][arm]
        pairs = str(e.get("train_counts", {}).get("pairs", "-"))
        if e["status"] != "done":
            lines.append([arm, pairs, f"skipped: {e.get('reason', '')[:70]}", "", "", ""])
            continue
        m = e["metrics"]
        j = judge.get(arm)
        jtxt = f"{j['wins']}/{j['ties']}/{j['losses']}" if j else "-"
        lines.append([arm, pairs, _fmt(m["format"]), _fmt(m["exact_match"]), _fmt(m["ref_loss"], 3), jtxt])
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
    out.append(f"[lo, hi]: {int(s['ci_level'] * 100)}% percentile bootstrap over prompts, {s['n_boot']} resamples, "
               f"seed {s['seed']}. Differences that stay inside these intervals are not evidence.")
    t = metrics["timing"]
    out.append(f"wall time of this call {t['wall_seconds']} s; the arms' training, generation and scoring took "
               f"{t.get('arm_work_seconds', '?')} s when they ran")
    return "\n".join(out)


def stage_runner(run: Run, profile: Any, opts: dict) -> dict:
    """Adapter for pipeline.STAGE_RUNNERS["evaluate"]: opts may hold arms (else the profile's eval_arms),
    judge (a teacher spec or object), judge_model, n_eval, eval_data (a dataset spec: file, saved dataset
    folder or hub name), seed, force, quiet."""
    judge = opts.get("judge")
    if isinstance(judge, str):
        from .teachers import make_teacher

        kw = {"model": opts["judge_model"]} if opts.get("judge_model") else {}
        judge = make_teacher(judge, **kw)
    arms = opts.get("arms") or getattr(profile, "eval_arms", None) or ARMS
    if isinstance(arms, str):
        arms = tuple(a.strip() for a in arms.split(",") if a.strip())
    return run_evaluate(run, profile=profile, arms=arms, judge=judge, n_eval=opts.get("n_eval"),
                        seed=int(opts.get("seed") or 0), force=bool(opts.get("force")),
                        progress=not opts.get("quiet"), eval_data=opts.get("eval_data"))


__all__ = ["ARMS", "OUTPUTS", "build_metrics", "default_judge_pairs", "format_table", "generate_arm",
           "load_eval_rows", "load_generations", "load_metrics", "reference_losses", "run_evaluate", "stage_runner"]
