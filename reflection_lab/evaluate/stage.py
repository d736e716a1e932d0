"""Stage 07: did reflection and selection help? Five arms, the same prompts, intervals on every number.

    from reflection_lab.evaluate import EvaluateConfig, run_evaluate, format_table, load_metrics
    manifest = run_evaluate(run, EvaluateConfig.from_profile(get_profile("offline")))
    print(format_table(load_metrics(run)))

Arms (arms.py): `base` (no training), `original`, `reflected`, `selected`, `random`
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
* optionally a pairwise judge through any backend of the llm layer, both orders (judge.py).
Every metric gets a 95% interval: Wilson's for an arm's shares (it stays wide at 8 of 8), a percentile
bootstrap (1000 resamples over prompts, fixed seed) for losses; arm - base and arm - random are paired
bootstraps. With a fixed seed a rerun gives the same numbers.

Writes 07_evaluate/: metrics.json, report.html (+ report_offline.html with plotly.js inline),
generations/<arm>.jsonl, judge.jsonl, and the manifest. Generations are journalled per arm
(generations/<arm>.journal.jsonl), so a killed evaluation resumes with the prompts not yet answered.
"""
from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..core.config import ConfigError, StageConfig
from ..core.runs import Run, read_jsonl, records_failure, stable_hash, write_json_atomic, write_jsonl_atomic
from ..finetune.config import FinetuneConfig
from ..data import check_unique_ids, is_local_source, parse_hub_spec
from ..format.chat import SystemPrompt, system_prompt_text
from ..format.templates import user_text
from ..inference.stage import generate_journalled
from ..llm.sampling import get_preset
from .answers import arm_losses, arm_rows, prompt_sha
from .arms import (ARM_TITLES, ARMS, ArmSkipped, arm_data, check_arms, inputs_digest, parent_finetune_reusable,
                   required_stages, train_arm)
from .metrics import CI_LEVEL, METRICS, N_BOOT, REL_TOL
from .results import SCHEMA, build_metrics

OUTPUTS = ["metrics.json", "report.html", "report_offline.html", "generations"]
GENERATORS = ("local", "openai")
JUDGE_VIEWS = ("output", "full")


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    """The arms, the prompts, the judge, the intervals; and how each arm is trained and asked (from the profile)."""

    STAGE = "evaluate"
    RUNTIME = ("batch_size", "profile", "n_samples")

    arms: tuple[str, ...] = ARMS
    seed: int = 0  # the random arm's subset and the bootstrap resamples
    n_eval: int | None = None  # a stratified subset of the evaluation prompts (None: all)
    eval_data: str | None = None  # another dataset to evaluate on (None: the run's 01_data/eval.jsonl)
    judge: str | None = None  # a backend spec for the pairwise judge: openai | openai:<model> | local:<model>
    judge_model: str | None = None
    judge_pairs: tuple[tuple[str, ...], ...] | None = None  # None: every arm vs base, and selected vs random
    judge_view: str = "output"  # what the judge sees of an answer: its <output> text, or the "full" text
    judge_reference: bool = True  # show the judge the dataset's reference answer
    n_boot: int = N_BOOT
    level: float = CI_LEVEL
    base_system_prompt: str | SystemPrompt | None = "reflection"  # how the base arm is asked for the format
    batch_size: int = 8
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # every trained arm, and the base student
    max_new_tokens: int = 256
    max_length: int = 1024  # of the reference-answer loss
    score_batch_tokens: int = 4096
    profile: str = ""  # the profile's name, for the report
    n_samples: int | None = None  # the profile's training subset, for the report
    # "local" (transformers in this process) or "openai": every arm answers through an OpenAI-compatible endpoint
    # (generator_url, else REFLECTION_LAB_INFER_BASE_URL) that serves it under a model name: arm_models
    # "arm=name,..."; an arm not named there is asked for as the student spec (base) or its own name (a trained
    # arm), the names `vllm serve STUDENT --enable-lora --lora-modules selected=RUN/05_finetune/adapter` gives.
    # The reference-answer losses still load each arm here: they need the logits.
    generator: str = "local"
    generator_url: str | None = None
    arm_models: str | None = None

    def validate(self) -> None:
        check_arms(self.arms)
        if self.eval_data is not None and not is_local_source(self.eval_data):
            parse_hub_spec(self.eval_data)  # a malformed hub spec fails here, before any arm is trained
        self.pairs()
        if self.generator not in GENERATORS:
            raise ConfigError(f"EvaluateConfig.generator must be one of {GENERATORS}, not {self.generator!r}")
        if self.generator != "local" and self.finetune.template != "chat":
            raise ConfigError(f"EvaluateConfig.generator {self.generator!r} needs the 'chat' template (an endpoint "
                              f"applies the model's chat template), not {self.finetune.template!r}: evaluate "
                              "this run locally (generator='local')")
        self.served_names()
        if self.judge_view not in JUDGE_VIEWS:
            raise ConfigError(f"EvaluateConfig.judge_view must be one of {JUDGE_VIEWS}, not {self.judge_view!r}")
        if not 0 < self.level < 1:
            raise ConfigError(f"EvaluateConfig.level must be between 0 and 1, not {self.level}")
        for name in ("n_boot", "max_new_tokens", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvaluateConfig.{name} must be at least 1, not {getattr(self, name)}")

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        return {"arms": profile.eval_arms,
                "finetune": FinetuneConfig.from_profile(profile), "max_new_tokens": profile.max_new_tokens,
                "max_length": profile.max_length, "score_batch_tokens": profile.score_batch_tokens,
                "profile": profile.name, "n_samples": profile.n_samples}

    @classmethod
    def adjust(cls, values: dict[str, Any], profile: Any) -> dict[str, Any]:
        """`arms` may be written "base,selected" (the profile's eval_arms, the CLI's --arms)."""
        if isinstance(values.get("arms"), str):
            values["arms"] = tuple(a.strip() for a in values["arms"].split(",") if a.strip())
        return values

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "finetune": self.finetune.as_dict()}

    def served_names(self) -> dict[str, str]:
        """The endpoint's model name per evaluated arm (arm_models first, then the defaults)."""
        named: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in (self.arm_models or "").split(","))):
            arm, sep, name = (x.strip() for x in item.partition("="))
            if not sep or not name or arm not in ARMS:
                raise ConfigError(f"EvaluateConfig.arm_models item {item!r} must be ARM=MODEL_NAME with ARM one of "
                                  f"{', '.join(ARMS)}, e.g. 'base=Qwen/Qwen2.5-0.5B-Instruct,selected=sel-lora'")
            named[arm] = name
        return {a: named.get(a, self.finetune.student if a == "base" else a) for a in self.arms}

    def make_judge(self) -> Any:
        from ..llm import make_backend

        return None if self.judge is None else make_backend(self.judge, model=self.judge_model)

    def pairs(self) -> list[tuple[str, str]]:
        """The judged pairs: as configured, or every trained arm against base and selected against random."""
        if self.judge_pairs is not None:
            pairs = [tuple(p) for p in self.judge_pairs]
            bad = [p for p in pairs if len(p) != 2 or p[0] not in self.arms or p[1] not in self.arms or p[0] == p[1]]
            if bad:
                raise ConfigError(f"EvaluateConfig.judge_pairs must name two different evaluated arms: {bad}")
            return pairs  # type: ignore[return-value]
        pairs = [(a, "base") for a in self.arms if a != "base" and "base" in self.arms]
        if "selected" in self.arms and "random" in self.arms:
            pairs.append(("selected", "random"))
        return pairs


def load_eval_rows(run: Run, eval_data: Any = None, n_eval: int | None = None) -> tuple[list[dict], str]:
    """The prompts to evaluate on: the run's 01_data/eval.jsonl, or any dataset `data.load_samples` reads."""
    from ..data import load_samples, stratified_subset

    if eval_data is None:
        rows, source = read_jsonl(run.path("data", "eval.jsonl")), "01_data/eval.jsonl"
    else:
        rows, report = load_samples(eval_data, kind="eval")
        source = f"{eval_data} ({report.summary()})"
    rows = stratified_subset(rows, n_eval)
    if not rows:
        raise ValueError(f"no evaluation prompts in {source}; stage 01 needs an eval set (eval='workshop-eval')")
    check_unique_ids(rows, source)
    return rows, source


@records_failure("evaluate")
def run_evaluate(run: Run, config: EvaluateConfig | None = None, *, force: bool = False, progress: bool = True,
                 judge: Any = None) -> dict:
    """Stage 07. Returns the manifest; a finished evaluation with the same config and inputs is reused.

    `judge` (any backend object, e.g. the scripted judge of judge.py) replaces `config.judge`; with
    neither, no judge runs. force=True regenerates and rescores every arm (finished arm training is
    still reused; delete 07_evaluate/arms/<arm> to retrain).
    """
    from .judge import describe_judge
    from .report import write_report

    t_start = time.perf_counter()
    c = config or EvaluateConfig()
    judge = judge if judge is not None else c.make_judge()
    needs = required_stages(c.arms)
    for dep in needs:
        run.require(dep)
    rows, eval_source = load_eval_rows(run, c.eval_data, c.n_eval)
    pairs = c.pairs()
    base_system = system_prompt_text(c.base_system_prompt)
    generation = {"preset": get_preset("greedy").fingerprint(), "max_new_tokens": c.max_new_tokens,
                  "base_system_prompt": base_system,
                  "base_quant4": c.finetune.method == "qlora", "template": c.finetune.template,
                  "generator": c.generator, "endpoint": _endpoint_identity(c)}
    fingerprinted = {"schema": SCHEMA, "arms": list(c.arms), "seed": c.seed, "n_boot": c.n_boot, "level": c.level,
                     "rel_tol": REL_TOL,
                     "eval": {"source": eval_source, "n": len(rows), "rows_sha256": stable_hash(rows)},
                     "finetune": c.finetune.as_dict(), "generation": generation, "max_length": c.max_length,
                     "judge": describe_judge(judge, c.judge_view, c.judge_reference) if judge is not None else None,
                     "judge_pairs": [list(p) for p in pairs] if judge is not None else [],
                     "inputs": inputs_digest(run, needs),
                     "parent_finetune": parent_finetune_reusable(run, c.finetune) if "selected" in c.arms else None}
    if not force and run.is_current("evaluate", fingerprinted) and not (run.manifest("evaluate") or {}).get(
            "counts", {}).get("judge_errors"):
        return run.manifest("evaluate") or {}  # (a judge that failed is asked again: journalled replies are kept)
    stage = run.stage_dir("evaluate")
    gen_dir = stage / "generations"
    if force and gen_dir.exists():
        shutil.rmtree(gen_dir)
    gen_dir.mkdir(parents=True, exist_ok=True)
    run.begin("evaluate", fingerprinted, requires=needs)
    arm_info: dict[str, dict] = {}
    rows_by_arm: dict[str, list[dict]] = {}
    for arm in c.arms:
        arm_info[arm], done = _evaluate_arm(run, arm, rows, c, base_system, generation, gen_dir, progress)
        if done is not None:
            rows_by_arm[arm] = done
    judge_rows = _run_judge(judge, pairs, rows_by_arm, stage, c, progress) if judge is not None and pairs else []
    write_jsonl_atomic(stage / "judge.jsonl", judge_rows)
    wall = time.perf_counter() - t_start
    metrics = build_metrics(rows_by_arm, arm_info, judge_rows, settings=c, config=fingerprinted, wall_seconds=wall)
    write_json_atomic(stage / "metrics.json", metrics)
    write_report(stage, metrics, rows_by_arm)
    counts = {"prompts": len(rows), "numeric_prompts": sum(r.get("answer_type") == "numeric" for r in rows),
              "arms_done": len(rows_by_arm), "arms_skipped": len(c.arms) - len(rows_by_arm),
              "judge_comparisons": len(judge_rows), "wall_seconds": round(wall, 1),
              "judge_errors": sum(bool(r["a_first"]["error"] or r["a_second"]["error"]) for r in judge_rows)}
    summary = {a: {m: metrics["arms"][a]["metrics"][m]["mean"] for m in METRICS} for a in rows_by_arm}
    if progress:
        print(f"[evaluate] {len(rows_by_arm)} arms on {len(rows)} prompts in {wall:.0f} s; report: "
              f"{stage / 'report.html'} (print the table with format_table(load_metrics(run)))", flush=True)
    return run.complete("evaluate", fingerprinted, OUTPUTS + ["judge.jsonl"], counts,
                        extra={"summary": summary, "timing": metrics["timing"],
                               "skipped": {a: i["reason"] for a, i in arm_info.items() if i["status"] == "skipped"}})


def _arm_model(source: Run | None, c: EvaluateConfig, base_system: str | None) -> Any:
    """The base student asked for the format by its system message, or an arm's fine-tuned student."""
    from ..finetune import finetuned_model
    from ..llm.local import LocalModel

    ft = c.finetune
    if source is None:
        return LocalModel.from_spec(ft.student, system_prompt=base_system, template=ft.template,
                                    quant4=ft.method == "qlora", dtype=ft.dtype, device=ft.device)
    return finetuned_model(source, system_prompt="trained", dtype=ft.dtype, device=ft.device)


def _endpoint_identity(c: EvaluateConfig) -> dict | None:
    """Where the answers come from (the URL as resolved from the config or the environment, each arm's served
    name): part of the stage's fingerprint, so pointing at another server or name is never a reuse."""
    if c.generator == "local":
        return None
    from ..inference.endpoint import EndpointGenerator

    url = EndpointGenerator("openai:any", base_url=c.generator_url).identity()["base_url"]
    return {"base_url": url, "served_names": c.served_names()}


def _arm_endpoint(arm: str, source: Run | None, c: EvaluateConfig, base_system: str | None) -> Any:
    """The endpoint generator that answers for one arm, sent the system message the arm was trained with."""
    from ..inference.endpoint import EndpointGenerator

    if source is None:
        system = base_system
    else:
        from ..finetune import training_format

        system = training_format(source).system_prompt
    return EndpointGenerator(f"openai:{c.served_names()[arm]}", base_url=c.generator_url, system_prompt=system)


def _train(run: Run, arm: str, data: Any, c: EvaluateConfig, info: dict, progress: bool
           ) -> tuple[Run | None, dict | None]:
    """Train (or reuse) one arm's student: (the run holding it, its 05_finetune manifest), or (None, None)."""
    if progress:
        print(f"[evaluate] arm {arm}: {ARM_TITLES[arm]} ({data.source})", flush=True)
    try:
        source, ft_m, secs = train_arm(run, data, c.finetune, progress=progress)
    except ArmSkipped as exc:
        if progress:
            print(f"[evaluate] arm {arm}: skipped ({exc})", flush=True)
        info.update(status="skipped", reason=str(exc))
        return None, None
    counts = ft_m.get("counts") or {}
    info.update(train_seconds=round(secs, 2) if secs else counts.get("train_seconds"),  # reused: the time back then
                model_run=str(source.root), reused_training=secs == 0.0, train_steps=counts.get("steps"),
                final_train_loss=counts.get("final_train_loss"))
    return source, ft_m


def _evaluate_arm(run: Run, arm: str, rows: list[dict], c: EvaluateConfig, base_system: str | None,
                  generation: dict, gen_dir: Path, progress: bool) -> tuple[dict, list[dict] | None]:
    """Train (or reuse) one arm, then generate and score; a finished arm with the same key is read back."""
    data = arm_data(run, arm, c.seed)
    info: dict[str, Any] = {"title": ARM_TITLES[arm], "source": data.source, "train_counts": data.counts,
                            "train_seconds": 0.0, "generate_seconds": 0.0, "loss_seconds": 0.0}
    t0 = time.perf_counter()
    source: Run | None = None
    if arm == "base":
        identity: dict[str, Any] = {"student": c.finetune.student, **generation}
    else:
        source, ft_m = _train(run, arm, data, c, info, progress)
        if ft_m is None:
            return info, None
        identity = {"finetune": ft_m.get("fingerprint"), "outputs": ft_m.get("outputs"), **generation}
    endpoint = None if c.generator == "local" else _arm_endpoint(arm, source, c, base_system)
    if endpoint is not None:
        identity["endpoint"] = endpoint.identity()
    arm_key = stable_hash({"arm": arm, "schema": SCHEMA, **identity})[:24]  # new metrics: score again
    meta_path, out_path = gen_dir / f"{arm}.meta.json", gen_dir / f"{arm}.jsonl"
    shas = [prompt_sha(r) for r in rows]
    if meta_path.exists() and out_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("arm_key") == arm_key and meta.get("prompt_shas") == shas:
            return {**info, **meta["info"], "status": "done", "reused_generations": True}, read_jsonl(out_path)
    reused = None if endpoint is not None or arm == "base" else answers_of_stage06(run, rows, identity, c)
    if progress:
        print(f"[evaluate] arm {arm}: " + ("the answers of 06_infer (same adapter and decoding)" if reused else
                                           f"generating {len(rows)} answers"), flush=True)
    lm = None if endpoint is not None else _arm_model(source, c, base_system)
    t1 = time.perf_counter()
    gens = reused or generate_journalled(endpoint or lm, rows, gen_dir / f"{arm}.journal.jsonl", identity=arm_key,
                                         preset="greedy", max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
                                         progress=progress, desc=f"{arm} generations")[0]
    info["answers_from"] = "06_infer" if reused else "generated"
    t2 = time.perf_counter()
    if lm is None:  # answered by the endpoint; the losses need the logits, so the arm is loaded here after all
        lm = _arm_model(source, c, base_system)
    losses = arm_losses(lm, rows, gens, max_length=c.max_length, batch_tokens=c.score_batch_tokens)
    t3 = time.perf_counter()
    info.update(generate_seconds=round(t2 - t1, 2), loss_seconds=round(t3 - t2, 2),
                model=(endpoint or lm).describe(), arm_seconds=round(t3 - t0, 2))
    del lm
    gc.collect()
    done = arm_rows(arm, rows, gens, losses)
    write_jsonl_atomic(out_path, done)
    keep = {k: info[k] for k in ("generate_seconds", "loss_seconds", "model", "arm_seconds", "answers_from")}
    write_json_atomic(meta_path, {"arm_key": arm_key, "prompt_shas": shas, "info": keep})
    return {**info, "status": "done", "reused_generations": False}, done


def answers_of_stage06(run: Run, rows: list[dict], identity: dict, c: EvaluateConfig) -> list[dict] | None:
    """Stage 06's answers to these prompts when stage 06 generated exactly what this arm would, else None.

    Why: on the offline profile stage 06 already answered the same held-out prompts with the same adapter,
    greedy, with the same budget and system message, so generating them again would only cost time. Every
    condition is checked: the adapter's fingerprint, the decoding, the budget, the system message, a base loaded
    as trained, local generation, and each prompt's id and text.
    """
    m = run.manifest("infer") or {}
    cfg = m.get("config") or {}
    same = (m.get("status") == "complete" and cfg.get("use_adapter") is True
            and cfg.get("adapter") == identity.get("finetune") and cfg.get("adapter") is not None
            and cfg.get("preset") == identity.get("preset") and cfg.get("max_new_tokens") == c.max_new_tokens
            and cfg.get("system_prompt") == "trained" and cfg.get("quant4") is None
            and cfg.get("dtype") == c.finetune.dtype and cfg.get("model") == c.finetune.student
            and identity.get("generator") == "local")
    if not same or not run.path("infer", "generations.jsonl").exists():
        return None
    by_id = {str(g["id"]): g for g in read_jsonl(run.path("infer", "generations.jsonl"))}
    out = []
    for r in rows:
        g = by_id.get(str(r["id"]))
        if g is None or g.get("error") or g.get("prompt") != user_text(r.get("instruction", ""), r.get("input") or ""):
            return None
        out.append(g)
    return out


def _run_judge(judge: Any, pairs: Sequence[tuple], rows_by_arm: dict[str, list[dict]], stage: Path,
               c: EvaluateConfig, progress: bool) -> list[dict]:
    from .judge import Comparison, answer_view, run_judge

    comps = []
    for a, b in pairs:
        if a not in rows_by_arm or b not in rows_by_arm:
            continue
        for ra, rb in zip(rows_by_arm[a], rows_by_arm[b], strict=True):
            question = ra["instruction"] + (f"\n\n{ra['input']}" if ra["input"] else "")
            comps.append(Comparison(ra["id"], question, ra["reference"] if c.judge_reference else None, a, b,
                                    answer_view(ra["text"], c.judge_view), answer_view(rb["text"], c.judge_view)))
    return run_judge(judge, comps, stage / "judge_replies.jsonl", progress=progress)


__all__ = ["ARMS", "OUTPUTS", "EvaluateConfig", "load_eval_rows", "run_evaluate"]
