"""Bad input at the command line: one `error:` line, a non-zero exit, no traceback, nothing left "running".

The cases are also the table in docs/errors.md (input -> what the user sees); the last test keeps the two
equal, so the doc cannot drift from what the lab prints.
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import pytest

from reflection_lab import cli
from reflection_lab.core.runs import Run

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_jsonl(tmp: Path) -> None:
    (tmp / "bad.jsonl").write_text('{"prompt": "no instruction field"}\n')


def _ready_for_score(tmp: Path) -> None:
    assert cli.main(["run", "--profile", "ci", "--run", str(tmp / "run"), "--stages", "data,reflect"]) == 0


def _corrupt_score(tmp: Path) -> None:
    _ready_for_score(tmp)
    (tmp / "run" / "03_score").mkdir(exist_ok=True)
    (tmp / "run" / "03_score" / "manifest.json").write_text('{"stage": "score", "stat')  # a write cut off


# (what the user did, argv with {run} / {tmp} / {port}, set-up, exit code, what the user sees: the start of stderr)
CASES = [
    ("`serve` without a backend", ["serve"], None, 2,
     "reflection-lab serve: error: serve at least one of --model MODEL or --replay default"),
    ("a profile field with the wrong type", ["data", "--run", "{run}", "--set", "n_samples=abc"], None, 2,
     "error: Profile.n_samples must be int or None, not 'abc'"),
    ("a profile field out of range", ["data", "--run", "{run}", "--set", "n_samples=0"], None, 2,
     "error: Profile.n_samples must be at least 1 (or null for all), not 0"),
    ("a negative length", ["score", "--run", "{run}", "--set", "max_length=-4"], None, 2,
     "error: Profile.max_length must be at least 1, not -4"),
    ("an unknown dtype", ["data", "--run", "{run}", "--set", "dtype=float99"], None, 2,
     "error: Profile.dtype must be one of ('auto', 'float32', 'bfloat16', 'float16'), not 'float99'"),
    ("an unknown profile", ["data", "--run", "{run}", "--profile", "nope"], None, 2,
     "error: unknown profile 'nope'"),
    ("`--set` without a value", ["data", "--run", "{run}", "--set", "n_samples"], None, 2,
     "error: --set needs FIELD=VALUE"),
    ("a malformed hub data set spec", ["data", "--profile", "ci", "--run", "{run}", "--train", "owner/data:"], None, 2,
     "error: Data source 'owner/data:': config '' is empty"),
    ("a column map that is not FIELD=COLUMN", ["data", "--run", "{run}", "--column-map", "garbage"], None, 2,
     "error: --column-map needs FIELD=COLUMN pairs"),
    ("a training file that does not exist", ["data", "--run", "{run}", "--train", "{tmp}/nope.jsonl"], None, 2,
     "error: Data file not found: {tmp}/nope.jsonl"),
    ("a training file without one usable row", ["data", "--run", "{run}", "--train", "{bad}"], _bad_jsonl, 2,
     "error: No usable training samples:"),
    ("a run directory that is a file", ["status", "--run", "{file}"], None, 2,
     "error: The run directory {file} is a file, not a folder"),
    ("a stage before its inputs", ["select", "--profile", "ci", "--run", "{run}"], None, 2,
     "error: Stage 'score' has not been run in {run}"),
    ("a manifest cut off mid-write, read by the next stage", ["select", "--profile", "ci", "--run", "{run}"],
     _corrupt_score, 2, "error: {run}/03_score/manifest.json is not a readable manifest"),
    ("a teacher that answers nothing (port closed)",
     ["reflect", "--profile", "ci", "--run", "{run}", "--teacher", "openai:m", "--max-retries", "0", "--timeout", "5"],
     "teacher", 2, "error: The teacher answered 0 of 24 requests (first failure:"),
    ("a hub model while offline", ["score", "--profile", "ci", "--run", "{run}", "--set", "student=nobody/nothing"],
     _ready_for_score, 2, "error: Could not load model 'nobody/nothing'"),
]


def _run_case(tmp_path, monkeypatch, capsys, argv, setup):
    run = tmp_path / "run"
    values = {"tmp": str(tmp_path), "run": str(run), "port": str(_closed_port()), "file": str(tmp_path / "afile"),
              "bad": str(tmp_path / "bad.jsonl")}
    (tmp_path / "afile").write_text("x")
    if setup == "teacher":
        assert cli.main(["data", "--profile", "ci", "--run", str(run)]) == 0
        monkeypatch.setenv("REFLECTION_LAB_TEACHER_BASE_URL", f"http://127.0.0.1:{values['port']}/v1")
    elif setup is not None:
        setup(tmp_path)
    capsys.readouterr()
    try:
        code = cli.main([a.format(**values) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors (the server's options)
        code = exc.code
    return code, capsys.readouterr().err, values


@pytest.mark.parametrize("what, argv, setup, code, seen", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(what, argv, setup, code, seen, tmp_path, monkeypatch, capsys):
    got, err, values = _run_case(tmp_path, monkeypatch, capsys, argv, setup)
    assert got == code, err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if "error: " in ln)  # after a progress bar, if any
    assert line.startswith(seen.format(**values)), err
    run = Path(values["run"])
    if run.is_dir():  # nothing is left "running" by a bad setting or a failure
        assert "running" not in Run(run).status().values()


def test_a_corrupt_manifest_is_named_by_status_and_rewritten_by_its_stage(tmp_path, capsys):
    _corrupt_score(tmp_path)
    run = str(tmp_path / "run")
    capsys.readouterr()
    assert cli.main(["status", "--run", run]) == 0
    assert "score     corrupt manifest (rerun the stage)" in capsys.readouterr().out
    assert cli.main(["score", "--profile", "ci", "--run", run]) == 0  # no --force needed: it counts as not run
    assert Run(run).manifest("score")["status"] == "complete"


def test_a_failed_teacher_stage_stops_the_pipeline_and_a_rerun_asks_only_the_failed_requests(tmp_path, monkeypatch,
                                                                                              capsys):
    run = tmp_path / "run"
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_BASE_URL", f"http://127.0.0.1:{_closed_port()}/v1")
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_MAX_RETRIES", "1")  # 6 retries back off for about a minute
    code = cli.main(["run", "--profile", "ci", "--run", str(run), "--set", "teacher=openai:m", "--stages",
                     "data,reflect,score"])
    assert code == 2 and Run(run).status()["reflect"] == "failed" and Run(run).status()["score"] == "not run"
    m = json.loads((run / "02_reflect" / "manifest.json").read_text())
    assert m["errors"][0]["error"].startswith("connection error") and m["counts"]["errors"] == 24


def test_os_faults_name_the_file_and_what_to_do(capsys):
    def raiser(code: int):
        def action() -> int:
            raise OSError(code, {errno.EACCES: "Permission denied", errno.ENOSPC: "No space left on device"}[code],
                          "runs/x/03_score/passes.jsonl")
        return action

    assert cli.guarded(raiser(errno.EACCES), debug=False) == 1
    assert "Permission denied (runs/x/03_score/passes.jsonl): no permission: choose a writable --run" in \
        capsys.readouterr().err
    assert cli.guarded(raiser(errno.ENOSPC), debug=False) == 1
    assert "the disk is full" in capsys.readouterr().err
    with pytest.raises(OSError):
        cli.guarded(raiser(errno.ENOSPC), debug=True)  # --debug shows the traceback


def test_docs_table_lists_every_case_as_the_lab_prints_it():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and not line.startswith("| input")]
    rows = [r for r in rows if not set(r) <= set("|- ")]
    expected = [f"| {what} | `reflection-lab {' '.join(argv)}` | {code} | `{seen}` |" for what, argv, _, code, seen
                in CASES]
    assert rows == expected, "docs/errors.md is out of date; its table should be:\n" + "\n".join(expected)
