"""What every notebook's first cells need: environment report, Colab set-up, profile and run.

Why here and not in the notebooks: the same checks (Colab detection, "restart the runtime",
T4 without bf16, too little GPU memory) must behave identically in eight notebooks, and tests
can call them. A notebook's first code cell is just `from reflection_lab.notebook import setup`.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import sys
from pathlib import Path

from .core.devices import environment_report, pick_device
from .core.runtime import on_colab
from .profiles import get_profile

REPO_URL = "https://github.com/reflection-lab/reflection-lab"
# Rough GPU memory a profile needs (GiB), for the warning in the first cell.
PROFILE_GPU_GIB = {"colab-t4": 6.0, "gpu": 12.0}
_PRELOADED = ("torch", "transformers", "datasets", "accelerate", "peft")


def _loaded_version(mod: str) -> str | None:
    m = sys.modules.get(mod)
    return getattr(m, "__version__", None) if m else None


def restart_needed() -> list[str]:
    """Packages whose imported version differs from the installed one (an install changed them)."""
    stale = []
    for name in _PRELOADED:
        loaded = _loaded_version(name)
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue
        if loaded and loaded.split("+")[0] != installed.split("+")[0]:
            stale.append(f"{name} (imported {loaded}, installed {installed})")
    return stale


def colab_install(extras: str = "all", ref: str = "main") -> str:
    """On Colab only: clone the repository (notebooks need its data/ folder) and pip install it."""
    if not on_colab():
        return "not on Colab: nothing installed (use `python lab.py demo` or `pip install -e .[all]`)"
    import subprocess

    target = Path("/content/reflection-lab")
    if not target.exists():
        subprocess.run(["git", "clone", "--depth", "1", "--branch", ref, REPO_URL, str(target)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{target}[{extras}]"], check=True)
    os.chdir(target / "notebooks")
    return f"installed reflection-lab from {REPO_URL} into {target}"


def notebook_params(default_profile: str = "offline", default_run: str = "../runs/workshop") -> dict:
    """Profile, run directory and overrides, taken from the environment when CI or a workshop sets them."""
    return {
        "profile": os.environ.get("REFLECTION_LAB_PROFILE", default_profile),
        "run_dir": os.environ.get("REFLECTION_LAB_RUN", default_run),
        "overrides": json.loads(os.environ.get("REFLECTION_LAB_OVERRIDES", "{}")),
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
