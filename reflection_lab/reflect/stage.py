"""Stage 02: a teacher reflects on every sample; the replies are parsed into three new variants.

Why the care: teacher replies are the most expensive artifact of the lab, and they come back
imperfect. Every reply is journalled the moment it arrives (keyed by a hash of the request), so a
killed run resumes without repeating one request; an unparseable reply keeps its raw text, gets a
stable reason code (parse.py) and falls back to the original field, and the manifest counts each
reason. Stage codes: teacher_error (no reply after retries), instruction_not_reflected (reflect_both
copies reflect_response because the instruction reflection failed). Tolerated defects are noted in
parse_reason of a parse_ok variant, comma-joined.

The teacher is any backend of the llm layer (`ReflectConfig.teacher`: "replay", "openai:<model>",
"local:<model>"), or a backend object passed as `teacher=` (a notebook's edited replay, a test double).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..core.config import ConfigError, StageConfig
from ..core.errors import StageFailed
from ..core.runs import VARIANTS, Journal, Run, read_jsonl, records_failure, write_jsonl_atomic
from ..llm import ChatBackend, ChatReply, ChatRequest, make_backend
from .parse import Parsed, parse_instruction_reflection, parse_response_reflection
from .prompts import STYLES, PromptSet, load_prompts

TASKS = ("reflect_instruction", "reflect_response", "reflect_response_on_reflected")


@dataclass(frozen=True)
class ReflectConfig(StageConfig):
    """Who reflects and how: the teacher spec, the answer style asked for, sampling and concurrency."""

    STAGE = "reflect"
    RUNTIME = ("concurrency", "timeout_s", "max_retries", "max_error_share")

    teacher: str = "replay"  # "replay", "replay:<file>", "openai", "openai:<model>", "local:<model>"
    teacher_model: str | None = None  # the model when the spec names none (openai, local)
    style: str = "reflection"  # "reflection": answers in the <thinking>/<output> format; "plain"
    concurrency: int = 8  # parallel requests to an endpoint
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    timeout_s: float | None = None  # an endpoint's reply time limit (None: REFLECTION_LAB_TEACHER_TIMEOUT_S or 120)
    max_retries: int | None = None  # on 429 / 5xx / dropped connections (None: ..._MAX_RETRIES or 6)
    max_error_share: float = 0.5  # more requests than this share without a reply: the stage fails

    def validate(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(f"ReflectConfig.style must be one of {STYLES}, not {self.style!r}")
        if self.concurrency < 1 or self.max_tokens < 1:
            raise ConfigError(f"ReflectConfig.concurrency and max_tokens must be at least 1 "
                              f"(got {self.concurrency}, {self.max_tokens})")
        if not 0 <= self.max_error_share <= 1:
            raise ConfigError(f"ReflectConfig.max_error_share must be in [0, 1], not {self.max_error_share}")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ConfigError(f"ReflectConfig.top_p must be in (0, 1] and temperature >= 0 "
                              f"(got {self.top_p}, {self.temperature})")

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        return {"teacher": profile.teacher, "teacher_model": profile.teacher_model}

    @classmethod
    def adjust(cls, values: dict[str, Any], profile: Any) -> dict[str, Any]:
        """A local teacher on this machine writes at most the profile's max_new_tokens (unless told otherwise)."""
        if "max_tokens" not in values and str(values.get("teacher", "")).startswith("local"):
            values["max_tokens"] = profile.max_new_tokens
        return values

    def make_teacher(self) -> ChatBackend:
        endpoint = {k: v for k, v in (("timeout_s", self.timeout_s), ("max_retries", self.max_retries))
                    if v is not None} if self.teacher.startswith("openai") else {}
        return make_backend(self.teacher, model=self.teacher_model, **endpoint)

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


def _variant(instruction: str, input: str, output: str, ok: bool, reason: str | None) -> dict:
    return {"instruction": instruction, "input": input, "output": output, "parse_ok": ok, "parse_reason": reason}


def _notes(*parsed: Parsed) -> str | None:
    notes = sorted({n for p in parsed for n in p.notes})
    return ",".join(notes) or None


def build_request(teacher: ChatBackend, prompts: PromptSet, sample: dict, task: str, style: str,
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


def _reflect_row(sample: dict, replies: dict[str, ChatReply | None], teacher: ChatBackend, style: str,
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
            "teacher": {"backend": teacher.kind, "model": teacher.model, "style": style,
                        "prompt_version": prompts.version_tag}}


@records_failure("reflect")
def run_reflect(run: Run, config: ReflectConfig | None = None, *, force: bool = False, progress: bool = True,
                teacher: ChatBackend | None = None, prompts: PromptSet | None = None) -> dict:
    """Stage 02: write 02_reflect/reflections.jsonl (+ the reply journal and the manifest).

    `teacher` (a backend object) replaces `config.teacher`; `prompts` replaces the shipped templates.
    Reuses a finished stage with the same config and inputs unless force=True or it recorded
    teacher errors (a rerun retries exactly the failed requests; journalled replies are never
    asked again, even with force=True: delete teacher_replies.jsonl to ask afresh).
    """
    config = config or ReflectConfig()
    prompts = prompts or load_prompts()
    problems = prompts.check()
    if problems:
        raise ValueError("The prompt templates cannot be used: " + "; ".join(problems))
    run.require("data")
    teacher = teacher or config.make_teacher()
    fingerprinted = {"teacher": teacher.describe(), "style": config.style, "prompt_version": prompts.version_tag,
                     "prompt_sha256": prompts.sha256, "sampling": config.sampling()}
    if not force and run.is_current("reflect", fingerprinted) and not run.manifest("reflect")["counts"].get("errors"):
        return run.manifest("reflect")
    run.begin("reflect", fingerprinted)
    samples = read_jsonl(run.path("data", "samples.jsonl"))
    asker = _Asker(run, teacher, config.concurrency, progress)
    requests, pairs = _ask_all(asker, teacher, prompts, samples, config)
    rows = [_reflect_row(s, {t: asker.done.get(r.key) for t, r in requests[s["id"]].items()}, teacher, config.style,
                         prompts, pairs.get(s["id"])) for s in samples]
    write_jsonl_atomic(run.path("reflect", "reflections.jsonl"), rows)
    errors = asker.errors(samples, requests)
    n_req = sum(len(r) for r in requests.values())
    if errors and len(errors) > config.max_error_share * n_req:
        first = errors[0]
        where = teacher.describe().get("base_url") or teacher.describe().get("model")
        message = (f"The teacher answered {n_req - len(errors)} of {n_req} requests (first failure: "
                   f"{first['sample_id']}/{first['task']}: {first['error']}). Check the teacher ({where}) and rerun: "
                   "answered requests are kept, only the failed ones are asked again.")
        run.fail("reflect", message, errors=errors[:50], counts=_counts(rows, requests, errors, asker))
        raise StageFailed(message)
    return run.complete("reflect", fingerprinted, ["reflections.jsonl"], _counts(rows, requests, errors, asker),
                        extra={"errors": errors[:50]})


class _Asker:
    """Asks the teacher what the journal does not hold yet, journals every reply, counts attempts."""

    def __init__(self, run: Run, teacher: ChatBackend, concurrency: int, progress: bool):
        from tqdm.auto import tqdm

        self.teacher, self.concurrency = teacher, concurrency
        self.journal = Journal(run.path("reflect", "teacher_replies.jsonl"))
        self.done = {k: ChatReply.from_record(r) for k, r in self.journal.load().items() if r.get("text") is not None}
        self.cached_at_start = len(self.done)
        self.stats: Counter = Counter()
        self.last_error: dict[str, ChatReply] = {}
        self.bar = tqdm(total=0, desc="teacher replies", unit="reply", disable=not progress)

    def on_reply(self, rep: ChatReply) -> None:
        self.journal.append({**rep.record(), "backend": self.teacher.kind, "model": self.teacher.model})
        self.stats["asked"] += 1
        self.stats["attempts"] += rep.attempts
        if rep.ok:
            self.done[rep.key] = rep
            self.last_error.pop(rep.key, None)
        else:
            self.last_error[rep.key] = rep
        self.bar.update(1)

    def ask(self, reqs: list[ChatRequest]) -> None:
        pending = list({r.key: r for r in reqs if r.key not in self.done}.values())
        if pending:
            self.bar.total += len(pending)
            self.bar.refresh()
            self.teacher.complete(pending, self.on_reply, concurrency=self.concurrency)

    def errors(self, samples: list[dict], requests: dict[str, dict[str, ChatRequest]]) -> list[dict]:
        """Every request without a reply, with the last error the teacher gave for it."""
        return [{"sample_id": s["id"], "task": t,
                 "error": self.last_error[r.key].error if r.key in self.last_error else "not answered"}
                for s in samples for t, r in requests[s["id"]].items() if r.key not in self.done]


def _ask_all(asker: _Asker, teacher: ChatBackend, prompts: PromptSet, samples: list[dict], config: ReflectConfig
             ) -> tuple[dict[str, dict[str, ChatRequest]], dict[str, tuple[Parsed, Parsed]]]:
    """Phase 1: both reflections of each original pair; phase 2: the response reflection of each reflected pair."""
    style, sampling = config.style, config.sampling()
    requests = {s["id"]: {t: build_request(teacher, prompts, s, t, style, sampling) for t in TASKS[:2]}
                for s in samples}
    asker.ask([requests[s["id"]]["reflect_instruction"] for s in samples]
              + [requests[s["id"]]["reflect_response"] for s in samples])
    pairs: dict[str, tuple[Parsed, Parsed]] = {}
    for s in samples:
        rep = asker.done.get(requests[s["id"]]["reflect_instruction"].key)
        if rep is not None:
            pairs[s["id"]] = ins, ans = parse_instruction_reflection(rep.text, rep.finish_reason)
            if ins.ok and ans.ok:
                requests[s["id"]]["reflect_response_on_reflected"] = build_request(
                    teacher, prompts, s, "reflect_response_on_reflected", style, sampling, (ins.value, ans.value))
    asker.ask([r["reflect_response_on_reflected"] for r in requests.values() if "reflect_response_on_reflected" in r])
    asker.bar.close()
    return requests, pairs


def _counts(rows: list[dict], requests: dict[str, dict], errors: list[dict], asker: _Asker) -> dict:
    """The manifest's counts: requests and replies, parse failures by reason and variant, tolerated defects."""
    failures, by_variant, notes = Counter(), {v: Counter() for v in VARIANTS[1:]}, Counter()
    for row in rows:
        for name in VARIANTS[1:]:
            v = row["variants"][name]
            if not v["parse_ok"]:
                failures[v["parse_reason"]] += 1
                by_variant[name][v["parse_reason"]] += 1
            elif v["parse_reason"]:
                notes.update(v["parse_reason"].split(","))
    n_req = sum(len(r) for r in requests.values())
    return {"samples": len(rows), "requests": n_req, "replies": n_req - len(errors), "errors": len(errors),
            "cached": asker.cached_at_start, "asked": asker.stats["asked"], "attempts": asker.stats["attempts"],
            "parse_failures": dict(sorted(failures.items())),
            "parse_failures_by_variant": {k: dict(sorted(v.items())) for k, v in by_variant.items()},
            "parse_notes": dict(sorted(notes.items())),
            "reflected": {name: sum(r["variants"][name]["parse_ok"] for r in rows) for name in VARIANTS[1:]}}
