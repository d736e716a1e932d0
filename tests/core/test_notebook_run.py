"""The browser tests borrow the notebook test's run only when it was made with the same settings and finished."""

from __future__ import annotations

import pytest

from notebook_run import copy_notebook_stages, record_notebook_run
from reflection_lab.core.runs import Run

STAGES = ["data", "reflect", "score", "select", "finetune"]


class _Config:
    def __init__(self) -> None:
        self.stash = pytest.Stash()


def _finished_run(root, upto: int) -> Run:
    run = Run(root)
    for stage in STAGES[:upto]:
        run.begin(stage, {"k": stage})
        run.path(stage, "out.txt").write_text(stage)
        run.complete(stage, {"k": stage}, ["out.txt"])
    return run


def test_stages_are_copied_only_from_a_finished_run_with_the_same_settings(tmp_path):
    config = _Config()
    assert not copy_notebook_stages(config, tmp_path / "none", "offline", {"n": 1}, STAGES)  # nothing recorded
    source = _finished_run(tmp_path / "made", len(STAGES))
    record_notebook_run(config, source.root, "offline", {"n": 1, "m": 2})
    assert not copy_notebook_stages(config, tmp_path / "a", "offline", {"n": 1}, STAGES)
    assert not copy_notebook_stages(config, tmp_path / "b", "ci", {"m": 2, "n": 1}, STAGES)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert copy_notebook_stages(config, tmp_path / "c", "offline", {"m": 2, "n": 1}, STAGES)  # any key order
    copy = Run(tmp_path / "c")
    assert all(copy.is_current(stage, {"k": stage}) for stage in STAGES)


def test_an_unfinished_stage_is_never_copied(tmp_path):
    config = _Config()
    source = _finished_run(tmp_path / "made", len(STAGES) - 1)  # no finetune
    record_notebook_run(config, source.root, "offline", {})
    assert not copy_notebook_stages(config, tmp_path / "c", "offline", {}, STAGES)
    assert not (tmp_path / "c").exists()
