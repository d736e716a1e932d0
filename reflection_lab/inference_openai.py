"""Stream from any OpenAI-compatible endpoint (the lab's server, vLLM, SGLang, llama.cpp, Ollama).

Settings come from arguments, else REFLECTION_LAB_INFER_BASE_URL / _MODEL / _API_KEY, else
OPENAI_BASE_URL / OPENAI_MODEL / OPENAI_API_KEY. The key (and a URL carrying credentials) is held
out of sight: never in repr, describe(), a result, an error message or a run file.

Why the merge: servers started with a reasoning parser (vLLM/SGLang `--reasoning-parser`,
llama.cpp `--reasoning-format`, Ollama, the lab's `--reasoning-field`) move the text of the
`<thinking>` block out of `content` into `delta.reasoning_content` (older vLLM, DeepSeek,
llama.cpp) or `delta.reasoning` (vLLM since late 2025, Ollama). `ReasoningMerger` wraps that text in
`<thinking>` ... `</thinking>` again before the content, so the one parser reads every server; the
result names the field it came from (`Generation.reasoning_field`) and says so in `notes`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from .inference import (Generation, SamplingPreset, SystemPrompt, TextStream, get_preset, history_for_model,
                        system_prompt_text)
from .teachers.openai_compat import _Secret, safe_url

ENV_PREFIX = "REFLECTION_LAB_INFER_"
REASONING_FIELDS = ("reasoning_content", "reasoning")


class InferenceError(RuntimeError):
    """An endpoint failed; the message is free of the key and of credentials in the URL."""


def _env(name: str, fallback: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or os.environ.get(fallback)


class ReasoningMerger:
    """Rebuild one tagged text from separate reasoning and content deltas.

    The first reasoning piece opens `<thinking>`, the first content piece after it closes it. A
    stream that ends inside reasoning is left unclosed, so the parser reports it (truncated or
    `unclosed_tag`) instead of pretending the thinking was finished.
    """

    def __init__(self) -> None:
        self.in_reasoning = False
        self.field: str | None = None

    def add(self, reasoning: str | None, content: str | None, field: str | None = None) -> str:
        out = []
        if reasoning:
            if not self.in_reasoning:
                out.append("<thinking>\n")
                self.in_reasoning = True
                self.field = self.field or field
            out.append(reasoning)
        if content:
            if self.in_reasoning:
                out.append("\n</thinking>\n")
                self.in_reasoning = False
            out.append(content)
        return "".join(out)


def delta_reasoning(delta: Any) -> tuple[str | None, str | None]:
    """(reasoning text, field name) of a stream delta, from whichever known field carries it."""
    extra = getattr(delta, "model_extra", None) or {}
    for name in REASONING_FIELDS:
        value = extra.get(name)
        if value is None:
            value = getattr(delta, name, None)
        if isinstance(value, str) and value:
            return value, name
    return None, None


class OpenAIStream(TextStream):
    def __init__(self, owner: "OpenAIModel", messages: list[dict], preset: SamplingPreset, max_new_tokens: int,
                 extra_body: dict | None):
        super().__init__()
        self.model = owner.model
        self._args = (owner, messages, preset, max_new_tokens, extra_body)

    def _chunks(self) -> Iterator[str]:
        import httpx
        import openai

        owner, messages, preset, max_new, extra_body = self._args
        client = openai.OpenAI(api_key=owner._key.get() or "EMPTY", base_url=owner._url.get(),
                               timeout=owner.timeout_s, max_retries=owner.max_retries)
        merger = ReasoningMerger()
        body = {**owner.extra_body, **(extra_body or {})}
        try:
            resp = client.chat.completions.create(
                model=owner.model, messages=messages, stream=True, **{owner.max_tokens_param: max_new},
                **preset.openai_kwargs(), **({"extra_body": body} if body else {}),
                **({"stream_options": {"include_usage": True}} if owner.include_usage else {}))
            try:
                for chunk in resp:
                    if getattr(chunk, "usage", None) is not None:
                        self.n_tokens = getattr(chunk.usage, "completion_tokens", None)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    reasoning, field = delta_reasoning(choice.delta)
                    text = merger.add(reasoning, choice.delta.content, field)
                    if text:
                        yield text
                    if choice.finish_reason:
                        self.finish_reason = str(choice.finish_reason)
            finally:
                resp.close()
        except openai.APIError as exc:
            status = getattr(exc, "status_code", None)
            raise InferenceError(owner._scrub(f"{'HTTP ' + str(status) + ': ' if status else ''}{exc}")) from None
        except httpx.HTTPError as exc:  # e.g. the connection dropped in the middle of the stream
            raise InferenceError(owner._scrub(f"stream broke off: {type(exc).__name__}: {exc}")) from None
        finally:
            client.close()
        if merger.field:
            self.reasoning_field = merger.field
            self.notes.append(f"the server sent the reasoning in delta.{merger.field}; it was merged back as a "
                              "<thinking> block (its exact whitespace and tags are the server's reconstruction)")
        if self.finish_reason is None:
            self.finish_reason = "stop"
            self.notes.append("the server sent no finish_reason; assumed 'stop'")


class OpenAIModel:
    """A model behind an OpenAI-compatible chat endpoint, streamed (`stream`) or collected (`generate`).

    keep_special_tokens=True sends `skip_special_tokens: false` (vLLM and SGLang understand it):
    needed when the served model has the tags as special tokens and no reasoning parser runs.
    include_usage=True asks for the token count in a last chunk (`Generation.n_tokens`); off by
    default because not every server accepts `stream_options`.
    """

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 system_prompt: str | SystemPrompt | None = None, timeout_s: float = 120.0, max_retries: int = 2,
                 keep_special_tokens: bool = False, max_tokens_param: str = "max_tokens",
                 extra_body: dict | None = None, include_usage: bool = False):
        self.model = model or _env("MODEL", "OPENAI_MODEL") or ""
        if not self.model:
            raise ValueError("No model name: pass model=... or set REFLECTION_LAB_INFER_MODEL (the name your "
                             "server serves, e.g. the --served-name of reflection_lab.server or vllm serve)")
        self._url = _Secret(base_url or _env("BASE_URL", "OPENAI_BASE_URL") or "https://api.openai.com/v1")
        self.base_url = safe_url(self._url.get())
        self._key = _Secret(api_key or _env("API_KEY", "OPENAI_API_KEY"))
        self.system_prompt = system_prompt_text(system_prompt)
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.max_tokens_param = max_tokens_param
        self.include_usage = include_usage
        self.extra_body = dict(extra_body or {})
        if keep_special_tokens:
            self.extra_body["skip_special_tokens"] = False

    @property
    def name(self) -> str:
        return self.model

    def __repr__(self) -> str:
        return f"OpenAIModel(model={self.model!r}, base_url={self.base_url!r}, api_key={self._key!r})"

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url,
                "has_api_key": bool(self._key.get()), "system_prompt": self.system_prompt,
                "extra_body": {k: v for k, v in self.extra_body.items() if k == "skip_special_tokens"}}

    def _scrub(self, text: str) -> str:
        for secret in (self._key.get(), self._url.get() if self._url.get() != self.base_url else None):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text[:500]

    def messages(self, prompt: str | Sequence[dict]) -> list[dict]:
        """A user message or a history -> the request's messages (system prompt first, reasoning stripped)."""
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else history_for_model(prompt)
        if self.system_prompt and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        return msgs

    def stream(self, prompt: str | Sequence[dict], *, preset: str | SamplingPreset = "greedy",
               max_new_tokens: int = 256, extra_body: dict | None = None) -> OpenAIStream:
        return OpenAIStream(self, self.messages(prompt), get_preset(preset), max_new_tokens, extra_body)

    def generate(self, prompt: str | Sequence[dict], **kw: Any) -> Generation:
        return self.stream(prompt, **kw).result()


__all__ = ["ENV_PREFIX", "InferenceError", "OpenAIModel", "OpenAIStream", "REASONING_FIELDS", "ReasoningMerger",
           "delta_reasoning"]
