"""Training text for stage 05: exact answer spans, padding masks, templates, tags, overflow, batching."""

from __future__ import annotations

import pytest

from reflection_lab.format.chat import (FALLBACK_TEMPLATE, add_reflection_tokens, build_format, decode_keep_tags,
                                        tags_are_single_tokens)
from reflection_lab.finetune.data import (LengthGroupedSampler, PadToLongest, encode_example, encode_rows,
                                          split_train_eval)

ANSWER = "<thinking>\nAdd 3 and 4.\n<reflection>\nCheck: 3 + 4 = 7.\n</reflection>\n</thinking>\n<output>\n7\n</output>"


@pytest.fixture
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_llama_path)
    t.padding_side = "right"
    return t


def _trained(ex: dict) -> list[int]:
    return [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]


def test_only_the_answer_and_the_end_marker_are_trained(tok):
    fmt = build_format(tok, "chat")
    assert fmt.template == "chat" and fmt.end_text == "<|end|>"
    ex, reason, cut = encode_example(fmt, tok, "What is 3 + 4?", "", ANSWER, max_length=512)
    assert reason is None and not cut
    answer_ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    assert _trained(ex) == answer_ids + fmt.end_ids
    n_prompt = len(ex["input_ids"]) - len(answer_ids) - len(fmt.end_ids)
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["input_ids"][:n_prompt] == fmt.prompt_ids(tok, "What is 3 + 4?")
    assert tok.decode(_trained(ex)) == ANSWER + "<|end|>"
    # the prompt is exactly the chat template's generation prompt (with the tokenizer's BOS)
    assert tok.decode(ex["input_ids"][:n_prompt]) == "<|bos|>" + tok.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}], tokenize=False, add_generation_prompt=True)


def test_separate_tokenisation_keeps_the_boundary_where_joint_tokenisation_would_move_it(tok):
    fmt = build_format(tok, "plain")  # prompt ends with "\n": a merge across the boundary is possible
    ex, _, _ = encode_example(fmt, tok, "Say apples", "", "apples", max_length=128)
    assert tok.decode(_trained(ex)) == "apples" + fmt.end_text


def test_padding_is_masked_by_position_even_when_pad_equals_the_end_token(tok):
    tok.pad_token = tok.eos_token  # SmolLM2: pad == eos == <|im_end|>
    fmt = build_format(tok, "chat")
    rows = [{"id": "a", "instruction": "Hi", "output": "Hello there, how are you today?"},
            {"id": "b", "instruction": "Hi", "output": "Yo"}]
    exs, _ = encode_rows(rows, fmt, tok, max_length=256)
    batch = PadToLongest(tok.pad_token_id)(exs)
    short = batch["labels"][1]
    n = exs[1]["length"]
    assert short[n - 1].item() == tok.eos_token_id  # the end marker (== pad id) is trained ...
    assert (short[n:] == -100).all()                  # ... but padding with the same id is not
    assert batch["attention_mask"][1, :n].all() and not batch["attention_mask"][1, n:].any()
    assert batch["input_ids"].shape[1] == max(e["length"] for e in exs)


def test_model_without_chat_template_falls_back_with_a_note(tok):
    tok.chat_template = None
    fmt = build_format(tok, "chat")
    assert fmt.template == FALLBACK_TEMPLATE
    assert fmt.end_text == tok.eos_token
    assert fmt.notes and "no chat template" in fmt.notes[0]
    text = fmt.prompt_text(tok, "Add 2 and 2", "")
    assert "### Instruction:" in text and text.endswith("### Response:\n")
    ex, _, _ = encode_example(fmt, tok, "Add 2 and 2", "", "4", max_length=256)
    assert tok.decode(_trained(ex)) == "4" + tok.eos_token


def test_system_prompt_is_part_of_the_prompt(tok):
    fmt = build_format(tok, "chat", system_prompt="Think inside <thinking> tags.")
    assert fmt.prompt_text(tok, "Q").startswith("<|system|>\nThink inside <thinking> tags.<|end|>\n<|user|>\nQ")


def test_overflow_truncate_drop_and_report(tok):
    fmt = build_format(tok, "chat")
    long = " ".join(["apples rivers code"] * 80)
    rows = [{"id": "ok", "instruction": "Q", "output": "short answer"},
            {"id": "long", "instruction": "Q", "output": long},
            {"id": "empty", "instruction": "Q", "output": "  "},
            {"id": "bigprompt", "instruction": long, "output": "x"}]
    exs, rep = encode_rows(rows, fmt, tok, max_length=64, overflow="truncate")
    assert [e["id"] for e in exs] == ["ok", "long"] and rep.truncated == 1
    cut = exs[1]
    assert cut["length"] == 64 and cut["input_ids"][-1] not in fmt.end_ids  # a cut answer gets no end marker
    assert rep.dropped == {"empty answer": 1, "prompt longer than max_length": 1}
    exs, rep = encode_rows(rows, fmt, tok, max_length=64, overflow="drop")
    assert [e["id"] for e in exs] == ["ok"] and rep.dropped["longer than max_length"] == 1
    assert "1 of 4 rows kept" in rep.summary()


def test_tags_become_single_special_tokens_and_decoding_keeps_them(tiny_llama_path, tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    n_before = model.get_input_embeddings().weight.shape[0]
    assert not tags_are_single_tokens(tok)
    spelled = tok("</reflection>", add_special_tokens=False)["input_ids"]
    old_rows = model.get_input_embeddings().weight[spelled].detach().clone()
    ids = add_reflection_tokens(tok, model)
    assert tags_are_single_tokens(tok) and len(set(ids)) == 6
    # each new row starts at the mean of the rows the tag was spelled with (in and out, tied or not)
    import torch

    row = ids[3]  # </reflection>
    assert torch.allclose(model.get_input_embeddings().weight[row], old_rows.mean(dim=0))
    assert torch.allclose(model.get_output_embeddings().weight[row], model.get_input_embeddings().weight[row]) or \
        not model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == n_before + 6
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    fmt = build_format(tok, "chat", tags_as_special_tokens=True)
    assert fmt.tag_ids == ids
    ex, _, _ = encode_example(fmt, tok, "What is 3 + 4?", "", ANSWER, max_length=512)
    trained = _trained(ex)
    assert sum(t in ids for t in trained) == 6  # each tag is exactly one trained token
    # the pitfall: skip_special_tokens=True silently deletes every tag
    assert "<thinking>" not in tok.decode(trained, skip_special_tokens=True)
    text = decode_keep_tags(tok, trained + [tok.pad_token_id])
    assert text == ANSWER  # tags kept; <|end|> and padding dropped
    from reflection_lab.format.tags import parse

    assert parse(text).well_formed
    # adding twice changes nothing
    assert add_reflection_tokens(tok, model) == ids and len(tok) == n_before + 6


def test_length_grouped_sampler_is_seeded_per_epoch_and_groups_lengths():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(5, 400) for _ in range(203)]
    s = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    a0 = list(s)
    assert sorted(a0) == list(range(203))
    s.set_epoch(1)
    a1 = list(s)
    assert a1 != a0
    fresh = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    fresh.set_epoch(1)
    assert list(fresh) == a1  # a resumed run sees the same batches in the same epoch
    assert max(lengths[i] for i in a0[:4]) == max(lengths)  # longest batch first: OOM shows at step 1

    def padded(order):
        batches = [order[k:k + 4] for k in range(0, len(order), 4)]
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    shuffled = list(range(203))
    random.Random(0).shuffle(shuffled)
    assert padded(a0) < 0.7 * padded(shuffled)


def test_split_is_seeded_and_skips_tiny_sets():
    rows = [{"id": str(i)} for i in range(30)]
    tr, ev = split_train_eval(rows, 0.1, seed=0)
    assert len(ev) == 3 and len(tr) == 27 and split_train_eval(rows, 0.1, seed=0) == (tr, ev)
    assert split_train_eval(rows[:5], 0.1, seed=0) == (rows[:5], [])


def test_tag_weight_marks_exactly_the_tag_tokens_and_the_end_marker(tok):
    fmt = build_format(tok, "chat")
    plain, _, _ = encode_example(fmt, tok, "What is 3 + 4?", "", ANSWER, max_length=512)
    ex, _, _ = encode_example(fmt, tok, "What is 3 + 4?", "", ANSWER, max_length=512, tag_weight=5.0)
    assert "weights" not in plain and ex["input_ids"] == plain["input_ids"] and ex["labels"] == plain["labels"]
    assert len(ex["weights"]) == len(ex["input_ids"])
    heavy = "".join(tok.decode([i]) for i, w in zip(ex["input_ids"], ex["weights"]) if w == 5.0)
    light = "".join(tok.decode([i]) for i, w, lab in zip(ex["input_ids"], ex["weights"], ex["labels"])
                    if w == 1.0 and lab != -100)
    # every tag and the end marker are heavy; the words between them are not
    assert heavy.replace("\n", "") == "".join(["<thinking>", "<reflection>", "</reflection>", "</thinking>", "<output>",
                                               "</output>", "<|end|>"])
    assert "Add 3 and 4" in light and "<" not in light
    assert all(w == 0.0 for w, lab in zip(ex["weights"], ex["labels"]) if lab == -100)
    batch = PadToLongest(tok.pad_token_id)([ex, plain | {"weights": [1.0] * len(plain["input_ids"])}])
    assert batch["loss_weights"].shape == batch["labels"].shape


def _one_answer(tok, **encode) -> dict:
    """ANSWER to "What is 3 + 4?" encoded as one training example."""
    (ex,), _ = encode_rows([{"id": "a", "instruction": "What is 3 + 4?", "output": ANSWER}], build_format(tok, "chat"),
                           tok, max_length=512, **encode)
    return ex


def _loss_model(tiny_llama_path, keep_logits: bool):
    """The tiny model, or a skip when this transformers cannot take the kept-positions mask."""
    from reflection_lab.finetune.trainer import supports_logits_to_keep
    from reflection_lab.models import load_model

    model = load_model(tiny_llama_path)
    if keep_logits and not supports_logits_to_keep(model):
        pytest.skip("this transformers takes no boolean logits_to_keep mask")
    return model


@pytest.mark.parametrize("keep_logits", [True, False])
def test_unit_weights_give_the_plain_loss_and_tag_weights_raise_the_tag_share(tok, tiny_llama_path, keep_logits):
    import torch

    from reflection_lab.finetune.trainer import answer_only_loss

    plain, heavy = _one_answer(tok), _one_answer(tok, tag_weight=3.0)
    unit = plain | {"weights": [1.0] * len(plain["input_ids"])}
    model = _loss_model(tiny_llama_path, keep_logits)
    with torch.no_grad():
        losses = [answer_only_loss(model, PadToLongest(tok.pad_token_id, keep_logits=keep_logits)([ex]))
                  for ex in (plain, unit, heavy)]
        full = model(**{k: v for k, v in PadToLongest(tok.pad_token_id)([plain]).items()})
    (p, n, _), (u, _, _), (h, _, _) = losses
    assert (p / n).item() == pytest.approx(full.loss.item(), abs=1e-5) and u.item() == pytest.approx(p.item(), rel=1e-6)
    assert p.item() < h.item() < 3.0 * p.item()


def test_output_block_marks_cover_the_output_up_to_its_closing_tag(tok):
    from reflection_lab.finetune.data import output_block_marks

    ids, marks, openers = output_block_marks(tok, ANSWER)
    assert len(marks) == len(ids)
    marked = tok.decode([i for i, m in zip(ids, marks) if m])
    # the answer inside <output> and the first token of </output>, nothing of the thinking or of <output> itself
    assert marked.strip().startswith("7")
    assert "Add 3" not in marked and "output" not in marked
    last_marked = max(i for i, m in enumerate(marks) if m)
    assert tok.decode(ids[last_marked:]).strip() == "</output>"
    # the ids that open a tag are the first tokens of the opening tags, and none starts a closing tag
    starters = {tok(t, add_special_tokens=False)["input_ids"][0] for t in ("<thinking>", "<output>")}
    closers = {tok(t, add_special_tokens=False)["input_ids"][0] for t in ("</thinking>", "</output>")}
    assert set(openers) == starters - closers
    assert output_block_marks(tok, "<thinking>\nno output here\n</thinking>")[1] == [False] * len(
        tok("<thinking>\nno output here\n</thinking>", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("keep_logits", [True, False])
def test_open_tag_unlikelihood_adds_minus_log_one_minus_p_inside_the_output(tok, tiny_llama_path, keep_logits):
    import torch

    from reflection_lab.finetune.trainer import answer_only_loss

    plain, banned = _one_answer(tok), _one_answer(tok, open_tag_unlikelihood=2.0)
    assert banned["input_ids"] == plain["input_ids"] and sum(banned["ban_mask"]) > 0
    model = _loss_model(tiny_llama_path, keep_logits)
    collate = PadToLongest(tok.pad_token_id, keep_logits=keep_logits)
    with torch.no_grad():
        p, n, _ = answer_only_loss(model, collate([plain]))
        off, _, _ = answer_only_loss(model, collate([banned]), unlikelihood=0.0)
        on, _, _ = answer_only_loss(model, collate([banned]), unlikelihood=100.0)  # large: above fp32 rounding
        chunked, _, _ = answer_only_loss(model, collate([banned]), chunk_tokens=3, unlikelihood=100.0)
        logits = model(input_ids=torch.tensor([banned["input_ids"]])).logits[0].float()
    probs = logits.log_softmax(-1).exp()
    expected = 0.0
    for t, (mark, target) in enumerate(zip(banned["ban_mask"], banned["input_ids"])):
        if mark:  # token t is predicted at position t - 1
            q = sum(probs[t - 1, b].item() for b in banned["ban_ids"] if b != target)
            expected += -torch.log1p(torch.tensor(-q)).item()
    assert expected > 0 and off.item() == pytest.approx(p.item(), rel=1e-6)
    assert (on - p).item() == pytest.approx(100.0 * expected, rel=1e-3)
    if keep_logits:
        assert chunked.item() == pytest.approx(on.item(), rel=1e-5)


def test_with_tags_as_special_tokens_the_opening_tags_themselves_are_pushed_down(tok):
    from reflection_lab.finetune.data import output_block_marks

    add_reflection_tokens(tok)
    ids, marks, openers = output_block_marks(tok, ANSWER)
    assert sorted(openers) == sorted(tok.convert_tokens_to_ids(t) for t in ("<thinking>", "<reflection>", "<output>"))
    assert [tok.decode([i]) for i, m in zip(ids, marks) if m][-1] == "</output>"
