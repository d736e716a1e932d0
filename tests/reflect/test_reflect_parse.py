"""The marker parser: every variant teachers produce, every malformed kind of the shipped replay data."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hypothesis_budget import examples
from reflection_lab.reflect import parse_instruction_reflection, parse_response_reflection, parse_section

ROOT = Path(__file__).resolve().parents[2]
ANSWER = "<thinking>\nAdd them.\n<reflection>\nCheck: 2 + 2 = 4.\n</reflection>\n</thinking>\n<output>\n4\n</output>"


def test_canonical_instruction_reflection():
    text = f"The task is trivial.\n[New Instruction]\nAdd 2 and 2, then explain.\n[End]\n[New Answer]\n{ANSWER}\n[End]"
    ins, ans = parse_instruction_reflection(text)
    assert ins.value == "Add 2 and 2, then explain." and ins.notes == ()
    assert ans.value == ANSWER and ans.notes == ()


def test_canonical_better_answer():
    p = parse_response_reflection(f"Too short.\n[Better Answer]\n{ANSWER}\n[End]")
    assert p.ok and p.value == ANSWER and p.reason is None and p.notes == ()


@pytest.mark.parametrize("marker", ["[better answer]", "[BETTER ANSWER]", "[Better  Answer]", "[ Better Answer ]"])
def test_bracketed_marker_any_case_or_spacing(marker):
    p = parse_response_reflection(f"ok\n{marker}\nThe answer is 4.\n[end]")
    assert p.value == "The answer is 4."
    assert "marker_case" in p.notes


@pytest.mark.parametrize("marker", ["Better Answer:", "better answer:", "**Better Answer:**", "**Better Answer**:",
                                    "### Better Answer", "Better Answer: "])
def test_unbracketed_markers_at_line_start(marker):
    p = parse_response_reflection(f"Critique here.\n{marker}\nThe answer is 4.\n[End]")
    assert p.value == "The answer is 4." and "unbracketed_marker" in p.notes


def test_unbracketed_marker_with_text_on_same_line():
    ins, ans = parse_instruction_reflection("Meh.\nNew Instruction: Add 2 and 2.\nNew Answer: It is 4.")
    assert ins.value == "Add 2 and 2." and ans.value == "It is 4."
    assert "missing_end" in ans.notes and "unbracketed_marker" in ins.notes


def test_marker_word_in_mid_sentence_is_not_a_marker():
    p = parse_response_reflection("A better answer: would mention units.\n[Better Answer]\n4 km\n[End]")
    assert p.value == "4 km" and p.notes == ()


def test_missing_end_takes_text_to_the_end():
    p = parse_response_reflection(f"Wrong.\n[Better Answer]\n{ANSWER}\n")
    assert p.value == ANSWER and p.notes == ("missing_end",)


def test_missing_end_between_sections():
    ins, ans = parse_instruction_reflection("x\n[New Instruction]\nDo Y.\n[New Answer]\nY done.\n[End]")
    assert ins.value == "Do Y." and "missing_end" in ins.notes and ans.value == "Y done."


def test_truncated_reply_is_a_failure():
    p = parse_response_reflection("x\n[Better Answer]\n<thinking>\nFirst we", finish_reason="length")
    assert p.value is None and p.reason == "truncated"
    closed = parse_response_reflection("x\n[Better Answer]\nFine.\n[End]", finish_reason="length")
    assert closed.value == "Fine."


def test_text_around_markers_and_chatter_after_end():
    p = parse_response_reflection("Sure! Here it is.\n[Better Answer]\nFour.\n[End]\nHope this helps! Ask more.")
    assert p.value == "Four." and p.notes == ("trailing_text",)


def test_marker_written_twice_takes_first_complete_one():
    text = "x\n[Better Answer]\nHere is the improved version:\n[Better Answer]\nFour.\n[End]\nbye"
    p = parse_response_reflection(text)
    assert p.value == "Four." and "duplicate_marker" in p.notes


def test_marker_written_twice_both_complete_takes_first():
    p = parse_response_reflection("[Better Answer]\nOne.\n[End]\n[Better Answer]\nTwo.\n[End]")
    assert p.value == "One." and "duplicate_marker" in p.notes


@pytest.mark.parametrize("word", ["End", "Endpoint", "weekend", "END", "the end", "End.", "Ending", "[End of list"])
def test_end_words_inside_the_answer_do_not_end_it(word):
    body = f"First line.\n{word} of the story: it goes on.\nLast line with {word}."
    p = parse_response_reflection(f"x\n[Better Answer]\n{body}\n[End]")
    assert p.value == body


def test_end_on_its_own_line_without_brackets_is_text():
    body = "procedure P;\nbegin\n  x := 1\nEnd\nmore text"
    assert parse_response_reflection(f"[Better Answer]\n{body}\n[End]").value == body


@pytest.mark.parametrize("placeholder", ["your instruction", "Your instruction.", "<your instruction>", "N/A", "n/a",
                                         "(the new instruction)", "[your instruction]", "insert the instruction here"])
def test_placeholder_instruction(placeholder):
    ins, ans = parse_instruction_reflection(f"x\n[New Instruction] {placeholder} [End]\n[New Answer]\nReal.\n[End]")
    assert ins.value is None and ins.reason == "placeholder_instruction" and ans.value == "Real."


@pytest.mark.parametrize("placeholder", ["your answer", "N/A", "(the better answer)", "None", "..."])
def test_placeholder_answer(placeholder):
    p = parse_response_reflection(f"x\n[Better Answer]\n{placeholder}\n[End]")
    assert p.value is None and p.reason == "placeholder_answer"


def test_empty_sections():
    assert parse_response_reflection("x\n[Better Answer]\n   \n[End]").reason == "empty_answer"
    ins, _ = parse_instruction_reflection("[New Instruction]\n[End]\n[New Answer]\nA\n[End]")
    assert ins.reason == "empty_instruction"


def test_no_markers():
    assert parse_response_reflection("The answer is fine as it is; I would keep it.").reason == "no_answer_marker"
    ins, ans = parse_instruction_reflection("Just prose.")
    assert ins.reason == "no_instruction_marker" and ans.reason == "no_answer_marker"
    assert parse_response_reflection("").reason == "no_answer_marker"


def test_real_answer_containing_placeholder_words_is_kept():
    p = parse_response_reflection("[Better Answer]\nYour answer should state the units: 4 km.\n[End]")
    assert p.value == "Your answer should state the units: 4 km."


def test_instruction_reflection_order_and_sections_are_independent():
    text = "[New Answer]\nA first.\n[End]\n[New Instruction]\nQ after.\n[End]"
    ins, ans = parse_instruction_reflection(text)
    assert ins.value == "Q after." and ans.value == "A first."


def test_parse_section_unknown_section_has_no_marker():
    assert parse_section("[Better Answer] x [End]", "instruction").reason == "no_instruction_marker"


_safe = st.text(alphabet=st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), max_size=200)


_MARKER_LINE = re.compile(r"^[ \t]*(#{1,6}[ \t]*)?(\*\*|__)?[ \t]*(new|better)[ \t]+(instruction|answer)\b(?P<rest>.*)$",
                          re.I | re.M)


def _starts_a_section(body: str) -> bool:
    """A line the parser reads as a marker even inside a bracketed answer: with a colon or heading markup."""
    return any(m.group(1) or m.group(2) or m.group("rest").lstrip(" \t*_").startswith(":")
               for m in _MARKER_LINE.finditer(body))


@settings(max_examples=examples(150), deadline=None)
@given(before=_safe, middle=st.lists(st.sampled_from(["End", "Endpoint", "weekend", "end", "END:", "Ending"]),
                                     max_size=4), after=_safe)
@example(before="0", middle=[], after="BETTER ANSWER")  # a bare marker line inside the answer once cut it
def test_property_end_words_never_truncate(before, middle, after):
    body = (before + " " + " ".join(middle) + "\n" + after).strip()
    if not body or body.lower().startswith(("better answer", "new ")) or _starts_a_section(body):
        return
    p = parse_response_reflection(f"Critique.\n[Better Answer]\n{body}\n[End]")
    assert p.value == body or p.reason == "placeholder_answer"


def test_a_bare_marker_line_inside_a_bracketed_answer_is_text_but_a_heading_still_starts_a_section():
    p = parse_response_reflection("[Better Answer]\n0\nBETTER ANSWER\n[End]")
    assert p.value == "0\nBETTER ANSWER" and p.notes == ()
    ins, ans = parse_instruction_reflection("[New Instruction]\nQ\n### New Answer\nA")
    assert (ins.value, ans.value) == ("Q", "A")


def _shipped_replay_rows():
    rows = []
    merged = ROOT / "data" / "workshop_replay.jsonl"
    files = [merged] if merged.exists() else sorted((ROOT / "data" / "parts").glob("*_replay.jsonl"))
    for f in files:
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def _parse_row(row):
    if row["task"] == "reflect_instruction":
        ins, ans = parse_instruction_reflection(row["text"])
        return [ins, ans]
    return [parse_response_reflection(row["text"])]


def test_shipped_replay_rows_parse_unless_marked_malformed():
    rows = _shipped_replay_rows()
    if not rows:
        pytest.skip("no replay data in this checkout")
    for row in rows:
        parsed = _parse_row(row)
        if "malformed" not in row:
            assert all(p.ok for p in parsed), (row["sample_id"], row["task"], [p.reason for p in parsed])
            assert all("<output>" in p.value for p in parsed if p.value and "<thinking>" in p.value)


def test_shipped_malformed_rows_are_classified_by_kind():
    rows = [r for r in _shipped_replay_rows() if "malformed" in r]
    if not rows:
        pytest.skip("no malformed rows in this checkout")
    expected = [  # (words in the "malformed" note, expected outcome per section: reason code or note)
        ("placeholder", "placeholder_"), ("no markers", "no_"), ("empty", "empty_"), ("without brackets",
         "unbracketed_marker"), ("lower", "marker_case"), ("mixed case", "marker_case"),
        ("missing final [end]", "missing_end"), ("twice", "duplicate_marker"), ("chatter", "trailing_text"),
    ]
    seen = set()
    for row in rows:
        note = row["malformed"].lower()
        outcomes = {p.reason or "" for p in _parse_row(row)} | {n for p in _parse_row(row) for n in p.notes}
        for words, code in expected:
            if words in note:
                seen.add(words)
                assert any(o.startswith(code) for o in outcomes), (row["sample_id"], note, outcomes)
    assert len(seen) >= 4, f"only recognised malformed kinds {seen}"
