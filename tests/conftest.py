"""Shared fixtures. Tiny students are built once per session (deterministic, ~1 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache for local runs and CI: inside the repo's ignored .cache, so SmolLM2 converts once per clone.
os.environ.setdefault("REFLECTION_LAB_CACHE", str(ROOT / ".cache" / "reflection-lab"))


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
    from reflection_lab.runs import Run

    return Run(tmp_path / "run")
