import hashlib

import pytest
import torch

from reflection_lab.format.tags import REFLECTION_TAGS
from reflection_lab.models.tiny import build_tiny_student


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_build_is_deterministic_and_reloads_identically(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    a = build_tiny_student(tmp_path / "a", arch)
    b = build_tiny_student(tmp_path / "b", arch)
    assert _digests(a) == _digests(b)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a)
    x = torch.randint(10, 600, (2, 12))
    again = AutoModelForCausalLM.from_pretrained(b)
    assert torch.equal(model(x).logits, again(x).logits)
    expected = "LlamaForCausalLM" if arch == "llama" else "GPT2LMHeadModel"
    assert type(model).__name__ == expected


def test_different_seed_gives_different_weights(tmp_path):
    a = build_tiny_student(tmp_path / "a", seed=0)
    b = build_tiny_student(tmp_path / "b", seed=1)
    assert _digests(a)["model.safetensors"] != _digests(b)["model.safetensors"]
    assert _digests(a)["tokenizer.json"] == _digests(b)["tokenizer.json"]


def test_tokenizer_bos_tags_and_chat_template(tiny_llama_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    ids = tok("Two plus two").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok("x", add_special_tokens=False).input_ids[0] != tok.bos_token_id
    text = "<thinking>a<reflection>b</reflection></thinking><output>c</output>"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    for tag in REFLECTION_TAGS:  # tags are plain text in the base student: skip_special_tokens keeps them
        assert tag in tok.decode(tok(tag).input_ids, skip_special_tokens=True)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Four."}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "Four.<|end|>"


def test_odd_head_dim_is_refused_with_reason(tmp_path):
    with pytest.raises(ValueError, match="even head_dim"):
        build_tiny_student(tmp_path / "x", hidden_size=100, num_heads=4)


def test_uneven_sizes_variant_builds(tmp_path):
    # hidden 96 is not a multiple of 64: guards bitsandbytes' remainder paths in later tests.
    from transformers import AutoModelForCausalLM

    p = build_tiny_student(tmp_path / "h96", hidden_size=96, num_heads=4)
    assert AutoModelForCausalLM.from_pretrained(p).config.hidden_size == 96
