"""Stage 02: a teacher reflects on every sample; the replies are parsed into three new variants.

Why the care: teacher replies are the most expensive artifact of the lab, and they come back
imperfect. Every reply is journalled the moment it arrives (keyed by a hash of the request), so a
killed run resumes without repeating one request; an unparseable reply keeps its raw text, gets a
stable reason code and falls back to the original field, and the manifest counts each reason.

Parse failure codes: no_instruction_marker, no_answer_marker, empty_instruction, empty_answer,
placeholder_instruction, placeholder_answer, truncated; stage codes: teacher_error (no reply after
retries), instruction_not_reflected (reflect_both copies reflect_response because the instruction
reflection failed). Tolerated defects are noted in parse_reason of a parse_ok variant, comma-joined:
missing_end, duplicate_marker (the first complete section is used), unbracketed_marker,
marker_case, trailing_text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .runs import Journal, Run, read_jsonl, write_jsonl_atomic
from .teachers import ChatReply, ChatRequest, Teacher, make_teacher
from .teachers.prompts import PromptSet, load_prompts

__all__ = ["Parsed", "parse_section", "parse_instruction_reflection", "parse_response_reflection", "run_reflect",
           "make_teacher", "load_prompts", "PromptSet", "build_request", "TASKS"]

TASKS = ("reflect_instruction", "reflect_response", "reflect_response_on_reflected")
VARIANTS = ("original", "reflect_instruction", "reflect_response", "reflect_both")

# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
_NAMES = {"new instruction": "instruction", "new answer": "answer", "better answer": "better", "end": "end"}
_CANON = {"instruction": "[New Instruction]", "answer": "[New Answer]", "better": "[Better Answer]", "end": "[End]"}
_BRACKETED = re.compile(r"\[[ \t]*(new[ \t]+instruction|new[ \t]+answer|better[ \t]+answer|end)[ \t]*\]", re.I)
# "New Answer:" / "**New Answer:**" / "### New Answer" at the start of a line (never in mid-sentence).
_LINE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*(new[ \t]+instruction|new[ \t]+answer|better[ \t]+answer)[ \t]*"
    r"(?:\*\*|__)?[ \t]*(?::[ \t]*(?:\*\*|__)?|(?=\r?\n|\Z))", re.I | re.M)
_PLACEHOLDERS = {
    "your instruction", "your new instruction", "new instruction", "the new instruction", "instruction",
    "your answer", "your new answer", "new answer", "the new answer", "answer", "the answer to the new instruction",
    "your better answer", "better answer", "the better answer", "n/a", "na", "none", "null", "tbd", "todo",
    "placeholder", "...", "…",
}
_PLACEHOLDER_RE = re.compile(r"^(insert|write|put|add) .{0,40} here$")


@dataclass(frozen=True)
class _Marker:
    start: int
    end: int
    kind: str  # instruction | answer | better | end
    raw: str
    bracketed: bool


@dataclass(frozen=True)
class Parsed:
    """A parsed section: value is None on failure, with a reason code; notes list tolerated defects."""

    value: str | None
    reason: str | None = None
    notes: tuple[str, ...] = ()
    end: int = 0  # where the section (with its [End]) stops in the text

    @property
    def ok(self) -> bool:
        return self.value is not None


def _markers(text: str) -> list[_Marker]:
    found = [_Marker(m.start(), m.end(), _NAMES[" ".join(m.group(1).lower().split())], m.group(0), True)
             for m in _BRACKETED.finditer(text)]
    for m in _LINE.finditer(text):
        if not any(f.start < m.end() and m.start() < f.end for f in found):
            found.append(_Marker(m.start(), m.end(), _NAMES[" ".join(m.group(1).lower().split())], m.group(0), False))
    return sorted(found, key=lambda f: f.start)


def _is_placeholder(value: str) -> bool:
    v = " ".join(value.strip().strip("[]()<>\"'`*").strip().rstrip(".:").lower().split())
    return not v or v in _PLACEHOLDERS or bool(_PLACEHOLDER_RE.match(v))  # "not v": only punctuation, e.g. "..."


def parse_section(text: str, section: str, finish_reason: str | None = None) -> Parsed:
    """Extract one section ("instruction", "answer" or "better") from a teacher reply.

    A section starts at its marker and stops at the next marker of any kind; only a bracketed
    [End] (any case) closes it, never the word "End" inside the text. When the marker appears more
    than once, the first occurrence closed by [End] with real content is used (noted as
    duplicate_marker). An unclosed last section counts as truncated when the reply hit its
    token limit (finish_reason "length").
    """
    what = "answer" if section == "better" else section
    marks = _markers(text or "")
    starts = [i for i, m in enumerate(marks) if m.kind == section]
    if not starts:
        return Parsed(None, f"no_{what}_marker")
    candidates = []
    for i in starts:
        nxt = marks[i + 1] if i + 1 < len(marks) else None
        body = (text[marks[i].end: nxt.start] if nxt else text[marks[i].end:]).strip()
        closed = nxt is not None and nxt.kind == "end"
        valid = bool(body) and not _is_placeholder(body)
        candidates.append((marks[i], nxt, body, closed, valid))
    chosen = next((c for c in candidates if c[3] and c[4]), None) or next((c for c in candidates if c[4]), None)
    if chosen is None:
        first_body = candidates[0][2]
        return Parsed(None, f"empty_{what}" if not first_body else f"placeholder_{what}")
    mark, nxt, body, closed, _ = chosen
    if nxt is None and finish_reason == "length":
        return Parsed(None, "truncated")
    notes = []
    if len(starts) > 1:
        notes.append("duplicate_marker")
    if not closed:
        notes.append("missing_end")
    if not mark.bracketed:
        notes.append("unbracketed_marker")
    used = [mark] + ([nxt] if closed else [])
    if any(m.bracketed and m.raw != _CANON[m.kind] for m in used):
        notes.append("marker_case")
    end = nxt.end if closed else (nxt.start if nxt else len(text))
    return Parsed(body, None, tuple(notes), end)


def _with_trailing(p: Parsed, text: str) -> Parsed:
    if p.ok and text[p.end:].strip():
        return Parsed(p.value, p.reason, p.notes + ("trailing_text",), p.end)
    return p


def parse_instruction_reflection(text: str, finish_reason: str | None = None) -> tuple[Parsed, Parsed]:
    """(new instruction, new answer) from an instruction-reflection reply."""
    ins = parse_section(text, "instruction", finish_reason)
    ans = _with_trailing(parse_section(text, "answer", finish_reason), text)
    return ins, ans


def parse_response_reflection(text: str, finish_reason: str | None = None) -> Parsed:
    """The better answer from a response-reflection reply."""
    return _with_trailing(parse_section(text, "better", finish_reason), text)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
def _variant(instruction: str, input: str, output: str, ok: bool, reason: str | None) -> dict:
    return {"instruction": instruction, "input": input, "output": output, "parse_ok": ok, "parse_reason": reason}


def _notes(*parsed: Parsed) -> str | None:
    notes = sorted({n for p in parsed for n in p.notes})
    return ",".join(notes) or None


def build_request(teacher: Teacher, prompts: PromptSet, sample: dict, task: str, style: str,
                   sampling: dict, pair: tuple[str, str] | None = None) -> ChatRequest:
    """The request for one sample and task (pair = the reflected (instruction, answer) for the third task)."""
    meta = {"sample_id": sample["id"], "task": task}
    if task == "reflect_instruction":
        msgs = prompts.instruction_messages(sample["instruction"], sample.get("input", ""), sample["output"], style)
    elif task == "reflect_response":
        msgs = prompts.response_messages(sample["instruction"], sample.get("input", ""), sample["output"], style)
    else:
        assert pair is not None
        msgs = prompts.response_messages(pair[0], "", pair[1], style)
    return ChatRequest.make(teacher, msgs, meta=meta, **sampling)


def _reflect_row(sample: dict, replies: dict[str, ChatReply | None], teacher: Teacher, style: str,
                 prompts: PromptSet, parsed_pair: tuple[Parsed, Parsed] | None) -> dict:
    """One reflections.jsonl row from the replies of its (up to) three requests."""
    q0, x0, a0 = sample["instruction"], sample.get("input", ""), sample["output"]
    variants = {"original": {"instruction": q0, "input": x0, "output": a0}}
    raw = {t: (replies[t].text if replies.get(t) is not None and replies[t].ok else None) for t in TASKS}
    # reflect_instruction
    ri = replies.get("reflect_instruction")
    if ri is None or not ri.ok:
        variants["reflect_instruction"] = _variant(q0, x0, a0, False, "teacher_error")
    else:
        ins, ans = parsed_pair
        failed = ins if not ins.ok else ans if not ans.ok else None
        variants["reflect_instruction"] = (_variant(q0, x0, a0, False, failed.reason) if failed
                                           else _variant(ins.value, "", ans.value, True, _notes(ins, ans)))
    # reflect_response
    rr = replies.get("reflect_response")
    if rr is None or not rr.ok:
        variants["reflect_response"] = _variant(q0, x0, a0, False, "teacher_error")
    else:
        better = parse_response_reflection(rr.text, rr.finish_reason)
        variants["reflect_response"] = (_variant(q0, x0, better.value, True, _notes(better)) if better.ok
                                        else _variant(q0, x0, a0, False, better.reason))
    # reflect_both: the response reflection applied to the reflected pair
    if not variants["reflect_instruction"]["parse_ok"]:
        rr_v = variants["reflect_response"]
        variants["reflect_both"] = _variant(rr_v["instruction"], rr_v["input"], rr_v["output"], False,
                                            "instruction_not_reflected")
    else:
        q1, a1 = variants["reflect_instruction"]["instruction"], variants["reflect_instruction"]["output"]
        rb = replies.get("reflect_response_on_reflected")
        if rb is None or not rb.ok:
            variants["reflect_both"] = _variant(q1, "", a1, False, "teacher_error")
        else:
            better = parse_response_reflection(rb.text, rb.finish_reason)
            variants["reflect_both"] = (_variant(q1, "", better.value, True, _notes(better)) if better.ok
                                        else _variant(q1, "", a1, False, better.reason))
    return {"id": sample["id"], "category": sample.get("category", ""), "variants": variants, "raw": raw,
            "teacher": {"backend": teacher.name, "model": teacher.model, "style": style,
                        "prompt_version": prompts.version_tag}}


def run_reflect(run: Run, teacher: Teacher, *, style: str = "reflection", concurrency: int = 8,
                prompts: PromptSet | None = None, force: bool = False, progress: bool = True,
                temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 1024) -> dict:
    """Stage 02: write 02_reflect/reflections.jsonl (+ the reply journal and the manifest).

    Reuses a finished stage with the same config and inputs unless force=True or it recorded
    teacher errors (a rerun retries exactly the failed requests; journalled replies are never
    asked again, even with force=True: delete teacher_replies.jsonl to ask afresh).
    """
    prompts = prompts or load_prompts()
    problems = prompts.check()
    if problems:
        raise ValueError("The prompt templates cannot be used: " + "; ".join(problems))
    prompts.answer_style(style)  # validates style
    run.require("data")
    sampling = {"temperature": float(temperature), "top_p": float(top_p), "max_tokens": int(max_tokens)}
    config = {"teacher": teacher.describe(), "style": style, "prompt_version": prompts.version_tag,
              "prompt_sha256": prompts.sha256, "sampling": sampling}
    if not force and run.is_current("reflect", config) and not run.manifest("reflect")["counts"].get("errors"):
        return run.manifest("reflect")
    run.begin("reflect", config)
    samples = read_jsonl(run.path("data", "samples.jsonl"))
    journal = Journal(run.path("reflect", "teacher_replies.jsonl"))
    done = {k: ChatReply.from_record(r) for k, r in journal.load().items() if r.get("text") is not None}
    cached_at_start = len(done)
    stats = Counter()

    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc="teacher replies", unit="reply", disable=not progress)
    last_error: dict[str, ChatReply] = {}

    def on_reply(rep: ChatReply) -> None:
        journal.append({**rep.record(), "backend": teacher.name, "model": teacher.model})
        stats["asked"] += 1
        stats["attempts"] += rep.attempts
        if rep.ok:
            done[rep.key] = rep
            last_error.pop(rep.key, None)
        else:
            last_error[rep.key] = rep
        bar.update(1)

    def ask(reqs: list[ChatRequest]) -> None:
        pending = list({r.key: r for r in reqs if r.key not in done}.values())
        if pending:
            bar.total += len(pending)
            bar.refresh()
            teacher.generate(pending, on_reply, concurrency=concurrency)

    # Phase 1: both reflections of the original pair (instruction reflection first).
    req = {s["id"]: {t: build_request(teacher, prompts, s, t, style, sampling) for t in TASKS[:2]} for s in samples}
    ask([req[s["id"]]["reflect_instruction"] for s in samples] + [req[s["id"]]["reflect_response"] for s in samples])
    # Phase 2: the response reflection of each successfully reflected pair.
    pairs: dict[str, tuple[Parsed, Parsed]] = {}
    for s in samples:
        rep = done.get(req[s["id"]]["reflect_instruction"].key)
        if rep is not None:
            pairs[s["id"]] = parse_instruction_reflection(rep.text, rep.finish_reason)
            ins, ans = pairs[s["id"]]
            if ins.ok and ans.ok:
                req[s["id"]]["reflect_response_on_reflected"] = build_request(
                    teacher, prompts, s, "reflect_response_on_reflected", style, sampling, (ins.value, ans.value))
    ask([r["reflect_response_on_reflected"] for r in req.values() if "reflect_response_on_reflected" in r])
    bar.close()

    rows, failures, by_task, notes, errors = [], Counter(), {t: Counter() for t in VARIANTS[1:]}, Counter(), []
    for s in samples:
        replies = {t: done.get(r.key) for t, r in req[s["id"]].items()}
        row = _reflect_row(s, replies, teacher, style, prompts, pairs.get(s["id"]))
        rows.append(row)
        for t, r in req[s["id"]].items():
            if r.key not in done:
                errors.append({"sample_id": s["id"], "task": t,
                               "error": last_error[r.key].error if r.key in last_error else "not answered"})
        for name in VARIANTS[1:]:
            v = row["variants"][name]
            if not v["parse_ok"]:
                failures[v["parse_reason"]] += 1
                by_task[name][v["parse_reason"]] += 1
            elif v["parse_reason"]:
                notes.update(v["parse_reason"].split(","))
    write_jsonl_atomic(run.path("reflect", "reflections.jsonl"), rows)
    n_req = sum(len(r) for r in req.values())
    counts = {"samples": len(samples), "requests": n_req, "replies": n_req - len(errors), "errors": len(errors),
              "cached": cached_at_start, "asked": stats["asked"], "attempts": stats["attempts"],
              "parse_failures": dict(sorted(failures.items())),
              "parse_failures_by_variant": {k: dict(sorted(v.items())) for k, v in by_task.items()},
              "parse_notes": dict(sorted(notes.items())),
              "reflected": {name: sum(r["variants"][name]["parse_ok"] for r in rows) for name in VARIANTS[1:]}}
    return run.complete("reflect", config, ["reflections.jsonl"], counts, extra={"errors": errors[:50]})
