import json
import os
import subprocess
import sys

import pytest

from reflection_lab.core.runs import Journal, MissingStageError


def test_require_names_the_notebook_and_command(run):
    with pytest.raises(MissingStageError) as err:
        run.require("reflect")
    msg = str(err.value)
    assert "02_reflect.ipynb" in msg and "reflection-lab reflect" in msg


def test_begin_refuses_when_upstream_missing(run):
    with pytest.raises(MissingStageError, match="01_data.ipynb"):
        run.begin("reflect", {})


def _finish_data(run, text="a"):
    run.begin("data", {"x": 1})
    run.path("data", "samples.jsonl").write_text(text)
    return run.complete("data", {"x": 1}, ["samples.jsonl"], counts={"train": 1})


def test_manifest_records_config_counts_versions_and_hashes(run):
    m = _finish_data(run)
    assert m["status"] == "complete" and m["counts"] == {"train": 1}
    assert set(m["outputs"]) == {"samples.jsonl"} and len(m["outputs"]["samples.jsonl"]) == 64
    assert "torch" in m["versions"] and m["config"] == {"x": 1}
    assert run.is_current("data", {"x": 1})
    assert not run.is_current("data", {"x": 2})


def test_downstream_becomes_stale_when_upstream_changes(run):
    _finish_data(run, "a")
    run.begin("reflect", {"t": 1})
    run.path("reflect", "out.jsonl").write_text("r")
    run.complete("reflect", {"t": 1}, ["out.jsonl"])
    assert run.is_current("reflect", {"t": 1})
    _finish_data(run, "b")  # new data
    assert not run.is_current("reflect", {"t": 1})


def test_tampered_output_is_detected(run):
    _finish_data(run)
    run.path("data", "samples.jsonl").write_text("edited by hand")
    with pytest.raises(MissingStageError, match="changed after the stage finished"):
        run.require("data")


def test_journal_survives_torn_last_line(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.append({"key": "a", "v": 1})
    j.append({"key": "b", "v": 2})
    with open(j.path, "a") as f:
        f.write('{"key": "c", "v"')  # process died mid-write
    assert set(j.load()) == {"a", "b"}
    j.append({"key": "c", "v": 3})
    assert [r["v"] for r in j] == [1, 2, 3]


def test_journal_kill9_mid_stream_loses_at_most_one_record(tmp_path):
    path = tmp_path / "j.jsonl"
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from reflection_lab.core.runs import Journal\n"
        "j = Journal(%r)\n"
        "for i in range(100000):\n"
        "    j.append({'key': str(i), 'payload': 'x' * 500})\n"
    ) % (os.getcwd(), str(path))
    proc = subprocess.Popen([sys.executable, "-c", code])
    import time

    deadline = time.time() + 30
    while (not path.exists() or path.stat().st_size < 20000) and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    recs = Journal(path).load()
    assert len(recs) >= 10
    assert sorted(int(k) for k in recs) == list(range(len(recs)))
    assert all(json.loads(line) for line in path.read_text().splitlines())
