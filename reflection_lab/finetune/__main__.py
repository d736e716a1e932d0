"""`python -m reflection_lab.finetune`: stage 05 alone, the entry point for several processes.

    accelerate launch --multi_gpu --num_processes 2 -m reflection_lab.finetune --run runs/ci --profile ci
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.config import ConfigError
from ..core.runs import MissingStageError, Run
from ..profiles import get_profile, parse_assignments
from .config import FinetuneConfig, FinetuneError
from .stage import run_finetune


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reflection_lab.finetune", description="Stage 05: fine-tune.")
    ap.add_argument("--run", required=True)
    ap.add_argument("--profile", default="offline")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a profile field")
    ap.add_argument("--cfg", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a FinetuneConfig field, e.g. --cfg method=lora")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        prof = get_profile(args.profile, **parse_assignments(args.set))
        cfg = FinetuneConfig.from_profile(prof, **parse_assignments(args.cfg))
        m = run_finetune(Run(args.run), cfg, force=args.force, progress=not args.quiet)
    except (KeyError, ConfigError, MissingStageError, FinetuneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if m.get("status") == "complete":
        print(json.dumps({"stage": "finetune", "status": m["status"], "counts": m.get("counts")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
