"""Shared fixtures. Tiny students are built once per session (deterministic, ~1 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI never fails on an example it drew by chance);
# LAB_HYPOTHESIS_RANDOM=1 draws new ones, for a long search before a release. Found counterexamples stay
# in the tests as @example(...).
settings.register_profile("lab", derandomize=True, database=None)
settings.register_profile("random", derandomize=False)
settings.load_profile("random" if os.environ.get("LAB_HYPOTHESIS_RANDOM") == "1" else "lab")

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache for local runs and CI: inside the repo's ignored .cache, so SmolLM2 converts once per clone.
os.environ.setdefault("REFLECTION_LAB_CACHE", str(ROOT / ".cache" / "reflection-lab"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the in-order notebook test before the browser tests, which reuse its run (tests/notebook_run.py)."""
    first_browser = next((i for i, item in enumerate(items) if item.nodeid.startswith("tests/browser/")), None)
    notebooks = next((i for i, item in enumerate(items) if item.name == "test_notebooks_execute_in_order"), None)
    if first_browser is not None and notebooks is not None and notebooks > first_browser:
        items.insert(first_browser, items.pop(notebooks))


@pytest.fixture(scope="session")
def tiny_llama_path() -> str:
    from reflection_lab.models import resolve_model

    return resolve_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2_path() -> str:
    from reflection_lab.models import resolve_model

    return resolve_model("tiny-gpt2")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from reflection_lab.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture
def run(tmp_path):
    from reflection_lab.core.runs import Run

    return Run(tmp_path / "run")


@pytest.fixture(scope="session")
def sharp_students(tmp_path_factory, tiny_llama_path, tiny_gpt2_path) -> dict[str, str]:
    """Copies of the tiny students ("llama", "gpt2") with weights scaled up, so greedy text varies with the prompt.

    The stock tiny models repeat their last token, which would make a batching or padding test pass trivially.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for name, src in (("llama", tiny_llama_path), ("gpt2", tiny_gpt2_path)):
        model, tok = AutoModelForCausalLM.from_pretrained(src), AutoTokenizer.from_pretrained(src)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(4.0)
        path = tmp_path_factory.mktemp(f"sharp-{name}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = str(path)
    return out
