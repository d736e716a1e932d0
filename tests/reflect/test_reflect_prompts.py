"""Reflection prompts: the method's criteria, the markers the parser needs, input / no-input, both styles."""

import pytest

from reflection_lab.reflect import load_prompts
from reflection_lab.reflect.prompts import TEMPLATE_FIELDS, fill

INSTRUCTION_CRITERIA = ["complexity of", "level of detail", "knowledge", "ambiguous", "logical reasoning",
                        "problem solving"]
ANSWER_CRITERIA = ["helpfulness", "relevance", "accuracy", "level of detail"]
SAMPLE = {"instruction": "Explain what {x} does in f-strings.", "input": "", "output": "It inserts x."}
WITH_INPUT = {"instruction": "Translate the text.", "input": "Bonjour {output} à tous", "output": "Hello all."}


def _user(msgs):
    assert [m["role"] for m in msgs] == ["system", "user"]
    return msgs[1]["content"]


def test_instruction_prompt_has_every_criterion_and_marker():
    p = load_prompts()
    text = _user(p.instruction_messages(**SAMPLE)).lower()
    for word in INSTRUCTION_CRITERIA + ANSWER_CRITERIA:
        assert word in text, word
    user = _user(p.instruction_messages(**SAMPLE))
    assert user.index("[New Instruction]") < user.index("[New Answer]") and user.count("[End]") >= 2
    assert SAMPLE["instruction"] in user and SAMPLE["output"] in user


def test_response_prompt_has_answer_criteria_and_marker():
    p = load_prompts()
    user = _user(p.response_messages(**SAMPLE))
    for word in ANSWER_CRITERIA:
        assert word in user.lower(), word
    assert "[Better Answer]" in user and "[End]" in user
    assert "complexity" not in user.lower()  # the response reflection judges the answer only


def test_input_versions_show_the_input_and_no_input_versions_do_not():
    p = load_prompts()
    for make in (p.instruction_messages, p.response_messages):
        with_input = _user(make(**WITH_INPUT))
        assert WITH_INPUT["input"] in with_input and "### Input" in with_input
        assert "### Input" not in _user(make(**SAMPLE))
    assert "input" in p.response_messages(**WITH_INPUT)[0]["content"]  # system line mentions it too
    # the new instruction must carry its own context: there is no input for it
    assert "inside the new instruction" in _user(p.instruction_messages(**WITH_INPUT))


def test_braces_and_slot_names_in_samples_are_not_expanded():
    p = load_prompts()
    user = _user(p.response_messages(**WITH_INPUT))
    assert "Bonjour {output} à tous" in user and user.count("Hello all.") == 1
    assert fill("{instruction}|{output}", instruction="{output}", output="B") == "{output}|B"


@pytest.mark.parametrize("make", ["instruction_messages", "response_messages"])
def test_reflection_style_asks_for_the_reflection_format(make):
    p = load_prompts()
    refl = _user(getattr(p, make)(**SAMPLE, style="reflection"))
    plain = _user(getattr(p, make)(**SAMPLE, style="plain"))
    for tag in ("<thinking>", "<reflection>", "</reflection>", "</thinking>", "<output>", "</output>"):
        assert tag in refl and tag not in plain
    assert refl.index("<thinking>") < refl.index("<reflection>") < refl.index("</thinking>") < refl.index("<output>")
    with pytest.raises(ValueError, match="style"):
        getattr(p, make)(**SAMPLE, style="fancy")


def test_version_is_recorded_and_edits_are_marked():
    p = load_prompts()
    assert p.version and p.version_tag == p.version and not p.edited and p.check() == []
    q = p.copy(style_plain="Answer plainly and briefly.")
    assert q.edited and q.version_tag.startswith(p.version + "+edited.") and q.sha256 != p.sha256
    assert "Answer plainly and briefly." in _user(q.response_messages(**SAMPLE, style="plain"))
    q.response_user = q.response_user.replace("[Better Answer]", "[Improved]")
    assert any("[Better Answer]" in problem for problem in q.check())


def test_save_and_load_round_trip(tmp_path):
    p = load_prompts()
    p.save(tmp_path / "mine")
    assert load_prompts(tmp_path / "mine").sha256 == p.sha256 and not load_prompts(tmp_path / "mine").edited
    (tmp_path / "mine" / "style_plain.txt").write_text("Short.")
    assert load_prompts(tmp_path / "mine").edited


def test_templates_ship_as_package_data():
    from importlib import resources

    folder = resources.files("reflection_lab.reflect").joinpath("prompts")
    for name in TEMPLATE_FIELDS + ("version",):
        assert folder.joinpath(f"{name}.txt").is_file(), name


def test_show_renders_for_a_notebook():
    out = load_prompts().show("response", style="plain")
    assert "=== system ===" in out and "[Better Answer]" in out
