"""Fixtures for the browser tests (marker `browser`): a prepared run, JupyterLab, headless Chromium.

Why package-scoped: preparing the run (SmolLM2 scoring and a short QLoRA) and starting JupyterLab and
Chromium cost most of the suite's time, so they happen once for this package and stop right after its
last test (a Playwright left running keeps an asyncio loop marked as running, which breaks later tests
that call asyncio.run). Each notebook is opened and run once per module. Every process started here is
stopped by a finalizer, also when a check fails.

Environment:
  LAB_REQUIRE_BROWSER=1         a missing Chromium (or Playwright) is a failure, not a skip (CI sets it)
  LAB_CHROMIUM=/path            another Chromium binary (default /usr/bin/chromium)
  LAB_BROWSER_RUN=/path         prepare (or reuse) the run there instead of a temporary folder (debugging)
  LAB_BROWSER_PREPARE_TIMEOUT   seconds for `reflection_lab run` (default 1800)
  LAB_BROWSER_NOTEBOOK_TIMEOUT  seconds for Run All Cells of one notebook (default 480)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from notebook_run import copy_notebook_stages

from .browser_lab import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, STAGES, LabServer, lab_env,
                          notebook_test_overrides, open_notebook, prepare_run, run_all_cells, screenshot, start_lab)


def _required() -> bool:
    return os.environ.get("LAB_REQUIRE_BROWSER", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="package", autouse=True)
def chromium_path() -> str:
    """Skip the whole suite without a browser, unless LAB_REQUIRE_BROWSER says CI must have one."""
    path = os.environ.get("LAB_CHROMIUM", CHROMIUM)
    missing = []
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        missing.append(f"Chromium at {path} (Debian: apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright (pip install -e '.[dev]')")
    if missing:
        what = "browser tests need " + " and ".join(missing)
        if _required():
            pytest.fail(f"LAB_REQUIRE_BROWSER is set, but {what}", pytrace=False)
        pytest.skip(f"{what}; set LAB_REQUIRE_BROWSER=1 to make this a failure")
    return path


@pytest.fixture(scope="package")
def artifacts(chromium_path: str) -> Path:
    """ci-artifacts/browser/, emptied of the last run's screenshots and logs so none is mistaken for new."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in list(ARTIFACTS.glob("*.png")) + list(ARTIFACTS.glob("*.log")):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="package")
def overrides() -> dict[str, Any]:
    return notebook_test_overrides()


@pytest.fixture(scope="package")
def prepared_run(artifacts: Path, overrides: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> Path:
    """A run directory up to finetune with the notebook tests' profile and overrides.

    Stages 01-05 of the in-order notebook test's run when it finished earlier in this session (the same
    settings, so the same results); otherwise made here by the CLI.
    """
    env_dir = os.environ.get("LAB_BROWSER_RUN")
    run_dir = Path(env_dir).resolve() if env_dir else tmp_path_factory.mktemp("browser-run") / "run"
    if not env_dir and copy_notebook_stages(request.config, run_dir, "offline", overrides, STAGES.split(",")):
        print(f"\n[browser] stages {STAGES} copied from the notebook test's run: {run_dir}", flush=True)
        return run_dir
    wall, cpu = prepare_run(run_dir, overrides, artifacts / "prepare-run.log",
                            float(os.environ.get("LAB_BROWSER_PREPARE_TIMEOUT", "1800")))
    print(f"\n[browser] run prepared in {wall:.1f} s ({cpu:.1f} CPU s): {run_dir}", flush=True)
    return run_dir


@pytest.fixture(scope="package")
def lab_server(prepared_run: Path, overrides: dict[str, Any], artifacts: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """JupyterLab serving a copy of notebooks/ (the committed files are never opened), stopped at the end."""
    root = tmp_path_factory.mktemp("lab") / "root"
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "data").symlink_to(ROOT / "data", target_is_directory=True)  # as ../data from the notebooks
    (root / "runs").mkdir()
    (root / "runs" / "workshop").symlink_to(prepared_run, target_is_directory=True)  # the default ../runs/workshop
    server = start_lab(root, lab_env(prepared_run, overrides), artifacts / "jupyter-server.log")
    print(f"\n[browser] JupyterLab up in {server.started_s:.1f} s on port {server.port}", flush=True)
    try:
        yield server
    finally:
        cpu = server.cpu_seconds()
        server.stop()
        if cpu is not None:
            print(f"\n[browser] JupyterLab and its kernels used {cpu:.1f} CPU s", flush=True)


@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[Any]:
    """Headless Chromium through Playwright (Playwright gives it a fresh profile folder)."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
    except Exception:
        pw.stop()
        raise
    try:
        yield b
    finally:
        try:
            b.close()
        finally:
            pw.stop()


def _notebook_page(browser: Any, server: LabServer, artifacts: Path, rel_path: str, label: str) -> Iterator[Any]:
    """A page with one notebook opened and all its cells run (console errors go to a log)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console = open(artifacts / f"{label}-console.log", "w")
    page.on("console", lambda m: console.write(f"{m.type}: {m.text}\n") if m.type in ("error", "warning") else None)
    try:
        timeout = float(os.environ.get("LAB_BROWSER_NOTEBOOK_TIMEOUT", "480"))
        open_notebook(page, server, rel_path)
        try:
            seconds = run_all_cells(page, timeout, rel_path)
        except Exception:
            screenshot(page, f"{label}-run-all-FAILED")
            raise
        print(f"\n[browser] {rel_path}: Run All Cells finished in {seconds:.1f} s", flush=True)
        yield page
    finally:
        try:
            context.close()
        finally:
            console.close()


@pytest.fixture(scope="module")
def select_page(browser: Any, lab_server: LabServer, artifacts: Path) -> Iterator[Any]:
    yield from _notebook_page(browser, lab_server, artifacts, "notebooks/04_select.ipynb", "04_select")


@pytest.fixture(scope="module")
def inference_page(browser: Any, lab_server: LabServer, artifacts: Path) -> Iterator[Any]:
    yield from _notebook_page(browser, lab_server, artifacts, "notebooks/06_inference.ipynb", "06_inference")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(autouse=True)
def _screenshot_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A full-page PNG of every open page when a check fails: what the person would have seen."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed or "browser" not in request.fixturenames:
        return
    b = request.getfixturevalue("browser")
    for i, page in enumerate(p for ctx in b.contexts for p in ctx.pages):
        try:
            screenshot(page, f"{request.node.name}-FAILED-{i}")
        except Exception:
            pass
