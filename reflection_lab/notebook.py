"""What every notebook's first cells need: environment report, Colab set-up, profile, run, expected cost.

Why here and not in the notebooks: the same checks (Colab detection, "restart the runtime",
T4 without bf16, too little GPU memory) must behave identically in eight notebooks, and tests
can call them. A notebook's set-up cell is `profile, run = start("03", PROFILE, RUN_DIR, OVERRIDES)`.
Each notebook's expected cost is printed from one table (NOTEBOOK_TIMES here, the profiles' own notes
for the whole lab), so no notebook keeps a copy that can drift.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .core.devices import environment_report, pick_device
from .core.runs import STAGES, Run
from .core.runtime import in_notebook, on_colab, package_version
from . import pipeline
from .profiles import PROFILES, Profile, get_profile

REPO_URL = "https://github.com/reflection-lab/reflection-lab"
COLAB_HOME = Path("/content/reflection-lab")
COLAB_EXTRAS = ("notebook", "train", "teacher", "offline")
COLAB_PROVIDES = {"torch", "jupyterlab", "ipykernel", "notebook"}  # Colab's own pins: never replaced
# Rough GPU memory a profile needs (GiB), for the warning in the first cell.
PROFILE_GPU_GIB = {"colab-t4": 6.0, "gpu": 12.0}
_PRELOADED = ("torch", "transformers", "datasets", "accelerate", "peft")

# Each notebook's wall time and, in brackets, its kernel's own CPU time, as tests/test_notebooks.py measured them at
# the CI sizes (n_samples 8, n_eval 4, 6 training steps of batch 2, 96 new tokens) on a 2-core CPU: "ci" and
# "offline" while other jobs were using the machine, "idle" in a fresh-clone .ci/run with nothing else running.
# docs/workshop.md shows the same numbers (tests/test_notebooks.py keeps them equal). GPU profiles: not measured yet.
NOTEBOOK_TIMES: dict[str, dict[str, str]] = {
    "00": {"ci": "21 s (9 s)", "offline": "17 s (10 s)", "idle": "28 s (28 s)"},
    "01": {"ci": "10 s (3 s)", "offline": "8 s (3 s)", "idle": "4.5 s (3.4 s)"},
    "02": {"ci": "10 s (3 s)", "offline": "7 s (3 s)", "idle": "4.6 s (3.5 s)"},
    "03": {"ci": "33 s (14 s)", "offline": "3.0 min (2.6 min)", "idle": "97 s (174 s)"},
    "04": {"ci": "13 s (5 s)", "offline": "7 s (5 s)", "idle": "6.2 s (4.9 s)"},
    "05": {"ci": "75 s (36 s)", "offline": "8.3 min (4.9 min)", "idle": "43 s (67 s)"},
    "06": {"ci": "27 s (12 s)", "offline": "4.1 min (2.4 min)", "idle": "31 s (45 s)"},
    "07": {"ci": "3.4 min (100 s)", "offline": "not measured yet", "idle": "2.2 min (218 s)"},
}
COST_PROFILES = ("ci", "offline", "colab-t4", "gpu")


def _loaded_version(mod: str) -> str | None:
    m = sys.modules.get(mod)
    return getattr(m, "__version__", None) if m else None


def restart_needed() -> list[str]:
    """Packages whose imported version differs from the installed one (an install changed them)."""
    stale = []
    for name in _PRELOADED:
        loaded, installed = _loaded_version(name), package_version(name)
        if installed == "missing":
            continue
        if loaded and loaded.split("+")[0] != installed.split("+")[0]:
            stale.append(f"{name} (imported {loaded}, installed {installed})")
    return stale


def lab_source() -> tuple[str, str]:
    """(repository URL or local folder, git ref) the Colab install uses: REFLECTION_LAB_REPO / _REF, else main."""
    return os.environ.get("REFLECTION_LAB_REPO", REPO_URL), os.environ.get("REFLECTION_LAB_REF", "main")


def colab_requirements(pyproject: Path, extras: Sequence[str] = COLAB_EXTRAS) -> list[str]:
    """The lab's requirements with `extras`, less what a Colab runtime brings itself (torch, Jupyter)."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"].get(extra, [])
    return [r for r in reqs if _req_name(r) not in COLAB_PROVIDES]


def _req_name(requirement: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(requirement).name)


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """Those not installed, or installed at a version outside their range (pip installs only these)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        try:
            if not req.specifier.contains(version(req.name), prereleases=True):
                missing.append(text)
        except PackageNotFoundError:
            missing.append(text)
    return missing


def colab_install(extras: Sequence[str] = COLAB_EXTRAS) -> str:
    """On Colab only: fetch the lab (notebooks need its data/ folder) and install what the runtime lacks.

    Why not `pip install .[all]`: Colab pins its own torch, jupyterlab and ipykernel; replacing them costs
    minutes and can break the runtime. REFLECTION_LAB_REPO (a URL or a local folder) and REFLECTION_LAB_REF
    choose the source. After an install that changed imported packages, `setup()` says to restart.
    """
    if not on_colab():
        return "not on Colab: nothing installed (use `python lab.py demo` or `pip install -e .[all]`)"
    import subprocess

    source, ref = lab_source()
    target = Path(source) if Path(source).is_dir() else COLAB_HOME
    if not target.exists():
        subprocess.run(["git", "clone", "--depth", "1", "--branch", ref, source, str(target)], check=True)
    missing = missing_requirements(colab_requirements(target / "pyproject.toml", extras))
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if missing:
        subprocess.run(pip + missing, check=True)
    subprocess.run(pip + ["--no-deps", "-e", str(target)], check=True)
    os.chdir(target / "notebooks")
    return f"reflection-lab from {source} ({ref}) in {target}; installed: {', '.join(missing) or 'nothing else needed'}"


def drive_run_dir(run_dir: str, use_drive: bool) -> str:
    """On Colab with `use_drive`: mount Google Drive and keep the run there, so a disconnect loses nothing.

    The run lands in MyDrive/reflection-lab/<name of run_dir>; every notebook with the same RUN_DIR and
    USE_DRIVE finds it, and long stages resume from their journals there as they do on a local disk.
    """
    if not use_drive:
        return run_dir
    if not on_colab():
        print(f"USE_DRIVE is for Colab; keeping the run directory {run_dir}")
        return run_dir
    from google.colab import drive

    mount = Path(os.environ.get("REFLECTION_LAB_DRIVE_MOUNT", "/content/drive"))
    drive.mount(str(mount))
    path = mount / "MyDrive" / "reflection-lab" / Path(run_dir).name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def notebook_params(default_profile: str = "offline", default_run: str = "../runs/workshop") -> dict:
    """Profile, run directory and overrides, taken from the environment when CI or a workshop sets them."""
    return {
        "profile": os.environ.get("REFLECTION_LAB_PROFILE", default_profile),
        "run_dir": os.environ.get("REFLECTION_LAB_RUN", default_run),
        "overrides": json.loads(os.environ.get("REFLECTION_LAB_OVERRIDES", "{}")),
        "use_drive": os.environ.get("REFLECTION_LAB_USE_DRIVE", "") == "1",
    }


def setup(profile: str = "offline", *, quiet: bool = False) -> dict:
    """Print versions and the device, and warn about what will go wrong before it does."""
    warnings = []
    stale = restart_needed()
    if stale:
        warnings.append("RESTART THE RUNTIME (Runtime > Restart session), then run this cell again: "
                        "an install changed packages that were already imported: " + ", ".join(stale))
    info = pick_device()
    prof = get_profile(profile)
    if info.device == "cuda":
        need = PROFILE_GPU_GIB.get(profile)
        if need and info.total_memory_gib and info.total_memory_gib < need:
            warnings.append(f"profile {profile!r} needs about {need:.0f} GiB of GPU memory; this GPU has "
                            f"{info.total_memory_gib:.1f} GiB. Pick a smaller profile or lower batch_size/max_length.")
        if prof.dtype == "bfloat16" and not info.bf16_supported:
            warnings.append(f"profile {profile!r} asks for bf16 but {info.name} has none (a T4?): "
                            "use profile 'colab-t4' (fp16).")
    elif prof.device == "cuda" or prof.dtype in ("bfloat16", "float16"):
        warnings.append(f"profile {profile!r} is meant for a GPU, but none is visible: expect it to be very slow. "
                        "On a CPU use profile 'offline' (or 'ci' for a smoke run).")
    report = {"environment": environment_report(), "device": info.summary(), "colab": on_colab(),
              "profile": f"{prof.name}: {prof.description} [{prof.time_note}; {prof.memory_note}]",
              "warnings": warnings}
    if not quiet:
        print(report["environment"])
        print(report["device"])
        print("profile", report["profile"])
        for w in warnings:
            print("WARNING:", w)
    return report


def cost_table(notebook: str) -> str:
    """This notebook's measured time per profile, beside each profile's own note on the whole lab (markdown)."""
    t = NOTEBOOK_TIMES.get(notebook, {})
    busy = "on a busy 2-core CPU"
    measured = {"ci": f"{t.get('ci', 'not measured')} {busy}",
                "offline": f"{t.get('offline', 'not measured')} {busy}; {t.get('idle', 'not measured')} idle"}
    rows = ["| profile | this notebook at CI sizes: wall (kernel CPU) | whole lab at the profile's sizes | memory |",
            "| --- | --- | --- | --- |"]
    for name in COST_PROFILES:
        p = PROFILES[name]
        rows.append(f"| `{name}` | {measured.get(name, 'not measured yet')} | {p.time_note} | {p.memory_note} |")
    return "\n".join(rows)


def start(notebook: str, profile: str, run_dir: str, overrides: dict[str, Any] | None = None, *,
          quiet: bool = False) -> tuple[Profile, Run]:
    """The set-up cell of notebook `notebook` ("03"): the profile with overrides, the run, and a report.

    Prints versions, the device and warnings (`setup`), this notebook's expected cost, the run directory
    and which stages it holds. Overrides set to None keep the profile's value.
    """
    prof = get_profile(profile, **(overrides or {}))
    run = Run(run_dir)
    if not quiet:
        setup(profile)
        table = cost_table(notebook)
        if in_notebook():
            from IPython.display import Markdown, display

            display(Markdown("**Expected cost**\n\n" + table))
        else:
            print(table)
        print("run directory:", run.root.resolve())
        print("stages:", run.status())
    return prof, run


def ensure_stages(run: Run, profile: Profile, needs: str | Sequence[str], *, progress: bool = True) -> list[str]:
    """Build the earlier stages this notebook needs when the run lacks them (`pipeline.ensure_stages`).

    Says first what it will run and what that cost when measured, so a learner who opened one notebook
    alone (a fresh Colab runtime) knows what the wait is; a run that has them goes on at once.
    """
    todo = pipeline.missing_stages(run, needs)
    if not todo:
        print(f"inputs ready in {run.root}: {', '.join(pipeline.stages_needed(needs))}")
        return []
    column = "ci" if profile.name == "ci" else "idle"
    costs = ", ".join(f"{STAGES[s].notebook[:2]}: {NOTEBOOK_TIMES.get(STAGES[s].notebook[:2], {}).get(column, '?')}"
                      for s in todo)
    print(f"building {', '.join(todo)} first, as notebooks {STAGES[todo[0]].notebook[:2]}-"
          f"{STAGES[todo[-1]].notebook[:2]} would (measured at CI sizes on a 2-core CPU: {costs}; "
          f"the whole lab with profile {profile.name!r}: {profile.time_note})")
    pipeline.run_pipeline(run, profile, stages=todo, progress=progress)  # the plan is known: no second check
    return todo
