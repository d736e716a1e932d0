"""Colab: every notebook runs alone in a fresh runtime, the install takes only what the runtime lacks, and the
run directory can live on Google Drive.

Colab gives each notebook its own runtime and disk, so notebook 05 opened from its badge has no 01-04 results.
The rehearsal at the end executes each notebook 01-07 alone, in its own empty folder, with a stand-in
`google.colab` preloaded as Colab preloads the real one, and the install pointed at this checkout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

from notebook_run import once_more_if_a_reply_is_lost

from reflection_lab.core.runs import Run
from reflection_lab.notebook import (colab_install, colab_requirements, drive_run_dir, ensure_stages,
                                     missing_requirements, notebook_params)
from reflection_lab.pipeline import missing_stages, stages_needed
from reflection_lab.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_samples": 6, "n_eval": 2, "max_steps": 2, "batch_size": 2, "max_new_tokens": 12,
         "keep_unreflected_answers": True}

STAND_IN = {
    "google/colab/__init__.py": '"""Stand-in for Colab\'s module (tests only)."""\n',
    "google/colab/drive.py": (
        "import os\n\n\ndef mount(path, **kw):\n"
        "    os.makedirs(os.path.join(path, 'MyDrive'), exist_ok=True)\n"
        "    with open(os.path.join(path, 'mounts.log'), 'a') as f:\n"
        "        f.write(path + '\\n')\n"),
    # Colab imports google.colab before any cell runs; the notebooks' first cell looks for it in sys.modules.
    "sitecustomize.py": "import google.colab  # noqa: F401\n",
}


@pytest.fixture
def colab_stand_in(tmp_path, monkeypatch) -> Path:
    """A folder with a stand-in google.colab, on sys.path and PYTHONPATH (kernels see it too)."""
    folder = tmp_path / "stand-in"
    for name, text in STAND_IN.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(ROOT / "tests"),
                                                      os.environ.get("PYTHONPATH", "")]))
    _forget_colab()
    import google.colab  # noqa: F401

    yield folder
    _forget_colab()  # the rest of the suite is not on Colab


def _forget_colab() -> None:
    for mod in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        del sys.modules[mod]


def test_needed_stages_follow_the_pipeline_and_only_missing_ones_run(tmp_path, capsys):
    assert stages_needed("select") == ["data", "reflect", "score", "select"]
    assert stages_needed(("reflect", "select")) == ["data", "reflect", "score", "select"]
    assert stages_needed("infer") == ["data", "infer"]
    run, profile = Run(tmp_path / "run"), get_profile("ci", **SMALL)
    assert missing_stages(run, "reflect") == ["data", "reflect"]
    assert ensure_stages(run, profile, "reflect", progress=False) == ["data", "reflect"]
    out = capsys.readouterr().out
    assert "building data, reflect first" in out and "01: " in out and "02: " in out  # says what and how long
    assert run.manifest("reflect")["status"] == "complete" and missing_stages(run, "reflect") == []
    before = run.manifest("reflect")["finished"]
    assert ensure_stages(run, profile, "reflect", progress=False) == []  # a run that has them goes on at once
    assert run.manifest("reflect")["finished"] == before and "inputs ready" in capsys.readouterr().out


def test_a_broken_earlier_stage_is_rebuilt_with_everything_after_it(tmp_path):
    run, profile = Run(tmp_path / "run"), get_profile("ci", **SMALL)
    ensure_stages(run, profile, "reflect", progress=False)
    run.path("data", "samples.jsonl").write_text("")  # changed after the stage finished
    assert missing_stages(run, "reflect") == ["data", "reflect"]
    ensure_stages(run, profile, "reflect", progress=False)
    assert missing_stages(run, "reflect") == []


def test_colab_install_takes_only_what_the_runtime_lacks():
    reqs = colab_requirements(ROOT / "pyproject.toml")
    names = {r.split(">")[0].split("=")[0].split("[")[0] for r in reqs}
    assert {"transformers", "peft", "bitsandbytes", "ipywidgets", "plotly"} <= names
    assert not names & {"torch", "jupyterlab", "ipykernel"}  # Colab's own pins stay
    assert missing_requirements(["pytest>=1.0"]) == []
    assert missing_requirements(["pytest>=999", "no-such-package-here>=1"]) == ["pytest>=999",
                                                                                "no-such-package-here>=1"]


def _recorded_install(monkeypatch, tmp_path, repo: str, ref: str | None = None) -> list[list[str]]:
    import subprocess

    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append([str(c) for c in cmd]))
    monkeypatch.setenv("REFLECTION_LAB_REPO", repo)
    if ref:
        monkeypatch.setenv("REFLECTION_LAB_REF", ref)
    monkeypatch.chdir(tmp_path)
    return calls


def test_colab_install_from_a_local_checkout_installs_the_lab_without_its_dependencies(
        colab_stand_in, monkeypatch, tmp_path):
    calls = _recorded_install(monkeypatch, tmp_path, str(ROOT))
    message = colab_install()
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)]]
    assert "nothing else needed" in message and Path.cwd() == ROOT / "notebooks"


def test_colab_install_clones_the_chosen_repository_and_ref(colab_stand_in, monkeypatch, tmp_path):
    import reflection_lab.notebook as nb

    calls = _recorded_install(monkeypatch, tmp_path, "https://example.org/fork.git", ref="my-branch")
    home = tmp_path / "home"
    monkeypatch.setattr(nb, "COLAB_HOME", home)
    monkeypatch.setattr(nb, "colab_requirements", lambda *a, **k: ["pytest>=999"])
    monkeypatch.setattr(os, "chdir", lambda p: None)
    colab_install()
    assert calls[0] == ["git", "clone", "--depth", "1", "--branch", "my-branch", "https://example.org/fork.git",
                        str(home)]
    assert calls[1][-1] == "pytest>=999" and calls[2][-2:] == ["-e", str(home)]


def test_not_on_colab_nothing_is_installed(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for var in ("COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    assert colab_install().startswith("not on Colab")
    assert drive_run_dir("../runs/workshop", True) == "../runs/workshop"


def test_drive_keeps_the_run_where_every_notebook_finds_it(colab_stand_in, monkeypatch, tmp_path):
    monkeypatch.setenv("REFLECTION_LAB_DRIVE_MOUNT", str(tmp_path / "drive"))
    monkeypatch.setenv("REFLECTION_LAB_USE_DRIVE", "1")
    assert notebook_params()["use_drive"] is True
    assert drive_run_dir("../runs/workshop", False) == "../runs/workshop"
    where = drive_run_dir("../runs/workshop", True)
    assert where == str(tmp_path / "drive" / "MyDrive" / "reflection-lab" / "workshop") and Path(where).is_dir()
    assert (tmp_path / "drive" / "mounts.log").read_text().strip() == str(tmp_path / "drive")


def _execute_alone(path: Path, folder: Path, timeout: int) -> float:
    from nbclient import NotebookClient

    def execute() -> None:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}})
        client.execute()

    t0 = time.perf_counter()
    once_more_if_a_reply_is_lost(execute, path.name, timeout)
    return time.perf_counter() - t0


@pytest.mark.notebooks
@pytest.mark.parametrize("number", ["01", "02", "03", "04", "05", "06", "07"])
def test_colab_rehearsal_each_notebook_alone_in_a_fresh_runtime(number, colab_stand_in, tmp_path, monkeypatch):
    """Notebook NN alone: an empty folder, Drive on (a stand-in mount there), the install from this checkout."""
    path = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    fresh = tmp_path / "content"
    fresh.mkdir()
    for name, value in {"REFLECTION_LAB_REPO": str(ROOT), "REFLECTION_LAB_PROFILE": "ci",
                        "REFLECTION_LAB_RUN": "../runs/workshop", "REFLECTION_LAB_OVERRIDES": json.dumps(SMALL),
                        "REFLECTION_LAB_USE_DRIVE": "1", "REFLECTION_LAB_DRIVE_MOUNT": str(fresh / "drive"),
                        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TORCHDYNAMO_DISABLE": "1",
                        "PYDEVD_DISABLE_FILE_VALIDATION": "1"}.items():
        monkeypatch.setenv(name, value)
    before = path.read_bytes()
    seconds = _execute_alone(path, fresh, timeout=int(os.environ.get("LAB_NOTEBOOK_TIMEOUT", "900")))
    print(f"[colab rehearsal] {path.name} alone: {seconds:.1f} s", flush=True)
    assert path.read_bytes() == before
    run = Run(fresh / "drive" / "MyDrive" / "reflection-lab" / "workshop")
    stage = {"01": "data", "02": "reflect", "03": "score", "04": "select", "05": "finetune", "06": "infer",
             "07": "evaluate"}[number]
    assert run.manifest(stage)["status"] == "complete", run.status()
