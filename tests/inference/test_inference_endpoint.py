"""Stage 06 through an OpenAI-compatible endpoint (the lab's own server in a subprocess): same rows, same parser,
resumable journal, and the CLI's --generator / --generator-url."""

from __future__ import annotations

import pytest

from finetune_helpers import one_thread
from lab_server import lab_server
from reflection_lab.core.config import ConfigError
from reflection_lab.core.runs import Run, write_jsonl_atomic
from reflection_lab.inference import InferConfig, counts, load_generations, run_infer

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
EVAL = [{"id": f"e-{i}", "instruction": q, "input": inp, "reference": "x", "category": "math"}
        for i, (q, inp) in enumerate([("What is 3 plus 4?", ""), ("Summarise the text.", "The river is long."),
                                      ("Why?", "")])]
CPU = {"device": "cpu", "dtype": "float32"}


def with_data(run: Run) -> Run:
    write_jsonl_atomic(run.path("data", "eval.jsonl"), EVAL)
    run.complete("data", {"test": len(EVAL)}, ["eval.jsonl"], {"eval": len(EVAL)})
    return run


@pytest.fixture(scope="module")
def server(tmp_path_factory, sharp_students):
    d = tmp_path_factory.mktemp("gen-server")
    with lab_server(["--model", sharp_students["llama"], "--served-name", "student"], d / "server.log") as base:
        yield base + "/v1"


def test_an_unknown_generator_is_refused():
    with pytest.raises(ConfigError, match="generator"):
        InferConfig(generator="vllm:x")


def test_endpoint_generations_match_the_local_student_row_for_row(tmp_path, server, sharp_students, monkeypatch):
    monkeypatch.setenv("REFLECTION_LAB_INFER_API_KEY", "sk-local")
    local = with_data(Run(tmp_path / "local"))
    remote = with_data(Run(tmp_path / "remote"))
    settings = dict(student=sharp_students["llama"], use_adapter=False, max_new_tokens=8, **CPU)
    m_local = run_infer(local, InferConfig(**settings), progress=False)
    m = run_infer(remote, InferConfig(**settings, generator="openai:student", generator_url=server), progress=False)
    rows, want = load_generations(remote), load_generations(local)
    assert [r["id"] for r in rows] == [e["id"] for e in EVAL] and rows[0]["model"] == "student"
    assert set(rows[0]) == set(want[0]) and set(rows[0]["parsed"]) == set(want[0]["parsed"])
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in want]
    assert [r["text"] for r in rows] == [r["text"] for r in want]  # same model, same chat template, greedy
    assert m["counts"] == counts(rows, generated=3, resumed=0) and m["model"]["backend"] == "openai"
    assert m["config"]["model"] == {"endpoint_model": "student", "base_url": server}
    assert "Before you answer" in m["prompt_example"] and m_local["config"]["model"] != m["config"]["model"]
    again = run_infer(remote, InferConfig(**settings, generator="openai:student", generator_url=server),
                      progress=False)
    assert again == m  # reused: same endpoint and settings


def test_the_cli_generates_through_an_endpoint(tmp_path, server, sharp_students, monkeypatch, capsys):
    from reflection_lab.cli import main

    from reflection_lab.inference import endpoint

    monkeypatch.setenv("REFLECTION_LAB_INFER_API_KEY", "sk-local")
    built: list = []
    real_init = endpoint.EndpointGenerator.__init__
    monkeypatch.setattr(endpoint.EndpointGenerator, "__init__",
                        lambda self, *a, **kw: (built.append(self), real_init(self, *a, **kw))[1])
    run = with_data(Run(tmp_path / "cli"))
    code = main(["infer", "--run", str(run.root), "--base", "--set", f"student={sharp_students['llama']}",
                 "--set", "max_new_tokens=6", "--generator", "openai:student", "--generator-url", server,
                 "--concurrency", "1", "--timeout", "45", "--max-retries", "2"])
    assert code == 0, capsys.readouterr().err
    assert [r["model"] for r in load_generations(run)] == ["student"] * 3
    # the endpoint's limits come from the CLI (a one-request-at-a-time server needs them)
    backend = built[0].backend
    assert (backend.concurrency, backend.timeout_s, backend.max_retries) == (1, 45.0, 2)
    assert main(["infer", "--run", str(run.root), "--generator", "openai:student", "--timeout", "0"]) == 2
    assert "InferConfig.timeout_s must be at least" in capsys.readouterr().err
