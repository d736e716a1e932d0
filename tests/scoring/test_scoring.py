import math
import random

import pytest
import torch

from reflection_lab.models import load_model, load_tokenizer
from reflection_lab.core.runs import read_jsonl
from reflection_lab.scoring import PairEncoder, ScoreConfig, combine, run_score, score_pair, start_token_id
from reflection_lab.scoring.engine import LossEngine, plan_batches
from reflection_lab.scoring.items import Item, Missing
from scoring_reference import reference_scores
from scored_helpers import make_reflected_run

WORDS = ("the model writes a short answer about numbers cities code and rivers then checks every step "
         "carefully before it returns the total of 12 apples and 7 pears").split()


def _pairs(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(3, 25))).capitalize() + "?"
        inp = " ".join(rng.choices(WORDS, k=rng.randint(2, 8))) if rng.random() < 0.3 else ""
        a = " ".join(rng.choices(WORDS, k=rng.randint(1, 40))) + "."
        out.append((q, inp, a))
    return out


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def student(request):
    return request.param, load_model(request.param), load_tokenizer(request.param)


@pytest.mark.parametrize("padding_side", ["right", "left", "packed", "shared"])
def test_engine_matches_one_at_a_time_reference(student, padding_side):
    name, model, tok = student
    enc = PairEncoder(tok, template="chat", max_length=4096)
    pairs = _pairs(24)
    plan = [enc.items(q, i, a) for q, i, a in pairs]
    engine = LossEngine(model, pad_id=tok.pad_token_id, batch_tokens=2048, padding_side=padding_side)
    assert engine.padding_side == padding_side  # the shared layout passed its own check, no silent fallback
    losses = engine.score([it for items, _ in plan for it in items.values()])
    assert len(plan_batches([it for items, _ in plan for it in items.values()], 2048, 64)) > 1  # really batched
    for (q, i, a), (items, info) in zip(pairs, plan):
        got = combine(items, info, losses)
        ref = reference_scores(model, tok, q, i, a)
        for key in ("s_a_q", "s_a", "s_q_rev", "s_q", "ifd", "ifd_loss", "rifd", "rifd_loss"):
            assert got[key] == pytest.approx(ref[key], abs=1e-4), (name, padding_side, key)


@pytest.mark.parametrize("template", ["plain", "alpaca", "vicuna"])
def test_engine_matches_reference_with_every_template(student, template):
    name, model, tok = student
    enc = PairEncoder(tok, template=template, max_length=4096)
    pairs = _pairs(10, seed=5)
    plan = [enc.items(q, i, a) for q, i, a in pairs]
    losses = LossEngine(model, pad_id=tok.pad_token_id, batch_tokens=2048).score(
        [it for items, _ in plan for it in items.values()])
    for (q, i, a), (items, info) in zip(pairs, plan):
        got = combine(items, info, losses)
        ref = reference_scores(model, tok, q, i, a, template=template)
        for key in ("s_a_q", "s_a", "s_q_rev", "s_q", "ifd", "rifd"):
            assert got[key] == pytest.approx(ref[key], abs=1e-4), (name, template, key)


# Stated tolerance of half-precision scoring against the fp32 reference (README, "IFD and r-IFD"):
# mean losses within 0.05 nats, IFD and r-IFD within 5 % (relative). Measured on the tiny students.
HALF_LOSS_TOL, HALF_RATIO_RTOL = 0.05, 0.05


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_engine_stays_within_the_stated_tolerance(student, dtype):
    import copy

    name, model, tok = student
    half = copy.deepcopy(model).to(getattr(torch, dtype))
    enc = PairEncoder(tok, template="chat", max_length=4096)
    pairs = _pairs(8, seed=7)
    plan = [enc.items(q, i, a) for q, i, a in pairs]
    losses = LossEngine(half, pad_id=tok.pad_token_id, batch_tokens=2048).score(
        [it for items, _ in plan for it in items.values()])
    worst = 0.0
    for (q, i, a), (items, info) in zip(pairs, plan):
        got = combine(items, info, losses)
        ref = reference_scores(model, tok, q, i, a)
        for key in ("s_a_q", "s_a", "s_q_rev", "s_q"):
            worst = max(worst, abs(got[key] - ref[key]))
            assert got[key] == pytest.approx(ref[key], abs=HALF_LOSS_TOL), (name, dtype, key)
        for key in ("ifd", "rifd"):
            assert got[key] == pytest.approx(ref[key], rel=HALF_RATIO_RTOL), (name, dtype, key)
    assert worst > 0  # really computed in half precision, not silently in fp32
    print(f"{name} {dtype}: worst |loss difference| {worst:.4f}")


def test_head_only_path_equals_full_logits_path(student):
    _, model, tok = student
    enc = PairEncoder(tok, max_length=4096)
    items = [it for q, i, a in _pairs(6, 1) for it in enc.items(q, i, a)[0].values()]
    fast = LossEngine(model, pad_id=tok.pad_token_id)
    assert fast._head_only
    slow = LossEngine(model, pad_id=tok.pad_token_id)
    slow._head_only = False
    a, b = fast.score(items), slow.score(items)
    for k in a:
        assert a[k].mean == pytest.approx(b[k].mean, abs=1e-5)
        assert a[k].losses == pytest.approx(b[k].losses, abs=1e-4)


def test_answer_span_is_exact_and_both_passes_score_the_same_tokens(student):
    _, _, tok = student
    enc = PairEncoder(tok, template="plain", max_length=4096)
    items, info = enc.items("Name a colour", "", " blue sky")
    assert items["a_q"].target == items["a"].target == tuple(tok(" blue sky", add_special_tokens=False)["input_ids"])
    assert items["a"].prefix == (start_token_id(tok),)
    assert items["a_q"].prefix[0] == start_token_id(tok)  # BOS added explicitly
    assert items["q_rev"].target == items["q"].target
    assert info["n_answer_tokens"] == len(items["a"].target)


def test_start_token_falls_back_to_end_of_text_when_there_is_no_bos():
    tok = load_tokenizer("tiny-llama")
    tok.bos_token = None
    tok.chat_template = None  # so <|end|> closes no chat turn here
    assert start_token_id(tok) == tok.eos_token_id


def test_truncation_keeps_the_two_passes_aligned(student):
    _, model, tok = student
    enc = PairEncoder(tok, template="chat", max_length=128)
    long_answer = " ".join(WORDS * 8)
    items, info = enc.items("Explain it", "", long_answer)
    assert info["answer_truncated"] and info["reverse_answer_truncated"]
    assert len(items["a_q"]) == 128 and items["a_q"].target == items["a"].target
    assert len(items["q_rev"]) == 128
    ref = reference_scores(model, tok, "Explain it", "", long_answer, max_length=128)
    got = combine(items, info, LossEngine(model, pad_id=tok.pad_token_id).score(
        [items["a_q"], items["a"]]) | LossEngine(model, pad_id=tok.pad_token_id).score([items["q"]]) | {
        items["q_rev"].key: LossEngine(model, pad_id=tok.pad_token_id).score([items["q_rev"]])[items["q_rev"].key]})
    assert got["s_a_q"] == pytest.approx(ref["s_a_q"], abs=1e-4)


@pytest.mark.parametrize("instruction, answer, max_length, expect", [
    ("Say hi", "", 512, "empty answer"),
    ("Say hi", "   \n ", 512, "empty answer"),
    ("", "hello", 512, "empty instruction"),
    ("word " * 300, "hello", 64, "no room"),
])
def test_unscorable_samples_get_none_and_a_reason_never_zero(instruction, answer, max_length, expect):
    tok = load_tokenizer("tiny-llama")
    model = load_model("tiny-llama")
    row = score_pair(model, tok, instruction, answer, max_length=max_length)
    assert row["ifd"] is None and row["ifd_loss"] is None
    assert expect in row["missing"]
    assert not (row["ifd"] is not None and row["ifd"] < 1)  # the reference code's 0-passes-`< 1` bug


def test_missing_passes_propagate_reasons():
    items = {"a_q": Missing("prompt too long"), "a": Missing("prompt too long"),
             "q_rev": Item((1,), (5,)), "q": Item((1,), (5, 6))}
    from reflection_lab.scoring.items import ItemLoss

    losses = {items["q_rev"].key: ItemLoss(2.0, [2.0]), items["q"].key: ItemLoss(1.0, [1.0, 1.0])}
    row = combine(items, {}, losses)
    assert row["ifd"] is None and row["rifd"] == pytest.approx(math.e)
    assert row["missing"] == "prompt too long"


def test_oom_halves_the_batch_and_still_finishes(monkeypatch):
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    enc = PairEncoder(tok, max_length=4096)
    items = [it for q, i, a in _pairs(10, 3) for it in enc.items(q, i, a)[0].values()]
    engine = LossEngine(model, pad_id=tok.pad_token_id, batch_tokens=100_000)
    real = engine.forward_batch
    sizes, ok_sizes = [], []

    def flaky(batch):
        sizes.append(len(batch))
        if len(batch) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ok_sizes.append(len(batch))
        return real(batch)

    monkeypatch.setattr(engine, "forward_batch", flaky)
    out = engine.score(items)
    assert len(out) == len({it.key for it in items})
    assert sizes[0] > 4 and engine.batch_tokens < 100_000
    assert sizes.count(max(sizes)) == 1  # after the first failure the rest was re-planned smaller
    assert sum(ok_sizes) == len(out)
    ref = LossEngine(model, pad_id=tok.pad_token_id).score(items)
    assert all(out[k].mean == pytest.approx(ref[k].mean, abs=1e-5) for k in ref)


def test_oom_on_a_single_sequence_says_what_to_lower(monkeypatch):
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    engine = LossEngine(model, pad_id=tok.pad_token_id)

    def always(batch):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(engine, "forward_batch", always)
    with pytest.raises(RuntimeError, match="Lower max_length"):
        engine.score([Item((1, 2), (3,))])


def test_duplicate_passes_are_scored_once():
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    enc = PairEncoder(tok)
    a, _ = enc.items("Add 2 and 3", "", "Five.")
    b, _ = enc.items("Add 2 and 3", "", "It is 5.")
    assert a["q"] == b["q"]  # s(Q) is shared between versions with the same instruction
    engine = LossEngine(model, pad_id=tok.pad_token_id)
    engine.score(list(a.values()) + list(b.values()))
    assert engine.tokens_scored == sum(len(x) for x in {it.key: it for it in list(a.values()) + list(b.values())}.values())


def test_run_score_writes_scores_token_losses_and_manifest(tmp_path):
    run = make_reflected_run(tmp_path / "run", n=5)
    m = run_score(run, ScoreConfig(student="tiny-llama", max_length=512), progress=False)
    assert m["status"] == "complete" and m["counts"]["samples"] == 5 and m["counts"]["versions"] == 20
    rows = read_jsonl(run.path("score", "scores.jsonl"))
    v = rows[0]["variants"]
    assert set(v) == {"original", "reflect_instruction", "reflect_response", "reflect_both"}
    for s in v.values():
        assert s["ifd"] == pytest.approx(math.exp(s["s_a_q"] - s["s_a"]))
        assert s["rifd"] == pytest.approx(math.exp(s["s_q_rev"] - s["s_q"]))
    tl = read_jsonl(run.path("score", "token_losses.jsonl"))
    assert len(tl) == 20 and len(tl[0]["tokens"]) == len(tl[0]["cond"]) == len(tl[0]["direct"])
    assert m["config"]["template"] == "chat" and m["definitions"]["ifd"] == "PPL(A|Q)/PPL(A)"
    assert m["runtime"]["layout"] == "shared"  # the CPU default, after its check against plain scoring
    assert 0 < m["runtime"]["tokens_computed_this_session"] < m["counts"]["tokens_scored_this_session"]
    assert run_score(run, ScoreConfig(student="tiny-llama", max_length=512), progress=False)["finished"] == m["finished"]
