import json

import pytest

from reflection_lab.data import DataConfig, DataError, load_samples, normalize, run_data, stratified_subset

GOOD = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate 'hello' to French.", "input": "", "output": "Bonjour."},
]


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_alpaca_jsonl_and_json(tmp_path):
    s1, r1 = load_samples(_write_jsonl(tmp_path / "a.jsonl", GOOD))
    (tmp_path / "a.json").write_text(json.dumps(GOOD))
    s2, _ = load_samples(tmp_path / "a.json")
    assert [s["output"] for s in s1] == ["5", "Bonjour."] == [s["output"] for s in s2]
    assert r1.kept == 2 and not r1.problems
    assert s1[0]["id"] == s2[0]["id"] and s1[0]["id"].startswith("s-")  # content ids are stable


def test_ids_are_stable_when_rows_are_reordered(tmp_path):
    a, _ = load_samples(_write_jsonl(tmp_path / "a.jsonl", GOOD))
    b, _ = load_samples(_write_jsonl(tmp_path / "b.jsonl", GOOD[::-1]))
    assert {s["id"]: s["output"] for s in a} == {s["id"]: s["output"] for s in b}


def test_csv_and_parquet_with_column_map(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"prompt_text": ["Q1", "Q2"], "ctx": ["", "c"], "answer_text": ["A1", "A2"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    cmap = {"instruction": "prompt_text", "input": "ctx", "output": "answer_text"}
    for name in ("d.csv", "d.parquet"):
        s, r = load_samples(tmp_path / name, column_map=cmap)
        assert [(x["instruction"], x["input"], x["output"]) for x in s] == [("Q1", "", "A1"), ("Q2", "c", "A2")]


def test_aliases_prompt_response(tmp_path):
    s, _ = load_samples(_write_jsonl(tmp_path / "a.jsonl", [{"prompt": "P", "response": "R"}]))
    assert s[0]["instruction"] == "P" and s[0]["output"] == "R" and s[0]["input"] == ""


def test_sharegpt_and_messages(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
        {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                      {"role": "assistant", "content": "6"}]},
        {"conversations": [{"from": "gpt", "value": "orphan"}]},
    ]
    s, r = load_samples(_write_jsonl(tmp_path / "c.jsonl", rows))
    assert [(x["instruction"], x["output"]) for x in s] == [("Hi?", "Hello."), ("2+2?", "4")]
    assert r.warnings[0]["reason"] == "multi_turn" and r.warnings[0]["row"] == 2
    assert r.problems[0]["reason"] == "missing_field" and r.problems[0]["row"] == 3


def test_saved_datasets_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list(GOOD).save_to_disk(str(tmp_path / "ds"))
    s, _ = load_samples(tmp_path / "ds")
    assert len(s) == 2


@pytest.mark.parametrize("row, reason", [
    ({"input": "", "output": "x"}, "missing_field"),
    ({"instruction": "  ", "output": "x"}, "empty_field"),
    ({"instruction": "q", "output": ""}, "empty_field"),
    ({"instruction": "q", "output": 42}, "non_string"),
    ({"instruction": ["q"], "output": "x"}, "non_string"),
    ({"instruction": "q" * 50, "output": "x"}, "too_long"),
    ("just a string", "not_a_record"),
])
def test_each_bad_row_is_reported_with_its_reason(row, reason):
    s, r = normalize([GOOD[0], row], max_chars=40)
    assert len(s) == 1 and r.kept == 1
    assert [p["reason"] for p in r.problems] == [reason] and r.problems[0]["row"] == 2


def test_duplicates_and_duplicate_ids():
    rows = [dict(GOOD[0], id="a"), dict(GOOD[0], id="b"), dict(GOOD[1], id="a")]
    s, r = normalize(rows)
    assert [x["id"] for x in s] == ["a"]
    assert [(p["reason"], p["id"]) for p in r.problems] == [("duplicate", "b"), ("duplicate_id", "a")]
    assert "same text as sample a" in r.problems[0]["detail"]


def test_invalid_json_line_is_reported(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(GOOD[0]) + "\n{not json\n" + json.dumps(GOOD[1]) + "\n")
    s, r = load_samples(p)
    assert len(s) == 2
    assert r.problems[0]["reason"] == "invalid_json" and "line 2" in r.problems[0]["detail"]
    assert r.rows_read == 3 and r.as_dict()["dropped"] == 1


def test_strict_mode_stops_with_row_ids(tmp_path):
    p = _write_jsonl(tmp_path / "a.jsonl", GOOD + [{"id": "broken", "instruction": "", "output": "x"}])
    with pytest.raises(DataError, match=r"row 3 \(broken\): empty_field"):
        load_samples(p, strict=True)


def test_stratified_subset_covers_categories():
    rows = [{"id": f"{c}{i}", "category": c} for c in "abc" for i in range(5)]
    sub = stratified_subset(rows, 6)
    assert sorted(r["category"] for r in sub) == ["a", "a", "b", "b", "c", "c"]
    assert stratified_subset(rows, None) == rows


def test_run_data_writes_artifacts_and_reuses(tmp_path, run):
    train = _write_jsonl(tmp_path / "t.jsonl", GOOD + [{"instruction": "", "output": "x"}])
    ev = _write_jsonl(tmp_path / "e.jsonl", [{"instruction": "1+1?", "reference": "2", "answer_type": "numeric",
                                              "numeric_answer": 2}])
    m = run_data(run, DataConfig(train=str(train), eval=str(ev)))
    assert m["counts"] == {"train": 2, "eval": 1, "train_dropped": 1}
    rep = json.loads(run.path("data", "data_report.json").read_text())
    assert rep["train"]["counts_by_reason"] == {"empty_field": 1}
    ev_rows = [json.loads(x) for x in run.path("data", "eval.jsonl").read_text().splitlines()]
    assert ev_rows[0]["reference"] == "2" and ev_rows[0]["numeric_answer"] == 2
    finished = m["finished"]
    assert run_data(run, DataConfig(train=str(train), eval=str(ev)))["finished"] == finished  # reused, not recomputed
    _write_jsonl(train, GOOD)  # the source changed -> recomputed
    assert run_data(run, DataConfig(train=str(train), eval=str(ev)))["counts"]["train_dropped"] == 0
