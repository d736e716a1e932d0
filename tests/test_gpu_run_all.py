"""benchmarks/gpu/run_all.py --dry-run: every step of the one GPU command runs on the CPU at tiny sizes and
lands in one JSON + Markdown summary (the GPU figures themselves need a lent GPU; none is measured here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_command_dry_run_writes_one_summary_with_every_step(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "run_all.py"), "--dry-run",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["wheel"] == "no wheel given"
    assert summary["scoring"]["rc"] == 0 and any("speed-up" in line for line in summary["scoring"]["output"])
    assert summary["qlora"]["rc"] == 0 and (tmp_path / "qlora.json").exists()
    assert list(summary["fp16_t4"]["stages"]) == ["data", "reflect", "score"]
    assert list(summary["gpu_run"]["stages"]) == ["data", "reflect", "score", "select", "finetune", "infer",
                                                  "evaluate"]
    assert "| evaluate |" in (tmp_path / "summary.md").read_text()


def test_gpu_command_refuses_a_missing_wheel_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "run_all.py"), "--dry-run",
                           "--out", str(tmp_path), "--wheel", str(tmp_path / "nothing.whl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not found" in proc.stderr and not (tmp_path / "summary.json").exists()
