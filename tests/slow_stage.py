"""Test helper: run one stage in its own process with local generation slowed down, so a test can kill -9 it
mid-run (the way a closed laptop or a Colab disconnect ends it).

    python tests/slow_stage.py STAGE RUN_DIR PROFILE PROFILE_OVERRIDES_JSON STAGE_OVERRIDES_JSON

`kill9_when(...)` starts it, waits until its journal holds enough lines, and kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill9_when(stage: str, run_dir: Path, profile: str, profile_overrides: dict, overrides: dict, journal: Path,
               lines: int, timeout_s: float = 180) -> int:
    """Start the slowed stage, SIGKILL it once `journal` has `lines` complete lines; returns how many it had."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, __file__, stage, str(run_dir), profile, json.dumps(profile_overrides),
                             json.dumps(overrides)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline, seen = time.time() + timeout_s, 0
    while time.time() < deadline and proc.poll() is None:
        seen = journal.read_bytes().count(b"\n") if journal.exists() else 0
        if seen >= lines:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        raise AssertionError(f"{stage} ended before it could be killed: {proc.stderr.read()[-2000:]}")
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no except blocks, no finally
    proc.wait()
    return seen


def main() -> None:
    from reflection_lab.core.runs import Run
    from reflection_lab.llm.local import LocalModel
    from reflection_lab.pipeline import run_stage
    from reflection_lab.profiles import get_profile

    stage, run_dir, profile, profile_overrides, overrides = sys.argv[1:6]
    generate = LocalModel._generate

    def slow(self, *args, **kwargs):
        time.sleep(0.5)
        return generate(self, *args, **kwargs)

    LocalModel._generate = slow
    run_stage(stage, Run(run_dir), get_profile(profile, **json.loads(profile_overrides)),
              overrides=json.loads(overrides), progress=False)


if __name__ == "__main__":
    main()
