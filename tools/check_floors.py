#!/usr/bin/env python3
"""Install the lowest versions pyproject.toml declares and run the quick tests against them.

Why: a floor that was never installed is a guess. This makes a fresh virtual environment, pins every
declared package of the lab (not of `dev`) to exactly its floor (`peft>=0.18` -> `peft==0.18`), lets pip
pick the rest, and runs the quick tests of the stages. torch is the exception: it is installed at the
tested version from constraints.txt, because older torch builds for this machine are CUDA wheels of
several gigabytes (the floor `torch>=2.4` is the one declared pin this does not check).

    python tools/check_floors.py                 # venv in .floors-venv/, then the quick tests
    python tools/check_floors.py --print         # only print the pins it would install

Measured on a 2-core machine: a few minutes to install, 5 min for the quick tests (328 passed); it needs PyPI.
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
NOT_PINNED = {"torch"}  # installed at the tested version, see above
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


def floor_pins(floors: dict[str, str]) -> list[str]:
    return [f"{name}=={version}" for name, version in sorted(floors.items()) if name not in NOT_PINNED]


def tested_torch(constraints: Path = ROOT / "constraints.txt") -> str:
    for line in constraints.read_text(encoding="utf-8").splitlines():
        if line.lower().startswith("torch=="):
            return line.strip()
    raise SystemExit(f"{constraints} pins no torch version: run `python lab.py freeze` first")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", default=str(ROOT / ".floors-venv"))
    ap.add_argument("--print", action="store_true", help="print the pins and stop")
    args = ap.parse_args()
    pins = floor_pins(declared_floors())
    if args.print:
        print("\n".join([tested_torch(), *pins]))
        return 0
    venv = Path(args.venv)
    py = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins_file = venv / "floors.txt"
    pins_file.write_text("\n".join(pins) + "\n")
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [tested_torch()], check=True)
    subprocess.run(pip + ["-c", str(pins_file), f"{ROOT}[all]", "pytest>=8.0", "hypothesis>=6.100"], check=True)
    cmd = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and not notebooks and not browser",
           *QUICK_TESTS, *(f"--deselect={d}" for d in DESELECT)]
    print("floors:", " ".join(pins), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


if __name__ == "__main__":
    sys.exit(main())
