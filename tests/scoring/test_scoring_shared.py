"""The shared-prefix layout: anchors found, positions exact, losses equal to scoring alone, safe fallback."""

import random
import warnings

import pytest
from scoring_reference import reference_scores

from reflection_lab.scoring import shared as scoring_shared
from reflection_lab.models import load_model, load_tokenizer
from reflection_lab.scoring import PairEncoder, combine
from reflection_lab.scoring.engine import Item, LossEngine, plan_shared
from reflection_lab.scoring.shared import build_layout, find_anchors

HEAD = (1, 2, 3, 4, 5, 6)


def test_anchors_are_the_branch_points_and_nest():
    a, b = HEAD + (7, 8, 9), HEAD + (7, 8, 10)
    c = HEAD + (11, 12)
    parent = find_anchors([a, a, b, c, (1, 2)])
    # HEAD is shared by a, b and c; HEAD+7+8 by a (twice) and b; a itself minus its last token equals HEAD+7+8.
    assert parent == {HEAD: None, HEAD + (7, 8): HEAD}


def test_short_common_parts_make_no_anchor_and_every_anchor_serves_two():
    assert find_anchors([HEAD + (7,), (9,) + HEAD]) == {}
    assert find_anchors([(1, 2, 3), (1, 2, 4)]) == {}  # common part shorter than min_len
    rng = random.Random(3)
    for _ in range(50):
        prefixes = [tuple(rng.choice((1, 2)) for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(2, 12))]
        parent = find_anchors(prefixes, min_len=2)
        for anchor, up in parent.items():
            assert up is None or (len(up) < len(anchor) and anchor[:len(up)] == up)
            users = [p for p in prefixes if len(p) > len(anchor) and p[:len(anchor)] == anchor]
            assert len(users) >= 2, (prefixes, anchor)


def test_layout_computes_each_prefix_once_with_the_positions_it_would_have_alone():
    items = [Item(HEAD + (7, 8), (20, 21)), Item(HEAD + (7, 8), (22,)), Item(HEAD + (9,), (23, 24, 25)),
             Item((1,), (26,))]
    lay = build_layout(items)
    assert lay.computed_tokens < sum(len(it) for it in items)
    ids, pos = lay.input_ids[0].tolist(), lay.position_ids[0].tolist()
    for seg in lay.segments:
        context = [i for a, b in seg.context for i in range(a, b)]
        full = context + list(range(seg.start, seg.end))
        assert [pos[i] for i in full] == list(range(len(full)))  # gap-free positions from 0
    # Each target token sits right after the row position that predicts it, inside its item's segment.
    assert [ids[c + 1] for c in lay.cols] == lay.targets and set(lay.rows) == {0}
    assert sorted(lay.order, key=lambda it: it.key) == sorted(items, key=lambda it: it.key)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def student(request):
    return request.param, load_model(request.param), load_tokenizer(request.param)


def test_versions_of_a_sample_share_prefixes_and_still_match_the_reference(student):
    """Same instruction with different answers, same answer under different instructions (the four variants)."""
    name, model, tok = student
    enc = PairEncoder(tok, template="chat", max_length=4096)
    q1, q2 = "Add the numbers 12 and 7 then check the total", "What is 12 plus 7?"
    a1, a2 = "The total is 19.", "12 and 7 make 19, and 19 minus 7 is 12, so the total checks out."
    versions = [(q1, a1), (q2, a1), (q1, a2), (q2, a2)]
    plan = [enc.items(q, "", a) for q, a in versions]
    items = [it for its, _ in plan for it in its.values()]
    engine = LossEngine(model, pad_id=tok.pad_token_id, padding_side="shared")
    assert engine.padding_side == "shared"
    losses = engine.score(items)
    unique = {it.key: it for it in items}.values()
    assert engine.tokens_computed < 0.8 * sum(len(it) for it in unique)  # really shared, not just packed
    for (q, a), (its, info) in zip(versions, plan):
        got = combine(its, info, losses)
        ref = reference_scores(model, tok, q, "", a)
        for key in ("s_a_q", "s_a", "s_q_rev", "s_q", "ifd", "rifd"):
            assert got[key] == pytest.approx(ref[key], abs=1e-4), (name, key)


def test_plan_keeps_prefix_sharing_items_together_under_the_budget():
    items = [Item(HEAD + (i % 3, i), (50 + i,)) for i in range(30)]
    batches = plan_shared(items, batch_tokens=40, max_batch_size=64)
    assert sorted(it.key for b in batches for it in b) == sorted(it.key for it in items)
    assert all(sum(len(it) for it in b) <= 40 for b in batches)
    first_tokens = [{it.prefix[6] for it in b} for b in batches]
    assert sum(len(s) for s in first_tokens) <= len(batches) + 2  # sorted: each branch is contiguous


def test_a_wrong_attention_fails_the_check_and_the_engine_falls_back(monkeypatch):
    """The probe really compares: an attention that ignores the anchors is caught, never used."""
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    real = scoring_shared.segment_attention

    def forgetful(module, query, key, value, attention_mask, **kw):
        layout = scoring_shared._ACTIVE.get()
        blind = scoring_shared.SharedLayout(layout.input_ids, layout.position_ids,
                                            [scoring_shared.Segment(s.start, s.end, ()) for s in layout.segments],
                                            layout.rows, layout.cols, layout.targets, layout.order)
        token = scoring_shared._ACTIVE.set(blind)
        try:
            return real(module, query, key, value, attention_mask, **kw)
        finally:
            scoring_shared._ACTIVE.reset(token)

    monkeypatch.setattr(scoring_shared, "segment_attention", forgetful)
    with pytest.warns(UserWarning, match="using packed rows"):
        engine = LossEngine(model, pad_id=tok.pad_token_id, padding_side="shared")
    assert engine.padding_side == "packed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LossEngine(model, pad_id=tok.pad_token_id, padding_side="auto").padding_side == "packed"
    monkeypatch.undo()
    assert LossEngine(model, pad_id=tok.pad_token_id, padding_side="auto").padding_side == "shared"
    assert model.config._attn_implementation != scoring_shared.ATTN_NAME  # restored after every batch


def test_an_item_without_a_prefix_is_refused_in_every_layout():
    """Its first target token would be "predicted" from whatever sits before it in the row."""
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    for side in ("right", "packed", "shared"):
        with pytest.raises(ValueError, match="prefix token"):
            LossEngine(model, pad_id=tok.pad_token_id, padding_side=side).score([Item((), (5, 6))])


def test_other_threads_keep_the_models_own_attention_and_mask_during_a_shared_batch():
    """A viewer thread generating with the same model object must not notice a batch being scored."""
    import threading

    import torch

    model = load_model("tiny-llama")
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding: the mask matters
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    got = {}

    def other():
        with torch.no_grad():
            got["logits"] = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits

    layout = build_layout([Item(HEAD + (7,), (8,)), Item(HEAD + (9,), (10,))])
    with scoring_shared.active(model, layout):
        assert model.config._attn_implementation == scoring_shared.ATTN_NAME
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert torch.allclose(got["logits"], want, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_two_threads_scoring_one_model_both_get_exact_losses_and_the_model_is_restored():
    from concurrent.futures import ThreadPoolExecutor

    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    enc = PairEncoder(tok, template="chat", max_length=4096)
    sets = [[it for q, a in pairs for it in enc.items(q, "", a)[0].values()]
            for pairs in ([("Add 2 and 3", "Five."), ("Add 2 and 3", "It is 5.")],
                          [("Name a river", "The Nile."), ("Name two rivers", "The Nile.")])]
    alone = [LossEngine(model, pad_id=tok.pad_token_id, padding_side="right").score(s) for s in sets]

    def shared(items):
        return [LossEngine(model, pad_id=tok.pad_token_id, padding_side="shared").score(items) for _ in range(5)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(shared, sets))
    for want, runs in zip(alone, results):
        for got in runs:
            assert all(abs(got[k].mean - want[k].mean) < 1e-5 for k in want)
    assert model.config._attn_implementation == "sdpa"


def test_a_failed_switch_leaves_neither_the_layout_nor_the_switch_behind(monkeypatch):
    model = load_model("tiny-llama")
    real = model.set_attn_implementation
    calls = []

    def flaky(name):
        calls.append(name)
        if name == scoring_shared.ATTN_NAME:
            raise RuntimeError("cannot switch")
        return real(name)

    monkeypatch.setattr(model, "set_attn_implementation", flaky)
    with pytest.raises(RuntimeError, match="cannot switch"), scoring_shared.active(model, build_layout([Item(HEAD, (1,))])):
        pass
    assert scoring_shared._ACTIVE.get() is None and model.config._attn_implementation == "sdpa"
    assert not scoring_shared._ORIGINAL


def test_a_tokenizer_without_a_pad_token_does_not_fail_the_check():
    model = load_model("tiny-llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LossEngine(model, pad_id=None, padding_side="shared").padding_side == "shared"
