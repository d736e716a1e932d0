"""The run directory the in-order notebook test made, lent to the browser tests.

Why: both suites need SmolLM2 stages 01-05 made with the same profile and overrides, and making them twice
cost CI about three minutes. `tests/conftest.py` puts `test_notebooks_execute_in_order` before the browser
tests; once every notebook has finished it records its run here, and the browser tests copy stages 01-05
of it. Run alone (`-m browser`), or after the notebook test failed, the browser tests make their own run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from reflection_lab.core.runs import STAGES, Run

NOTEBOOK_RUN = pytest.StashKey[dict]()
T = TypeVar("T")


def once_more_if_a_reply_is_lost(execute: Callable[[], T], name: str, timeout: int) -> T:
    """Execute a notebook; when a cell got no reply within `timeout`, execute it once more in a new kernel.

    Why: with ipykernel 7 a kernel can finish a cell and the client never hear of it (seen in this project's CI:
    both sides idle in epoll for 15 minutes; vscode-jupyter#17228 reports the same hang). The stages resume from
    their artifacts, so the second pass is short; a notebook that times out twice is a real failure.
    """
    from nbclient.exceptions import CellTimeoutError

    try:
        return execute()
    except CellTimeoutError:
        print(f"[notebooks] {name}: a cell gave no reply within {timeout} s; executing the notebook once more in a "
              "new kernel", flush=True)
        return execute()


def record_notebook_run(config: pytest.Config, run_dir: Path, profile: str, overrides: dict[str, Any]) -> None:
    """Remember a finished notebook run for later tests of this session."""
    config.stash[NOTEBOOK_RUN] = {"run": run_dir, "profile": profile,
                                  "overrides": json.dumps(overrides, sort_keys=True)}


def copy_notebook_stages(config: pytest.Config, dest: Path, profile: str, overrides: dict[str, Any],
                         stages: list[str]) -> bool:
    """Copy these stages of the recorded notebook run into `dest`, when it was made with the same settings.

    False (and nothing copied) when no run was recorded, its settings differ, or a stage is not complete.
    """
    made = config.stash.get(NOTEBOOK_RUN, None)
    if made is None or made["profile"] != profile or made["overrides"] != json.dumps(overrides, sort_keys=True):
        return False
    source = Run(made["run"])
    if any((source.manifest(stage) or {}).get("status") != "complete" for stage in stages):
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        shutil.copytree(source.stage_dir(stage), dest / STAGES[stage].folder)
    return True
