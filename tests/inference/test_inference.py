"""Generation helpers on the offline students: tags kept as special tokens, stop/length, batches equal
to single greedy runs, cancelling, multi-turn history, presets, the reasoning merge and the env settings."""

from __future__ import annotations

import dataclasses

import pytest

from finetune_helpers import one_thread
from reflection_lab.llm.sampling import PRESETS, get_preset
from reflection_lab.format.chat import REFLECTION_PROMPT, history_for_model
from reflection_lab.inference import Chat
from reflection_lab.llm.streams import Generation
from reflection_lab.llm.local import LocalModel, TagKeepingStreamer
from reflection_lab.llm.openai import OpenAIModel, ReasoningMerger
from reflection_lab.llm.scripted import ScriptedModel
from reflection_lab.format.tags import parse
from reflection_lab.format.tags import REFLECTION_TAGS
from reflection_lab.format.chat import add_reflection_tokens, decode_keep_tags

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
CPU = {"device": "cpu", "dtype": "float32"}  # exact equality of batched and single greedy text holds in fp32

TAGGED = ("<thinking>\nAdd 2 and 2 \U0001F600.\n<reflection>\nCheck: 2 + 2 = 4.\n</reflection>\n</thinking>\n"
          "<output>\n4\n</output>")


class Force:
    """A logits processor that makes the model write `ids` (then whatever it likes)."""

    def __init__(self, ids: list[int], prompt_len: int):
        self.ids, self.prompt_len = ids, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        if step < len(self.ids):
            scores[:] = float("-inf")
            scores[:, self.ids[step]] = 0.0
        return scores


@pytest.fixture(scope="module")
def tagged_model(tiny_llama_path):
    """The tiny student with the six tags added as special tokens (embeddings resized), like Reflection 70B."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    add_reflection_tokens(tok, model)
    return LocalModel(model, tok, system_prompt=None, name="tiny-tagged")


def forced(lm: LocalModel, text: str, prompt: str = "What is 2 + 2?", end: bool = True):
    from transformers import LogitsProcessorList

    tok = lm.tokenizer
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    ids += [tok.convert_tokens_to_ids("<|end|>")] if end else []
    return ids, {"logits_processor": LogitsProcessorList([Force(ids, len(lm.encode(prompt)))])}


# -- presets and prompts ------------------------------------------------------------------------------------
def test_presets_are_frozen_and_translate_to_each_backend():
    g, r, c = PRESETS["greedy"], PRESETS["reflection"], PRESETS["creative"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.temperature = 1.0  # type: ignore[misc]
    assert g.greedy and g.hf_kwargs() == {"do_sample": False}
    assert g.openai_kwargs() == {"temperature": 0.0, "top_p": 1.0}
    assert (r.temperature, r.top_p) == (0.7, 0.95) and r.hf_kwargs()["do_sample"] and r.openai_kwargs()["seed"] == 0
    assert c.hf_kwargs()["top_k"] == 50 and get_preset("creative") is c and get_preset(r) is r
    with pytest.raises(KeyError, match="greedy"):
        get_preset("hot")
    text = REFLECTION_PROMPT.text
    assert all(t in text for t in REFLECTION_TAGS) and "world-class" not in text  # our own wording


# -- special tokens: which survive, which end the answer --------------------------------------------------
def test_token_policy_drops_every_special_token_but_the_tags(tagged_model, tiny_llama_path):
    tok, pol = tagged_model.tokenizer, tagged_model.policy
    tag_ids = {tok.convert_tokens_to_ids(t) for t in REFLECTION_TAGS}
    assert pol.tag_ids == tag_ids and not (pol.drop_ids & tag_ids) and not (pol.stop_ids & tag_ids)
    for t in ("<|pad|>", "<|bos|>", "<|end|>", "<|eos|>", "<|system|>", "<|assistant|>"):
        assert tok.convert_tokens_to_ids(t) in pol.drop_ids
    assert pol.stop_ids == {tok.convert_tokens_to_ids("<|end|>"), tok.convert_tokens_to_ids("<|eos|>")}
    plain = LocalModel.from_spec(tiny_llama_path, system_prompt=None, **CPU)
    assert plain.policy.tag_ids == frozenset() and not plain.describe()["tags_as_special_tokens"]


def test_streamer_decodes_a_fixed_id_sequence_one_token_at_a_time(tagged_model):
    import torch

    tok = tagged_model.tokenizer
    ids = tok(TAGGED.replace("Check", "<|system|>Check<|pad|>"), add_special_tokens=False)["input_ids"]
    assert len(ids) < len(TAGGED) and tok.convert_tokens_to_ids("<thinking>") in ids  # tags are single ids
    chunks: list[str] = []
    s = TagKeepingStreamer(tok, chunks.append, drop_ids=tagged_model.policy.drop_ids)
    s.put(torch.tensor([[1, 2, 3]]))  # the prompt comes first and is skipped
    for i in ids:
        s.put(torch.tensor([i]))
    s.end()
    assert "".join(chunks) == TAGGED == decode_keep_tags(tok, ids)
    assert not any("\ufffd" in c for c in chunks)  # the emoji's bytes were held until complete
    assert s.token_ids == ids


def test_tags_as_special_tokens_survive_generation_and_skip_special_tokens_would_lose_them(tagged_model):
    ids, kw = forced(tagged_model, TAGGED)
    stream = tagged_model.stream("What is 2 + 2?", max_new_tokens=len(ids) + 5, generate_kwargs=kw)
    chunks = list(stream)
    gen = stream.result()
    assert gen.text == TAGGED and "".join(chunks) == TAGGED and len(chunks) > 5
    # the preset's stop text "</output>" ends it one id before the end-of-turn id
    assert gen.finish_reason == "stop" and gen.n_tokens == len(ids) - 1 and "<|end|>" not in gen.text
    assert gen.parsed.well_formed and gen.parsed.answer == "4" and gen.parsed.reflections[0].text == "Check: 2 + 2 = 4."
    batch = tagged_model.generate_batch(["What is 2 + 2?"], max_new_tokens=len(ids) + 5, generate_kwargs=kw)[0]
    assert batch.text == TAGGED and batch.finish_reason == "stop"
    # the pitfall: the same ids decoded the stock way have no tags left, and the parser says so
    stock = tagged_model.tokenizer.decode(ids, skip_special_tokens=True)
    assert "<thinking>" not in stock and "Check: 2 + 2 = 4." in stock
    assert parse(stock).codes == ["no_tags"] and parse(stock).answer is None


def test_token_limit_gives_length_and_a_truncated_parse(tagged_model):
    ids, kw = forced(tagged_model, TAGGED, end=False)
    cut = ids.index(tagged_model.tokenizer.convert_tokens_to_ids("<output>")) + 2  # "<output>", "\n" and no more
    gen = tagged_model.generate("What is 2 + 2?", max_new_tokens=cut + 1, generate_kwargs=kw)
    assert gen.finish_reason == "length" and gen.truncated and gen.n_tokens == cut + 1
    assert "truncated" in gen.parsed.codes and gen.parsed.answer == "4" and not gen.parsed.output_complete
    in_thinking = tagged_model.generate("What is 2 + 2?", max_new_tokens=6, generate_kwargs=kw)
    assert in_thinking.finish_reason == "length" and in_thinking.parsed.answer is None
    assert in_thinking.parsed.thinking and "unclosed_tag" not in in_thinking.parsed.codes


def test_leaving_a_stream_early_cancels_the_model(tiny_llama_path):
    lm = LocalModel.from_spec(tiny_llama_path, system_prompt=None, **CPU)
    stream = lm.stream("Why?", max_new_tokens=400)
    for k, _ in enumerate(stream):
        if k == 2:
            break
    stream.close()
    assert stream.finish_reason == "cancelled" and stream.n_tokens < 400
    assert stream.result().parsed.truncated  # a cut-off answer is parsed as truncated


def test_a_prompt_that_does_not_fit_is_an_error_not_a_crash(tiny_llama_path):
    lm = LocalModel.from_spec(tiny_llama_path, system_prompt=None, **CPU)
    long = "word " * 3000
    out = lm.generate_batch([long, "Hi"], max_new_tokens=4)
    assert out[0].finish_reason == "error" and "exceeds" in out[0].error and out[1].finish_reason in ("stop", "length")
    with pytest.raises(ValueError, match="exceeds"):
        lm.generate(long, max_new_tokens=4)


# -- batches equal single greedy runs ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sharp_paths(sharp_students):
    return sharp_students


PROMPTS = ["What is 3 plus 4?", "Write a function that adds 7 and 9 in Python, step by step, for a beginner please.",
           "Why?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fix the bug."}]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # RoPE, and learned absolute positions
def test_batched_left_padding_equals_unbatched_greedy_and_streaming(sharp_paths, arch):
    lm = LocalModel.from_spec(sharp_paths[arch], system_prompt=REFLECTION_PROMPT, **CPU)
    assert len({len(lm.encode(p)) for p in PROMPTS}) == len(PROMPTS)  # real padding happens
    batched = lm.generate_batch(PROMPTS, max_new_tokens=10, batch_size=4)
    single = [lm.generate_batch([p], max_new_tokens=10, batch_size=1)[0] for p in PROMPTS]
    streamed = [lm.generate(p, max_new_tokens=10) for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single] == [g.text for g in streamed]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in streamed]
    assert len({g.text for g in single}) >= 3 and all(isinstance(g, Generation) for g in batched)
    lm.padding_side = "right"  # control: the comparison can fail, so passing it means something
    assert [g.text for g in lm.generate_batch(PROMPTS, max_new_tokens=10, batch_size=4)] != [g.text for g in single]


def test_results_come_back_in_prompt_order_with_callbacks(sharp_paths):
    lm = LocalModel.from_spec(sharp_paths["llama"], system_prompt=None, **CPU)
    seen = []
    out = lm.generate_batch(PROMPTS[:3], max_new_tokens=4, batch_size=2, on_result=lambda i, g: seen.append(i))
    assert sorted(seen) == [0, 1, 2] and seen[0] == 1  # longest prompt first
    assert out[2].text == lm.generate_batch([PROMPTS[2]], max_new_tokens=4)[0].text


# -- multi-turn -------------------------------------------------------------------------------------------
def test_history_keeps_only_the_output_of_assistant_turns():
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": TAGGED},
            {"role": "assistant", "content": "untagged reply"}, {"role": "user", "content": "and 3+3?"}]
    h = history_for_model(msgs)
    assert h[1] == {"role": "assistant", "content": "4"} and h[2]["content"] == "untagged reply"
    assert h[0] == msgs[0] and msgs[1]["content"] == TAGGED  # the caller's list is untouched
    assert history_for_model(msgs, keep_reasoning=True)[1]["content"] == TAGGED


def test_chat_sends_stripped_history_and_keeps_the_full_transcript():
    backend = ScriptedModel([TAGGED, "<thinking>x</thinking><output>6</output>"])
    chat = Chat(backend, system="reflection")
    first = chat.ask("2+2?")
    chunks: list[str] = []
    second = chat.ask("and 3+3?", on_text=chunks.append)
    assert first.parsed.answer == "4" and second.parsed.answer == "6" and "".join(chunks) == second.text
    sent = backend.calls[1]
    assert sent[0] == {"role": "system", "content": REFLECTION_PROMPT.text}
    assert sent[2] == {"role": "assistant", "content": "4"} and sent[3]["content"] == "and 3+3?"
    assert chat.transcript[2]["content"] == TAGGED and len(chat.transcript) == 5


def test_local_prompts_single_turn_is_the_training_prompt_and_history_is_stripped(tiny_llama_path):
    lm = LocalModel.from_spec(tiny_llama_path, **CPU)
    assert lm.encode("Hi") == lm.prompt_ids("Hi") == lm.encode([{"role": "user", "content": "Hi"}])
    ids = lm.encode([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": TAGGED},
                     {"role": "user", "content": "3+3?"}])
    text = lm.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|bos|><|system|>\nBefore you answer") and "<|assistant|>\n4<|end|>" in text
    assert "Check: 2 + 2" not in text and text.endswith("<|user|>\n3+3?<|end|>\n<|assistant|>\n")
    with pytest.raises(TypeError):
        lm.encode(3.5)


# -- the OpenAI side without a server -----------------------------------------------------------------------
def test_reasoning_merge_rebuilds_the_tagged_text():
    m = ReasoningMerger()
    pieces = [(None, ""), ("Add 2 and 2.\n<reflection>\nok\n</reflection>", None), (" More.", None),
              (None, "<output>\n4\n</output>")]
    text = "".join(m.add(r, c, "reasoning") for r, c in pieces)
    assert m.field == "reasoning"
    original = parse("<thinking>Add 2 and 2.\n<reflection>\nok\n</reflection> More.</thinking><output>4</output>")
    assert (parse(text).thinking, parse(text).answer, parse(text).well_formed) == (original.thinking, "4", True)
    cut = ReasoningMerger()
    unfinished = cut.add("still thinking", None)
    assert parse(unfinished, truncated=True).answer is None and "</thinking>" not in unfinished


def test_delta_reasoning_reads_both_field_names():
    from openai.types.chat.chat_completion_chunk import ChoiceDelta

    from reflection_lab.llm.openai import delta_reasoning

    assert delta_reasoning(ChoiceDelta.model_validate({"reasoning_content": "a"})) == ("a", "reasoning_content")
    assert delta_reasoning(ChoiceDelta.model_validate({"reasoning": "b", "content": "c"})) == ("b", "reasoning")
    assert delta_reasoning(ChoiceDelta.model_validate({"content": "c"})) == (None, None)


def test_openai_settings_from_the_environment_and_the_key_never_shows(monkeypatch):
    for k in ("REFLECTION_LAB_INFER_MODEL", "REFLECTION_LAB_INFER_BASE_URL", "REFLECTION_LAB_INFER_API_KEY",
              "OPENAI_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="REFLECTION_LAB_INFER_MODEL"):
        OpenAIModel(role="generator")
    monkeypatch.setenv("OPENAI_MODEL", "fallback")
    monkeypatch.setenv("REFLECTION_LAB_INFER_BASE_URL", "http://user:pw@127.0.0.1:9/v1?token=abc")
    monkeypatch.setenv("REFLECTION_LAB_INFER_API_KEY", "sk-SECRET-123")
    m = OpenAIModel(role="generator", keep_special_tokens=True)
    assert m.model == "fallback" and m.base_url == "http://127.0.0.1:9/v1"
    shown = repr(m) + str(m.describe())
    assert "SECRET" not in shown and "pw" not in shown and "abc" not in shown
    assert m.describe()["extra_body"] == {"skip_special_tokens": False}
    assert m._scrub("bad key sk-SECRET-123 at http://user:pw@127.0.0.1:9/v1?token=abc") == "bad key *** at ***"


# -- the base student in one slow check ---------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_streams_and_batches_the_same_text(smollm2_path):
    lm = LocalModel.from_spec("smollm2-135m", **CPU)
    prompts = ["What is 12 + 30?", "Name a colour.", "Explain in one sentence why the sky is blue."]
    batched = lm.generate_batch(prompts, max_new_tokens=24, batch_size=3)
    streamed = [lm.generate(p, max_new_tokens=24) for p in prompts]
    assert [g.text for g in batched] == [g.text for g in streamed]
    assert all(g.text.strip() and "<|im_end|>" not in g.text and "<|im_start|>" not in g.text for g in batched)
    assert {g.finish_reason for g in batched} <= {"stop", "length"}
    assert lm.tokenizer.convert_tokens_to_ids("<|im_end|>") in lm.policy.stop_ids
    short = lm.generate("Reply with the single word yes.", max_new_tokens=64)
    assert short.finish_reason == "stop" and short.n_tokens < 64  # stops at its end-of-turn token


def test_generation_ends_at_the_closing_output_tag_unless_the_preset_has_no_stop_text(tagged_model):
    """A student that starts a second <thinking> after </output> is stopped there, streamed or batched."""
    more = TAGGED + "\n<thinking>\nAnd again.\n</thinking>"
    ids, kw = forced(tagged_model, more)
    prompt, budget = "What is 2 + 2?", len(ids) + 5
    stream = tagged_model.stream(prompt, max_new_tokens=budget, generate_kwargs=kw)
    chunks = list(stream)
    gen = stream.result()
    assert "".join(chunks) == gen.text == TAGGED and gen.finish_reason == "stop" and gen.parsed.well_formed
    batch = tagged_model.generate_batch([prompt, prompt], max_new_tokens=budget, generate_kwargs=kw)
    assert [b.text for b in batch] == [TAGGED, TAGGED] and batch[0].n_tokens == gen.n_tokens < len(ids)
    open_ended = dataclasses.replace(PRESETS["greedy"], stop=())
    full = tagged_model.generate_batch([prompt], preset=open_ended, max_new_tokens=budget, generate_kwargs=kw)[0]
    assert full.text == more and full.n_tokens == len(ids) and "thinking_after_output" in full.parsed.codes
