"""`reflection-lab`: one subcommand per stage, `run` for the whole pipeline, `info` for the machine."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .core.runs import MissingStageError, Run
from .profiles import Profile, get_profile, parse_assignments


def _column_map(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.split(",") if p]
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


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import STAGE_FUNCTIONS

    ap = argparse.ArgumentParser(prog="reflection-lab", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, device, precision, profiles and the model menu")
    prep = sub.add_parser("prepare", help="build or convert offline models into the cache")
    prep.add_argument("models", nargs="*", default=["tiny-llama", "tiny-gpt2", "smollm2-135m"])
    sv = sub.add_parser("serve", help="the lab's OpenAI-compatible server (see python -m reflection_lab.server -h)")
    sv.add_argument("rest", nargs=argparse.REMAINDER)
    st = sub.add_parser("status", help="which stages of a run are done")
    st.add_argument("--run", required=True)
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
        if stage == "infer":
            sp.add_argument("--base", action="store_true", default=None, help="the base student, no adapter")
            sp.add_argument("--preset", choices=["greedy", "reflection", "creative"])
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
    "reflect": {"teacher": "teacher", "style": "style", "concurrency": "concurrency"},
    "select": {k: k for k in ("ifd_max", "rifd_max", "top_k_percent", "top_k_of", "min_words", "max_words",
                              "drop_refusals", "keep_unreflected_answers", "score_form")},
    "infer": {"preset": "preset"},
    "evaluate": {k: k for k in ("arms", "judge", "judge_model", "n_eval", "eval_data", "seed")},
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    if args.cmd == "serve":
        from .server import main as serve_main

        return serve_main(args.rest) or 0
    if args.cmd == "status":
        for stage, state in Run(args.run).status().items():
            print(f"{stage:9s} {state}")
        return 0
    return _run_stages(args, parser)


def _run_stages(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """A stage subcommand or `run`: profile and overrides in, manifests (and the evaluation table) out."""
    from .finetune import FinetuneError
    from .pipeline import run_pipeline, run_stage

    try:
        profile = get_profile(args.profile, **parse_assignments(args.set))
    except (KeyError, TypeError, ValueError) as exc:  # unknown profile or field, or a bad value
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    run = Run(args.run or Path("runs") / profile.name)
    overrides = stage_overrides(args)
    try:
        if args.cmd == "run":
            stages = args.stages.split(",") if args.stages else None
            results = run_pipeline(run, profile, stages=stages, overrides=overrides, force=args.force)
        else:
            results = {args.cmd: run_stage(args.cmd, run, profile, overrides=overrides.get(args.cmd),
                                           force=args.force)}
            m = results[args.cmd]
            print(json.dumps({"stage": args.cmd, "status": m.get("status"), "counts": m.get("counts")}, indent=1))
        if "evaluate" in results:
            from .evaluate import format_table, load_metrics

            print(format_table(load_metrics(run)))
    except MissingStageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FinetuneError, ValueError) as exc:
        # Bad settings and training failures have messages that say what to change; a traceback only hides them.
        print(f"error: {exc}", file=sys.stderr)
        hint = _value_error_hint(str(exc), args, parser) if isinstance(exc, ValueError) else None
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 2
    print(f"run directory: {run.root}")
    return 0
