"""The live viewer's state (fed chunk by chunk, no browser), its throttle, and the widgets driven by fake backends."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypothesis_budget import examples
from reflection_lab.llm.scripted import ScriptedModel, ScriptedStream
from reflection_lab.format.tags import parse
from reflection_lab.inference.viewer import (CompareViewer, ReflectionViewer, StreamView, Throttle,
                                             compare_summary_html, drive, drive_all)

GOOD = ("<thinking>\nAdd 2 and 2.\n<reflection>\nWait: 2 + 2 is 4, not 5.\n</reflection>\nSo 4.\n"
        "<reflection>Check again.</reflection>\n</thinking>\n<output>\n4 <b>bold</b>\n</output>")


def chunks(text: str, n: int) -> list[str]:
    return [text[i:i + n] for i in range(0, len(text), n)]


def fed(text: str, n: int = 5, finish: str = "stop") -> StreamView:
    v = StreamView("m")
    v.start("q")
    for c in chunks(text, n):
        v.feed(c)
    v.finish(finish)
    return v


@pytest.mark.parametrize("n", [1, 3, 7, 1000])
def test_panes_fill_as_chunks_arrive_and_match_the_parse(n):
    v = StreamView("m")
    v.start("q")
    seen_reflection_open = False
    for c in chunks(GOOD, n):
        v.feed(c)
        if v.reflections and v.output is None:
            seen_reflection_open = True
            assert v.thinking_pane.startswith("Add 2 and 2.")
    v.finish("stop")
    p = parse(GOOD)
    assert seen_reflection_open or n >= len(GOOD)  # the panes were live before the output began
    assert v.thinking == p.thinking
    assert v.reflection_texts == ["Wait: 2 + 2 is 4, not 5.", "Check again."] == [r.text for r in p.reflections]
    assert v.thinking_pane.replace("\n", " ") == "Add 2 and 2. [reflection 1] So 4. [reflection 2]"
    assert v.output == "4 <b>bold</b>" and v.codes == [] and v.result.well_formed
    assert v.status == "done" and v.summary()["reflections"] == 2


@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=40), st.sampled_from([GOOD, GOOD[:70], "no tags at all",
                                                                             "<output>x</output><thinking>y"]))
def test_any_chunking_gives_the_same_panes_as_one_chunk(sizes, text):
    v, i, k = StreamView(), 0, 0
    v.start()
    while i < len(text):
        s = sizes[k % len(sizes)]
        v.feed(text[i:i + s])
        i, k = i + s, k + 1
    v.finish("length")
    one = fed(text, len(text), "length")
    assert (v.thinking, v.reflection_texts, v.output, v.outside_text, v.codes) == \
           (one.thinking, one.reflection_texts, one.output, one.outside_text, one.codes)
    assert v.thinking == parse(text, truncated=True).thinking


def test_truncation_marks_the_output_incomplete_and_reasoning_only_has_no_answer():
    cut_in_output = fed(GOOD[:-14], finish="length")
    assert cut_in_output.result.answer == "4 <b>bold" and not cut_in_output.result.output_complete
    assert "truncated" in cut_in_output.codes and "incomplete" in cut_in_output.output_html()
    cut_in_thinking = fed(GOOD[:40], finish="length")
    assert cut_in_thinking.result.answer is None and cut_in_thinking.output is None
    assert "no &lt;output&gt;" in cut_in_thinking.output_html()
    stopped_early = fed(GOOD[:40], finish="stop")  # not truncated: an unclosed thinking is an error
    assert "unclosed_tag" in stopped_early.codes and "truncated" not in stopped_early.codes


def test_no_tags_text_outside_and_diagnostics_are_shown_escaped():
    v = fed("Plain answer with <script>alert(1)</script>")
    assert v.codes == ["no_tags"] and v.outside_text.startswith("Plain answer")
    assert "&lt;script&gt;" in v.outside_html() and "<script>" not in v.outside_html()
    d = v.diagnostics_html()
    assert "no_tags" in d and "skip_special_tokens=False" in d
    w = fed("<thinking>a</thinking><reflection>late</reflection><output>o</output>")
    assert w.reflections[0]["in_thinking"] is False and "outside thinking" in w.reflection_html(0)
    assert "reflection_outside_thinking" in w.codes


def test_throttle_limits_renders_with_a_fake_clock():
    now = [0.0]
    t = Throttle(0.05, clock=lambda: now[0])
    hits = []
    for _ in range(100):  # 100 chunks, 10 ms apart: about one render per 50 ms
        hits.append(t.due())
        now[0] += 0.01
    assert sum(hits) == 20 and hits[0]
    assert t.due(force=True)


def test_drive_renders_throttled_and_once_at_the_end():
    now = [0.0]

    def clock():
        now[0] += 0.001
        return now[0]

    renders = []
    v = StreamView("m")
    gen = drive(v, ScriptedStream(GOOD, chunk_chars=1), on_update=lambda: renders.append(v.version),
                throttle=Throttle(0.05, clock=clock))
    assert 1 < len(renders) < len(GOOD) / 10 and renders[-1] == v.version
    assert gen.text == GOOD and gen.parsed.well_formed and gen.finish_reason == "stop"


def test_a_plain_generator_and_a_failing_stream_in_one_comparison():
    def flaky():
        yield "<thinking>half"
        raise ConnectionError("server went away")

    a, b = StreamView("a"), StreamView("b")
    ga, gb = drive_all([(a, ScriptedStream(GOOD)), (b, flaky())])
    assert ga.parsed.well_formed and a.status == "done"
    assert b.status == "error" and "server went away" in b.error and gb.finish_reason == "error"
    assert b.thinking == "half"


def test_viewer_widget_generates_from_the_prompt_box_with_a_fake_backend():
    backend = ScriptedModel(GOOD, model="fake", chunk_chars=4)
    vw = ReflectionViewer(backend, prompt="What is 2 + 2?", threaded=False, preset="reflection")
    assert vw.controls.preset.options == ("greedy", "reflection", "creative")
    gen = vw.generate()
    assert backend.calls == ["What is 2 + 2?"] and gen.parsed.well_formed
    p = vw.panes
    assert len(p.reflections.children) == 2 and "Check again." in p.reflections.children[1].value
    assert "4 &lt;b&gt;bold&lt;/b&gt;" in p.output.value and "well formed" in p.status.value
    assert "reflection 1" in p.thinking.value and "no diagnostics" in p.diagnostics.value
    assert not vw.controls.generate.disabled and vw.controls.stop.disabled
    vw.generate("again")  # a second run starts from empty panes
    assert len(p.reflections.children) == 2 and vw.state.prompt == "again"


def test_viewer_button_runs_in_a_thread_and_stop_cancels():
    backend = ScriptedModel(GOOD, chunk_chars=2, delay_s=0.02)
    vw = ReflectionViewer(backend, prompt="q")
    vw.controls.generate.click()
    deadline = time.time() + 5
    while vw.state.n_chunks < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert vw.controls.generate.disabled and not vw.controls.stop.disabled
    vw.controls.stop.click()
    vw.wait(5)
    assert vw.state.status == "cancelled" and vw.state.finish_reason == "cancelled"
    assert len(vw.state.raw) < len(GOOD) and not vw.controls.generate.disabled


def test_a_backend_that_fails_to_start_shows_the_error():
    def broken(prompt, preset, max_new_tokens):
        raise RuntimeError("no model loaded")

    vw = ReflectionViewer(broken, threaded=False)
    gen = vw.generate("x")
    assert gen.finish_reason == "error" and "no model loaded" in vw.panes.status.value


def test_compare_view_runs_two_fake_models_side_by_side():
    base = ScriptedModel("I think it is 5.", model="base")
    seen = []

    def tuned(prompt, preset, max_new_tokens):  # a plain callable backend yielding chunks
        seen.append((prompt, preset.name, max_new_tokens))
        yield from chunks(GOOD, 9)

    cv = CompareViewer(base, tuned, labels=["base", "fine-tuned"], threaded=False, max_new_tokens=64)
    order = []
    cv.panes[0].refresh = lambda _r=cv.panes[0].refresh: (order.append(0), _r())  # type: ignore[method-assign]
    left, right = cv.generate("What is 2 + 2?")
    assert seen == [("What is 2 + 2?", "greedy", 64)]
    assert left.parsed.codes == ["no_tags"] and right.parsed.well_formed
    assert cv.states[0].outside_text == "I think it is 5." and cv.states[1].output == "4 <b>bold</b>"
    table = cv.summary.value
    assert "fine-tuned" in table and "no_tags" in table and "True" in table and "False" in table
    assert compare_summary_html(cv.states) == table and order
    assert len(cv.ui.children[1].children) == 2  # two columns


def test_views_are_independent_between_threads():
    views = [StreamView(str(i)) for i in range(4)]
    threads = [threading.Thread(target=drive, args=(v, ScriptedStream(GOOD, chunk_chars=3))) for v in views]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v.result.well_formed and v.raw == GOOD for v in views)
