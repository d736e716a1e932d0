"""The OpenAI-compatible server, and stage 02 driven over real HTTP: faults, secrets, kill -9 and resume.

One server process (tiny model + a replay file written here) serves the whole module; tests change
its fault plan and latency through /admin endpoints. The finalizer always stops it.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lab_server import lab_server
from reflection_lab.data import DataConfig, run_data
from reflection_lab.llm import make_backend
from reflection_lab.reflect import ReflectConfig, run_reflect
from reflection_lab.core.runs import Run, read_jsonl

A = "<thinking>\nWork it out.\n<reflection>\nCheck: the weekend End is fine.\n</reflection>\n</thinking>\n<output>\n{}\n</output>"
SAMPLES = [{"id": f"s-{i:02d}", "category": "math", "instruction": f"What is {i} + {i}?", "input": "",
            "output": str(2 * i)} for i in range(1, 13)]


def _replay_rows():
    rows = []
    for s in SAMPLES:
        sid = s["id"]
        rows += [{"sample_id": sid, "task": "reflect_instruction",
                  "text": f"Easy.\n[New Instruction]\nHarder {sid}\n[End]\n[New Answer]\n{A.format('new ' + sid)}\n[End]"},
                 {"sample_id": sid, "task": "reflect_response",
                  "text": f"Short.\n[Better Answer]\n{A.format('better ' + sid)}\n[End]"},
                 {"sample_id": sid, "task": "reflect_response_on_reflected",
                  "text": f"Ok.\n[Better Answer]\n{A.format('both ' + sid)}\n[End]"}]
    return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama_path):
    d = tmp_path_factory.mktemp("server")
    replay = d / "replay.jsonl"
    replay.write_text("".join(json.dumps(r) + "\n" for r in _replay_rows()))
    with lab_server(["--model", tiny_llama_path, "--served-name", "tiny-llama", "--replay", str(replay)],
                    d / "server.log") as base:
        yield base


@pytest.fixture
def admin(server):
    def call(path, body=None):
        r = httpx.post(server + path, json=body or {}, timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    call("/admin/reset")
    call("/admin/config", {"latency_s": 0, "reasoning_field": None})
    yield call
    call("/admin/reset")
    call("/admin/config", {"latency_s": 0, "reasoning_field": None})


def _stats(server):
    return httpx.get(server + "/stats", timeout=5).json()


def _data_run(root: Path, samples) -> Run:
    root.mkdir(parents=True, exist_ok=True)
    src = root / "train.jsonl"
    src.write_text("".join(json.dumps(s) + "\n" for s in samples))
    run = Run(root / "run")
    run_data(run, DataConfig(train=str(src), eval=None))
    return run


# -- the server itself --------------------------------------------------------------------------
def test_models_health_and_completions_json_and_stream(server, admin):
    from openai import OpenAI

    assert httpx.get(server + "/health").json()["status"] == "ok"
    assert {m["id"] for m in httpx.get(server + "/v1/models").json()["data"]} == {"tiny-llama", "replay"}
    client = OpenAI(base_url=server + "/v1", api_key="sk-x", max_retries=0)
    msgs = [{"role": "user", "content": "What is 3 plus 4?"}]
    full = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=12)
    assert full.choices[0].finish_reason in ("stop", "length") and full.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content and chunks[-1].usage.total_tokens > 0
    raw = httpx.post(server + "/v1/chat/completions", json={"model": "tiny-llama", "messages": msgs,
                                                            "max_tokens": 4, "stream": True}).text
    assert raw.strip().endswith("data: [DONE]") and raw.startswith("data: {")


def test_reasoning_field_split_json_and_stream(server, admin):
    admin("/admin/config", {"reasoning_field": "reasoning_content"})
    body = {"model": "replay", "messages": [{"role": "user", "content": "x"}],
            "metadata": {"sample_id": "s-01", "task": "reflect_response"}}
    msg = httpx.post(server + "/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert msg["reasoning_content"].startswith("Work it out.") and "<thinking>" not in msg["content"]
    assert "<output>\nbetter s-01\n</output>" in msg["content"]
    lines = httpx.post(server + "/v1/chat/completions", json={**body, "stream": True}).text.split("\n\n")
    deltas = [json.loads(x[6:])["choices"][0]["delta"] for x in lines if x.startswith("data: {")]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == msg["reasoning_content"]
    assert "".join(d.get("content", "") for d in deltas) == msg["content"]


def test_unknown_model_and_missing_replay_entry_are_clear_errors(server, admin):
    r = httpx.post(server + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and "not served" in r.json()["error"]["message"]
    t = make_backend("openai", model="replay", base_url=server + "/v1", send_meta=True, max_retries=3)
    from reflection_lab.llm import ChatRequest

    rep = t.complete([ChatRequest.make(t, [{"role": "user", "content": "x"}], meta={"sample_id": "zz", "task": "t"})])[0]
    assert rep.text is None and rep.attempts == 1 and "zz" in rep.error  # 404 is not retried


# -- the stage over HTTP ------------------------------------------------------------------------
def test_every_fault_kind_and_every_sample_accounted_for(server, admin, tmp_path):
    run = _data_run(tmp_path, SAMPLES[:3])
    admin("/admin/faults", {"sequence": ["429", "500", "drop", "slow", "malformed", "503"], "slow_s": 12.0,
                            "by_key": {"s-02/reflect_response": ["500"] * 6}})
    teacher = make_backend("openai", model="tiny-llama", base_url=server + "/v1", send_meta=True, timeout_s=6.0,
                           max_retries=5, backoff_s=0.02, max_backoff_s=0.1)
    m = run_reflect(run, ReflectConfig(concurrency=4, max_tokens=16), teacher=teacher, progress=False)
    st = _stats(server)
    assert {k: v for k, v in st["faults"].items() if k != "ok"} == {"429": 1, "500": 7, "drop": 1, "slow": 1,
                                                                    "malformed": 1, "503": 1}
    rows = read_jsonl(run.path("reflect", "reflections.jsonl"))
    assert [r["id"] for r in rows] == ["s-01", "s-02", "s-03"]
    c = m["counts"]
    assert (c["requests"], c["errors"], c["replies"]) == (6, 2, 4)  # tiny model: no pair parses, no 3rd task
    # every retryable fault was retried; the request that timed out was not sent again (the server may still be
    # working on it), so it is an error with a reason, like the one that got six 500s
    errors = {(e["sample_id"], e["task"]): e["error"] for e in m["errors"]}
    assert errors.pop(("s-02", "reflect_response")) == "HTTP 500: injected fault 500"
    assert len(errors) == 1 and next(iter(errors.values())).startswith("timeout: no reply within 6 s (not sent again")
    s2 = rows[1]["variants"]["reflect_response"]
    assert (s2["parse_ok"], s2["parse_reason"], s2["output"]) == (False, "teacher_error", SAMPLES[1]["output"])
    assert rows[1]["raw"]["reflect_response"] is None
    for r in rows:  # a reply that came back (gibberish from the tiny model) keeps its raw text and a reason
        for name in ("reflect_instruction", "reflect_response", "reflect_both"):
            v = r["variants"][name]
            assert not v["parse_ok"] and v["parse_reason"]
        timed_out = (r["id"], "reflect_instruction") in errors
        assert (r["raw"]["reflect_instruction"] is None) == timed_out
    journal = read_jsonl(run.path("reflect", "teacher_replies.jsonl"))
    assert sum(1 for j in journal if j["attempts"] > 1) >= 4 and len(journal) == 6
    # the rerun asks exactly the failed requests again, nothing else
    admin("/admin/reset")
    m2 = run_reflect(run, ReflectConfig(concurrency=4, max_tokens=16), teacher=teacher, progress=False)
    failed = {f"{e['sample_id']}/{e['task']}": 1 for e in m["errors"]}
    assert _stats(server)["requests_by_key"] == failed and m2["counts"]["errors"] == 0


def test_api_key_never_reaches_the_run_directory(server, admin, tmp_path, monkeypatch):
    secret = "sk-test-SECRET123"
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_API_KEY", secret)
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_BASE_URL", server + "/v1")
    monkeypatch.setenv("REFLECTION_LAB_TEACHER_MODEL", "tiny-llama")
    run = _data_run(tmp_path, SAMPLES[:2])
    admin("/admin/faults", {"by_key": {"s-01/reflect_response": ["401"]}})  # an error message lands in the run too
    teacher = make_backend("openai", send_meta=True, backoff_s=0.01)
    m = run_reflect(run, ReflectConfig(max_tokens=8), teacher=teacher, progress=False)
    assert m["counts"]["errors"] == 1 and _stats(server)["with_auth"] == _stats(server)["total"] > 0
    files = [p for p in run.root.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
        assert b"SECRET123" not in p.read_bytes(), p
    assert "SECRET123" not in repr(teacher) + json.dumps(teacher.describe())


RESUME_SCRIPT = """
import sys
from reflection_lab.llm import make_backend
from reflection_lab.reflect import ReflectConfig, run_reflect
from reflection_lab.core.runs import Run
t = make_backend("openai", model="replay", base_url=sys.argv[2], send_meta=True, api_key="sk-test-x")
run_reflect(Run(sys.argv[1]), ReflectConfig(concurrency=3), teacher=t, progress=False)
"""


def _complete_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().split(b"\n")[:-1]:  # the last piece is either empty or a torn line
        out.append(json.loads(raw))
    return out


def test_kill_9_mid_run_then_resume_repeats_nothing_and_matches_byte_for_byte(server, admin, tmp_path):
    teacher = make_backend("openai", model="replay", base_url=server + "/v1", send_meta=True, api_key="sk-test-x")
    ref = _data_run(tmp_path / "ref", SAMPLES)
    run_reflect(ref, ReflectConfig(concurrency=8), teacher=teacher, progress=False)  # the uninterrupted reference run
    run = _data_run(tmp_path / "killed", SAMPLES)
    admin("/admin/reset")
    admin("/admin/config", {"latency_s": 0.15})
    script = tmp_path / "reflect_job.py"
    script.write_text(RESUME_SCRIPT)
    journal = run.root / "02_reflect" / "teacher_replies.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(run.root), server + "/v1"], env=os.environ.copy())
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_complete_lines(journal)) < 8 and proc.poll() is None:
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup, no flush, a possibly torn last line
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _complete_lines(journal)
    assert 8 <= len(before) < 36, "the job finished before it could be killed; raise the server latency"
    assert run.manifest("reflect")["status"] == "running"
    m = run_reflect(run, ReflectConfig(concurrency=3), teacher=teacher, progress=False)
    assert m["counts"]["requests"] == 36 and m["counts"]["errors"] == 0
    asked = _stats(server)["requests_by_key"]
    for rec in before:  # every reply journalled before the kill was asked exactly once
        assert asked[f"{rec['sample_id']}/{rec['task']}"] == 1
    assert sum(asked.values()) <= 36 + 3  # at most the requests in flight at the kill were asked twice
    assert run.path("reflect", "reflections.jsonl").read_bytes() == ref.path("reflect", "reflections.jsonl").read_bytes()


def test_fault_plan_and_reasoning_split_units():
    from reflection_lab.server import FaultPlan, split_reasoning

    plan = FaultPlan.from_dict({"sequence": ["429", "drop"], "by_key": {"a/t": ["500"]}})
    assert [plan.next("a/t"), plan.next("a/t"), plan.next("b/t"), plan.next("b/t")] == ["500", "429", "drop", "ok"]
    with pytest.raises(ValueError, match="unknown fault"):
        FaultPlan.from_dict({"sequence": ["explode"]})
    assert split_reasoning("<thinking>\nr\n</thinking>\n<output>o</output>") == ("r", "<output>o</output>")
    assert split_reasoning("plain") == (None, "plain")
    assert split_reasoning("<thinking>cut off") == ("cut off", "")


def test_cli_reflect_against_the_local_server(server, admin, tmp_path):
    """`reflection-lab data` then `reflect --teacher openai:replay`, settings from the environment only."""
    secret = "sk-test-CLISECRET9"
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES[:4]))
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REFLECTION_LAB_TEACHER_BASE_URL": server + "/v1",
           "REFLECTION_LAB_TEACHER_API_KEY": secret, "REFLECTION_LAB_TEACHER_SEND_META": "1"}
    cli = [sys.executable, "-m", "reflection_lab"]
    common = ["--profile", "ci", "--run", str(run_dir)]
    data = subprocess.run(cli + ["data", *common, "--train", str(src)], capture_output=True, text=True, env=env)
    assert data.returncode == 0, data.stderr[-2000:]
    before = _stats(server)["total"]
    res = subprocess.run(cli + ["reflect", *common, "--teacher", "openai:replay", "--concurrency", "4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = json.loads(res.stdout[:res.stdout.rindex("}") + 1])["counts"]
    assert counts["samples"] == 4 and counts["errors"] == 0 and counts["replies"] == counts["requests"] >= 8
    assert _stats(server)["total"] - before == counts["requests"]
    assert Run(run_dir).manifest("reflect")["status"] == "complete"
    for p in run_dir.rglob("*"):
        if p.is_file():
            assert b"CLISECRET9" not in p.read_bytes(), p
