"""Declared dependencies tell the truth: every one is imported somewhere, and floors cover the APIs the code uses."""

import re
from pathlib import Path

import pytest

from test_packaging import _name, _pyproject_reqs

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"pyyaml": "yaml", "safetensors": "safetensors", "huggingface-hub": "huggingface_hub"}
NOT_IMPORTED = {"jupyterlab": "the notebook server, started as a program", "ipykernel": "the notebooks' kernel",
                "pytest": "the test runner", "bitsandbytes": "loaded by transformers for 4-bit (BitsAndBytesConfig)"}


def _sources() -> str:
    files = [*ROOT.glob("reflection_lab/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py"),
             *ROOT.glob("notebooks/*.ipynb"), ROOT / "lab.py"]
    return "\n".join(p.read_text(encoding="utf-8") for p in files if p.exists())


def test_every_declared_package_is_imported_by_the_lab():
    text = _sources()
    for req in _pyproject_reqs():
        name = _name(req)
        if name in NOT_IMPORTED:
            continue
        module = MODULES.get(name, name.replace("-", "_"))
        assert re.search(rf"(^|\W)(import|from) {module}\b", text), f"{req} is declared but never imported"


def test_the_openai_floor_has_the_metadata_parameter():
    """openai 1.51.0 is the first release whose chat.completions.create takes `metadata` (1.50.2 has none;
    checked in the published wheels); the teacher sends it with REFLECTION_LAB_TEACHER_SEND_META=1."""
    from packaging.version import Version

    req = next(r for r in _pyproject_reqs() if _name(r) == "openai")
    assert Version(req.split(">=")[1]) >= Version("1.51")
    openai = pytest.importorskip("openai")
    import inspect

    assert "metadata" in inspect.signature(openai.OpenAI(api_key="x").chat.completions.create).parameters


def test_the_floor_check_pins_every_declared_package_of_the_lab():
    """tools/check_floors.py installs each floor exactly; a dependency written without `>=` would escape it."""
    import importlib.util
    import tomllib

    spec = importlib.util.spec_from_file_location("check_floors", ROOT / "tools" / "check_floors.py")
    floors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floors)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lab = list(project["dependencies"]) + [r for e in floors.LAB_EXTRAS for r in project["optional-dependencies"][e]]
    found = floors.declared_floors()
    assert {_name(r) for r in lab} == set(found)
    pins = floors.floor_pins(found)
    assert "transformers==" + found["transformers"] in pins and "torch==" + found["torch"] in pins
    tested = floors.tested_torch()
    assert tested.startswith("torch==")
    with_tested = floors.floor_pins(found, tested)
    assert tested in with_tested and "torch==" + found["torch"] not in with_tested and len(with_tested) == len(pins)
