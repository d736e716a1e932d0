"""Streaming behaviour of reflection_lab.format.tags: chunk invariance, events, bytes."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypothesis_budget import examples
from reflection_lab.format.tags import (OUTSIDE, REFLECTION, THINKING, BlockEnd, BlockStart, ByteStreamParser,
                                        DiagnosticEvent, Event, ParsedResponse, StreamParser, TextDelta, parse)

CANON = (
    "Sure.\n<thinking>\nStep 1 é.\n<reflection>\nOops 🙂, fix.\n</reflection>\nStep 2.\n"
    "</thinking>\n<output>\n`<x>` 42 日本\n</output>\n"
)
OPTIONS = [{}, {"truncated": True}, {"prefilled_thinking": True},
           {"truncated": True, "accept_partial_output": False}]


def stream(chunks: list[str], **options: bool) -> tuple[ParsedResponse, list[Event]]:
    p = StreamParser(**options)
    events: list[Event] = []
    for c in chunks:
        events += p.feed(c)
    events += p.finish()
    return p.result(), events


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def check_events(r: ParsedResponse, events: list[Event]) -> None:
    """Deltas concatenate to the result's texts; starts, ends and diagnostics match."""
    own: dict[tuple[str, int], list[str]] = defaultdict(list)
    thinking: dict[int, list[str]] = defaultdict(list)
    open_thinking: int | None = None
    starts, ends = [], []
    for e in events:
        if isinstance(e, TextDelta):
            assert e.text
            own[(e.kind, e.index)].append(e.text)
            if open_thinking is not None and e.kind in (THINKING, REFLECTION):
                thinking[open_thinking].append(e.text)
        elif isinstance(e, BlockStart):
            starts.append((e.kind, e.index, e.position))
            if e.kind == THINKING:
                open_thinking = e.index
        elif isinstance(e, BlockEnd):
            ends.append((e.kind, e.index, e.position, e.closed))
            if e.kind == THINKING:
                open_thinking = None
    for b in r.thinking_blocks:
        assert "".join(thinking[b.index]) == b.text
    for b in (*r.reflections, *r.output_blocks):
        assert "".join(own[(b.kind, b.index)]) == b.text
    for k, s in enumerate(r.outside):
        assert "".join(own[(OUTSIDE, k)]) == s.text
    blocks = sorted((*r.thinking_blocks, *r.reflections, *r.output_blocks),
                    key=lambda b: (b.start, b.kind != THINKING))
    assert sorted(starts) == sorted((b.kind, b.index, b.start) for b in blocks)
    assert sorted(ends) == sorted((b.kind, b.index, b.end, b.closed) for b in blocks)
    assert [e.diagnostic for e in events if isinstance(e, DiagnosticEvent)] == list(
        r.diagnostics)


# ------------------------------------------------------------ fixed chunkings


@pytest.mark.parametrize("options", OPTIONS)
def test_every_two_way_split_equals_parse(options: dict[str, bool]) -> None:
    expected = parse(CANON, **options)
    for cut in range(len(CANON) + 1):
        r, events = stream([CANON[:cut], CANON[cut:]], **options)
        assert r == expected, cut
        check_events(r, events)


def test_one_character_chunks() -> None:
    r, events = stream(list(CANON))
    assert r == parse(CANON) and r.well_formed
    check_events(r, events)


def test_whole_text_in_one_chunk_and_empty_chunks() -> None:
    r, _ = stream(["", CANON, "", ""])
    assert r == parse(CANON)


def test_partial_tag_is_held_at_the_tail_of_a_longer_chunk() -> None:
    p = StreamParser()
    p.feed("<thinking>")
    events = p.feed("abc</th")
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["abc"]
    events = p.feed("inking>")
    assert any(isinstance(e, BlockEnd) and e.kind == THINKING for e in events)


@pytest.mark.parametrize("chunks,expected", [
    (["<thinking>abc</th", "ing>def"], "abc</thing>def"),
    (["<thinking>a<out", "side>b"], "a<outside>b"),
    (["<thinking>x <", " 3"], "x < 3"),
    (["<thinking>x<", "3"], "x<3"),
    (["<thinking>a<", "/", "thinkin", "g"], "a</thinking"),
    (["<thinking>a< / Reflect", "ions>"], "a< / Reflections>"),
])
def test_fake_outs_are_released_unchanged(chunks: list[str], expected: str) -> None:
    r, events = stream(chunks)
    assert r.thinking == expected
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == expected
    assert r == parse("".join(chunks))


def test_finish_flushes_held_partial_tag() -> None:
    p = StreamParser(truncated=True)
    p.feed("<thinking>t</thinking><output>o</outp")
    events = p.finish()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["</outp"]
    assert p.result().answer == "o</outp"


def test_one_chunk_with_several_transitions() -> None:
    p = StreamParser()
    p.feed("<thinking>a<reflection>r")
    events = p.feed("</reflection>x</thinking>\n<output>ans")
    kinds = [(type(e).__name__, getattr(e, "kind", None)) for e in events]
    assert kinds == [("BlockEnd", "reflection"), ("TextDelta", "thinking"),
                     ("BlockEnd", "thinking"), ("BlockStart", "output"),
                     ("TextDelta", "output")]
    p.finish()
    assert p.result().answer == "ans"


def test_trailing_whitespace_is_held_until_proven_inner() -> None:
    p = StreamParser()
    p.feed("<output>a ")
    assert [e.text for e in p.feed(" ") if isinstance(e, TextDelta)] == []
    assert "".join(e.text for e in p.feed("b") if isinstance(e, TextDelta)) == "  b"
    assert [e for e in p.feed("  </output>") if isinstance(e, TextDelta)] == []


def test_prefilled_stream_starts_inside_thinking() -> None:
    p = StreamParser(prefilled_thinking=True)
    first = p.feed("x")
    assert isinstance(first[0], BlockStart) and first[0].kind == THINKING
    assert isinstance(first[1], TextDelta) and first[1].kind == THINKING


def test_feed_after_finish_is_an_error() -> None:
    p = StreamParser()
    p.finish()
    assert p.finish() == []
    with pytest.raises(RuntimeError):
        p.feed("x")


def test_result_finishes_the_stream() -> None:
    p = StreamParser()
    p.feed("<thinking>t</thinking><output>o</output")
    assert p.result().answer == "o</output"


# --------------------------------------------------------------------- bytes


def test_multibyte_characters_split_at_every_byte() -> None:
    data = CANON.encode("utf-8")
    expected = parse(CANON)
    for cut in range(len(data) + 1):
        p = ByteStreamParser()
        p.feed(data[:cut])
        p.feed(data[cut:])
        assert p.result() == expected, cut


def test_bytes_one_at_a_time() -> None:
    data = CANON.encode("utf-8")
    p = ByteStreamParser()
    events: list[Event] = []
    for k in range(len(data)):
        events += p.feed(data[k:k + 1])
    events += p.finish()
    assert p.result() == parse(CANON)
    check_events(p.result(), events)


def test_invalid_bytes_become_replacement_characters() -> None:
    p = ByteStreamParser()
    p.feed(b"<output>a\xff")
    p.feed(b"b\xe6\x97")  # truncated 3-byte sequence at the end
    assert p.result().output == "a\ufffdb\ufffd"


# ---------------------------------------------------------------- properties

FRAGMENTS = [
    "<thinking>", "</thinking>", "<reflection>", "</reflection>", "<output>", "</output>",
    "<Thinking>", "< /output>", "<thinking >", "</ reflection\t>", "<OUTPUT>",
    "<th", "</th", "<out", "</outp", "ing>", "inking>", "put>", "<", ">", "/", "< ",
    "`", "``", "```", "~~~", "```py\n", "\n```\n", "x < 3", "a<b>c", "<div>", "</div>",
    " ", "  ", "\t", "\n", "\n\n", "\r\n", "text", "A.", "é", "日本", "🙂", "\u2028",
    '<thinking type="x">', "‹output>", "reason inside <output> tags",
]
texts = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=30).map("".join)
options = st.sampled_from(OPTIONS)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, opts=options, data=st.data())
def test_streaming_equals_parse_for_every_chunking(
        text: str, opts: dict[str, bool], data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    r, events = stream(split(text, cuts), **opts)
    assert r == parse(text, **opts)
    check_events(r, events)


@settings(max_examples=examples(60), deadline=None)
@given(text=texts, opts=options)
def test_one_char_chunks_equal_parse(text: str, opts: dict[str, bool]) -> None:
    r, events = stream(list(text), **opts)
    assert r == parse(text, **opts)
    check_events(r, events)


@settings(max_examples=examples(150), deadline=None)
@given(text=texts, data=st.data())
def test_byte_chunks_equal_parse(text: str, data: st.DataObject) -> None:
    raw = text.encode("utf-8")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    bounds = [0, *cuts, len(raw)]
    p = ByteStreamParser()
    for a, b in itertools.pairwise(bounds):
        p.feed(raw[a:b])
    assert p.result() == parse(text)


@settings(max_examples=examples(300), deadline=None)
@given(text=st.text(), opts=options)
def test_never_raises_on_arbitrary_text(text: str, opts: dict[str, bool]) -> None:
    r = parse(text, **opts)
    _ = (r.thinking, r.answer, r.well_formed, r.outside_text, r.output_complete)
    for d in r.diagnostics:
        assert d.code and d.message and 0 <= d.position <= len(text)
    for b in (*r.thinking_blocks, *r.reflections, *r.output_blocks):
        assert 0 <= b.start <= b.content_start <= b.content_end <= b.end <= len(text)
    for s in r.outside:
        assert s.text and s.text in text[s.start:s.end]
    if r.answer is not None:
        assert r.output_blocks


@settings(max_examples=examples(100), deadline=None)
@given(raw=st.binary(max_size=64))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    p = ByteStreamParser(truncated=True)
    for k in range(0, len(raw), 3):
        p.feed(raw[k:k + 3])
    assert p.result() == parse(raw.decode("utf-8", errors="replace"), truncated=True)


# ---------------------------------------------------------------- linear time


@pytest.mark.parametrize("unit", ["<thinking>a<reflection>b</reflection>c", "`", "<", " ",
                                  "< thinkin", "\n~~~", "<" + " " * 40 + "x"])
def test_one_char_chunks_are_linear(unit: str) -> None:
    """Doubling the input must not much more than double the work (no re-scans).

    Measured in this process's CPU time, best of 5: unlike wall time it does not grow when other
    processes share the cores (a wall-clock version failed 2 runs in 30 beside a CI run).
    """
    def run(n: int) -> float:
        text = unit * (n // len(unit))
        best = float("inf")
        for _ in range(5):
            p = StreamParser()
            t = time.process_time()
            for ch in text:
                p.feed(ch)
            p.finish()
            best = min(best, time.process_time() - t)
        return best

    small, large = run(20_000), run(40_000)
    assert large / small < 3.5
