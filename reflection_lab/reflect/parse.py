"""Reading a teacher's reply: the new instruction, answer or better answer between its markers.

Why so forgiving, and so explicit about it: teachers write "**New Answer:**" or "[new answer]" or
forget [End]. A section is still found when the intent is clear, and every tolerated defect is
named in `notes`; a reply that cannot be read gets `value=None` and a stable reason code, never a
guess.

Failure codes: no_instruction_marker, no_answer_marker, empty_instruction, empty_answer,
placeholder_instruction, placeholder_answer, truncated. Tolerated defects (notes): missing_end,
duplicate_marker (the first complete section is used), unbracketed_marker, marker_case, trailing_text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

    @property
    def bare(self) -> bool:
        """The marker words alone on a line: no brackets, colon or heading markup ("BETTER ANSWER")."""
        return not self.bracketed and not any(c in self.raw for c in ":#*_")


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
    return _drop_bare_inside_brackets(sorted(found, key=lambda f: f.start))


def _drop_bare_inside_brackets(marks: list[_Marker]) -> list[_Marker]:
    """Inside a section opened by a bracketed marker, a bare marker line is text ("...\nBETTER ANSWER\n...")."""
    out, inside = [], False
    for m in marks:
        if m.bare and inside:
            continue
        out.append(m)
        inside = m.bracketed and m.kind != "end"
    return out


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


