"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, the lab's own server).

Why our own retry loop: the client's built-in retries are invisible, so a run could not say how
many attempts a reply took; here they are counted, backed off exponentially with jitter, honour
Retry-After, and end in an error reply (never an exception) so every sample is accounted for.
Why a worker thread: a Jupyter cell already runs an event loop, and `asyncio.run` refuses to
start a second one in the same thread.

The API key is held in a `_Secret` (its repr is `***`), never written to describe(), a journal,
a manifest or an error message (server messages are scrubbed of it before they are kept).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from .base import ChatReply, ChatRequest, OnReply, error_reply

ENV_PREFIX = "REFLECTION_LAB_TEACHER_"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Secret:
    """Holds a string without ever showing it (repr, str, vars() all print ***)."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "***" if self._value else "None"

    __str__ = __repr__


def _env(name: str, fallback: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or (os.environ.get(fallback) if fallback else None)


def safe_url(url: str | None) -> str | None:
    """The base URL without user:password, query or fragment (they can carry tokens)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OpenAITeacher:
    """Chat completions through the official `openai` client (AsyncOpenAI), concurrently.

    Settings come from arguments, else REFLECTION_LAB_TEACHER_BASE_URL / _MODEL / _API_KEY, else
    OPENAI_BASE_URL / OPENAI_MODEL / OPENAI_API_KEY. send_meta=True sends the sample id and task as
    request `metadata` (the lab's server uses it to serve replay data; leave it off for public APIs);
    left unset it follows REFLECTION_LAB_TEACHER_SEND_META=1, so the CLI can reach the replay backend.
    """

    name = "openai"

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 concurrency: int = 8, send_meta: bool | None = None, max_tokens_param: str = "max_tokens",
                 extra_body: dict | None = None):
        self.model = model or _env("MODEL", "OPENAI_MODEL") or ""
        if not self.model:
            raise ValueError("No teacher model: pass model=... or set REFLECTION_LAB_TEACHER_MODEL "
                             "(e.g. gpt-4o-mini, or the name your vLLM / llama.cpp server serves).")
        # The full URL may carry user:password or a ?token=: kept hidden like the key; base_url shows a safe form.
        self._url = _Secret(base_url or _env("BASE_URL", "OPENAI_BASE_URL") or "https://api.openai.com/v1")
        self.base_url = safe_url(self._url.get())
        self._key = _Secret(api_key or _env("API_KEY", "OPENAI_API_KEY"))
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.concurrency = int(concurrency)
        if send_meta is None:
            send_meta = (_env("SEND_META") or "").strip().lower() in ("1", "true", "yes")
        self.send_meta = send_meta
        self.max_tokens_param = max_tokens_param
        self.extra_body = dict(extra_body or {})
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAITeacher(model={self.model!r}, base_url={self.base_url!r}, api_key={self._key!r})"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url,
                "timeout_s": self.timeout_s, "max_retries": self.max_retries,
                "has_api_key": bool(self._key.get()), "max_tokens_param": self.max_tokens_param}

    # -- error text without secrets ---------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in (self._key.get(), self._url.get() if self._url.get() != self.base_url else None):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text[:300]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff_s, max(0.0, retry_after)) + self._rng.uniform(0, 0.1)
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.0)

    # -- the calls --------------------------------------------------------------------------------
    def generate(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None, *,
                 concurrency: int | None = None) -> list[ChatReply]:
        """Blocking entry point; safe inside a running event loop (Jupyter) via a worker thread."""
        cancel = threading.Event()
        coro_args = (list(requests), on_reply, concurrency or self.concurrency, cancel)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(*coro_args))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher")
        try:
            return pool.submit(asyncio.run, self.agenerate(*coro_args)).result()
        except BaseException:
            cancel.set()  # an interrupted cell: start no new request; replies in flight still reach on_reply
            raise
        finally:
            pool.shutdown(wait=False)

    async def agenerate(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None,
                        concurrency: int = 8, cancel: threading.Event | None = None) -> list[ChatReply]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(api_key=self._key.get() or "EMPTY", base_url=self._url.get(), timeout=self.timeout_s,
                             max_retries=0)
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
                                 latency_s=time.perf_counter() - t0, meta=req.meta)
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
            return False, None, ChatReply(key=req.key, text=text or "", finish_reason=choice.finish_reason)
        except openai.APITimeoutError:
            return True, None, f"timeout: no reply within {self.timeout_s:g} s"
        except openai.APIConnectionError as exc:
            return True, None, self._scrub(f"connection error: {exc.__cause__ or exc}")
        except openai.APIStatusError as exc:
            status = exc.status_code
            retry_after = _retry_after(exc.response.headers.get("retry-after")) if status == 429 else None
            return status in RETRY_STATUS, retry_after, self._scrub(f"HTTP {status}: {_short(exc)}")
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            return True, None, self._scrub(f"malformed reply: {type(exc).__name__}: {exc}")


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
