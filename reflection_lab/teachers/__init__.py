"""Teacher backends behind one interface (see base.py): "openai" (any OpenAI-compatible endpoint),
"local:<model spec>" (a transformers model) and "replay" (the workshop's shipped replies).

Backends import their heavy dependencies lazily, so `import reflection_lab.teachers` is cheap.
"""

from __future__ import annotations

from typing import Any

from .base import ChatReply, ChatRequest, Teacher, request_key
from .prompts import PromptSet, load_prompts

__all__ = ["ChatReply", "ChatRequest", "Teacher", "request_key", "PromptSet", "load_prompts", "make_teacher"]


def make_teacher(spec: str, **kw: Any) -> Teacher:
    """Build a teacher from a short spec.

    "replay" (shipped data) or "replay:<file>"; "openai" (model from kw or the environment) or
    "openai:<model>"; "local:<model spec or path>" or "local" with model=... . Extra keyword
    arguments go to the backend's constructor (e.g. delay_s, base_url, concurrency, quant4).
    """
    kind, _, arg = spec.partition(":")
    if kind == "replay":
        from .replay import ReplayTeacher

        path = kw.pop("path", None)
        return ReplayTeacher(arg or path, **kw)
    if kind == "openai":
        from .openai_compat import OpenAITeacher

        model = kw.pop("model", None)
        return OpenAITeacher(arg or model, **kw)
    if kind == "local":
        from .local import LocalTeacher

        model = kw.pop("model", None)
        model = arg or model
        if not model:
            raise ValueError("local teacher needs a model: 'local:<model spec or path>', e.g. 'local:smollm2-135m'")
        return LocalTeacher(model, **kw)
    raise ValueError(f"unknown teacher spec {spec!r}; use 'replay', 'openai', 'openai:<model>' or 'local:<model>'")
