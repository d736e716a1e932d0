"""The model-backend layer: request keys, replay, OpenAI-compatible client settings and retries, the local model."""

import asyncio
import json
import socket

import pytest

from reflection_lab.llm import ChatReply, ChatRequest, make_backend, request_key
from reflection_lab.llm.local import LocalModel
from reflection_lab.llm.openai import OpenAIModel, Secret, safe_url
from reflection_lab.llm.replay import ReplayBackend

MSGS = [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "Judge this."}]
ROWS = [{"sample_id": "a-01", "task": "reflect_response", "text": "[Better Answer]\nB\n[End]"},
        {"sample_id": "a-01", "task": "reflect_instruction", "text": "[New Instruction]\nQ\n[End]"},
        {"sample_id": "a-01", "task": "reflect_response", "text": "a later duplicate"}]


# -- request keys -------------------------------------------------------------------------------
def test_request_key_covers_backend_model_messages_and_sampling_but_not_meta():
    t = ReplayBackend(rows=ROWS)
    base = ChatRequest.make(t, MSGS, meta={"sample_id": "x"})
    assert base.key == ChatRequest.make(t, MSGS, meta={"sample_id": "other"}).key
    assert base.key == request_key("replay", t.model, MSGS, 0.0, 1.0, 1024) and len(base.key) == 64
    changed = [request_key("openai", t.model, MSGS, 0.0, 1.0, 1024), request_key("replay", "m2", MSGS, 0.0, 1.0, 1024),
               request_key("replay", t.model, MSGS[:1], 0.0, 1.0, 1024),
               request_key("replay", t.model, MSGS, 0.7, 1.0, 1024), request_key("replay", t.model, MSGS, 0.0, 0.9, 1024),
               request_key("replay", t.model, MSGS, 0.0, 1.0, 512)]
    assert len({base.key, *changed}) == 7
    with pytest.raises(Exception):
        base.key = "x"  # frozen


def test_reply_record_round_trip_has_no_surprises():
    rep = ChatReply("k", "text", None, 2, 0.5, "stop", {"sample_id": "s", "task": "t"})
    rec = rep.record()
    assert set(rec) == {"key", "text", "error", "attempts", "latency_s", "finish_reason", "sample_id", "task"}
    assert ChatReply.from_record(json.loads(json.dumps(rec))) == rep and rep.ok
    assert not ChatReply("k", None, "boom").ok


# -- replay -------------------------------------------------------------------------------------
def test_replay_serves_by_sample_and_task_and_reports_missing_entries():
    t = ReplayBackend(rows=ROWS)
    reqs = [ChatRequest.make(t, MSGS, meta={"sample_id": "a-01", "task": "reflect_response"}),
            ChatRequest.make(t, MSGS + [{"role": "user", "content": "2"}], meta={"sample_id": "zz-9", "task": "reflect_response"})]
    seen = []
    out = t.complete(reqs, seen.append)
    assert [r.key for r in seen] == [r.key for r in reqs] and out == seen
    assert out[0].text == ROWS[0]["text"] and out[0].finish_reason == "stop"  # first of duplicates wins
    assert out[1].text is None and "zz-9" in out[1].error and "reflect_response" in out[1].error
    assert t.duplicates == [("a-01", "reflect_response")]


def test_replay_reads_one_or_many_files_and_its_model_name_tracks_the_data(tmp_path):
    f1, f2 = tmp_path / "a_replay.jsonl", tmp_path / "b_replay.jsonl"
    f1.write_text(json.dumps(ROWS[0]) + "\n")
    f2.write_text(json.dumps(ROWS[1]) + "\n")
    both = make_backend("replay", path=[f1, f2])
    assert both.describe()["entries"] == 2 and both.describe()["sources"] == ["a_replay.jsonl", "b_replay.jsonl"]
    one = make_backend(f"replay:{f1}")
    assert one.describe()["entries"] == 1 and one.model != both.model


def test_replay_delay_option():
    t = ReplayBackend(rows=ROWS, delay_s=0.05)
    rep = t.complete([ChatRequest.make(t, MSGS, meta={"sample_id": "a-01", "task": "reflect_response"})])[0]
    assert rep.ok and rep.latency_s >= 0.05


def test_replay_default_data_when_shipped():
    try:
        t = make_backend("replay")
    except FileNotFoundError:
        pytest.skip("no replay data in this checkout")
    tasks = {task for (_, task) in t.index}
    assert tasks <= {"reflect_instruction", "reflect_response", "reflect_response_on_reflected"} and len(t.index) >= 3


def test_make_backend_specs():
    assert isinstance(make_backend("local:tiny-llama"), LocalModel)
    assert make_backend("local", model="tiny-gpt2").model == "tiny-gpt2"
    assert make_backend("openai:gpt-x", base_url="http://127.0.0.1:9/v1").model == "gpt-x"
    with pytest.raises(ValueError, match="local backend needs a model"):
        make_backend("local")
    with pytest.raises(ValueError, match="unknown backend spec"):
        make_backend("anthropic")


# -- OpenAI-compatible: settings and secrets ----------------------------------------------------
def test_openai_settings_from_environment_with_fallbacks(monkeypatch):
    for k in ("REFLECTION_LAB_TEACHER_BASE_URL", "REFLECTION_LAB_TEACHER_MODEL", "REFLECTION_LAB_TEACHER_API_KEY",
              "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="REFLECTION_LAB_TEACHER_MODEL"):
        OpenAIModel()
    monkeypatch.setenv("OPENAI_MODEL", "fallback-model")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://fallback:1/v1")
    assert OpenAIModel().model == "fallback-model" and OpenAIModel().base_url == "http://fallback:1/v1"
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_MODEL", "lab-model")
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_BASE_URL", "http://lab:2/v1")
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_API_KEY", "sk-test-SECRET123")
    t = OpenAIModel()
    assert (t.model, t.base_url) == ("lab-model", "http://lab:2/v1") and t.describe()["has_api_key"]


def test_openai_key_never_shows(monkeypatch):
    t = OpenAIModel("m", base_url="https://user:pw@host.example:8443/v1?token=abc#x", api_key="sk-test-SECRET123")
    shown = repr(t) + str(t.describe()) + repr(vars(t)) + str(Secret("sk-test-SECRET123"))
    assert "SECRET123" not in shown and ":pw" not in shown and "token=" not in shown
    assert safe_url("https://user:pw@host.example:8443/v1?token=abc") == "https://host.example:8443/v1"
    assert t._scrub("Incorrect API key provided: sk-test-SECRET123.") == "Incorrect API key provided: ***."


def test_openai_backoff_grows_with_jitter_and_honours_retry_after():
    t = OpenAIModel("m", base_url="http://x/v1", backoff_s=1.0, max_backoff_s=8.0)
    waits = [t._backoff(a, None) for a in (1, 2, 3, 4, 5, 6)]
    assert 0.5 <= waits[0] <= 1.0 and 2.0 <= waits[2] <= 4.0 and all(w <= 8.0 for w in waits)
    assert 3.0 <= t._backoff(1, 3.0) <= 3.1 and t._backoff(1, 100.0) <= 8.1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_unreachable_endpoint_gives_error_replies_with_counted_attempts():
    t = OpenAIModel("m", base_url=f"http://127.0.0.1:{_closed_port()}/v1", api_key="sk-test-SECRET123",
                      max_retries=2, backoff_s=0.01, timeout_s=2)
    reqs = [ChatRequest.make(t, MSGS, meta={"sample_id": f"s{i}", "task": "reflect_response"}) for i in range(3)]
    got = []
    out = t.complete(reqs, got.append, concurrency=2)
    assert len(got) == 3 and [r.key for r in out] == [r.key for r in reqs]
    assert all(r.text is None and r.attempts == 3 and "connection" in r.error for r in out)
    assert not any("SECRET123" in r.error for r in out)


def test_openai_generate_works_inside_a_running_event_loop():
    t = OpenAIModel("m", base_url=f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0, timeout_s=2)

    async def cell():  # what a Jupyter cell looks like: a loop is already running
        return t.complete([ChatRequest.make(t, MSGS)])

    assert asyncio.run(cell())[0].error


# -- local transformers teacher -----------------------------------------------------------------
@pytest.fixture(scope="module")
def sharp_models(sharp_students):
    return sharp_students


PROMPTS = [[{"role": "user", "content": "What is 3 plus 4?"}],
           [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Write a function that adds 7 and 9 in Python, step by step please."}],
           [{"role": "user", "content": "Why?"}]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # RoPE and learned absolute positions
def test_local_batched_left_padding_equals_unbatched_greedy(sharp_models, arch):
    t = LocalModel.from_spec(sharp_models[arch], system_prompt=None, batch_size=4)
    reqs = [ChatRequest.make(t, m, max_tokens=12, meta={"i": i}) for i, m in enumerate(PROMPTS)]
    batched = t.complete(reqs)
    single = [t.complete([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert len({r.text for r in single}) == 3 and all(r.finish_reason in ("stop", "length") for r in batched)
    t.padding_side = "right"  # control: the comparison can fail, so it means something
    assert [r.text for r in t.complete(reqs)] != [r.text for r in single]


def test_local_teacher_reports_prompts_that_do_not_fit(tiny_llama_path):
    t = make_backend(f"local:{tiny_llama_path}")
    long = [{"role": "user", "content": "word " * 3000}]
    reqs = [ChatRequest.make(t, long, max_tokens=8), ChatRequest.make(t, PROMPTS[0], max_tokens=4)]
    out = t.complete(reqs)
    assert out[0].text is None and "exceeds" in out[0].error and out[1].ok
    assert out[1].usage["prompt_tokens"] > 0 and 0 < out[1].usage["completion_tokens"] <= 4
    d = t.describe()
    assert (d["backend"], d["model"], d["system_prompt"]) == ("local", tiny_llama_path, None)


def test_local_decode_keeps_reflection_tags_even_as_special_tokens(tiny_llama_path):
    from reflection_lab.llm.local import token_policy

    t = make_backend(f"local:{tiny_llama_path}")
    tok = t.tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<thinking>", "</thinking>", "<|system|>"]})
    t.policy = token_policy(tok, t.lm, t.fmt.end_ids)
    ids = tok("<thinking>add<|system|></thinking> 4", add_special_tokens=False)["input_ids"]
    text, finish, _ = t.decode(ids + [tok.eos_token_id] + ids)
    assert text.replace(" ", "") == "<thinking>add</thinking>4" and finish == "stop"
    assert t.decode(ids)[1] == "length"


def test_openai_cancelled_run_starts_no_request_and_journals_nothing():
    import threading

    t = OpenAIModel("m", base_url=f"http://127.0.0.1:{_closed_port()}/v1")
    cancel = threading.Event()
    cancel.set()  # what an interrupted notebook cell sets
    seen = []
    out = asyncio.run(t.acomplete([ChatRequest.make(t, MSGS)], seen.append, 2, cancel))
    assert out[0].error == "cancelled" and out[0].attempts == 0 and seen == []


def test_make_backend_takes_a_model_name_beside_any_spec():
    assert make_backend("local:tiny-llama", model="ignored-when-the-spec-names-one").model == "tiny-llama"
    assert make_backend("replay", model=None).kind == "replay"
    assert make_backend("openai", model="m", base_url="http://127.0.0.1:9/v1").model == "m"


def test_request_presets_keep_the_models_own_top_k():
    from reflection_lab.llm.sampling import PRESETS, request_preset

    assert "top_k" not in request_preset(0.7, 0.9).hf_kwargs()
    assert PRESETS["reflection"].hf_kwargs()["top_k"] == 0 and "top_k" not in PRESETS["greedy"].hf_kwargs()


def test_credentials_in_the_url_never_reach_a_reply_even_when_the_server_echoes_them():
    """A server that echoes the request headers into its reply text (the issue's case: Basic auth in base64)."""
    import base64
    import http.server
    import threading

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            self.rfile.read(int(self.headers.get("content-length", 0)))
            text = " | ".join(f"{k}: {v}" for k, v in self.headers.items())
            body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        t = OpenAIModel("m", base_url=f"http://alice:s3cret-pw@127.0.0.1:{httpd.server_port}/v1",
                        api_key="sk-test-SECRET123", max_retries=0)
        rep = t.complete([ChatRequest.make(t, MSGS)])[0]
    finally:
        httpd.shutdown()
    assert rep.ok and "authorization" in rep.text.lower()
    record = json.dumps(rep.record())
    for secret in ("s3cret-pw", base64.b64encode(b"alice:s3cret-pw").decode(), "SECRET123"):
        assert secret not in record


# -- the stop text ------------------------------------------------------------------------------
def test_stop_cutter_keeps_the_stop_text_even_across_chunks_and_drops_what_follows():
    from reflection_lab.llm.sampling import StopCutter, cut_at_stop

    cutter = StopCutter(("</output>",))
    parts = [cutter.feed(c) for c in ["<output>\n4\n</out", "put>\n<thin", "king>\nagain"]]
    assert parts == ["<output>\n4\n</out", "put>", ""] and cutter.stopped
    assert cut_at_stop("a</x>b</y>c", ("</y>", "</x>")) == ("a</x>", True)
    assert cut_at_stop("no stop here", ("</output>",)) == ("no stop here", False)
    assert StopCutter(()).feed("</output> and more") == "</output> and more"


class _Chunk:
    def __init__(self, text, finish=None):
        delta = type("Delta", (), {"content": text})()
        self.choices = [type("Choice", (), {"delta": delta, "finish_reason": finish})()]
        self.usage = None


def test_openai_stream_ends_at_the_stop_text_and_keeps_it(monkeypatch):
    """The client cuts (a server given `stop` would drop the closing tag) and closes the response."""
    import dataclasses

    import openai

    from reflection_lab.llm.sampling import PRESETS

    sent, closed = [], []
    pieces = ["<thinking>\nsum\n</thinking>\n<output>\n4\n</out", "put>\n<thinking>\nagain", "\n</thinking>"]

    class Response:
        def __iter__(self):
            for i, p in enumerate(pieces):
                sent.append(p)
                yield _Chunk(p, "stop" if i == len(pieces) - 1 else None)

        def close(self):
            closed.append(True)

    class Client:
        def __init__(self, **kw):
            self.chat = type("Chat", (), {"completions": self})()

        def create(self, **kw):
            assert "stop" not in kw
            return Response()

        def close(self):
            pass

    monkeypatch.setattr(openai, "OpenAI", Client)
    model = OpenAIModel(model="m", base_url="http://127.0.0.1:9/v1", api_key="x")
    gen = model.generate("What is 2 + 2?")
    assert gen.text.endswith("<output>\n4\n</output>") and "again" not in gen.text
    assert gen.finish_reason == "stop" and gen.parsed.well_formed and closed and len(sent) == 2
    whole = model.generate("What is 2 + 2?", preset=dataclasses.replace(PRESETS["greedy"], stop=()))
    assert "again" in whole.text and not whole.parsed.well_formed


def test_a_scripted_model_ends_at_the_stop_text_like_a_model_would():
    import dataclasses

    from reflection_lab.llm.sampling import PRESETS
    from reflection_lab.llm.scripted import ScriptedModel

    script = ScriptedModel("<thinking>\nx\n</thinking>\n<output>\n1\n</output>\n<thinking>\nmore", chunk_chars=5)
    gen = script.generate("q")
    assert gen.text.endswith("</output>") and "more" not in gen.text and gen.finish_reason == "stop"
    assert "more" in script.generate("q", preset=dataclasses.replace(PRESETS["greedy"], stop=())).text


def test_answer_loop_guard_bans_a_second_copy_of_an_answer_run_but_not_a_quote_of_the_prompt():
    import torch

    from reflection_lab.llm.local import AnswerLoopGuard

    guard = AnswerLoopGuard(3, prompt_width=3)
    scores = torch.zeros(2, 12)
    ids = torch.tensor([[7, 8, 9, 7, 8, 9, 1, 7, 8],   # the answer wrote 7 8 9 once: a second 9 after 7 8 is banned
                        [0, 7, 8, 9, 7, 8, 1, 2, 3]])  # 7 8 9 is only in the prompt: quoting it stays allowed
    out = guard(ids, scores.clone())
    assert torch.isinf(out[0, 9]) and torch.isfinite(out[0]).sum() == 11
    assert torch.isfinite(out[1]).all()
    assert AnswerLoopGuard(2, 0).banned([4, 5, 4]) == {5} and AnswerLoopGuard(2, 0).banned([4]) == set()


def test_loop_guard_leaves_no_repeated_run_in_a_greedy_answer(tiny_llama_path):
    from reflection_lab.llm.sampling import SamplingPreset

    t = LocalModel.from_spec(tiny_llama_path, system_prompt=None)
    prompts = [t.encode(p) for p in PROMPTS[:2]]

    def answers(guard: int) -> list[list[int]]:
        out, width = t._generate(prompts, SamplingPreset("g", stop=(), loop_guard=guard), 40)
        rows = [row[width:] for row in out.tolist()]
        return [row[:min([i for i, x in enumerate(row) if x in t.policy.stop_ids] or [len(row)])] for row in rows]

    def repeats(ids: list[int], n: int) -> int:
        runs = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        return len(runs) - len(set(runs))

    assert any(repeats(a, 4) for a in answers(0))  # control: this random model loops without the guard
    assert all(repeats(a, 4) == 0 for a in answers(4))


def test_an_endpoint_refuses_a_loop_guard_it_cannot_apply():
    from reflection_lab.llm.sampling import SamplingPreset

    with pytest.raises(ValueError, match="loop_guard"):
        SamplingPreset("g", loop_guard=8).openai_kwargs()
    assert SamplingPreset("g").openai_kwargs()["temperature"] == 0.0
    with pytest.raises(ValueError, match="loop_guard must be 0"):
        SamplingPreset("g", loop_guard=-1)
