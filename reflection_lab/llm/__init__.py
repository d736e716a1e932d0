"""One model-backend layer for the whole lab: local transformers, OpenAI-compatible, replay, scripted.

The teacher (stage 02), the judge (stage 07), generation (stages 06 and 07) and the lab's server all
talk to models through these backends (interface: base.py). `make_backend("openai:gpt-4o-mini")`
builds one from a short spec. Backends import their heavy dependencies (torch, openai) lazily, so
`import reflection_lab.llm` is cheap.
"""

from __future__ import annotations

from typing import Any

from .base import ChatBackend, ChatReply, ChatRequest, Message, error_reply, request_key
from .sampling import PRESETS, SamplingPreset, get_preset
from .streams import Generation, TextStream

__all__ = ["PRESETS", "ChatBackend", "ChatReply", "ChatRequest", "Generation", "Message", "SamplingPreset",
           "TextStream", "error_reply", "get_preset", "make_backend", "request_key"]


def make_backend(spec: str, *, role: str = "teacher", **kw: Any) -> Any:
    """Build a backend from a short spec.

    "replay" (the shipped workshop replies) or "replay:<file>"; "openai" (model from kw or the
    environment) or "openai:<model>"; "local:<model spec or path>" or "local" with model=...
    (a local model answers chat requests with its own chat template and no added system prompt).
    role ("teacher" or "generator") picks the environment variables an OpenAI-compatible backend reads.
    model= names the model when the spec has none (None: the environment's, for an endpoint). Extra keyword
    arguments go to the backend's constructor: ReplayBackend (delay_s), OpenAIModel (base_url, concurrency,
    timeout_s, ...) or LocalModel.from_spec (quant4, batch_size, device, dtype).
    """
    model = kw.pop("model", None)
    kind, _, arg = spec.partition(":")
    if kind == "replay":
        from .replay import ReplayBackend

        path = kw.pop("path", None)
        return ReplayBackend(arg or path, model=model, **kw)
    if kind == "openai":
        from .openai import OpenAIModel

        return OpenAIModel(arg or model, role=role, **kw)
    if kind == "local":
        from .local import LocalModel

        model = arg or model
        if not model:
            raise ValueError("a local backend needs a model: 'local:<model spec or path>', e.g. 'local:smollm2-135m'")
        kw.setdefault("system_prompt", None)
        return LocalModel.from_spec(model, **kw)
    raise ValueError(f"unknown backend spec {spec!r}; use 'replay', 'openai', 'openai:<model>' or 'local:<model>'")
