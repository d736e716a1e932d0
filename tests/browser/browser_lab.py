"""Helpers for the browser tests: a prepared run, a JupyterLab server, and what a person does in the page.

Why a separate module: the fixtures (conftest.py) own the lifetimes (server, browser), while these
functions are the steps a learner takes: open a notebook, Run > Run All Cells, move a slider, press a
button. Selectors use the `rl-...` CSS classes the lab's widgets carry (stable across layout changes)
and JupyterLab's own classes (`jp-...`, `lm-...`) for the notebook itself.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "ci-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
# On a closed network Chromium's background services flood failed connections: switch them all off.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
# The stages notebooks 04 (needs score) and 06 (needs finetune) read; 06 writes 'infer' itself.
STAGES = "data,reflect,score,select,finetune"


def notebook_test_overrides() -> dict[str, Any]:
    """CI_OVERRIDES of tests/test_notebooks.py, read from its source so both suites use one run size.

    Why not import it: importing a test module from another test directory would need sys.path tricks, and
    the value is a plain literal.
    """
    tree = ast.parse((ROOT / "tests" / "test_notebooks.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CI_OVERRIDES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError("CI_OVERRIDES not found in tests/test_notebooks.py")


def lab_env(run_dir: Path, overrides: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the CLI, the server and (inherited) its kernels: offline, the run, the overrides."""
    env = dict(os.environ)
    env.update({"REFLECTION_LAB_PROFILE": "offline", "REFLECTION_LAB_RUN": str(run_dir),
                "REFLECTION_LAB_OVERRIDES": json.dumps(overrides), "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "TORCHDYNAMO_DISABLE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
                "PYTHONUNBUFFERED": "1"})
    env.setdefault("REFLECTION_LAB_CACHE", str(ROOT / ".cache" / "reflection-lab"))
    env.update(extra or {})
    return env


def prepare_run(run_dir: Path, overrides: dict[str, Any], log_path: Path, timeout_s: float) -> tuple[float, float]:
    """`python -m reflection_lab run` up to finetune (reusing finished stages); returns (wall, CPU) seconds."""
    cmd = [sys.executable, "-m", "reflection_lab", "run", "--profile", "offline", "--run", str(run_dir),
           "--stages", STAGES]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=lab_env(run_dir, overrides), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise RuntimeError(f"preparing the run took over {timeout_s:.0f} s; log: {log_path}") from None
    if rc != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"`reflection_lab run` failed with exit code {rc} (log {log_path}):\n{tail}")
    return time.perf_counter() - t0, _children_cpu() - cpu0


def _children_cpu() -> float:
    """CPU seconds of finished child processes: on a shared, busy machine wall time says little."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group and every descendant (kernels run in their own sessions), then SIGKILL."""
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # psutil missing or the process already gone
        children = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        for child in children:
            try:
                child.send_signal(sig)
            except Exception:
                pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        if all(not c.is_running() for c in children):
            return


@dataclass
class LabServer:
    """A running `jupyter lab`: its URL, token, root folder and log; `stop()` ends it and its kernels."""

    proc: subprocess.Popen
    port: int
    token: str
    root: Path
    log_path: Path
    started_s: float = 0.0
    _log: Any = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def cpu_seconds(self) -> float | None:
        """CPU seconds used so far by the server and its kernels (None without psutil)."""
        try:
            import psutil

            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
            return sum(sum(p.cpu_times()[:2]) for p in procs)
        except Exception:
            return None

    def stop(self) -> None:
        """Shut kernels down through the API first (clean), then the server's process tree (always)."""
        if self.proc.poll() is None:
            try:
                for kernel in self.api("kernels"):
                    self.api(f"kernels/{kernel['id']}", method="DELETE")
            except Exception:
                pass
        kill_tree(self.proc)
        if self._log is not None:
            self._log.close()


def write_lab_settings(settings_dir: Path) -> None:
    """User settings for a quiet, test-friendly JupyterLab: every cell in the DOM, no update or news checks."""
    settings = {
        # autoStartDefaultKernel: under load JupyterLab can ask "Select Kernel" although the notebook names one
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                       "autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"checkForUpdates": False,
                                                                            "fetchNews": "false"},
        "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
    }
    for rel, value in settings.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def start_lab(root: Path, env: dict[str, str], log_path: Path, timeout_s: float = 120.0) -> LabServer:
    """Start `jupyter lab` on a free local port with a random token; return once /api/status answers."""
    port, token = free_port(), secrets.token_hex(16)
    private = root.parent / "jupyter-home"
    for sub in ("config", "data", "runtime", "settings", "workspaces"):
        (private / sub).mkdir(parents=True, exist_ok=True)
    write_lab_settings(private / "settings")
    env = {**env, "JUPYTER_CONFIG_DIR": str(private / "config"), "JUPYTER_DATA_DIR": str(private / "data"),
           "JUPYTER_RUNTIME_DIR": str(private / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(private / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(private / "workspaces"), "JUPYTER_PLATFORM_DIRS": "0"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.terminals_enabled=False",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root; jupyter refuses without this
        cmd.append("--allow-root")
    log = open(log_path, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(proc, port, token, root, log_path, _log=log)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            status = server.api("status")
            if isinstance(status, dict):
                server.started_s = time.perf_counter() - t0
                return server
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"jupyter lab did not answer /api/status within {timeout_s:.0f} s:\n"
                               f"{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------ the page

# JS run in the page: the state of every code cell (prompt text, error outputs) and of the kernel.
_NOTEBOOK_STATE_JS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '');
  const errors = [];
  cells.forEach((c, i) => {
    c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').forEach(o => {
      const t = o.textContent || '';
      if (/Traceback/.test(t)) errors.push({cell: i, text: t.slice(-2500)});
    });
  });
  const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return {prompts, errors, kernel: ind ? ind.getAttribute('data-status') : null};
}
"""


def notebook_state(page: Any) -> dict | None:
    return page.evaluate(_NOTEBOOK_STATE_JS)


def open_notebook(page: Any, server: LabServer, rel_path: str, timeout_s: float = 180.0) -> None:
    """Open a notebook in JupyterLab and wait until it is shown (no loading spinner) and its kernel is idle."""
    page.goto(server.url(f"lab/tree/{rel_path}"), wait_until="domcontentloaded")
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
    page.locator(".jp-NotebookPanel .jp-Spinner").wait_for(state="hidden", timeout=timeout_s * 1000)
    accept_kernel_dialog(page)
    wait_kernel_idle(page, timeout_s)
    accept_kernel_dialog(page)


def dialog_text(page: Any) -> str | None:
    """The text of an open JupyterLab dialog (it blocks every click), or None."""
    dialog = page.locator(".jp-Dialog")
    return dialog.first.inner_text() if dialog.count() and dialog.first.is_visible() else None


def accept_kernel_dialog(page: Any, wait_s: float = 2.0) -> None:
    """Press "Select" on a "Select Kernel" dialog (the notebook's own kernel is preselected), if one shows."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        text = dialog_text(page)
        if text and "Select Kernel" in text:
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
            page.locator(".jp-Dialog").first.wait_for(state="detached", timeout=10_000)
            return
        time.sleep(0.2)


def wait_kernel_idle(page: Any, timeout_s: float) -> None:
    page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for(
        timeout=timeout_s * 1000)


def menu_command(page: Any, menu: str, label: str) -> None:
    """Click a top menu (e.g. "Run") and one of its items by its label, the way a person does."""
    page.locator("#jp-MainMenu .lm-MenuBar-item", has_text=re.compile(rf"^{re.escape(menu)}$")).click()
    item = page.locator(".lm-MenuBar-menu li.lm-Menu-item").filter(
        has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(label)}$")))
    item.wait_for(state="visible", timeout=10_000)
    item.click()


def run_all_cells(page: Any, timeout_s: float, label: str) -> float:
    """Run > Run All Cells, then wait until every code cell has an execution count and the kernel is idle.

    Fails at once with the traceback when a cell raises (JupyterLab then leaves the cells below unrun).
    """
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").click(position={"x": 5, "y": 5})
    t0 = time.perf_counter()
    menu_command(page, "Run", "Run All Cells")
    deadline = time.monotonic() + timeout_s
    state: dict | None = None
    seen_busy = False
    while time.monotonic() < deadline:
        state = notebook_state(page) or {}
        if (text := dialog_text(page)) is not None:
            raise AssertionError(f"{label}: a dialog blocks the notebook during Run All Cells: {text!r}")
        if state.get("errors"):
            err = state["errors"][0]
            raise AssertionError(f"{label}: code cell {err['cell']} raised during Run All Cells:\n{err['text']}")
        prompts = state.get("prompts") or []
        seen_busy = seen_busy or any("*" in p for p in prompts) or state.get("kernel") == "busy"
        done = prompts and all(re.fullmatch(r"\s*\[\d+\]:\s*", p) for p in prompts)
        if done and state.get("kernel") == "idle" and seen_busy:
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise AssertionError(f"{label}: Run All Cells did not finish within {timeout_s:.0f} s; prompts "
                         f"{(state or {}).get('prompts')}, kernel {(state or {}).get('kernel')}")


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll `predicate()` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the element may be re-rendered while we read it
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting until {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def figure_signature(locator: Any) -> str:
    """What a plotly figure draws: every SVG path and text of its `svg.main-svg` layers, as one string."""
    return locator.evaluate("""el => [...el.querySelectorAll('svg.main-svg')].map(svg =>
        [...svg.querySelectorAll('path, text')].map(n => n.tagName === 'path' ? (n.getAttribute('d') || '')
                                                                             : n.textContent).join('|')).join('#')""")


def svg_texts(locator: Any) -> str:
    """The text a plotly figure draws (titles, axis labels, annotations); SVG text has no innerText."""
    return locator.locator("svg.main-svg text").evaluate_all("ns => ns.map(n => n.textContent).join(' ')")


def screenshot(target: Any, name: str) -> Path:
    """A PNG under ci-artifacts/browser/ (an element, or the whole page), for people reading a CI run.

    An element is scrolled to the top of JupyterLab's notebook panel and cut to the window: the app scrolls
    inside its own panels, so a plain element screenshot of a tall widget comes out as mostly grey.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if not hasattr(target, "bounding_box"):  # a page
        target.screenshot(path=str(path), timeout=30_000)
        return path
    target.evaluate("e => e.scrollIntoView({block: 'start'})")
    page = target.page
    box, view = target.bounding_box(), page.viewport_size
    if not box or not view:
        target.screenshot(path=str(path), timeout=30_000)
        return path
    x, y = max(box["x"], 0), max(box["y"], 0)
    w = min(box["x"] + box["width"], view["width"]) - x
    h = min(box["y"] + box["height"], view["height"]) - y
    page.screenshot(path=str(path), clip={"x": x, "y": y, "width": max(w, 1), "height": max(h, 1)}, timeout=30_000)
    return path
