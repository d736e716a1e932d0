"""The notebooks: committed clean (fast checks), and executed end to end in order (marker `notebooks`).

Why both: GitHub refuses to render notebooks saved with widget state ("the 'state' key is missing from
'metadata.widgets'"), and stored outputs rot and bloat diffs, so the committed files must be clean. And
no anchor repo runs its LLM notebooks in CI; here every notebook runs on a CPU in a shared run
directory, exactly as a learner would run them, so a package change that breaks a notebook fails a test.

Executing test, configured by environment variables:
  LAB_NOTEBOOK_PROFILE    profile for the notebooks (default "offline")
  LAB_NOTEBOOK_OVERRIDES  JSON profile overrides (default: CI_OVERRIDES below; "{}" = the profile as is)
  LAB_NOTEBOOK_TIMEOUT    seconds per cell (default 1800; .ci/run sets 300); a notebook whose cell timed out is
                          executed once more in a new kernel (a lost reply, see tests/notebook_run.py)
  LAB_NOTEBOOK_OUT        folder to save the executed copies and timings.json (default: not saved)
  LAB_NOTEBOOK_ONLY       comma-separated numbers to run, e.g. "00,01,02" (default: all; later ones need
                          the run directory of the earlier ones, so a subset is for debugging early notebooks)
The committed notebooks are never written: each is read, executed in memory, and only copies are saved.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from notebook_run import once_more_if_a_reply_is_lost, record_notebook_run
from reflection_lab.core.runs import STAGES

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
# Small sizes for CI. keep_unreflected_answers: with only 8 samples the paper's rule can keep fewer than the
# 4 pairs fine-tuning needs (it kept 2 of 8 with SmolLM2 here), so CI also keeps pairs with original answers.
# batch_size 2: fine-tuning SmolLM2 dominates the CPU time (about 100 s per step of 4 samples here).
CI_OVERRIDES = {"n_samples": 8, "n_eval": 4, "max_steps": 6, "batch_size": 2, "max_new_tokens": 64,
                "keep_unreflected_answers": True}
PARAM_NAMES = ("PROFILE", "USE_DRIVE", "RUN_DIR", "OVERRIDES")


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def test_notebooks_exist_in_stage_order():
    names = [p.name for p in NOTEBOOKS]
    assert names[0] == "00_setup.ipynb"
    for stage, info in STAGES.items():
        assert info.notebook in names, f"runs.STAGES names {info.notebook} for stage {stage!r}, but it is missing"
    assert len({n[:2] for n in names}) == len(names), "two notebooks share a number"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_and_committed_clean(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata, "widget state saved: GitHub cannot render it (clear metadata.widgets)"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        assert "widgets" not in cell.metadata and "execution" not in cell.metadata, f"{path.name} cell {i} metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_lab_layout(path):
    """Markdown intro with costs, then set-up, then a tagged parameters cell read from the environment."""
    nb = _read(path)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert "ci" in cells[0].source and "colab-t4" in cells[0].source, "intro must give time/memory per profile"
    code = [c for c in cells if c.cell_type == "code"]
    assert "colab_install()" in code[0].source and "notebook_params" in code[0].source
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert "notebook_params()" in params[0].source
    for name in PARAM_NAMES:
        assert re.search(rf"^{name} = ", params[0].source, re.M), f"parameters cell must set {name}"
    assert f'start("{path.name[:2]}", PROFILE, RUN_DIR' in "".join(c.source for c in code[:4])
    text = "".join(c.source for c in code)
    assert "FigureWidget" not in text, "use go.Figure + fig.show(): FigureWidget needs a front-end extension"
    assert "Try this" in "".join(c.source for c in cells if c.cell_type == "markdown")


def test_docs_show_the_same_notebook_times_the_notebooks_print():
    from reflection_lab.notebook import NOTEBOOK_TIMES

    rows = {line.split("`")[1][:2]: line for line in (ROOT / "docs" / "workshop.md").read_text().splitlines()
            if re.match(r"\| `\d\d_", line)}
    assert set(rows) == set(NOTEBOOK_TIMES) == {p.name[:2] for p in NOTEBOOKS}
    for nb, times in NOTEBOOK_TIMES.items():
        cells = [c.strip() for c in rows[nb].split("|")[2:5]]
        assert cells == [times["ci"], times["offline"], times["idle"]], (nb, cells)


STAGE_WRITERS = {"01_data": "run_data(", "02_reflect": "run_reflect(", "03_score": "run_score(",
                 "04_select": "run_select(", "05_finetune": "run_finetune(", "06_inference": "run_infer(",
                 "07_evaluate": "run_evaluate("}


@pytest.mark.parametrize("stem, call", STAGE_WRITERS.items())
def test_each_stage_notebook_writes_its_stage(stem, call):
    text = "".join(c.source for c in _read(NB_DIR / f"{stem}.ipynb").cells if c.cell_type == "code")
    assert call in text


def _kernel_cpu_seconds(client) -> float | None:
    """User + system CPU seconds of the kernel process so far: on a busy shared machine wall time says
    little, CPU time still says how much work a notebook is (on an idle 2-core machine, wall >= CPU / 2)."""
    try:
        import psutil

        t = psutil.Process(client.km.provisioner.pid).cpu_times()
        return round(t.user + t.system + t.children_user + t.children_system, 1)
    except Exception:  # noqa: BLE001 - a measurement only; never fail the test over it
        return None


def _overrides() -> dict:
    raw = os.environ.get("LAB_NOTEBOOK_OVERRIDES")
    return CI_OVERRIDES if raw is None else json.loads(raw)


@pytest.mark.notebooks
def test_notebooks_execute_in_order(tmp_path, monkeypatch, request):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    profile = os.environ.get("LAB_NOTEBOOK_PROFILE", "offline")
    overrides = _overrides()
    timeout = int(os.environ.get("LAB_NOTEBOOK_TIMEOUT", "1800"))
    out_dir = Path(os.environ["LAB_NOTEBOOK_OUT"]) if os.environ.get("LAB_NOTEBOOK_OUT") else None
    if out_dir is not None and out_dir.resolve() == NB_DIR.resolve():
        pytest.fail("LAB_NOTEBOOK_OUT must not be notebooks/: the executed copies would replace the committed ones")
    run_dir = tmp_path / "run"
    monkeypatch.setenv("REFLECTION_LAB_PROFILE", profile)
    monkeypatch.setenv("REFLECTION_LAB_RUN", str(run_dir))
    monkeypatch.setenv("REFLECTION_LAB_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    only = [x.strip() for x in os.environ.get("LAB_NOTEBOOK_ONLY", "").split(",") if x.strip()]
    chosen = [p for p in NOTEBOOKS if not only or p.name[:2] in only]
    before = {p: p.read_bytes() for p in chosen}
    timings: dict[str, float] = {}
    cpu_seconds: dict[str, float | None] = {}
    t_all = time.perf_counter()

    def execute(path: Path) -> tuple[Any, str | None, float | None]:
        """The executed notebook, the first failing cell's message (None: all ran) and the kernel's CPU seconds."""
        nb = _read(path)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(NB_DIR)}})
        failure = None
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as exc:
                    failure = f"{path.name}, cell {index} failed (profile {profile}, overrides {overrides}):\n{exc}"
                    break
            return nb, failure, _kernel_cpu_seconds(client)

    for path in chosen:
        t0 = time.perf_counter()
        nb, failure, cpu = once_more_if_a_reply_is_lost(lambda: execute(path), path.name, timeout)
        timings[path.stem] = round(time.perf_counter() - t0, 1)
        cpu_seconds[path.stem] = cpu
        print(f"[notebooks] {path.name}: {timings[path.stem]:.1f} s wall, {cpu} s kernel CPU", flush=True)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out_dir / path.name)
        if failure:
            pytest.fail(failure, pytrace=False)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    print(f"[notebooks] total: {timings['total']:.1f} s (profile {profile}, overrides {overrides})", flush=True)
    if out_dir is not None:
        summary = {"profile": profile, "overrides": overrides, "seconds": timings, "kernel_cpu_seconds": cpu_seconds}
        (out_dir / "timings.json").write_text(json.dumps(summary, indent=1))
    assert {p: p.read_bytes() for p in chosen} == before, "executing must never write into the committed notebooks"
    for stage, info in STAGES.items():
        if any(p.name == info.notebook for p in chosen):
            manifest = json.loads((run_dir / info.folder / "manifest.json").read_text())
            assert manifest["status"] == "complete", f"{info.notebook} ran but stage {stage!r} is {manifest['status']}"
    if any(p.name == STAGES["evaluate"].notebook for p in chosen):
        _check_evaluation(run_dir)
    record_notebook_run(request.config, run_dir, profile, overrides)  # the browser tests copy stages 01-05


def _check_evaluation(run_dir: Path) -> None:
    """Notebook 07 evaluated all five arms with real generations and finite reference losses.

    Why here: with the offline profile this is the suite's only evaluation with SmolLM2 (the profile's LoRA arms,
    real answers); the tiny students cover every arm and option in tests/evaluate/.
    """
    from reflection_lab.core.runs import Run
    from reflection_lab.evaluate import ARMS, load_generations, load_metrics

    run = Run(run_dir)
    assert run.manifest("evaluate")["counts"]["arms_done"] == len(ARMS)
    metrics = load_metrics(run)
    for arm, entry in metrics["arms"].items():
        loss = entry["metrics"]["ref_loss"]
        assert loss["n"] > 0 and math.isfinite(loss["mean"]) and loss["mean"] > 0, (arm, loss)
        for name in ("format", "exact_match"):
            assert entry["metrics"][name]["mean"] is None or 0 <= entry["metrics"][name]["mean"] <= 1, (arm, name)
    assert metrics["differences"]["vs_random"], "selected - random needs both arms"
    assert all(r["text"] for r in load_generations(run, "base")), "the base student answered nothing to a prompt"
    assert (run_dir / "07_evaluate" / "report.html").exists()


def test_a_notebook_whose_reply_was_lost_is_executed_once_more_and_a_second_loss_fails(capsys):
    from nbclient.exceptions import CellTimeoutError

    calls = []

    def lost_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise CellTimeoutError("no reply")
        return "executed"

    assert once_more_if_a_reply_is_lost(lost_once, "04_select.ipynb", 600) == "executed"
    assert len(calls) == 2 and "04_select.ipynb: a cell gave no reply within 600 s" in capsys.readouterr().out

    def always_lost() -> None:
        raise CellTimeoutError("no reply")

    with pytest.raises(CellTimeoutError):
        once_more_if_a_reply_is_lost(always_lost, "04_select.ipynb", 600)
