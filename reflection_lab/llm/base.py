"""The one interface every model backend has: local transformers, OpenAI-compatible, replay, scripted.

A backend answers two kinds of calls:
* `complete(requests, on_reply, concurrency=)`: many chat requests at once, each answered by a
  `ChatReply` (the teacher of stage 02, the judge of stage 07 and the lab's server use this);
* `stream(prompt, preset=, max_new_tokens=)`: one generation as text chunks, a `TextStream`
  whose `result()` is a parsed `Generation` (stage 06, the live viewers, multi-turn `Chat`).
  `generate(prompt, ...)` is `stream(...).result()`. The replay backend only completes requests
  that name a sample and task; it has nothing to say to a free prompt.

Why a request key: stage 02 journals every reply under a content hash of what was asked (backend
kind, model, messages, sampling parameters), so a rerun after a crash or a disconnect asks only what
is still unanswered, and a changed prompt or model is never served a stale reply. `meta` (sample
id, task) travels with the request for lookups and logs but is not hashed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Prompt = Any  # str (one user message), list[dict] (chat messages) or list[int] (prompt token ids)


def request_key(backend: str, model: str, messages: Sequence[Message], temperature: float, top_p: float,
                max_tokens: int) -> str:
    """sha256 over a canonical JSON of everything that decides the reply."""
    payload = {"backend": backend, "model": model, "messages": [dict(m) for m in messages],
               "temperature": float(temperature), "top_p": float(top_p), "max_tokens": int(max_tokens)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for. Build it with `ChatRequest.make` so the key is right."""

    key: str
    messages: tuple[Message, ...]
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def make(cls, backend: "ChatBackend", messages: Sequence[Message], *, temperature: float = 0.0,
             top_p: float = 1.0, max_tokens: int = 1024, meta: dict[str, Any] | None = None) -> "ChatRequest":
        msgs = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        key = request_key(backend.kind, backend.model, msgs, temperature, top_p, max_tokens)
        return cls(key=key, messages=msgs, temperature=float(temperature), top_p=float(top_p),
                   max_tokens=int(max_tokens), meta=dict(meta or {}))

    @property
    def label(self) -> str:
        """Human-readable name for logs and errors: sample id and task when known, else a key prefix."""
        sid, task = self.meta.get("sample_id"), self.meta.get("task")
        return f"{sid}/{task}" if sid is not None else self.key[:12]


@dataclass(frozen=True)
class ChatReply:
    """What came back: text on success, or error (text None) after the backend gave up.

    `usage` holds {"prompt_tokens", "completion_tokens"} when the backend counted them.
    """

    key: str
    text: str | None
    error: str | None = None
    attempts: int = 1
    latency_s: float = 0.0
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    usage: dict[str, int] | None = field(default=None, compare=False, hash=False)

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None

    def record(self) -> dict[str, Any]:
        """The journal line for this reply (no secrets: only what the backend said and how it went)."""
        return {"key": self.key, "text": self.text, "error": self.error, "attempts": self.attempts,
                "latency_s": round(self.latency_s, 4), "finish_reason": self.finish_reason,
                "sample_id": self.meta.get("sample_id"), "task": self.meta.get("task")}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "ChatReply":
        return cls(key=rec["key"], text=rec.get("text"), error=rec.get("error"), attempts=rec.get("attempts", 1),
                   latency_s=rec.get("latency_s", 0.0), finish_reason=rec.get("finish_reason"),
                   meta={"sample_id": rec.get("sample_id"), "task": rec.get("task")})


OnReply = Callable[[ChatReply], None]


def error_reply(req: ChatRequest, error: str, *, attempts: int = 1, latency_s: float = 0.0) -> ChatReply:
    return ChatReply(key=req.key, text=None, error=error, attempts=attempts, latency_s=latency_s, meta=req.meta)


@runtime_checkable
class ChatBackend(Protocol):
    """A backend that answers chat requests (see the module docstring for the whole interface).

    `complete` calls `on_reply` once per request as each reply arrives (any order) and returns all
    replies in request order. It never raises for a single failed request: that request gets an
    error reply, so the caller can account for every sample.
    """

    kind: str  # "local", "openai", "replay", "scripted": part of every request key
    model: str

    def describe(self) -> dict[str, Any]:
        """Settings safe to write into a manifest (never a secret)."""
        ...

    def complete(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None, *,
                 concurrency: int | None = None) -> list[ChatReply]:
        ...
