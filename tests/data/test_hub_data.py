"""Hub data sets: the spec owner/name[:config][@revision][#split], what reaches `datasets.load_dataset`, and the
resolved revision in stage 01's manifest. No test reaches the hub: `load_dataset` (and the hub API) are replaced
by stand-ins that record their arguments and return an in-memory or on-disk `datasets.Dataset`.
"""

from __future__ import annotations

import json

import datasets
import pytest

from reflection_lab import cli
from reflection_lab.core.runs import Run
from reflection_lab.data import (DataConfig, DataError, DatasetSpecError, HubSpec, is_local_source, load_samples,
                                 parse_hub_spec, run_data)

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
ROWS = [{"prompt": "Add 2 and 3.", "response": "5", "answer": "5"},
        {"prompt": "Name a primary colour.", "response": "Red.", "answer": "Red."}]


@pytest.mark.parametrize("text, spec", [
    ("tatsu-lab/alpaca", HubSpec("tatsu-lab/alpaca")),
    ("squad", HubSpec("squad")),
    ("openai/gsm8k:main", HubSpec("openai/gsm8k", "main")),
    ("openai/gsm8k:main#test", HubSpec("openai/gsm8k", "main", None, "test")),
    (f"owner/name@{SHA}", HubSpec("owner/name", None, SHA)),
    ("owner/name:cfg-2.en@v1.0#train[:10%]", HubSpec("owner/name", "cfg-2.en", "v1.0", "train[:10%]")),
    ("owner/name@refs/convert/parquet#train+validation",
     HubSpec("owner/name", None, "refs/convert/parquet", "train+validation")),
])
def test_parse_hub_spec(text, spec):
    assert parse_hub_spec(text) == spec
    assert str(spec) == text  # the spec prints back as written


@pytest.mark.parametrize("text, why", [
    ("owner/name:", "config ''"),
    ("owner/name@", "revision ''"),
    ("owner/name#", "split ''"),
    ("owner/name:a:b", "config 'a:b'"),
    ("owner/name@v1@v2", "revision 'v1@v2'"),
    ("a/b/c", "'a/b/c' is not a dataset id"),
    ("owner//name", "not a dataset id"),
    ("own er/name", "not a dataset id"),
    ("owner/na..me", "not a dataset id"),
    (":cfg", "'' is not a dataset id"),
    ("owner/name#te st", "split 'te st'"),
    ("owner/näme", "not a dataset id"),
])
def test_a_malformed_spec_is_one_line_naming_it_and_a_valid_example(text, why):
    with pytest.raises(DatasetSpecError) as exc:
        parse_hub_spec(text)
    message = str(exc.value)
    assert "\n" not in message and repr(text) in message and why in message
    assert "owner/dataset[:config][@revision][#split]" in message and "tatsu-lab/alpaca" in message


@pytest.mark.parametrize("source, local", [
    ("workshop", True), ("workshop-eval", True), ("./data", True), ("/abs/folder", True), ("~/my.csv", True),
    ("data.jsonl", True), ("sub/dir/file.parquet", True), ("x.JSON", True), ("owner/name", False),
    ("owner/name:cfg@v1.0#test", False), ("squad", False),
])
def test_local_paths_and_hub_specs_are_told_apart(source, local):
    assert is_local_source(source) is local


def test_an_existing_folder_is_local_even_when_it_looks_like_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert is_local_source("owner/name")


def test_local_paths_keep_working(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    a, ra = load_samples("d.jsonl")
    b, _ = load_samples("./d.jsonl")
    assert [s["output"] for s in a] == ["5", "Red."] and a == b
    assert ra.origin == {"type": "local", "source": "d.jsonl", "path": "d.jsonl"}
    w, rw = load_samples("workshop")
    assert len(w) > 10 and rw.origin["source"] == "workshop"
    with pytest.raises(DataError, match=r"^Data file not found: nope\. "):
        load_samples("./nope")  # a path that looks local is not sent to the hub


def test_home_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "h.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    samples, _ = load_samples("~/h.jsonl")
    assert samples[0]["output"] == "5"


class FakeHub:
    """Stands in for `datasets.load_dataset`: records each call, returns ROWS from a folder named after SHA."""

    def __init__(self, tmp_path, on_disk: bool = True, sha: str = SHA):
        self.calls: list[tuple] = []
        self.tmp_path, self.on_disk, self.sha = tmp_path, on_disk, sha

    def __call__(self, path, name=None, *, split=None, revision=None, **kwargs):
        self.calls.append((path, name, split, revision, kwargs))
        ds = datasets.Dataset.from_list(ROWS)
        if not self.on_disk:
            return ds
        folder = self.tmp_path / "hf-cache" / path.replace("/", "___") / (name or "default") / "0.0.0" / self.sha
        ds.save_to_disk(str(folder))  # the layout `datasets` caches a prepared hub dataset in
        return datasets.load_from_disk(str(folder))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return fake


def test_the_spec_reaches_load_dataset_and_the_commit_is_recorded(hub):
    samples, report = load_samples("owner/name:cfg@v1.0#test", kind="eval")
    assert hub.calls == [("owner/name", "cfg", "test", "v1.0", {})]
    assert [s["reference"] for s in samples] == ["5", "Red."]
    assert report.origin == {"type": "hub", "name": "owner/name", "config": "cfg", "split": "test",
                             "revision": "v1.0", "resolved_revision": SHA, "revision_from": "cache files"}
    assert report.as_dict()["origin"] == report.origin


def test_split_defaults_to_train_and_may_come_from_the_argument(hub):
    load_samples("owner/name")
    load_samples("owner/name", split="validation")
    load_samples("owner/name#test", split="test")
    assert [c[:4] for c in hub.calls] == [("owner/name", None, "train", None), ("owner/name", None, "validation", None),
                                         ("owner/name", None, "test", None)]
    with pytest.raises(DatasetSpecError, match="asks for split 'test' but split='train' was passed too"):
        load_samples("owner/name#test", split="train")


def test_an_in_memory_dataset_asks_the_hub_api_for_the_commit(hub, monkeypatch):
    import huggingface_hub

    hub.on_disk = False
    asked = []

    class Api:
        def dataset_info(self, repo_id, revision=None):
            asked.append((repo_id, revision))
            return type("Info", (), {"sha": OTHER_SHA})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    _, report = load_samples("owner/name@main")
    assert asked == [("owner/name", "main")]
    assert (report.origin["resolved_revision"], report.origin["revision_from"]) == (OTHER_SHA, "hub api")


def test_offline_the_cache_says_which_commit_and_a_different_pinned_one_is_refused(hub, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    _, report = load_samples("owner/name")
    assert (report.origin["resolved_revision"], report.origin["revision_from"]) == (SHA, "cache files (offline)")
    with pytest.raises(DataError, match=f"revision {OTHER_SHA} was asked for, but offline the `datasets` cache "
                                        f"holds {SHA}"):
        load_samples(f"owner/name@{OTHER_SHA}")
    hub.on_disk = False
    _, report = load_samples("owner/name")
    assert report.origin["resolved_revision"] is None and report.origin["revision_from"].startswith("unknown")


def test_stage_01_manifest_records_name_config_split_and_resolved_revision(hub, tmp_path):
    run = Run(tmp_path / "run")
    m = run_data(run, DataConfig(train="owner/name:cfg@v1.0", eval="owner/name:cfg#test",
                                 column_map={"instruction": "prompt", "output": "response"}))
    assert m["status"] == "complete" and m["counts"]["train"] == 2 and m["counts"]["eval"] == 2
    assert m["sources"]["train"] == {"type": "hub", "name": "owner/name", "config": "cfg", "split": "train",
                                     "revision": "v1.0", "resolved_revision": SHA, "revision_from": "cache files"}
    assert m["sources"]["eval"]["split"] == "test" and m["sources"]["eval"]["revision"] is None
    assert [c[:4] for c in hub.calls] == [("owner/name", "cfg", "train", "v1.0"), ("owner/name", "cfg", "test", None)]
    report = json.loads(run.path("data", "data_report.json").read_text())
    assert report["train"]["origin"]["resolved_revision"] == SHA


def test_the_cli_passes_the_spec_through(hub, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["data", "--profile", "ci", "--run", str(run), "--train", "owner/name:cfg#validation",
                     "--column-map", "instruction=prompt,output=response"]) == 0
    assert hub.calls[0][:4] == ("owner/name", "cfg", "validation", None)
    assert Run(run).manifest("data")["sources"]["train"]["split"] == "validation"


def test_a_malformed_spec_fails_before_the_stage_starts(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["data", "--profile", "ci", "--run", str(run), "--train", "someone/things@"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Data source 'someone/things@': revision '' is empty") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # the message's own words point at no unrelated profile field
    assert Run(run).manifest("data") is None
    with pytest.raises(DatasetSpecError):
        DataConfig(eval="a/b/c")
    from reflection_lab.evaluate import EvaluateConfig

    with pytest.raises(DatasetSpecError, match="someone/things@"):  # stage 07's own data set, before any arm trains
        EvaluateConfig(eval_data="someone/things@")


def test_offline_without_a_cache_the_error_is_one_line(tmp_path, monkeypatch, capsys):
    """The real `datasets.load_dataset`, offline (HF_HUB_OFFLINE=1 as in CI), a dataset no cache holds."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    run = tmp_path / "run"
    assert cli.main(["data", "--profile", "ci", "--run", str(run), "--train", "nobody/nothing:cfg#test"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: Could not load dataset 'nobody/nothing:cfg#test' (")
    assert "HF_HUB_OFFLINE=1 is set and the dataset is not in the `datasets` cache" in lines[0]
    assert Run(run).status()["data"] == "failed"
