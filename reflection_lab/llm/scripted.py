"""The scripted backend: fixed or computed replies without a model, for demos, tests and an offline judge.

`replies` is a text, a list of texts (one per call, cycling) or a function of the request's messages
that returns the reply text. It streams in small chunks like a real model (the viewers need no
model to show a reflection being written) and completes chat requests like a real endpoint (the
judge's protocol runs offline). `calls` records what it was asked: prompts for `stream`, message
lists for `complete`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

from .base import ChatReply, ChatRequest, Message, OnReply
from .sampling import SamplingPreset, StopCutter, get_preset
from .streams import Generation, TextStream

Replies = str | Sequence[str] | Callable[[list[Message]], str]


class ScriptedStream(TextStream):
    def __init__(self, text: str, *, chunk_chars: int = 6, delay_s: float = 0.0, finish_reason: str = "stop",
                 model: str = "scripted", stop: tuple[str, ...] = ()):
        super().__init__()
        self._text, self._n, self._delay, self._finish = text, max(1, chunk_chars), delay_s, finish_reason
        self._stop = stop  # the preset's stop text: the script ends there, as a model would
        self.model = model

    def _chunks(self) -> Iterator[str]:
        cutter = StopCutter(self._stop)
        for i in range(0, len(self._text), self._n):
            if self._delay:
                time.sleep(self._delay)
            if part := cutter.feed(self._text[i:i + self._n]):
                yield part
            if cutter.stopped:
                self.finish_reason = "stop"
                return
        self.finish_reason = self._finish


class ScriptedModel:
    """Replies from a script: a text, texts in turn, or a function of the messages."""

    kind = "scripted"

    def __init__(self, replies: Replies, *, model: str = "scripted", chunk_chars: int = 6, delay_s: float = 0.0,
                 finish_reason: str = "stop"):
        self.replies = replies if callable(replies) else [replies] if isinstance(replies, str) else list(replies)
        self.model, self.chunk_chars, self.delay_s, self.finish_reason = model, chunk_chars, delay_s, finish_reason
        self.calls: list[Any] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model}

    def _reply(self, messages: list[Message]) -> str:
        if callable(self.replies):
            return str(self.replies(messages))
        return self.replies[(len(self.calls) - 1) % len(self.replies)]

    def stream(self, prompt: Any, *, preset: str | SamplingPreset = "greedy", max_new_tokens: int = 256
               ) -> ScriptedStream:
        self.calls.append(prompt)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return ScriptedStream(self._reply(messages), chunk_chars=self.chunk_chars, delay_s=self.delay_s,
                              finish_reason=self.finish_reason, model=self.model, stop=get_preset(preset).stop)

    def generate(self, prompt: Any, **kw: Any) -> Generation:
        return self.stream(prompt, **kw).result()

    def complete(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None, *,
                 concurrency: int | None = None) -> list[ChatReply]:
        replies = []
        for req in requests:
            self.calls.append(list(req.messages))
            rep = ChatReply(key=req.key, text=self._reply(list(req.messages)), finish_reason=self.finish_reason,
                            meta=req.meta)
            if on_reply:
                on_reply(rep)
            replies.append(rep)
        return replies


__all__ = ["ScriptedModel", "ScriptedStream"]
