#!/usr/bin/env python3
"""Set-up and entry point that needs only Python 3.10+ and pip.

    python3 lab.py demo    # make .venv, install, run the whole pipeline offline (profile "offline")
    python3 lab.py test    # make .venv, install, run the test suite

Why a script and not a Makefile: it must work the same on Linux, macOS, Windows and Colab.
The virtual environment is reused while pyproject.toml and constraints.txt are unchanged.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("LAB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".lab-installed"


def _say(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def _install_key() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is present (its device node, its /proc entry or nvidia-smi on PATH)."""
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def pip_configured() -> bool:
    """The user told pip where packages come from (an index or a wheel folder): respect it."""
    if any(os.environ.get(k) for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS")):
        return True
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return any(k in out.stdout for k in ("index-url", "find-links"))


def torch_index_args(env: dict[str, str], system: str, machine: str, nvidia: bool, configured: bool) -> list[str]:
    """pip arguments that choose torch's build, and why.

    Why: on Linux the default index serves the CUDA build (gigabytes of CUDA wheels), useless without an
    NVIDIA GPU. LAB_TORCH_INDEX wins ("default": pip's own choice); else a Linux x86-64 machine without an
    NVIDIA GPU and without its own pip index settings gets PyTorch's CPU index. macOS and Windows get
    CPU builds from the default index already.
    """
    chosen = env.get("LAB_TORCH_INDEX", "").strip()
    if chosen:
        return [] if chosen == "default" else ["--index-url", chosen]
    if system == "Linux" and machine in ("x86_64", "AMD64") and not nvidia and not configured:
        return ["--index-url", CPU_TORCH_INDEX]
    return []


def ensure_venv() -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"reflection-lab needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        _say(f"creating virtual environment {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    key = _install_key()
    if STAMP.exists() and STAMP.read_text() == key:
        return
    _say("installing reflection-lab with the tested constraints (first time: a few minutes)")
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch first and alone, so the build chosen here (CPU without an NVIDIA GPU) comes before anything else.
    index = torch_index_args(dict(os.environ), platform.system(), platform.machine(), has_nvidia_gpu(),
                             pip_configured())
    _say("torch from " + (index[1] if index else "pip's configured index") + " (LAB_TORCH_INDEX to change)")
    subprocess.run(pip + ["-c", str(ROOT / "constraints.txt"), *index, "torch"], check=True)
    subprocess.run(pip + ["-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[all,dev]"], check=True)
    STAMP.write_text(key)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes' torch.compile wrappers cost ~2 s per 4-bit load
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "help"
    rest = argv[1:]
    if cmd not in ("demo", "test", "freeze", "shell"):
        print(__doc__)
        return 0 if cmd in ("help", "-h", "--help") else 2
    ensure_venv()
    if cmd == "demo":
        args = rest or ["--profile", "offline", "--run", "runs/demo"]
        return subprocess.call([str(PY), "-m", "reflection_lab", "run", *args], cwd=ROOT, env=_env())
    if cmd == "test":
        return subprocess.call([str(PY), "-m", "pytest", *(rest or ["-q"])], cwd=ROOT, env=_env())
    if cmd == "freeze":
        out = subprocess.run([str(PY), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True,
                             check=True).stdout
        lines = [ln.replace("+cpu", "") for ln in out.splitlines() if ln and not ln.startswith(("-e", "reflection-lab"))]
        header = ["# The tested set: CI installs with these constraints (pip install -c constraints.txt ...).",
                  "# Regenerate after a deliberate upgrade: python lab.py freeze"]
        (ROOT / "constraints.txt").write_text("\n".join(header + lines) + "\n")
        return 0
    return subprocess.call([str(BIN / "python"), *rest], cwd=ROOT, env=_env())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
