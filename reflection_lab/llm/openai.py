"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, llama.cpp, Ollama, TGI, the lab's own server).

One backend for both uses: `complete` asks many requests concurrently (the teacher of stage 02, the
judge of stage 07); `stream` streams one generation (stage 06's viewers, `Chat`).

Settings come from arguments, else the role's environment variables (role "teacher":
REFLECTION_LAB_TEACHER_BASE_URL / _MODEL / _API_KEY / _SEND_META / _TIMEOUT_S / _MAX_RETRIES /
_CONCURRENCY; role "generator": REFLECTION_LAB_INFER_*), else OPENAI_BASE_URL / OPENAI_MODEL /
OPENAI_API_KEY. A request that times out is not sent again (see `_attempt`).

Why our own retry loop in `complete`: the client's built-in retries are invisible, so a run could not
say how many attempts a reply took; here they are counted, backed off exponentially with jitter,
honour Retry-After, and end in an error reply (never an exception) so every sample is accounted for.
Why a worker thread: a Jupyter cell already runs an event loop, and `asyncio.run` refuses to start a
second one in the same thread.

Why the merge in `stream`: servers started with a reasoning parser (vLLM/SGLang `--reasoning-parser`,
llama.cpp `--reasoning-format`, Ollama, the lab's `--reasoning-field`) move the text of the
`<thinking>` block out of `content` into `delta.reasoning_content` (older vLLM, DeepSeek, llama.cpp)
or `delta.reasoning` (vLLM since late 2025, Ollama). `ReasoningMerger` wraps that text in
`<thinking>` ... `</thinking>` again before the content, so the one parser reads every server; the
result names the field it came from (`Generation.reasoning_field`) and says so in `notes`.

The API key (and a URL carrying credentials) is held in a `Secret` (its repr is `***`): never in
describe(), a journal, a manifest, a result or an error message (server messages are scrubbed).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from ..core.errors import LabError
from ..format.chat import SystemPrompt, history_for_model, system_prompt_text
from .base import ChatReply, ChatRequest, OnReply, error_reply
from .sampling import SamplingPreset, StopCutter, get_preset
from .streams import Generation, TextStream

ENV_PREFIXES = {"teacher": "REFLECTION_LAB_TEACHER_", "generator": "REFLECTION_LAB_INFER_"}
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
REASONING_FIELDS = ("reasoning_content", "reasoning")


class InferenceError(LabError, RuntimeError):
    """A stream from the endpoint failed; the message is free of the key and of credentials in the URL."""


class Secret:
    """Holds a string without ever showing it (repr, str, vars() all print ***)."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "***" if self._value else "None"

    __str__ = __repr__


def safe_url(url: str | None) -> str | None:
    """The base URL without user:password, query or fragment (they can carry tokens)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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


class OpenAIModel:
    """Chat completions through the official `openai` client: concurrent `complete`, streamed `stream`.

    send_meta=True sends the sample id and task as request `metadata` (the lab's server uses it to serve
    replay data; leave it off for public APIs); left unset it follows <role prefix>SEND_META=1, so the
    CLI can reach the replay backend. keep_special_tokens=True sends `skip_special_tokens: false` (vLLM
    and SGLang understand it): needed when the served model has the tags as special tokens and no
    reasoning parser runs. include_usage=True asks for the token count in a last stream chunk
    (`Generation.n_tokens`); off by default because not every server accepts `stream_options`.
    system_prompt is sent before a streamed prompt that has none (requests to `complete` carry their own).
    """

    kind = "openai"

    def __init__(self, model: str | None = None, *, role: str = "teacher", base_url: str | None = None,
                 api_key: str | None = None, timeout_s: float | None = None, max_retries: int | None = None,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0, concurrency: int | None = None,
                 send_meta: bool | None = None,
                 stream_retries: int = 2,
                 max_tokens_param: str = "max_tokens", extra_body: dict | None = None,
                 system_prompt: str | SystemPrompt | None = None, keep_special_tokens: bool = False,
                 include_usage: bool = False):
        if role not in ENV_PREFIXES:
            raise ValueError(f"role must be one of {sorted(ENV_PREFIXES)}, not {role!r}")
        self.role = role
        self.model = model or self._env("MODEL", "OPENAI_MODEL") or ""
        if not self.model:
            raise ValueError(f"No model name: write it in the spec ('openai:<model>'), pass model=... (a stage: "
                             f"ReflectConfig.teacher_model, --judge-model) or set {ENV_PREFIXES[role]}MODEL (e.g. "
                             "gpt-4o-mini, the name your vLLM / llama.cpp server serves, or the lab's --served-name).")
        # The full URL may carry user:password or a ?token=: kept hidden like the key; base_url shows a safe form.
        self._url = Secret(base_url or self._env("BASE_URL", "OPENAI_BASE_URL") or "https://api.openai.com/v1")
        self.base_url = safe_url(self._url.get())
        self._key = Secret(api_key or self._env("API_KEY", "OPENAI_API_KEY"))
        self.timeout_s = float(timeout_s if timeout_s is not None else self._env("TIMEOUT_S") or 120.0)
        self.max_retries = int(max_retries if max_retries is not None else self._env("MAX_RETRIES") or 6)
        self.stream_retries = int(stream_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.concurrency = int(concurrency if concurrency is not None else self._env("CONCURRENCY") or 8)
        if send_meta is None:
            send_meta = (self._env("SEND_META") or "").strip().lower() in ("1", "true", "yes")
        self.send_meta = send_meta
        self.max_tokens_param = max_tokens_param
        self.extra_body = dict(extra_body or {})
        if keep_special_tokens:
            self.extra_body["skip_special_tokens"] = False
        self.system_prompt = system_prompt_text(system_prompt)
        self.include_usage = include_usage
        self._rng = random.Random()

    def _env(self, name: str, fallback: str | None = None) -> str | None:
        return os.environ.get(ENV_PREFIXES[self.role] + name) or (os.environ.get(fallback) if fallback else None)

    def __repr__(self) -> str:
        return f"OpenAIModel(model={self.model!r}, base_url={self.base_url!r}, api_key={self._key!r})"

    def describe(self) -> dict[str, Any]:
        out = {"backend": self.kind, "model": self.model, "base_url": self.base_url, "timeout_s": self.timeout_s,
               "max_retries": self.max_retries, "has_api_key": bool(self._key.get()),
               "max_tokens_param": self.max_tokens_param}
        if self.system_prompt:
            out["system_prompt"] = self.system_prompt
        if "skip_special_tokens" in self.extra_body:
            out["extra_body"] = {"skip_special_tokens": self.extra_body["skip_special_tokens"]}
        return out

    def _secrets(self) -> list[str]:
        """The key, a URL that carries credentials, and those credentials as written and as a Basic-auth header."""
        url = self._url.get() or ""
        parts = urlsplit(url)
        found = [self._key.get() or "", url if url != self.base_url else ""]
        if parts.username is not None:
            userinfo = parts.netloc.rsplit("@", 1)[0]
            found += [userinfo, base64.b64encode(userinfo.encode()).decode(),
                      base64.b64encode(unquote(userinfo).encode()).decode()]
        return sorted({x for x in found if len(x) >= 4}, key=len, reverse=True)

    def _hide(self, text: str) -> str:
        """The text with every secret replaced by *** (a server may echo the auth header into its reply)."""
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _scrub(self, text: str) -> str:
        """An error text without secrets, short enough for a log line."""
        return self._hide(text)[:500]

    def _client_args(self) -> dict[str, Any]:
        return {"api_key": self._key.get() or "EMPTY", "base_url": self._url.get(), "timeout": self.timeout_s}

    # -- many requests at once ---------------------------------------------------------------------

    def complete(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None, *,
                 concurrency: int | None = None) -> list[ChatReply]:
        """Blocking entry point; safe inside a running event loop (Jupyter) via a worker thread."""
        cancel = threading.Event()
        coro_args = (list(requests), on_reply, concurrency or self.concurrency, cancel)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.acomplete(*coro_args))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-backend")
        try:
            return pool.submit(asyncio.run, self.acomplete(*coro_args)).result()
        except BaseException:
            cancel.set()  # an interrupted cell: start no new request; replies in flight still reach on_reply
            raise
        finally:
            pool.shutdown(wait=False)

    async def acomplete(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None,
                        concurrency: int = 8, cancel: threading.Event | None = None) -> list[ChatReply]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(**self._client_args(), max_retries=0)
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(req: ChatRequest) -> ChatReply:
            rep = await self._ask(client, sem, req, cancel)
            if on_reply and rep.error != "cancelled":
                on_reply(rep)
            return rep

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await client.close()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff_s, max(0.0, retry_after)) + self._rng.uniform(0, 0.1)
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.0)

    async def _ask(self, client: Any, sem: asyncio.Semaphore, req: ChatRequest,
                   cancel: threading.Event | None = None) -> ChatReply:
        t0 = time.perf_counter()
        last = "no attempt made"
        for attempt in range(1, self.max_retries + 2):
            async with sem:
                if cancel is not None and cancel.is_set():
                    return error_reply(req, "cancelled", attempts=attempt - 1)
                retry, retry_after, result = await self._attempt(client, req)
            if isinstance(result, ChatReply):
                return ChatReply(key=req.key, text=result.text, finish_reason=result.finish_reason, attempts=attempt,
                                 latency_s=time.perf_counter() - t0, meta=req.meta, usage=result.usage)
            last = result
            if not retry or attempt > self.max_retries:
                break
            await asyncio.sleep(self._backoff(attempt, retry_after))
        return error_reply(req, last, attempts=attempt, latency_s=time.perf_counter() - t0)

    async def _attempt(self, client: Any, req: ChatRequest) -> tuple[bool, float | None, ChatReply | str]:
        """One HTTP call: (retryable?, Retry-After seconds, reply or error text)."""
        import openai

        kwargs: dict[str, Any] = {"model": self.model, "messages": list(req.messages), "temperature": req.temperature,
                                  "top_p": req.top_p, self.max_tokens_param: req.max_tokens}
        if self.send_meta and req.meta:
            kwargs["metadata"] = {k: str(v) for k, v in req.meta.items() if v is not None}
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        try:
            resp = await client.chat.completions.create(**kwargs)
            choice = resp.choices[0]
            text = choice.message.content
            if text is not None and not isinstance(text, str):
                raise TypeError(f"message content is {type(text).__name__}")
            usage = getattr(resp, "usage", None)
            counted = ({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
                       if usage is not None else None)
            return False, None, ChatReply(key=req.key, text=self._hide(text or ""),
                                          finish_reason=choice.finish_reason, usage=counted)
        except openai.APITimeoutError:
            # not sent again: a server that answers one request at a time is still working on it, and a copy
            # would only queue behind it. The next run of the stage asks again.
            prefix = ENV_PREFIXES[self.role]
            return False, None, (f"timeout: no reply within {self.timeout_s:g} s (not sent again: the server may "
                                 f"still be working on it); raise the timeout ({prefix}TIMEOUT_S, --timeout) or "
                                 f"lower the concurrency to what the server sustains, then rerun")
        except openai.APIConnectionError as exc:
            return True, None, self._scrub(f"connection error: {exc.__cause__ or exc}")[:300]
        except openai.APIStatusError as exc:
            status = exc.status_code
            retry_after = _retry_after(exc.response.headers.get("retry-after")) if status == 429 else None
            return status in RETRY_STATUS, retry_after, self._scrub(f"HTTP {status}: {_short(exc)}")[:300]
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            return True, None, self._scrub(f"malformed reply: {type(exc).__name__}: {exc}")[:300]

    # -- one streamed generation -------------------------------------------------------------------

    def messages(self, prompt: str | Sequence[dict]) -> list[dict]:
        """A user message or a history -> the request's messages (system prompt first, reasoning stripped)."""
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else history_for_model(prompt)
        if self.system_prompt and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        return msgs

    def stream(self, prompt: str | Sequence[dict], *, preset: str | SamplingPreset = "greedy",
               max_new_tokens: int = 256, extra_body: dict | None = None) -> "OpenAIStream":
        return OpenAIStream(self, self.messages(prompt), get_preset(preset), max_new_tokens, extra_body)

    def generate(self, prompt: str | Sequence[dict], **kw: Any) -> Generation:
        return self.stream(prompt, **kw).result()


class OpenAIStream(TextStream):
    def __init__(self, owner: OpenAIModel, messages: list[dict], preset: SamplingPreset, max_new_tokens: int,
                 extra_body: dict | None):
        super().__init__()
        self.model = owner.model
        self._args = (owner, messages, preset, max_new_tokens, extra_body)

    def _chunks(self) -> Iterator[str]:
        import httpx
        import openai

        owner, messages, preset, max_new, extra_body = self._args
        # the client's own retries, before the first chunk only (a stream cannot be resumed mid-way)
        client = openai.OpenAI(**owner._client_args(), max_retries=owner.stream_retries)
        merger = ReasoningMerger()
        cutter = StopCutter(preset.stop)  # cut here rather than send `stop`: the server would drop the tag
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
                    text = cutter.feed(merger.add(reasoning, choice.delta.content, field) or "")
                    if text:
                        yield text
                    if cutter.stopped:
                        self.finish_reason = "stop"  # closing the response below tells the server to stop
                        self.notes.append(f"ended at the stop text {cutter.stop}; the server's token count "
                                          "comes after it, so n_tokens is unknown")
                        break
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


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _short(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else body.get("message")
        if msg:
            return str(msg)
    return str(getattr(exc, "message", exc))


__all__ = ["ENV_PREFIXES", "InferenceError", "OpenAIModel", "OpenAIStream", "REASONING_FIELDS", "ReasoningMerger",
           "Secret", "delta_reasoning", "safe_url"]
