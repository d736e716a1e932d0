"""The install story: pyproject, environment.yml and constraints agree; README commands exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser ships as tomli
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_reqs() -> list[str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for extra, items in proj["optional-dependencies"].items():
        reqs += [r for r in items if not r.startswith("reflection-lab")]
    return reqs


def test_environment_yml_names_the_same_packages_as_pyproject():
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [r for r in pip_section if not r.startswith("-e")]
    assert sorted(map(_name, listed)) == sorted(map(_name, _pyproject_reqs()))
    assert sorted(listed) == sorted(_pyproject_reqs())  # same floors too
    assert any(r.startswith("-e .[all") for r in pip_section)  # installs the package with the same extras


def test_floor_pins_only_and_torch_range_admits_the_cpu_build():
    for req in _pyproject_reqs():
        assert "==" not in req, f"exact pin in package metadata: {req}"
    torch_req = next(r for r in _pyproject_reqs() if _name(r) == "torch")
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(torch_req[len("torch"):])
    assert "2.13.0" in spec
    floor = min(s.version for s in spec if s.operator in (">=", ">"))
    assert tuple(map(int, floor.split("."))) <= (2, 14, 1)


def test_constraints_pin_every_package_exactly():
    lines = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert all("==" in ln for ln in lines)
    pinned = {_name(ln) for ln in lines}
    for req in _pyproject_reqs():
        assert _name(req) in pinned, f"{req} has no tested pin in constraints.txt"
    assert "torch==2.13.0" in lines


def test_extras_cover_ui_training_teacher_and_dev():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"notebook", "train", "teacher", "dev"} <= set(extras)


def test_readme_states_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "python3 lab.py demo" in readme and "python3 lab.py test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 lab.py test" in ci and '"$rc" -eq 5' in ci


def test_lab_script_help_runs_without_a_venv():
    res = subprocess.run([sys.executable, str(ROOT / "lab.py"), "help"], capture_output=True, text=True)
    assert res.returncode == 0 and "lab.py demo" in res.stdout


def test_cli_info_and_missing_stage_message(tmp_path):
    env_run = [sys.executable, "-m", "reflection_lab"]
    info = subprocess.run(env_run + ["info"], capture_output=True, text=True, cwd=ROOT)
    assert info.returncode == 0 and "profiles:" in info.stdout and "compute dtype" in info.stdout
    res = subprocess.run(env_run + ["score", "--run", str(tmp_path / "r"), "--profile", "ci"], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 2
    assert "Stage 'reflect' has not been run" in res.stderr and "02_reflect.ipynb" in res.stderr


def test_cli_bad_setting_is_an_error_line_not_a_traceback(tmp_path):
    """A value the stage rejects (before any model loads) exits 2 with `error:` and names the option to fix."""
    res = subprocess.run([sys.executable, "-m", "reflection_lab", "select", "--run", str(tmp_path / "r"), "--profile",
                          "ci", "--set", "top_k_percent=300"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "error: top_k_percent must be in [0, 100]" in res.stderr
    assert "hint: check --set top_k_percent=300" in res.stderr


def test_cli_finetune_error_is_an_error_line(tmp_path, monkeypatch, capsys):
    """FinetuneError subclasses (no data, out of memory) carry advice; the CLI prints it instead of a traceback."""
    from reflection_lab import cli, pipeline
    from reflection_lab.finetune import FinetuneDataError

    def refuse(stage, run, profile, **opts):
        raise FinetuneDataError("0 selected pairs to train on; loosen the selection thresholds")

    monkeypatch.setattr(pipeline, "run_stage", refuse)
    assert cli.main(["finetune", "--run", str(tmp_path / "r"), "--profile", "ci"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 0 selected pairs to train on") and "hint:" not in err


@pytest.mark.parametrize("args, says", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--set", "n_samples"], "--set needs FIELD=VALUE"),
    (["--set", "bogus=1"], "unknown profile field(s) ['bogus']"),
])
def test_cli_bad_profile_or_field_is_an_error_line(tmp_path, capsys, args, says):
    from reflection_lab import cli

    assert cli.main(["select", "--run", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err


def _lab_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lab_script", ROOT / "lab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("env, system, machine, nvidia, configured, expected", [
    ({}, "Linux", "x86_64", False, False, ["--index-url", "https://download.pytorch.org/whl/cpu"]),
    ({}, "Linux", "x86_64", True, False, []),           # an NVIDIA GPU: the default index's CUDA build
    ({}, "Linux", "x86_64", False, True, []),           # pip has its own index or wheel folder: respected
    ({}, "Darwin", "arm64", False, False, []),          # macOS and Windows get CPU builds by default
    ({}, "Windows", "AMD64", False, False, []),
    ({}, "Linux", "aarch64", False, False, []),         # no CPU index needed for ARM Linux wheels
    ({"LAB_TORCH_INDEX": "https://example.org/whl"}, "Linux", "x86_64", True, True, ["--index-url",
                                                                                     "https://example.org/whl"]),
    ({"LAB_TORCH_INDEX": "default"}, "Linux", "x86_64", False, False, []),
])
def test_lab_py_picks_the_cpu_build_of_torch_only_where_it_helps(env, system, machine, nvidia, configured, expected):
    assert _lab_module().torch_index_args(env, system, machine, nvidia, configured) == expected
