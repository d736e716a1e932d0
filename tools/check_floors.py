#!/usr/bin/env python3
"""Install the lowest versions pyproject.toml declares and run the quick tests against them.

Why: a floor that was never installed is a guess. This makes a fresh virtual environment, pins every
declared package of the lab (not of `dev`), torch included, to exactly its floor (`peft>=0.18` ->
`peft==0.18`), lets pip pick the rest, and runs the quick tests of the stages. PyPI's Linux builds of an
old torch are CUDA builds (about 2.5 GB with their NVIDIA libraries); they run on a CPU-only machine too.
`--torch tested` installs the tested version from constraints.txt instead (no large download).

    python tools/check_floors.py                 # venv in .floors-venv/, then the quick tests
    python tools/check_floors.py --print         # only print the pins it would install
    python tools/check_floors.py --torch tested  # every floor but torch's

.ci/run calls it after the main tests. It needs PyPI.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the tests that exercise the libraries' APIs (models, training, scoring, generation, data, reports)
QUICK_TESTS = ["tests/finetune/test_finetune.py", "tests/scoring/test_scoring.py", "tests/inference", "tests/llm",
               "tests/evaluate", "tests/selection", "tests/data"]
# transformers serve brings its own requirements (a newer openai than the lab needs): not a floor of the lab
DESELECT = ["tests/llm/test_transformers_serve.py"]
LAB_EXTRAS = ("notebook", "train", "teacher", "serve", "offline")


def declared_floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """{package: floor} for every `name>=X` among the dependencies and the lab's extras (not `dev`)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in LAB_EXTRAS:
        reqs += project["optional-dependencies"].get(extra, [])
    floors = {}
    for req in reqs:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", req.split(";")[0])
        if match:
            floors[match.group(1).lower().replace("_", "-")] = match.group(2)
    return floors


def floor_pins(floors: dict[str, str], torch_pin: str | None = None) -> list[str]:
    """`name==floor` for each package; `torch_pin` (e.g. the tested `torch==2.13.0`) replaces torch's floor."""
    pins = {name: f"{name}=={version}" for name, version in floors.items()}
    if torch_pin:
        pins["torch"] = torch_pin
    return [pins[name] for name in sorted(pins)]


def tested_torch(constraints: Path = ROOT / "constraints.txt") -> str:
    for line in constraints.read_text(encoding="utf-8").splitlines():
        if line.lower().startswith("torch=="):
            return line.strip()
    raise SystemExit(f"{constraints} pins no torch version: run `python lab.py freeze` first")


def _pip(cmd: list[str], what: str) -> None:
    """Run one pip install; a failure is one line naming what could not be installed (pip's output is above)."""
    if subprocess.call(cmd) != 0:
        raise SystemExit(f"floors check: pip could not install {what}; pip's message is above. A floor that no "
                         "longer resolves (a yanked release, a conflict between two floors) has to be raised in "
                         "pyproject.toml.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", default=str(ROOT / ".floors-venv"))
    ap.add_argument("--print", action="store_true", help="print the pins and stop")
    ap.add_argument("--torch", choices=("floor", "tested"), default="floor",
                    help="torch at its declared floor (default) or at the tested version of constraints.txt")
    ap.add_argument("--install-only", action="store_true", help="make the venv, run no tests")
    args = ap.parse_args()
    pins = floor_pins(declared_floors(), tested_torch() if args.torch == "tested" else None)
    if args.print:
        print("\n".join(pins))
        return 0
    venv = Path(args.venv)
    py = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins_file = venv / "floors.txt"
    pins_file.write_text("\n".join(pins) + "\n")
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    _pip(pip + [torch_pin], torch_pin)  # first and alone, so pip cannot swap it for another build
    _pip(pip + ["-c", str(pins_file), f"{ROOT}[all]", "pytest>=8.0", "hypothesis>=6.100"], f"the floors in {pins_file}")
    if args.install_only:
        return 0
    cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and not notebooks and not browser",
           *QUICK_TESTS, *(f"--deselect={d}" for d in DESELECT)]
    print("floors:", " ".join(pins), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


if __name__ == "__main__":
    sys.exit(main())
