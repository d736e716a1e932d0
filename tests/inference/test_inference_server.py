"""The OpenAI-compatible helpers and the viewers against a real local server (reflection_lab.server in a
subprocess on 127.0.0.1, serving the tiny student and a replay file), with and without --reasoning-field.

The server starts with --reasoning-field reasoning_content; tests switch the field through /admin/config
and the fixture puts it back. The finalizer always stops the process, also when a test fails.
"""

from __future__ import annotations

import json

import httpx
import pytest

from lab_server import lab_server
from reflection_lab.llm.openai import InferenceError, OpenAIModel
from reflection_lab.format.tags import parse
from reflection_lab.inference.viewer import CompareViewer, ReflectionViewer

TAGGED = ("<thinking>\nWork it out: 2 + 2.\n<reflection>\nCheck: <b> is not a tag, 2 + 2 = 4.\n</reflection>\n"
          "Done.\n</thinking>\n<output>\nThe answer is 4.\n</output>")
META = {"metadata": {"sample_id": "s-01", "task": "t"}}
KEY = "sk-test-INFER-SECRET"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama_path):
    d = tmp_path_factory.mktemp("infer-server")
    replay = d / "replay.jsonl"
    replay.write_text(json.dumps({"sample_id": "s-01", "task": "t", "text": TAGGED}) + "\n"
                      + json.dumps({"sample_id": "s-02", "task": "t", "text": "<thinking>\nStill going"}) + "\n")
    with lab_server(["--model", tiny_llama_path, "--served-name", "tiny-llama", "--replay", str(replay),
                     "--reasoning-field", "reasoning_content", "--stream-chunk-chars", "5"],
                    d / "server.log") as base:
        yield base


@pytest.fixture
def config(server):
    def set_field(field):
        r = httpx.post(server + "/admin/config", json={"reasoning_field": field}, timeout=5)
        assert r.status_code == 200, r.text

    yield set_field
    set_field("reasoning_content")  # what the command line started it with
    httpx.post(server + "/admin/reset", json={}, timeout=5)


def model(server, name="replay", **kw) -> OpenAIModel:
    return OpenAIModel(name, base_url=server + "/v1", api_key=KEY, max_retries=0, **kw)


def test_tiny_student_streams_the_same_text_as_a_plain_request(server, config):
    config(None)
    gen = model(server, "tiny-llama", include_usage=True).generate("What is 3 plus 4?", max_new_tokens=12)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "What is 3 plus 4?"}], "max_tokens": 12,
            "temperature": 0.0}
    full = httpx.post(server + "/v1/chat/completions", json=body, timeout=30).json()["choices"][0]
    assert gen.text == full["message"]["content"] and gen.finish_reason == full["finish_reason"]
    assert gen.reasoning_field is None and gen.parsed.codes[-1] == "no_tags" and gen.model == "tiny-llama"
    assert gen.parsed.truncated is (gen.finish_reason == "length") and gen.n_tokens > 0


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_field_is_merged_back_into_a_thinking_block(server, config, field):
    if field != "reasoning_content":
        config(field)  # reasoning_content comes from the command line flag
    stream = model(server, extra_body=META).stream("x")
    chunks = list(stream)
    gen = stream.result()
    assert len(chunks) > 5 and gen.reasoning_field == field and any(field in n for n in gen.notes)
    want = parse(TAGGED)
    got = gen.parsed
    assert (got.thinking, [r.text for r in got.reflections], got.answer) == \
           (want.thinking, [r.text for r in want.reflections], "The answer is 4.")
    assert got.well_formed and gen.finish_reason == "stop"


def test_without_reasoning_field_the_tags_arrive_inline(server, config):
    config(None)
    gen = model(server, extra_body=META).generate("x")
    assert gen.text == TAGGED and gen.reasoning_field is None and gen.parsed.well_formed


def test_reasoning_that_never_ends_stays_open(server, config):
    gen = model(server, extra_body={"metadata": {"sample_id": "s-02", "task": "t"}}).generate("x")
    assert gen.reasoning_field == "reasoning_content" and gen.text == "<thinking>\nStill going"
    assert gen.parsed.answer is None and "unclosed_tag" in gen.parsed.codes  # not silently closed


def test_settings_from_the_environment_and_errors_without_the_key(server, config, monkeypatch):
    monkeypatch.setenv("REFLECTION_LAB_INFER_BASE_URL", server + "/v1")
    monkeypatch.setenv("REFLECTION_LAB_INFER_MODEL", "replay")
    monkeypatch.setenv("REFLECTION_LAB_INFER_API_KEY", KEY)
    m = OpenAIModel(role="generator", extra_body=META, max_retries=0)
    assert m.generate("x").parsed.well_formed
    assert httpx.get(server + "/stats").json()["with_auth"] >= 1  # the key was sent...
    with pytest.raises(InferenceError) as err:
        list(OpenAIModel("nope", role="generator", max_retries=0).stream("x"))
    assert "404" in str(err.value) and "not served" in str(err.value)
    assert KEY not in str(err.value) and KEY not in repr(m) + json.dumps(m.describe())  # ...and never shown
    httpx.post(server + "/admin/faults", json={"sequence": ["drop"]}, timeout=5)
    with pytest.raises(InferenceError):
        m.generate("x")


def test_viewer_and_comparison_against_the_server(server, config):
    vw = ReflectionViewer(model(server, extra_body=META), prompt="2 + 2?", threaded=False)
    gen = vw.generate()
    assert gen.parsed.well_formed and vw.state.reflection_texts == ["Check: <b> is not a tag, 2 + 2 = 4."]
    assert "&lt;b&gt;" in vw.panes.reflections.children[0].value and "reasoning_content" in vw.panes.status.value
    cv = CompareViewer(model(server, "tiny-llama"), model(server, extra_body=META), labels=["base", "tuned"],
                       threaded=False, max_new_tokens=8)
    left, right = cv.generate("2 + 2?")
    assert "no_tags" in left.parsed.codes and right.parsed.well_formed
    assert "tuned" in cv.summary.value and cv.states[1].output == "The answer is 4."
