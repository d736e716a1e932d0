"""Non-streaming behaviour of reflection_lab.format.tags: structure, repairs and policies."""

from __future__ import annotations

import pytest

from reflection_lab.format.tags import ERROR, INFO, WARNING, ParsedResponse, parse, strip_reasoning

CANON = (
    "<thinking>\nStep 1.\n<reflection>\nOops, fix.\n</reflection>\nStep 2.\n</thinking>\n"
    "<output>\n42\n</output>"
)


def codes(r: ParsedResponse) -> list[str]:
    return r.codes


# ----------------------------------------------------------------- canonical


def test_canonical() -> None:
    r = parse(CANON)
    assert r.well_formed
    assert r.diagnostics == ()
    assert r.thinking == "Step 1.\nOops, fix.\nStep 2."  # reflection text stripped, inline
    assert [x.text for x in r.reflections] == ["Oops, fix."]
    assert r.output == r.answer == "42"
    assert r.output_complete
    assert r.outside == ()


def test_offsets_point_into_the_input() -> None:
    r = parse(CANON)
    (ref,) = r.reflections
    assert CANON[ref.start:ref.end] == "<reflection>\nOops, fix.\n</reflection>"
    assert CANON[ref.content_start:ref.content_end] == "\nOops, fix.\n"
    assert ref.parent == "thinking" and ref.closed
    out = r.output_blocks[0]
    assert CANON[out.start:out.end] == "<output>\n42\n</output>"
    think = r.thinking_blocks[0]
    assert think.start == 0 and CANON[think.end - len("</thinking>"):think.end] == "</thinking>"


def test_minimal_no_whitespace() -> None:
    r = parse("<thinking>A<reflection>R</reflection>B</thinking><output>O</output>")
    assert r.well_formed
    assert r.thinking == "ARB"
    assert r.reflections[0].text == "R"
    assert r.answer == "O"


# --------------------------------------------------------------- reflections


@pytest.mark.parametrize("n", [0, 1, 5])
def test_zero_one_many_reflections(n: int) -> None:
    body = "".join(f"step {k}\n<reflection>fix {k}</reflection>\n" for k in range(n))
    r = parse(f"<thinking>\n{body}done\n</thinking>\n<output>ok</output>")
    assert r.well_formed
    assert [x.text for x in r.reflections] == [f"fix {k}" for k in range(n)]
    assert [x.index for x in r.reflections] == list(range(n))
    assert all(f"fix {k}" in (r.thinking or "") for k in range(n))


def test_reflection_before_output_outside_thinking() -> None:
    r = parse("<thinking>t</thinking><reflection>r</reflection><output>o</output>")
    assert codes(r) == ["reflection_outside_thinking"]
    assert not r.well_formed
    assert r.reflections[0].parent is None
    assert r.thinking == "t" and r.answer == "o" and r.outside == ()


def test_reflection_after_output_is_not_part_of_anything_else() -> None:
    r = parse("<thinking>t</thinking><output>o</output>\n<reflection>late</reflection>")
    assert codes(r) == ["reflection_outside_thinking"]
    assert r.reflections[0].text == "late"
    assert r.answer == "o" and r.outside == ()


def test_reflection_inside_output_is_not_the_answer() -> None:
    r = parse("<thinking>t</thinking><output>41\n<reflection>no</reflection>\n42</output>")
    assert codes(r) == ["reflection_outside_thinking"]
    assert r.reflections[0].parent == "output"
    assert r.answer == "41\n\n42"


# ------------------------------------------------------------ several blocks


def test_several_thinking_blocks_are_joined() -> None:
    r = parse("<thinking>a</thinking>\n<thinking>b</thinking>\n<output>o</output>")
    assert codes(r) == ["multiple_thinking"]
    assert r.thinking == "a\n\nb"
    assert not r.well_formed and r.answer == "o"


def test_thinking_after_output() -> None:
    r = parse("<thinking>a</thinking><output>o</output><thinking>b</thinking>")
    assert codes(r) == ["thinking_after_output", "multiple_thinking"]
    assert r.answer == "o"


def test_several_outputs_first_is_the_answer() -> None:
    r = parse("<thinking>a</thinking><output>first</output>\n<output>second</output>")
    assert codes(r) == ["multiple_outputs"]
    assert r.answer == "first"
    assert [b.text for b in r.output_blocks] == ["first", "second"]


# ------------------------------------------------------- missing / unclosed


def test_output_missing_never_falls_back() -> None:
    r = parse("<thinking>the answer is 7</thinking>\nso 7")
    assert codes(r) == ["missing_output"]
    assert r.answer is None and r.output is None
    assert r.outside_text == "so 7"


def test_closing_output_missing_stop_string() -> None:
    r = parse("<thinking>t</thinking>\n<output>\n42\n")
    assert r.answer == "42"
    assert not r.output_complete and not r.well_formed
    (d,) = r.diagnostics
    assert d.code == "unclosed_tag" and d.severity == WARNING and "stop string" in d.message


def test_thinking_unclosed_before_output_at_line_start() -> None:
    r = parse("<thinking>\nreasoning\n<output>\n42\n</output>")
    assert codes(r) == ["unclosed_tag"]
    assert r.thinking == "reasoning" and not r.thinking_blocks[0].closed
    assert r.answer == "42" and r.output_complete


def test_thinking_unclosed_before_output_after_reflection() -> None:
    r = parse("<thinking>a<reflection>b</reflection><output>42</output>")
    assert codes(r) == ["unclosed_tag"]
    assert r.answer == "42"


def test_thinking_never_closed() -> None:
    r = parse("<thinking>\nstill thinking")
    assert codes(r) == ["unclosed_tag", "missing_output"]
    assert r.thinking == "still thinking" and r.answer is None


def test_missing_thinking() -> None:
    r = parse("<output>42</output>")
    assert codes(r) == ["missing_thinking"]
    assert r.answer == "42" and not r.well_formed


# --------------------------------------------------------------- prefill


def test_prefilled_thinking_option() -> None:
    text = "reasoning\n</thinking>\n<output>42</output>"
    r = parse(text, prefilled_thinking=True)
    assert r.well_formed
    assert r.thinking == "reasoning" and r.thinking_blocks[0].start == 0
    assert r.answer == "42"


def test_prefilled_thinking_missing_gives_a_hint() -> None:
    r = parse("reasoning\n</thinking>\n<output>42</output>")
    assert codes(r) == ["stray_closing_tag", "missing_thinking"]
    assert "prefilled_thinking=True" in r.diagnostics[0].message
    assert r.answer == "42"
    assert r.outside_text == "reasoning" and r.thinking is None


def test_prefilled_and_model_repeats_the_opener() -> None:
    r = parse("<thinking>\nreasoning</thinking><output>o</output>", prefilled_thinking=True)
    assert codes(r) == ["nested_tag"]
    assert r.thinking == "reasoning" and r.answer == "o"


# --------------------------------------------------------- stray / nesting


@pytest.mark.parametrize("closer", ["</reflection>", "</output>", "</thinking>"])
def test_stray_closers_are_dropped(closer: str) -> None:
    r = parse(f"<thinking>a</thinking>{closer}<output>o</output>")
    assert "stray_closing_tag" in codes(r)
    assert r.answer == "o" and r.outside == ()
    assert "prefilled" not in r.diagnostics[0].message


def test_stray_closer_inside_thinking() -> None:
    r = parse("<thinking>a </reflection> b</thinking><output>o</output>")
    assert codes(r) == ["stray_closing_tag"]
    assert r.thinking == "a  b"


def test_same_tag_nesting_thinking() -> None:
    r = parse("<thinking>\na\n<thinking>\nb\n</thinking>\n</thinking>\n<output>o</output>")
    assert codes(r) == ["nested_tag", "stray_closing_tag"]
    assert r.thinking == "a\n\nb" and r.answer == "o"


def test_same_tag_nesting_reflection() -> None:
    r = parse("<thinking><reflection>a<reflection>b</reflection>c</thinking><output>o</output>")
    # the inner opener is mid-line, so it is literal text
    assert codes(r) == ["literal_tag"]
    assert r.reflections[0].text == "a<reflection>b"
    r = parse("<thinking><reflection>a\n<reflection>b</reflection></thinking><output>o</output>")
    assert codes(r) == ["nested_tag"]
    assert r.reflections[0].text == "a\nb"


def test_same_tag_nesting_output() -> None:
    r = parse("<thinking>t</thinking><output>\n<output>x</output>\n</output>")
    assert codes(r) == ["nested_tag", "stray_closing_tag"]
    assert r.answer == "x"


def test_crossed_nesting_thinking_output() -> None:
    r = parse("<thinking><output></thinking></output>")
    # the opener right after another tag counts and closes the thinking
    assert codes(r) == ["unclosed_tag", "empty_block", "stray_closing_tag", "empty_block"]
    assert r.answer == ""


def test_crossed_nesting_reflection_thinking() -> None:
    text = "<thinking>a<reflection>b</thinking>c</reflection><output>o</output>"
    r = parse(text)
    assert codes(r) == ["misnested_tag", "stray_closing_tag"]
    assert r.reflections[0].text == "b" and not r.reflections[0].closed
    assert r.thinking_blocks[0].closed and r.thinking == "ab"
    assert r.outside_text == "c" and r.answer == "o"


def test_thinking_inside_output_at_line_start_closes_output() -> None:
    r = parse("<thinking>a</thinking><output>o\n<thinking>b</thinking>")
    assert codes(r) == ["unclosed_tag", "thinking_after_output", "multiple_thinking"]
    assert r.answer == "o" and r.thinking == "a\n\nb"


# ------------------------------------------------------ tags as literal text


def test_system_prompt_quote_inside_thinking() -> None:
    text = (
        "<thinking>\nI should reason inside <thinking> tags and give the final response "
        "inside <output> tags, using <reflection> tags for mistakes.\n"
        "2+2=4\n</thinking>\n<output>4</output>"
    )
    r = parse(text)
    # <reflection> is allowed inside thinking, so that quote opens a reflection: the
    # documented limitation; <thinking> and <output> mid-line stay text.
    assert "literal_tag" in codes(r)
    assert "<output> tags" in (r.thinking or "")
    assert r.answer == "4"


def test_system_prompt_quote_without_reflection() -> None:
    text = ("<thinking>Reason inside <thinking> tags, answer inside <output> tags.\n"
            "ok</thinking><output>fine</output>")
    r = parse(text)
    assert codes(r) == ["literal_tag", "literal_tag"]
    assert all(d.severity == INFO for d in r.diagnostics)
    assert r.well_formed
    assert r.thinking == "Reason inside <thinking> tags, answer inside <output> tags.\nok"


def test_quote_in_output_stays_text() -> None:
    r = parse("<thinking>t</thinking><output>Put reasoning in <thinking> tags.</output>")
    assert r.answer == "Put reasoning in <thinking> tags." and r.well_formed


def test_quote_outside_blocks_is_structure_limitation() -> None:
    r = parse("I will use <thinking> tags.\n<thinking>t</thinking><output>o</output>")
    assert not r.well_formed  # documented limitation: outside blocks every opener counts
    assert r.answer == "o"


def test_inline_code_spans() -> None:
    text = ("<thinking>Use `<output>` and ``</thinking>`` here</thinking>"
            "<output>`<reflection>` is a tag</output>")
    r = parse(text)
    assert r.well_formed and r.diagnostics == ()
    assert r.thinking == "Use `<output>` and ``</thinking>`` here"
    assert r.answer == "`<reflection>` is a tag"


def test_unmatched_backtick_hides_tags_only_to_end_of_line() -> None:
    r = parse("<thinking>it`s <output> fine\n</thinking>\n<output>o</output>")
    assert r.well_formed and r.answer == "o"


def test_fenced_code_block() -> None:
    text = ("<thinking>\n```xml\n<thinking>\n</thinking>\n<output>x</output>\n```\n"
            "</thinking>\n<output>\n~~~\n</output>\n~~~\n</output>")
    r = parse(text)
    assert r.well_formed and r.diagnostics == ()
    assert r.thinking == "```xml\n<thinking>\n</thinking>\n<output>x</output>\n```"
    assert r.answer == "~~~\n</output>\n~~~"


def test_fence_right_after_tag_and_longer_closing_fence() -> None:
    r = parse("<thinking>t</thinking><output>```\n</output>\n````\n</output>")
    assert r.well_formed and r.answer == "```\n</output>\n````"


def test_triple_backticks_with_backtick_in_info_is_a_code_span() -> None:
    r = parse("<thinking>t</thinking><output>\n```a``` </output>")
    assert r.well_formed and r.answer == "```a```"


def test_unclosed_fence_is_reported() -> None:
    r = parse("<thinking>\n```py\nx = 1\n</thinking>\n<output>o</output>")
    assert "unclosed_code_block" in codes(r)
    assert r.answer is None


@pytest.mark.parametrize("answer", ["x < 3", "a<b>c", "<div><b>bold</b></div>", "1<2<3 < >",
                                    "<out>put</out>", "<thinking type=\"x\">", "‹output›"])
def test_angle_brackets_and_html_are_text(answer: str) -> None:
    r = parse(f"<thinking>t</thinking><output>{answer}</output>")
    assert r.well_formed and r.answer == answer


def test_attributes_are_not_tags() -> None:
    r = parse('<thinking type="x">A</thinking><output>O</output>')
    assert r.thinking is None
    assert r.outside_text == '<thinking type="x">A'
    assert "stray_closing_tag" in codes(r) and r.answer == "O"


def test_over_long_tag_is_text() -> None:
    spaces = " " * 40
    r = parse(f"<thinking>t</thinking><output>a<{spaces}output>b</output>")
    assert r.answer == f"a<{spaces}output>b"


# ----------------------------------------------------------- outside text


def test_text_before_between_and_after_blocks() -> None:
    text = "Sure.\n<thinking>t</thinking>\n  between  \n<output>o</output>\nbye\n"
    r = parse(text)
    assert [s.text for s in r.outside] == ["Sure.", "between", "bye"]
    assert r.outside_text == "Sure.\n\nbetween\n\nbye"
    s = r.outside[1]
    assert text[s.start:s.end] == "\n  between  \n"
    assert r.well_formed  # outside text is reported, not an error


# --------------------------------------------------------------- whitespace


@pytest.mark.parametrize("block", ["<thinking></thinking>", "<thinking>\n \t\n</thinking>"])
def test_empty_and_whitespace_only_thinking(block: str) -> None:
    r = parse(block + "<output>o</output>")
    assert r.thinking == ""
    assert codes(r) == ["empty_block"]
    assert r.diagnostics[0].severity == WARNING
    assert r.well_formed


def test_empty_reflection_and_output() -> None:
    r = parse("<thinking>a<reflection>\n</reflection>b</thinking><output>  </output>")
    assert codes(r) == ["empty_block", "empty_block"]
    assert r.reflections[0].text == "" and r.thinking == "ab"
    assert r.answer == ""


def test_inner_whitespace_is_kept() -> None:
    r = parse("<thinking>\n  a\n\n  b  \n</thinking><output> x  y </output>")
    assert r.thinking == "a\n\n  b" and r.answer == "x  y"


# ------------------------------------------------------ case and spacing


@pytest.mark.parametrize("text", [
    "<Thinking>t</Thinking><OUTPUT>o</OUTPUT>",
    "<thinking >t</thinking ><output\t>o< /output>",
    "< thinking>t</ thinking>< Output >o</output >",
])
def test_case_and_spacing_variants(text: str) -> None:
    r = parse(text)
    assert r.thinking == "t" and r.answer == "o"
    assert set(codes(r)) == {"nonstandard_tag"}
    assert all(d.severity == WARNING for d in r.diagnostics)
    assert r.well_formed


def test_reflection_case_variant() -> None:
    r = parse("<thinking>a<Reflection>r</REFLECTION></thinking><output>o</output>")
    assert r.reflections[0].text == "r" and codes(r).count("nonstandard_tag") == 2


# ---------------------------------------------------- skip_special_tokens


def test_tags_removed_by_skip_special_tokens() -> None:
    text = "\nStep 1.\n\nOops, fix.\n\nStep 2.\n\n42\n"  # CANON decoded with skipped tags
    r = parse(text)
    assert codes(r) == ["no_tags"]
    (d,) = r.diagnostics
    assert d.severity == ERROR and "skip_special_tokens=False" in d.message
    assert r.answer is None and r.thinking is None
    assert r.outside_text == text.strip()


def test_empty_text() -> None:
    r = parse("")
    assert codes(r) == ["no_tags"] and r.answer is None and r.outside == ()


# --------------------------------------------------------------- truncation


def test_truncated_inside_thinking_reasoning_only() -> None:
    r = parse("<thinking>\nlong reasoning <reflection>hm", truncated=True)
    assert codes(r) == ["truncated", "missing_output"]
    assert "reasoning only" in r.diagnostics[0].message
    assert r.thinking == "long reasoning hm" and r.reflections[0].text == "hm"
    assert r.answer is None and r.output is None


def test_truncated_inside_output_default_accepts() -> None:
    r = parse("<thinking>t</thinking><output>partial ans", truncated=True)
    assert codes(r) == ["truncated"]
    assert r.answer == "partial ans" and not r.output_complete
    assert r.truncated


def test_truncated_inside_output_can_be_rejected() -> None:
    r = parse("<thinking>t</thinking><output>partial", truncated=True,
              accept_partial_output=False)
    assert r.answer is None and r.output == "partial"
    assert "rejected" in r.diagnostics[0].message


def test_truncated_after_output_keeps_answer() -> None:
    r = parse("<thinking>t</thinking><output>o</output> tail", truncated=True,
              accept_partial_output=False)
    assert codes(r) == ["truncated"] and r.answer == "o" and r.output_complete


def test_truncated_mid_tag_releases_text() -> None:
    r = parse("<thinking>t</thinking><output>o</outp", truncated=True)
    assert r.answer == "o</outp" and not r.output_complete


# ---------------------------------------------------------- strip_reasoning


def test_strip_reasoning() -> None:
    assert strip_reasoning(CANON) == "42"
    assert strip_reasoning("hi <thinking>secret</thinking> there") == "hi\n\nthere"
    assert strip_reasoning("<thinking>secret") == ""
    assert strip_reasoning("plain reply") == "plain reply"
    assert strip_reasoning("secret</thinking>\n<output>a</output>",
                           prefilled_thinking=True) == "a"
    assert strip_reasoning("<thinking>s</thinking><output>a</output><output>b</output>") == "a"


# ---------------------------------------------------------- diagnostics shape


def test_diagnostics_have_code_message_position() -> None:
    text = "<thinking>a</reflection></thinking><output>o"
    r = parse(text)
    stray = r.diagnostics[0]
    assert stray.code == "stray_closing_tag"
    assert text[stray.position:].startswith("</reflection>")
    assert stray.message and stray.severity == ERROR


def test_split_reasoning_moves_only_the_first_thinking_block():
    from reflection_lab.format.tags import split_reasoning

    text = "<thinking>a <reflection>b</reflection></thinking> mid <thinking>c</thinking><output>o</output>"
    assert split_reasoning(text) == ("a <reflection>b</reflection>", "mid <thinking>c</thinking><output>o</output>")
