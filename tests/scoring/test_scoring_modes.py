"""Scoring modes (issue 19): reference mode against an independent transcription of the published procedure,
the vicuna separator's space, the start token of the direct passes, and rescoring when the mode changes."""

import random

import pytest
import torch

from reflection_lab.core.config import ConfigError
from reflection_lab.core.runs import read_jsonl
from reflection_lab.format.templates import published_prompt, render_forward
from reflection_lab.models import load_model, load_tokenizer
from reflection_lab.profiles import get_profile
from reflection_lab.scoring import PairEncoder, ScoreConfig, combine, run_score, score_pairs, start_token_id
from reflection_lab.scoring.encode import make_encoder
from reflection_lab.scoring.engine import LossEngine
from reflection_lab.scoring.items import Item, Missing
from published_transcription import published_scores
from scored_helpers import make_reflected_run

WORDS = ("the model writes a short answer about numbers cities code and rivers then checks every step "
         "carefully before it returns the total of 12 apples and 7 pears").split()


def _samples(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(3, 20))).capitalize() + "?"
        inp = " ".join(rng.choices(WORDS, k=rng.randint(2, 8))) if rng.random() < 0.4 else ""
        a = " ".join(rng.choices(WORDS, k=rng.randint(2, 40))).capitalize() + "."
        out.append((q, inp, a))
    return out


def _no_bos(tok):
    """The same tokenizer, adding no start token (like SmolLM2's and Qwen's): the direct passes' first token
    is then context in the published procedure."""
    tok._tokenizer.post_processor = None
    assert tok("Hello")["input_ids"][0] != tok.bos_token_id
    return tok


def _reference_rows(model, tok, samples, template, max_length):
    return score_pairs(model, tok, samples, template=template, max_length=max_length, scoring_mode="reference")


def _assert_matches(got_rows, samples, model, tok, template, max_length, label):
    checked = 0
    for (q, i, a), got in zip(samples, got_rows):
        ref = published_scores(model, tok, q, i, a, template=template, max_length=max_length)
        for key in ("s_a_q", "s_a", "s_q_rev", "s_q", "ifd", "rifd"):
            if ref[key] is None:
                assert got[key] is None, (label, key, q)
            else:
                assert got[key] == pytest.approx(ref[key], abs=1e-4), (label, key, q)
                checked += 1
    return checked


@pytest.mark.parametrize("student_name, template", [("tiny-llama", "vicuna"), ("tiny-gpt2", "alpaca")])
@pytest.mark.parametrize("bos", ["bos", "no-bos"])
def test_reference_mode_matches_the_published_transcription(student_name, template, bos):
    model, tok = load_model(student_name), load_tokenizer(student_name)
    if bos == "no-bos":
        tok = _no_bos(tok)
    samples = _samples(8, seed=len(student_name) * 10 + len(template))
    checked = 0
    short = len(tok(published_prompt(template, "x"))["input_ids"]) + 40  # long answers and reverse texts are cut
    for max_length in (2048, short):
        rows = _reference_rows(model, tok, samples, template, max_length)
        checked += _assert_matches(rows, samples, model, tok, template, max_length, (student_name, bos, max_length))
        if max_length == short:
            assert any(r["answer_truncated"] for r in rows) and any(r["reverse_answer_truncated"] for r in rows)
    assert checked > 52  # most scores were numbers, not two Nones agreeing


def test_reference_mode_missing_where_the_published_code_writes_a_placeholder():
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    enc = make_encoder(tok, mode="reference", template="vicuna", max_length=48)
    items, _ = enc.items("Say hi", "", "")
    assert all(isinstance(x, Missing) and x.reason == "empty answer" for x in items.values())
    items, info = enc.items("word " * 60, "", "hello there")  # the prompt alone fills max_length
    assert isinstance(items["a_q"], Missing) and "no answer token" in items["a_q"].reason
    row = combine(items, info, {})
    assert row["ifd"] is None and row["missing"]
    assert published_scores(model, tok, "word " * 60, "", "hello there", max_length=48)["ifd"] is None


def test_reference_mode_scores_the_published_tokens_not_the_labs():
    tok = _no_bos(load_tokenizer("tiny-gpt2"))
    ref = make_encoder(tok, mode="reference", template="vicuna", max_length=2048)
    lab = make_encoder(tok, mode="lab", template="vicuna", max_length=2048)
    r, _ = ref.items("Add 2 and 3", "", "The sum is 5.")
    lab_items, _ = lab.items("Add 2 and 3", "", "The sum is 5.")
    answer = tok("The sum is 5.")["input_ids"]
    assert r["a"] == Item((answer[0],), tuple(answer[1:]))  # no start token: the first token is context
    assert lab_items["a"].prefix == (start_token_id(tok),) and len(lab_items["a"].target) == len(answer)
    assert r["q_rev"].target == tuple(tok("Add 2 and 3", add_special_tokens=False)["input_ids"])


def test_reference_mode_needs_a_published_template_and_is_in_the_fingerprint():
    with pytest.raises(ConfigError, match="template='vicuna'"):
        ScoreConfig(scoring_mode="reference")
    with pytest.raises(ConfigError, match="scoring_mode must be one of"):
        ScoreConfig(scoring_mode="published")
    with pytest.raises(ConfigError, match="Profile.template"):
        get_profile("ci", scoring_mode="reference")
    cfg = ScoreConfig.from_profile(get_profile("ci", scoring_mode="reference", template="vicuna"))
    assert cfg.scoring_mode == "reference" and cfg.fingerprinted()["scoring_mode"] == "reference"
    assert cfg.fingerprinted() != cfg.replace(scoring_mode="lab").fingerprinted()


def test_cli_set_reaches_the_score_config():
    from reflection_lab.profiles import parse_assignments

    over = parse_assignments(["scoring_mode=reference", "template=vicuna"])
    cfg = ScoreConfig.from_profile(get_profile("ci", **over))
    assert (cfg.scoring_mode, cfg.template) == ("reference", "vicuna")


def test_a_mode_change_rescores_and_switching_back_reuses_the_journal(tmp_path):
    run = make_reflected_run(tmp_path / "run", n=4)
    lab = ScoreConfig(student="tiny-llama", template="vicuna", max_length=512)
    ref = lab.replace(scoring_mode="reference")
    m_lab = run_score(run, lab, progress=False)
    lab_rows = read_jsonl(run.path("score", "scores.jsonl"))
    m_ref = run_score(run, ref, progress=False)
    assert m_ref["fingerprint"] != m_lab["fingerprint"] and m_ref["config"]["scoring_mode"] == "reference"
    assert m_ref["counts"]["tokens_scored_this_session"] > 0  # really rescored, not reused
    ref_rows = read_jsonl(run.path("score", "scores.jsonl"))
    assert [r["variants"]["original"]["s_a_q"] for r in ref_rows] != [r["variants"]["original"]["s_a_q"]
                                                                       for r in lab_rows]
    assert run_score(run, ref, progress=False)["finished"] == m_ref["finished"]  # same mode: reused
    back = run_score(run, lab, progress=False)  # the lab mode's passes are still journalled: nothing recomputed
    assert back["counts"]["tokens_scored_this_session"] == 0
    assert read_jsonl(run.path("score", "scores.jsonl")) == lab_rows
    tl = read_jsonl(run.path("score", "token_losses.jsonl"))
    assert all(len(r["tokens"]) == len(r["cond"]) == len(r["direct"]) for r in tl)


def test_reference_mode_token_losses_align_at_the_answer_end(tmp_path):
    run = make_reflected_run(tmp_path / "run", n=2)
    run_score(run, ScoreConfig(student="tiny-llama", template="alpaca", max_length=512, scoring_mode="reference"),
              progress=False)
    tl = read_jsonl(run.path("score", "token_losses.jsonl"))
    assert tl and all(len(r["tokens"]) == len(r["cond"]) == len(r["direct"]) > 0 for r in tl)


# -- the vicuna separator's space -------------------------------------------------------------------------

def _first_answer_token_loss_in_context(model, tok, prompt_with_space, answer):
    """Plain forward over the text as written (prompt + answer tokenised together): the first answer
    token's loss where the prompt's own tokens end."""
    core = tok(prompt_with_space.rstrip(" "), add_special_tokens=False)["input_ids"]
    ids = [start_token_id(tok)] + list(tok(prompt_with_space + answer, add_special_tokens=False)["input_ids"])
    assert ids[1:len(core) + 1] == core  # the text's own tokens start with the prompt's, minus its space
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    pos = len(core)  # predicts ids[len(core) + 1], the first answer token (it carries the space)
    return torch.nn.functional.cross_entropy(logits[pos:pos + 1], torch.tensor([ids[pos + 1]])).item(), ids[pos + 1]


def _vicuna_first_token(model, tok, instruction, answer):
    enc = PairEncoder(tok, template="vicuna", max_length=2048)
    items, _ = enc.items(instruction, "", answer)
    loss = LossEngine(model, pad_id=tok.pad_token_id).score([items["a_q"]])[items["a_q"].key].losses[0]
    return items["a_q"], loss


def test_vicuna_space_belongs_to_the_first_answer_token():
    model, tok = load_model("tiny-gpt2"), load_tokenizer("tiny-gpt2")
    instruction, answer = "Add 2 and 3", "The sum is 5."
    item, loss = _vicuna_first_token(model, tok, instruction, answer)
    expected, first = _first_answer_token_loss_in_context(model, tok, render_forward(tok, "vicuna", instruction),
                                                          answer)
    assert item.target[0] == first == tok(" The", add_special_tokens=False)["input_ids"][0]
    assert tok.decode(list(item.prefix[-1:])) == ":"  # no lone space token before the answer
    assert loss == pytest.approx(expected, abs=1e-4)
    plain = PairEncoder(tok, template="plain", max_length=2048).items(instruction, "", answer)[0]
    assert plain["a_q"].target == tuple(tok(answer, add_special_tokens=False)["input_ids"])  # "\n": nothing moves


# -- the start token of the direct passes -------------------------------------------------------------------

def test_start_token_is_the_bos_the_tokenizer_adds():
    tok = load_tokenizer("tiny-llama")
    assert start_token_id(tok) == tok.bos_token_id == tok("a")["input_ids"][0]


def test_start_token_is_never_a_chat_turn_marker():
    tok = load_tokenizer("tiny-llama")
    tok._tokenizer.post_processor = None
    tok.bos_token = "<|assistant|>"  # a BOS that opens a chat turn (SmolLM2 names <|im_start|> its BOS)
    start = start_token_id(tok)
    assert start not in (tok.convert_tokens_to_ids("<|assistant|>"), tok.eos_token_id)  # <|end|> closes a turn
    assert start == tok.convert_tokens_to_ids("<|eos|>")
    tok.bos_token = None
    assert start_token_id(tok) == tok.convert_tokens_to_ids("<|eos|>")


# -- SmolLM2 (slow) --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_model("smollm2-135m"), load_tokenizer("smollm2-135m")


def _workshop(n):
    from reflection_lab.data import load_samples

    rows, _ = load_samples("workshop")
    return [(r["instruction"], r.get("input", ""), r["output"]) for r in rows[:n]]


@pytest.mark.slow
def test_smollm2_reference_mode_matches_the_published_transcription(smollm2):
    model, tok = smollm2
    samples = _workshop(8)
    rows = _reference_rows(model, tok, samples, "vicuna", 2048)
    assert _assert_matches(rows, samples, model, tok, "vicuna", 2048, "smollm2") == 8 * 6
    short = _reference_rows(model, tok, samples[:3], "vicuna", 96)
    _assert_matches(short, samples[:3], model, tok, "vicuna", 96, "smollm2-96")


@pytest.mark.slow
def test_smollm2_start_token_and_vicuna_space(smollm2):
    model, tok = smollm2
    assert tok.convert_ids_to_tokens(start_token_id(tok)) == "<|endoftext|>"
    worse = 0
    # answers that start with a word (SmolLM2 splits " 8" into a space and a digit either way)
    for instruction, _, answer in [s for s in _workshop(20) if s[2][:1].isalpha()][:5]:
        item, loss = _vicuna_first_token(model, tok, instruction, answer)
        expected, _ = _first_answer_token_loss_in_context(model, tok, render_forward(tok, "vicuna", instruction),
                                                          answer)
        assert loss == pytest.approx(expected, abs=1e-4)
        # the old encoding: "ASSISTANT: " and the answer tokenised apart, a lone space token in between
        sep = tok("ASSISTANT: ", add_special_tokens=False)["input_ids"][-1]
        old = Item(item.prefix + (sep,), tuple(tok(answer, add_special_tokens=False)["input_ids"]))
        worse += LossEngine(model, pad_id=tok.pad_token_id).score([old])[old.key].losses[0] > loss + 1.0
    assert worse >= 4  # the split space cost the first word over a nat on (nearly) every sample
