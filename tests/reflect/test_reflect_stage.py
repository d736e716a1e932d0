"""Stage 02 with offline teachers: artifact schema, fallbacks, counts, reuse, retries, resume."""

import json
from pathlib import Path

import pytest

from reflection_lab.data import DataConfig, run_data
from reflection_lab.reflect import ReflectConfig, load_prompts, run_reflect
from reflection_lab.core.runs import MissingStageError, Run, read_jsonl
from reflection_lab.llm import ChatReply
from reflection_lab.llm.replay import ReplayBackend

ROOT = Path(__file__).resolve().parents[2]
A = "<thinking>\nStep.\n<reflection>\nCheck: fine.\n</reflection>\n</thinking>\n<output>\n{}\n</output>"
SAMPLES = [
    {"id": "t-01", "category": "math", "instruction": "What is 2 + 2?", "input": "", "output": "4"},
    {"id": "t-02", "category": "coding", "instruction": "Fix the bug.", "input": "def f(x): return x +", "output": "Add 1."},
    {"id": "t-03", "category": "writing", "instruction": "Write a title.", "input": "", "output": "Title."},
    {"id": "t-04", "category": "reasoning", "instruction": "Is it raining?", "input": "", "output": "Maybe."},
]


def _replay_rows():
    rows = []
    for s in SAMPLES:
        sid = s["id"]
        rows.append({"sample_id": sid, "task": "reflect_instruction",
                     "text": f"Too easy.\n[New Instruction]\nHarder {sid}: the weekend trip ends at the Endpoint.\n[End]\n"
                             f"[New Answer]\n{A.format('New ' + sid + ' (End of story)')}\n[End]"})
        rows.append({"sample_id": sid, "task": "reflect_response",
                     "text": f"Short.\n[Better Answer]\n{A.format('Better ' + sid)}\n[End]"})
        rows.append({"sample_id": sid, "task": "reflect_response_on_reflected",
                     "text": f"Ok.\n[Better Answer]\n{A.format('Both ' + sid)}"})  # missing [End]: tolerated
    rows[3] = {"sample_id": "t-02", "task": "reflect_instruction", "malformed": "placeholder",
               "text": "Meh.\n[New Instruction] your instruction [End]\n[New Answer]\nx\n[End]"}
    rows[7] = {"sample_id": "t-03", "task": "reflect_response", "malformed": "prose", "text": "It is fine as is."}
    del rows[11]  # t-04 reflect_response_on_reflected: no entry -> a teacher error, never invented text
    return rows


@pytest.fixture
def data_run(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    run = Run(tmp_path / "run")
    run_data(run, DataConfig(train=str(src), eval=None))
    return run


class Counting:
    """Wraps a teacher: counts what is asked, can fail some keys or stop (crash) after n replies."""

    def __init__(self, inner, fail=None, crash_after=None):
        self.inner, self.kind, self.model = inner, inner.kind, inner.model
        self.asked, self.fail, self.crash_after = [], set(fail or ()), crash_after

    def describe(self):
        return self.inner.describe()

    def complete(self, requests, on_reply=None, *, concurrency=None):
        out = []
        for req in requests:
            if self.crash_after is not None and len(self.asked) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash")
            self.asked.append((req.meta["sample_id"], req.meta["task"]))
            if req.meta["sample_id"] in self.fail:
                rep = ChatReply(req.key, None, "HTTP 503: overloaded", attempts=3, meta=req.meta)
            else:
                rep = self.inner.complete([req])[0]
            on_reply(rep)
            out.append(rep)
        return out


def test_artifact_schema_fallbacks_and_counts(data_run):
    m = run_reflect(data_run, teacher=ReplayBackend(rows=_replay_rows()), progress=False)
    rows = read_jsonl(data_run.path("reflect", "reflections.jsonl"))
    assert [r["id"] for r in rows] == [s["id"] for s in SAMPLES]
    for r in rows:
        assert set(r) == {"id", "category", "variants", "raw", "teacher"}
        assert set(r["variants"]) == {"original", "reflect_instruction", "reflect_response", "reflect_both"}
        assert set(r["variants"]["original"]) == {"instruction", "input", "output"}
        for name in ("reflect_instruction", "reflect_response", "reflect_both"):
            assert set(r["variants"][name]) == {"instruction", "input", "output", "parse_ok", "parse_reason"}
        assert set(r["raw"]) == {"reflect_instruction", "reflect_response", "reflect_response_on_reflected"}
        assert r["teacher"] == {"backend": "replay", "model": m["config"]["teacher"]["model"], "style": "reflection",
                                "prompt_version": load_prompts().version}
    by = {r["id"]: r["variants"] for r in rows}
    ok = by["t-01"]
    assert ok["reflect_instruction"]["instruction"] == "Harder t-01: the weekend trip ends at the Endpoint."
    assert ok["reflect_instruction"]["input"] == "" and "End of story" in ok["reflect_instruction"]["output"]
    assert ok["reflect_response"]["instruction"] == "What is 2 + 2?" and "Better t-01" in ok["reflect_response"]["output"]
    assert ok["reflect_both"]["instruction"] == ok["reflect_instruction"]["instruction"]
    assert "Both t-01" in ok["reflect_both"]["output"] and ok["reflect_both"]["parse_reason"] == "missing_end"
    # placeholder instruction: original kept, reflect_both = reflect_response, raw text kept
    t2 = by["t-02"]
    assert t2["reflect_instruction"]["parse_reason"] == "placeholder_instruction"
    assert (t2["reflect_instruction"]["instruction"], t2["reflect_instruction"]["input"],
            t2["reflect_instruction"]["output"]) == ("Fix the bug.", "def f(x): return x +", "Add 1.")
    assert {k: t2["reflect_both"][k] for k in ("instruction", "input", "output")} == \
        {k: t2["reflect_response"][k] for k in ("instruction", "input", "output")}
    assert t2["reflect_both"]["parse_reason"] == "instruction_not_reflected" and t2["reflect_response"]["input"]
    raw2 = next(r["raw"] for r in rows if r["id"] == "t-02")
    assert "your instruction" in raw2["reflect_instruction"] and raw2["reflect_response_on_reflected"] is None
    # prose-only response reflection: original answer, reason recorded
    assert by["t-03"]["reflect_response"]["output"] == "Title."
    assert by["t-03"]["reflect_response"]["parse_reason"] == "no_answer_marker"
    # missing replay entry: an error reply, the reflected pair kept as the fallback
    assert by["t-04"]["reflect_both"]["parse_reason"] == "teacher_error"
    assert by["t-04"]["reflect_both"]["output"] == by["t-04"]["reflect_instruction"]["output"]
    c = m["counts"]
    assert (c["samples"], c["requests"], c["errors"], c["replies"]) == (4, 11, 1, 10)
    assert c["parse_failures"] == {"instruction_not_reflected": 1, "no_answer_marker": 1,
                                   "placeholder_instruction": 1, "teacher_error": 1}
    assert c["parse_notes"] == {"missing_end": 2}
    assert m["errors"][0]["sample_id"] == "t-04" and "no entry" in m["errors"][0]["error"]
    assert m["config"]["style"] == "reflection" and m["config"]["prompt_version"] == load_prompts().version
    journal = read_jsonl(data_run.path("reflect", "teacher_replies.jsonl"))
    assert len(journal) == 11 and all(len(r["key"]) == 64 for r in journal)


def test_reuse_when_current_and_retry_only_failed_requests(data_run):
    full = _replay_rows() + [{"sample_id": "t-04", "task": "reflect_response_on_reflected",
                              "text": "[Better Answer]\nX\n[End]"}]
    teacher = Counting(ReplayBackend(rows=full), fail={"t-03"})
    m1 = run_reflect(data_run, teacher=teacher, progress=False)
    assert m1["counts"]["errors"] == 2 and len(teacher.asked) == 10  # t-03 has no pair to reflect on yet
    # errors are journalled but not cached: the rerun (same config) asks exactly the failed ones again
    teacher.fail, teacher.asked = set(), []
    m2 = run_reflect(data_run, teacher=teacher, progress=False)
    assert sorted(teacher.asked) == [("t-03", "reflect_instruction"), ("t-03", "reflect_response"),
                                     ("t-03", "reflect_response_on_reflected")]
    assert m2["counts"]["errors"] == 0 and m2["counts"]["cached"] == 8
    teacher.asked = []
    m3 = run_reflect(data_run, teacher=teacher, progress=False)
    assert teacher.asked == [] and m3["finished"] == m2["finished"]  # reused as is
    run_reflect(data_run, teacher=teacher, progress=False, force=True)
    assert teacher.asked == []  # force re-assembles from the journal; replies are never bought twice


def test_crash_and_resume_gives_identical_bytes_without_repeating(tmp_path, data_run):
    rows = _replay_rows()
    ref_run = Run(tmp_path / "ref")
    src = tmp_path / "train.jsonl"
    run_data(ref_run, DataConfig(train=str(src), eval=None))
    run_reflect(ref_run, teacher=ReplayBackend(rows=rows), progress=False)
    crashing = Counting(ReplayBackend(rows=rows), crash_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_reflect(data_run, teacher=crashing, progress=False)
    assert data_run.manifest("reflect")["status"] == "running"
    first = list(crashing.asked)
    resumed = Counting(ReplayBackend(rows=rows))
    run_reflect(data_run, teacher=resumed, progress=False)
    assert not set(first) & set(resumed.asked) and len(first) + len(resumed.asked) == 11
    assert data_run.path("reflect", "reflections.jsonl").read_bytes() == \
        ref_run.path("reflect", "reflections.jsonl").read_bytes()


def test_style_and_edited_prompts_change_keys_and_are_recorded(data_run):
    rows = _replay_rows()
    teacher = Counting(ReplayBackend(rows=rows))
    run_reflect(data_run, teacher=teacher, progress=False)
    n = len(teacher.asked)
    teacher.asked = []
    m = run_reflect(data_run, ReflectConfig(style="plain"), teacher=teacher, progress=False)
    assert len(teacher.asked) == n and m["config"]["style"] == "plain"
    custom = load_prompts().copy(style_plain="Answer in one short paragraph.")
    teacher.asked = []
    m = run_reflect(data_run, ReflectConfig(style="plain"), teacher=teacher, progress=False, prompts=custom)
    assert len(teacher.asked) == n and m["config"]["prompt_version"].startswith(load_prompts().version + "+edited.")
    row = read_jsonl(data_run.path("reflect", "reflections.jsonl"))[0]
    assert row["teacher"]["prompt_version"] == custom.version_tag and row["teacher"]["style"] == "plain"
    broken = custom.copy(response_user="no slots at all")
    with pytest.raises(ValueError, match="response_user lacks"):
        run_reflect(data_run, teacher=teacher, progress=False, prompts=broken)


def test_needs_the_data_stage_first(tmp_path):
    with pytest.raises(MissingStageError, match="01_data.ipynb"):
        run_reflect(Run(tmp_path / "empty"), teacher=ReplayBackend(rows=_replay_rows()), progress=False)


def test_workshop_data_with_shipped_replay(tmp_path):
    if not (ROOT / "data" / "workshop.jsonl").exists():
        pytest.skip("workshop data not merged yet")
    from reflection_lab.llm import make_backend

    run = Run(tmp_path / "w")
    run_data(run, DataConfig(eval=None))
    m = run_reflect(run, teacher=make_backend("replay"), progress=False)
    c = m["counts"]
    assert c["errors"] == 0 and c["samples"] == len(read_jsonl(run.path("data", "samples.jsonl")))
    rows = read_jsonl(run.path("reflect", "reflections.jsonl"))
    assert len(rows) == c["samples"] and sum(c["parse_failures"].values()) >= 1
    for r in rows:  # every variant either parsed or fell back to original text with a reason
        for name in ("reflect_instruction", "reflect_response", "reflect_both"):
            v = r["variants"][name]
            assert v["parse_ok"] or v["parse_reason"]
