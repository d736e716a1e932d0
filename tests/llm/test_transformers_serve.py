"""Interop with an OpenAI-compatible server the lab did not write: `transformers serve` (fastapi + uvicorn).

Why: the lab's own server (tests/llm/test_server.py) shares the lab's idea of the protocol, so a client bug that
both sides agree on would pass there. transformers' server decodes greedily with the model's own chat template,
as the lab's local backend does, so on the same weights the two must write the same text, whichever path a
request takes: the teacher stage through the CLI, non-streamed completion, or a streamed generation.
It also serves one request at a time (no continuous batching), the setting in which the lab's old defaults
(1,024 tokens, 120 s, retries) recorded nothing: the teacher's limits come from the CLI here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab_server import http_server
from reflection_lab.core.runs import Run, read_jsonl
from reflection_lab.llm import make_backend
from reflection_lab.llm.local import LocalModel
from reflection_lab.profiles import get_profile
from reflection_lab.reflect import ReflectConfig, run_reflect

MAX_TOKENS = 12
N_SAMPLES = 3


@pytest.fixture(scope="module")
def served(sharp_students, tmp_path_factory):
    """`transformers serve` with the sharp tiny llama preloaded, on a free loopback port, CPU only."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    assert exe, "the `transformers` command is missing: install the package with its [serve] extra"
    model = _with_bos_in_template(sharp_students["llama"], tmp_path_factory.mktemp("served-llama"))
    log = tmp_path_factory.mktemp("serve") / "transformers-serve.log"
    with http_server([exe, "serve", model, "--host", "127.0.0.1", "--device", "cpu"], log, start_s=180) as base:
        yield base + "/v1", model


def _with_bos_in_template(src: str, dst: Path) -> str:
    """A copy whose chat template writes BOS itself, as real Llama templates do. The lab prepends the BOS a
    Llama tokenizer adds to plain text (training and inference alike), while a server renders exactly the
    template; the tiny student's template has no BOS, so without this the two prompts differ by that token."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    template = dst / "chat_template.jinja"
    template.write_text("{{ bos_token }}" + template.read_text())
    return str(dst)


def _data_run(root: Path) -> Run:
    """A run whose data stage holds N_SAMPLES workshop samples, made by the CLI as a user would."""
    cmd = [sys.executable, "-m", "reflection_lab", "data", "--run", str(root), "--profile", "ci",
           "--set", f"n_samples={N_SAMPLES}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return Run(root)


def _reflect_cli(run: Run, teacher: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "reflection_lab", "reflect", "--run", str(run.root), "--profile", "ci",
           "--teacher", teacher, "--max-tokens", str(MAX_TOKENS), "--timeout", "60", "--max-retries", "1",
           "--concurrency", "2"]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def test_teacher_stage_through_transformers_serve_writes_what_the_local_backend_writes(served, tmp_path):
    base_url, model = served
    remote, local = _data_run(tmp_path / "remote"), _data_run(tmp_path / "local")
    done = _reflect_cli(remote, f"openai:{model}", {"REFLECTION_LAB_TEACHER_BASE_URL": base_url,
                                                   "REFLECTION_LAB_TEACHER_API_KEY": "unused"})
    assert done.returncode == 0, done.stderr[-2000:]
    m = remote.manifest("reflect")
    assert m["status"] == "complete" and m["counts"]["errors"] == 0
    assert m["counts"]["replies"] == m["counts"]["requests"] >= 2 * N_SAMPLES  # reflect_both only after a parsed one
    # the same requests to the local backend, one at a time as the server takes them (a padded batch moves the
    # random model's near-tied logits): greedy, the model's own chat template, the same text request by request
    config = ReflectConfig.from_profile(get_profile("ci"), max_tokens=MAX_TOKENS)
    run_reflect(local, config, teacher=make_backend("local", model=model, batch_size=1, device="cpu"), progress=False)
    replies, expected = _replies(remote), _replies(local)
    assert replies == expected and len(set(replies.values())) > 1  # the sharp model's text depends on the prompt


def _replies(run: Run) -> dict[tuple[str, str], str]:
    return {(r["sample_id"], r["task"]): _bytes_as_one_mark(r["text"])
            for r in read_jsonl(run.path("reflect", "teacher_replies.jsonl"))}


def _bytes_as_one_mark(text: str) -> str:
    """The random tiny model emits stray byte tokens that are not whole UTF-8 characters; the two servers decode
    such a run into different numbers of U+FFFD marks (both correct), so a run of marks counts as one here."""
    return re.sub("\ufffd+", "\ufffd", text)


def test_streamed_and_whole_generation_match_the_local_model(served):
    base_url, model = served
    local = LocalModel.from_spec(model, device="cpu", batch_size=1)  # asks for the format in its system prompt
    remote = make_backend("openai", role="generator", model=model, base_url=base_url, api_key="unused",
                          timeout_s=60, max_retries=1, system_prompt=local.fmt.system_prompt)
    messages = [{"role": "user", "content": "Write a function that adds 7 and 9 in Python."}]
    pieces = list(remote.stream(messages, max_new_tokens=MAX_TOKENS))
    whole = remote.generate(messages, max_new_tokens=MAX_TOKENS)
    mine = local.generate(messages, max_new_tokens=MAX_TOKENS)
    assert len(pieces) > 1, "the reply arrived in one piece: it was not streamed"
    assert "".join(pieces) == whole.text
    assert _bytes_as_one_mark(whole.text) == _bytes_as_one_mark(mine.text)
    assert whole.finish_reason == mine.finish_reason == "length"


def test_evaluation_arm_through_transformers_serve_answers_like_the_local_arm(served, tmp_path, monkeypatch):
    """Stage 07's endpoint path (stage 06's generator) against a server the lab did not write."""
    from reflection_lab.evaluate import EvaluateConfig, load_generations, run_evaluate
    from reflection_lab.pipeline import run_pipeline

    base_url, model = served
    monkeypatch.setenv("REFLECTION_LAB_INFER_API_KEY", "unused")
    profile = get_profile("ci", student=model, n_eval=2, max_new_tokens=MAX_TOKENS, quant4=False, device="cpu",
                          dtype="float32")
    runs = {}
    for name, extra in (("local", {}), ("remote", {"generator": "openai", "generator_url": base_url})):
        runs[name] = Run(tmp_path / name)
        run_pipeline(runs[name], profile, stages=["data"], log=lambda *a: None)
        # one prompt at a time, as the server takes them (a padded batch moves near-tied logits)
        run_evaluate(runs[name], EvaluateConfig.from_profile(profile, arms=("base",), batch_size=1, **extra),
                     progress=False)
    got, want = (load_generations(runs[n], "base") for n in ("remote", "local"))
    assert [_bytes_as_one_mark(r["text"]) for r in got] == [_bytes_as_one_mark(r["text"]) for r in want]
    assert [r["ref_loss"] for r in got] == pytest.approx([r["ref_loss"] for r in want], abs=1e-5)
