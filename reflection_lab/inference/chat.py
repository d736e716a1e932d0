"""Multi-turn chat with any backend: the transcript keeps every full text, the model sees stripped history.

Why strip: earlier reasoning would crowd the context and teach the model to copy it (DeepSeek's API
rejects it outright); `format.chat.history_for_model` keeps only each earlier answer's <output>.
"""

from __future__ import annotations

from typing import Any, Callable

from ..format.chat import SystemPrompt, history_for_model, system_prompt_text
from ..format.tags import parse
from ..llm.sampling import SamplingPreset
from ..llm.streams import Generation, TextStream, backend_name, open_stream


class Chat:
    """A conversation with one backend. `transcript` keeps full texts; the model gets stripped history."""

    def __init__(self, backend: Any, *, preset: str | SamplingPreset = "greedy", max_new_tokens: int = 256,
                 system: str | SystemPrompt | None = None):
        self.backend, self.preset, self.max_new_tokens = backend, preset, max_new_tokens
        text = system_prompt_text(system)
        self.transcript: list[dict] = [{"role": "system", "content": text}] if text else []
        self.generations: list[Generation] = []

    def messages(self, user_text: str) -> list[dict]:
        """What the next request sends for `user_text`."""
        return history_for_model(self.transcript + [{"role": "user", "content": user_text}])

    def ask(self, user_text: str, on_text: Callable[[str], Any] | None = None) -> Generation:
        stream = open_stream(self.backend, self.messages(user_text), self.preset, self.max_new_tokens)
        parts = []
        for chunk in stream:
            parts.append(chunk)
            if on_text:
                on_text(chunk)
        gen = stream.result() if isinstance(stream, TextStream) else Generation(
            "".join(parts), "stop", parse("".join(parts)), model=backend_name(self.backend))
        self.transcript += [{"role": "user", "content": user_text}, {"role": "assistant", "content": gen.text}]
        self.generations.append(gen)
        return gen


__all__ = ["Chat"]
