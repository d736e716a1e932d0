"""Run.dataset(stage): any finished stage's JSONL output as a `datasets.Dataset`, from real stage outputs."""

from __future__ import annotations

import json

import pytest

from reflection_lab.core.runs import STAGES, MissingStageError, Run, read_jsonl, rows_to_dataset, write_jsonl_atomic
from reflection_lab.pipeline import run_pipeline
from reflection_lab.profiles import get_profile
from scored_run import synthetic_rows, write_scored_run


def test_every_stage_names_its_main_table():
    assert {s: i.table for s, i in STAGES.items()} == {
        "data": "samples.jsonl", "reflect": "reflections.jsonl", "score": "scores.jsonl", "select": "selected.jsonl",
        "finetune": "train_log.jsonl", "infer": "generations.jsonl", "evaluate": "judge.jsonl"}


def test_data_and_reflect_of_a_ci_run(tmp_path):
    run = Run(tmp_path / "run")
    run_pipeline(run, get_profile("ci"), stages=["data", "reflect"], progress=False)
    for stage, name in (("data", "samples.jsonl"), ("data", "eval.jsonl"), ("reflect", "reflections.jsonl")):
        rows = read_jsonl(run.path(stage, name))
        ds = run.dataset(stage, None if name == STAGES[stage].table else name)
        assert ds.num_rows == len(rows) > 0 and ds["id"] == [r["id"] for r in rows]
    ds = run.dataset("reflect")
    first = read_jsonl(run.path("reflect", "reflections.jsonl"))[0]
    for variant, fields in first["variants"].items():  # nested objects load as structs, values intact
        assert {k: ds[0]["variants"][variant][k] for k in fields} == fields
    assert run.dataset("data", "eval.jsonl").column_names[:4] == ["id", "instruction", "input", "reference"]


def test_score_and_select_with_missing_variants(tmp_path):
    from reflection_lab.selection import run_select

    run = write_scored_run(Run(tmp_path / "run"), synthetic_rows(12, missing_rate=0.2))
    run_select(run, progress=False)
    scores = run.dataset("score")
    assert scores.num_rows == 12 and scores.info.description == ""
    missing = [r["variants"]["original"]["missing"] for r in read_jsonl(run.path("score", "scores.jsonl"))]
    assert [v["original"]["missing"] for v in scores["variants"]] == missing
    selected = run.dataset("select")
    assert selected["id"] == [r["id"] for r in read_jsonl(run.path("select", "selected.jsonl"))]
    assert run.dataset("select", "decisions.jsonl").num_rows == 12


def _finished(run: Run, stage: str, files: dict[str, list[dict]]) -> None:
    run.begin(stage, {"test": True}, requires=())
    for name, rows in files.items():
        run.path(stage, name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(run.path(stage, name), rows)
    outputs = sorted({name.split("/")[0] for name in files})
    run.complete(stage, {"test": True}, outputs)


def test_generations_per_arm_and_mixed_types_fall_back_to_json(tmp_path):
    run = Run(tmp_path / "run")
    gens = [{"id": "a", "text": "4", "meta": {"tokens": 1}}, {"id": "b", "text": "x", "meta": "cut off", "extra": 1}]
    _finished(run, "infer", {"generations.jsonl": gens})
    _finished(run, "evaluate", {"judge.jsonl": [], "generations/base.jsonl": gens,
                                "generations/base.journal.jsonl": gens})
    ds = run.dataset("infer")
    assert ds.column_names == ["id", "text", "meta", "extra"]  # a key absent from the first row is kept
    assert ds["extra"] == [None, 1]
    assert [json.loads(v) for v in ds["meta"]] == [{"tokens": 1}, "cut off"]  # str and object: JSON text
    assert ds.info.description == "JSON-encoded columns (json.loads each value): meta"
    assert run.dataset("evaluate", "generations/base.jsonl")["text"] == ["4", "x"]
    assert run.dataset("evaluate").num_rows == 0
    with pytest.raises(MissingStageError, match=r"has no JSONL output 'nope.jsonl'; it has: generations/base.jsonl, "
                                                r"judge.jsonl"):
        run.dataset("evaluate", "nope.jsonl")  # journals are not offered


def test_an_unfinished_or_changed_stage_is_refused(tmp_path):
    run = Run(tmp_path / "run")
    with pytest.raises(MissingStageError, match="Stage 'score' has not been run"):
        run.dataset("score")
    _finished(run, "infer", {"generations.jsonl": [{"id": "a"}]})
    run.path("infer", "generations.jsonl").write_text('{"id": "edited"}\n')
    with pytest.raises(MissingStageError, match="was changed after the stage finished"):
        run.dataset("infer")
    with pytest.raises(Exception, match="Unknown stage 'scores'"):
        run.dataset("scores")


def test_rows_to_dataset_of_no_rows_is_empty():
    assert rows_to_dataset([]).num_rows == 0
