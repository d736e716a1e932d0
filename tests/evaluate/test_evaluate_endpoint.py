"""Stage 07 through an OpenAI-compatible endpoint (the lab's own server in a subprocess): the same answers and
numbers as local generation, arms asked for by their served names, and the CLI's --generator flags."""

from __future__ import annotations

import pytest

from finetune_helpers import one_thread
from lab_server import lab_server
from reflection_lab.core.config import ConfigError
from reflection_lab.core.runs import Run
from reflection_lab.evaluate import EvaluateConfig, load_generations, load_metrics, run_evaluate
from reflection_lab.profiles import get_profile

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def server(tmp_path_factory, sharp_students):
    d = tmp_path_factory.mktemp("eval-server")
    with lab_server(["--model", sharp_students["llama"], "--served-name", "student"], d / "server.log") as base:
        yield base + "/v1"


def _profile(student: str):
    # full precision on both sides: the server does not quantize, so a 4-bit base arm here would differ
    return get_profile("ci", student=student, n_eval=3, max_new_tokens=8, quant4=False, device="cpu",
                       dtype="float32")


def _data_run(root, profile) -> Run:
    from reflection_lab.pipeline import run_pipeline

    run = Run(root)
    run_pipeline(run, profile, stages=["data"], log=lambda *a: None)
    return run


def test_served_names_default_to_the_student_and_the_arm_and_bad_items_are_refused():
    c = EvaluateConfig.from_profile(_profile("tiny-llama"), arms=("base", "selected", "random"),
                                    arm_models="selected=sel-lora")
    assert c.served_names() == {"base": "tiny-llama", "selected": "sel-lora", "random": "random"}
    with pytest.raises(ConfigError, match="arm_models item 'selected'"):
        EvaluateConfig(arm_models="selected")
    with pytest.raises(ConfigError, match="arm_models item 'best=x'"):
        EvaluateConfig(arm_models="best=x")
    with pytest.raises(ConfigError, match="generator"):
        EvaluateConfig(generator="vllm")


def test_endpoint_arm_answers_and_scores_like_the_local_arm(tmp_path, server, sharp_students, monkeypatch):
    monkeypatch.setenv("REFLECTION_LAB_INFER_API_KEY", "sk-local")
    profile = _profile(sharp_students["llama"])
    local, remote = _data_run(tmp_path / "local", profile), _data_run(tmp_path / "remote", profile)
    m_local = run_evaluate(local, EvaluateConfig.from_profile(profile, arms=("base",)), progress=False)
    config = EvaluateConfig.from_profile(profile, arms=("base",), generator="openai", generator_url=server,
                                         arm_models="base=student")
    m = run_evaluate(remote, config, progress=False)
    got, want = load_generations(remote, "base"), load_generations(local, "base")
    assert [r["text"] for r in got] == [r["text"] for r in want] and len(got) == 3  # same weights, greedy
    assert [r["ref_loss"] for r in got] == pytest.approx([r["ref_loss"] for r in want], abs=1e-5)
    arm = load_metrics(remote)["arms"]["base"]
    assert arm["model"]["backend"] == "openai" and arm["model"]["model"] == "student"
    assert m["fingerprint"] != m_local["fingerprint"]  # the generator is part of what decides the answers
    assert run_evaluate(remote, config, progress=False) == m  # reused


def test_the_endpoint_and_served_names_are_part_of_the_fingerprint_and_other_templates_are_refused(monkeypatch):
    from reflection_lab.evaluate.stage import _endpoint_identity

    monkeypatch.setenv("REFLECTION_LAB_INFER_BASE_URL", "http://127.0.0.1:8001/v1")
    profile = _profile("tiny-llama")
    c = EvaluateConfig.from_profile(profile, arms=("base", "selected"), generator="openai")
    assert _endpoint_identity(c) == {"base_url": "http://127.0.0.1:8001/v1",
                                     "served_names": {"base": "tiny-llama", "selected": "selected"}}
    renamed = EvaluateConfig.from_profile(profile, arms=("base", "selected"), generator="openai",
                                          arm_models="selected=sel")
    moved = EvaluateConfig.from_profile(profile, arms=("base", "selected"), generator="openai",
                                        generator_url="http://127.0.0.1:9000/v1")
    assert len({str(_endpoint_identity(x)) for x in (c, renamed, moved)}) == 3
    assert _endpoint_identity(EvaluateConfig.from_profile(profile)) is None
    with pytest.raises(ConfigError, match="needs the 'chat' template"):
        EvaluateConfig.from_profile(get_profile("ci", template="plain"), generator="openai")


def test_cli_flags_reach_the_evaluate_config_and_in_run_only_stage_07():
    from reflection_lab.cli import build_parser, stage_overrides

    flags = ["--generator", "openai", "--generator-url", "http://127.0.0.1:8000/v1",
             "--arm-models", "base=b,selected=s"]
    want = {"generator": "openai", "generator_url": "http://127.0.0.1:8000/v1", "arm_models": "base=b,selected=s"}
    assert stage_overrides(build_parser().parse_args(["evaluate", "--run", "r", *flags]))["evaluate"] == want
    in_run = stage_overrides(build_parser().parse_args(["run", "--run", "r", *flags]))
    assert in_run["evaluate"] == want and "infer" not in in_run  # stage 06 keeps its own --generator
