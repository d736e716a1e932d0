"""`reflection-lab`: one subcommand per stage, `run` for the whole pipeline, `info` for the machine."""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from .core.config import ConfigError
from .core.errors import LabError
from .core.runs import Run
from .profiles import Profile, get_profile, parse_assignments


def _column_map(text: str) -> dict[str, str]:
    """"instruction=prompt,output=response" -> {"instruction": "prompt", "output": "response"}."""
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ConfigError(f"--column-map needs FIELD=COLUMN pairs separated by commas, e.g. "
                          f"instruction=prompt,output=response; got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--run", help="run directory (default: runs/<profile>)")
    sp.add_argument("--profile", default="offline", help="ci, offline, offline-full, colab-t4, gpu")
    sp.add_argument("--force", action="store_true", help="recompute even if the stage output is current")
    sp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a profile field, e.g. --set n_samples=8 (repeatable)")


def _evaluate_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--arms", help="comma-separated subset of base,original,reflected,selected,random "
                         "(default: the profile's eval_arms; offline: base,selected)")
    sp.add_argument("--judge", help="pairwise judge, a backend spec: openai | openai:<model> | local:<model>")
    sp.add_argument("--judge-model", help="model name for the judge endpoint")
    sp.add_argument("--n-eval", type=int, help="evaluate on a stratified subset of this many held-out prompts")
    sp.add_argument("--eval-data", help="evaluate on another dataset (file, saved dataset folder or hub name)")
    sp.add_argument("--seed", type=int, help="seed of the bootstrap and the random arm (default 0)")
    # own dests: in `run` these flags are stage 07's only (stage 06 takes `infer --generator openai:<model>`)
    sp.add_argument("--generator", dest="eval_generator", choices=["local", "openai"],
                    help="stage 07 answers with local transformers (default) or an OpenAI-compatible endpoint that "
                         "serves every arm (vLLM with --enable-lora, TGI, Ollama)")
    sp.add_argument("--generator-url", dest="eval_generator_url",
                    help="the endpoint's base URL (default: REFLECTION_LAB_INFER_BASE_URL)")
    sp.add_argument("--arm-models", help="the endpoint's model name per arm, e.g. base=Qwen/Qwen2.5-0.5B-Instruct,"
                    "selected=sel (default: the student spec for base, the arm's name for the others)")


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import STAGE_FUNCTIONS

    ap = argparse.ArgumentParser(prog="reflection-lab", description=__doc__,
                                 epilog="Errors print one line; add --debug anywhere to see the traceback.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, device, precision, profiles and the model menu")
    prep = sub.add_parser("prepare", help="build or convert offline models into the cache")
    prep.add_argument("models", nargs="*", default=["tiny-llama", "tiny-gpt2", "smollm2-135m"])
    sub.add_parser("serve", help="the lab's OpenAI-compatible server; its options: reflection-lab serve -h")
    st = sub.add_parser("status", help="which stages of a run are done")
    st.add_argument("--run", required=True)
    ex = sub.add_parser("export", help="merged fp16 model with a hub model card; optionally push to the Hub")
    ex.add_argument("--run", required=True)
    ex.add_argument("--merged", action="store_true", help="write <run>/export/merged (LoRA folded into fp16)")
    ex.add_argument("--out", help="folder for the merged model (default <run>/export/merged)")
    ex.add_argument("--push", metavar="REPO", help="push adapter, merged model and 04_select data to owner/name")
    ex.add_argument("--private", action="store_true", help="create the Hub repos private")
    for stage in STAGE_FUNCTIONS:
        sp = sub.add_parser(stage, help=f"run stage '{stage}'")
        _common(sp)
        if stage == "data":
            sp.add_argument("--train", help="training data: file, saved dataset folder, hub name or 'workshop'")
            sp.add_argument("--eval", help="evaluation data (default: workshop-eval)")
            sp.add_argument("--column-map", help="e.g. instruction=prompt,output=response")
            sp.add_argument("--strict", action="store_true", default=None, help="stop on the first bad rows")
        if stage == "reflect":
            sp.add_argument("--teacher", help="replay | replay:<file> | openai | openai:<model> | local:<model>")
            sp.add_argument("--style", choices=["reflection", "plain"], help="answer format asked of the teacher")
            sp.add_argument("--concurrency", type=int, help="parallel teacher requests (default 8)")
            sp.add_argument("--timeout", type=float, dest="timeout_s",
                            help="seconds an endpoint may take per reply (default: REFLECTION_LAB_TEACHER_TIMEOUT_S "
                                 "or 120); a request that times out is not sent again in this run")
            sp.add_argument("--max-retries", type=int, help="retries on 429 / 5xx / dropped connections (default 6)")
            sp.add_argument("--max-tokens", type=int, help="tokens per teacher reply (default 1024)")
        if stage == "infer":
            sp.add_argument("--base", action="store_true", default=None, help="the base student, no adapter")
            sp.add_argument("--preset", choices=["greedy", "reflection", "creative"])
            sp.add_argument("--generator", help="local (default) | openai | openai:<model>: an OpenAI-compatible "
                                                "endpoint (vLLM, TGI, Ollama, reflection-lab serve)")
            sp.add_argument("--generator-url", help="the endpoint's base URL (default: REFLECTION_LAB_INFER_BASE_URL "
                                                    "or OPENAI_BASE_URL)")
            sp.add_argument("--concurrency", type=int, help="parallel endpoint requests (default: "
                                                             "REFLECTION_LAB_INFER_CONCURRENCY or 8)")
            sp.add_argument("--timeout", type=float, dest="timeout_s",
                            help="seconds the endpoint may take per answer (default: REFLECTION_LAB_INFER_TIMEOUT_S "
                                 "or 120); a timed-out request is not sent again in this run")
            sp.add_argument("--max-retries", type=int, help="retries on 429 / 5xx / dropped connections (default 6)")
        if stage == "select":
            sp.add_argument("--ifd-max", type=float)
            sp.add_argument("--rifd-max", type=float)
            sp.add_argument("--top-k", type=float, dest="top_k_percent", help="keep the top k%% by IFD")
            sp.add_argument("--top-k-of", choices=["kept", "all"])
            sp.add_argument("--min-words", type=int)
            sp.add_argument("--max-words", type=int)
            sp.add_argument("--drop-refusals", action="store_true", default=None)
            sp.add_argument("--keep-unreflected-answers", action="store_true", default=None)
            sp.add_argument("--score-form", choices=["ppl", "loss"])
        if stage == "evaluate":
            _evaluate_flags(sp)
    rp = sub.add_parser("run", help="the whole pipeline")
    _common(rp)
    rp.add_argument("--stages", help="comma-separated subset, in order")
    _evaluate_flags(rp)
    return ap


def _option_for(parser: argparse.ArgumentParser, cmd: str, dest: str) -> str | None:
    """The flag of subcommand `cmd` that sets `dest` (e.g. top_k_percent -> --top-k), if there is one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and cmd in action.choices:
            for sub_action in action.choices[cmd]._actions:
                if sub_action.dest == dest and sub_action.option_strings:
                    return sub_action.option_strings[0]
    return None


# Flags of the stage subcommands, by the stage whose config field they set (flag dest -> config field).
STAGE_FLAGS: dict[str, dict[str, str]] = {
    "data": {"train": "train", "eval": "eval", "strict": "strict", "column_map": "column_map"},
    "reflect": {k: k for k in ("teacher", "style", "concurrency", "timeout_s", "max_retries", "max_tokens")},
    "select": {k: k for k in ("ifd_max", "rifd_max", "top_k_percent", "top_k_of", "min_words", "max_words",
                              "drop_refusals", "keep_unreflected_answers", "score_form")},
    "infer": {k: k for k in ("preset", "generator", "generator_url", "concurrency", "timeout_s", "max_retries")},
    "evaluate": {**{k: k for k in ("arms", "judge", "judge_model", "n_eval", "eval_data", "seed", "arm_models")},
                 "eval_generator": "generator", "eval_generator_url": "generator_url"},
}


def stage_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The flags that were given, as config overrides per stage (`--base` means use_adapter=False)."""
    out: dict[str, dict[str, Any]] = {}
    for stage, flags in STAGE_FLAGS.items():
        given = {field: getattr(args, dest) for dest, field in flags.items() if getattr(args, dest, None) is not None}
        if given:
            out[stage] = given
    if "column_map" in out.get("data", {}):
        out["data"]["column_map"] = _column_map(out["data"]["column_map"])
    if getattr(args, "base", None):
        out.setdefault("infer", {})["use_adapter"] = False
    return out


def _known_fields() -> dict[str, set[str]]:
    """Field names of the profile and of every stage config (what an error message may name)."""
    from .pipeline import STAGE_FUNCTIONS, stage_parts

    known = {"profile": {f.name for f in fields(Profile)}}
    for stage in STAGE_FUNCTIONS:
        known[stage] = {f.name for f in fields(stage_parts(stage)[0])}
    return known


def _value_error_hint(message: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """Name the option or profile field a ValueError's message points at, so the user knows what to change.

    Stage configs name the offending field in their messages ("top_k_percent must be in [0, 100] ...");
    the same field may have come from --set, from a flag of the subcommand, or from the profile itself.
    """
    known = _known_fields()
    every = set().union(*known.values())
    given = dict(kv.split("=", 1) for kv in args.set if "=" in kv)
    for word in dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message)):
        if word not in every:
            continue
        if word in given:
            return f"check --set {word}={given[word]}"
        flag = _option_for(parser, args.cmd, word)
        if flag and getattr(args, word, None) is not None:
            return f"check {flag} (given: {getattr(args, word)})"
        if word in known["profile"]:
            return f"check the field {word!r} of profile {args.profile!r} (override it with --set {word}=...)"
    return None


OS_HINTS = {
    errno.EACCES: "no permission: choose a writable --run, or fix the folder's permissions",
    errno.EPERM: "no permission: choose a writable --run, or fix the folder's permissions",
    errno.EROFS: "a read-only file system: choose a writable --run",
    errno.ENOSPC: "the disk is full: free some space (models are cached in REFLECTION_LAB_CACHE) and rerun; "
                  "finished and journalled work is kept",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a file stands where a folder is expected",
    errno.EEXIST: "a file stands where a folder is expected",
}


def guarded(action: Callable[[], int], debug: bool,
            on_value_error: Callable[[str], str | None] = lambda m: None) -> int:
    """Run a command; a user error or an environment fault becomes one `error:` line and a non-zero exit.

    LabError (and the ValueError of a bad setting) exits 2, an OS fault 1, an interrupt 130. Anything else
    is a bug in the lab and keeps its traceback; `--debug` shows the traceback of everything.
    """
    if debug:
        return action()
    try:
        return action()
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished and journalled work is kept)", file=sys.stderr)
        return 130
    except (LabError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        hint = on_value_error(message) if isinstance(exc, ValueError) else None
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        hint = OS_HINTS.get(exc.errno or -1, "check the file and the disk")
        print(f"error: {exc.strerror or exc}{where}: {hint}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["serve"]:  # the server has options of its own: python -m reflection_lab.server -h
        from .server import main as serve_main

        return guarded(lambda: serve_main(argv[1:], prog="reflection-lab serve") or 0, debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded(lambda: _command(args, parser), debug,
                   lambda message: _value_error_hint(message, args, parser) if hasattr(args, "set") else None)


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.cmd == "info":
        from .core.devices import environment_report, pick_device
        from .models import MODEL_MENU
        from .profiles import PROFILES

        print(environment_report())
        print(pick_device().summary())
        print("profiles:")
        for p in PROFILES.values():
            print(f"  {p.name:13s} {p.description} [{p.time_note}; {p.memory_note}]")
        print("model menu:")
        for name, size, note in MODEL_MENU:
            print(f"  {name:38s} {size:>5s}  {note}")
        return 0
    if args.cmd == "prepare":
        from .models import resolve_model

        for m in args.models:
            print(m, "->", resolve_model(m))
        return 0
    if args.cmd == "export":
        from .finetune.export import export_run

        print(json.dumps(export_run(Run(args.run), merged=args.merged, push=args.push, private=args.private,
                                    out_dir=args.out), indent=1))
        return 0
    if args.cmd == "status":
        for stage, state in Run(args.run).status().items():
            print(f"{stage:9s} {state}")
        return 0
    return _run_stages(args)


def _run_stages(args: argparse.Namespace) -> int:
    """A stage subcommand or `run`: profile and overrides in, manifests (and the evaluation table) out."""
    from .pipeline import run_pipeline, run_stage

    try:
        profile = get_profile(args.profile, **parse_assignments(args.set))
    except KeyError as exc:  # an unknown profile
        raise ConfigError(exc.args[0]) from None
    run = Run(args.run or Path("runs") / profile.name)
    overrides = stage_overrides(args)
    if args.cmd == "run":
        stages = args.stages.split(",") if args.stages else None
        results = run_pipeline(run, profile, stages=stages, overrides=overrides, force=args.force)
    else:
        results = {args.cmd: run_stage(args.cmd, run, profile, overrides=overrides.get(args.cmd), force=args.force)}
        m = results[args.cmd]
        print(json.dumps({"stage": args.cmd, "status": m.get("status"), "counts": m.get("counts")}, indent=1))
    if "evaluate" in results:
        from .evaluate import format_table, load_metrics

        from .evaluate.metrics import verdicts

        metrics = load_metrics(run)
        print(format_table(metrics))
        print(f"report: {Path(run.root) / '07_evaluate' / 'report.html'} (offline: report_offline.html next to it)")
        for sentence in verdicts(metrics):
            print(f"verdict: {sentence}")
    print(f"run directory: {run.root}")
    return 0
