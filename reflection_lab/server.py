"""A small OpenAI-compatible server for offline workshops and for testing clients against real HTTP.

    python -m reflection_lab.server --model tiny-llama --port 8000
    python -m reflection_lab.server --replay default --latency-s 0.2 --port 8000   # shipped teacher replies

Why it exists: a workshop room without internet still gets a "teacher endpoint" (a local model or
the shipped replay data), and the lab's clients are tested against real sockets, including the
failures real endpoints produce: 429 with Retry-After, 5xx, dropped connections, replies slower
than the client's timeout, malformed bodies (a fault plan, settable at start or via /admin/faults).
Routes: POST /v1/chat/completions (JSON or stream=True SSE), GET /v1/models, GET /health,
GET /stats (request counts per sample/task), POST /admin/faults, /admin/config, /admin/reset.
Options mirror vLLM/DeepSeek where clients care: --reasoning-field puts the text inside
<thinking>...</thinking> into message.reasoning_content (or .reasoning) instead of content.
The server never stores or echoes an Authorization header; /stats only counts that one was sent.
What answers is a backend of the llm layer (the same local and replay backends stage 02 uses).
No `from __future__ import annotations` here: FastAPI reads the route functions' annotations at run
time, and `Request` is imported inside `create_app`.
"""

import argparse
import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .format.tags import split_reasoning
from .llm.base import ChatRequest

FAULT_KINDS = ("ok", "429", "500", "503", "drop", "slow", "malformed")


@dataclass
class FaultPlan:
    """Faults to serve: `by_key` lists are consumed per request label first, then `sequence` in order."""

    sequence: list[str] = field(default_factory=list)
    by_key: dict[str, list[str]] = field(default_factory=dict)
    slow_s: float = 5.0
    retry_after: str = "0"

    def next(self, label: str) -> str:
        queue = self.by_key.get(label)
        if queue:
            return str(queue.pop(0))
        return str(self.sequence.pop(0)) if self.sequence else "ok"

    @classmethod
    def from_dict(cls, d: dict) -> "FaultPlan":
        plan = cls(sequence=[str(x) for x in d.get("sequence", [])],
                   by_key={k: [str(x) for x in v] for k, v in d.get("by_key", {}).items()},
                   slow_s=float(d.get("slow_s", 5.0)), retry_after=str(d.get("retry_after", "0")))
        bad = [f for f in plan.sequence + [x for v in plan.by_key.values() for x in v]
               if f not in FAULT_KINDS and not (f.isdigit() and len(f) == 3)]
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}; use {FAULT_KINDS} or an HTTP status like '502'")
        return plan


class Backends:
    """What answers: a local transformers model and/or replay data, each a backend under a served model name."""

    def __init__(self, model: str | None = None, replay: str | None = None, *, served_name: str | None = None,
                 replay_name: str = "replay", batch_size: int = 1):
        from .llm import make_backend

        self.by_name: dict[str, Any] = {}
        if model:
            self.by_name[served_name or model] = make_backend(f"local:{model}", batch_size=batch_size)
        if replay:
            spec = "replay" if replay in ("default", "workshop") else f"replay:{replay}"
            self.by_name[replay_name] = make_backend(spec)
        if not self.by_name:
            raise ValueError("serve at least one of --model or --replay")
        self._locks = {name: threading.Lock() for name in self.by_name}  # one request at a time per backend

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def answer(self, name: str, messages: list[dict], temperature: float, top_p: float, max_tokens: int,
               meta: dict) -> tuple[str, str, int, int]:
        """(text, finish_reason, prompt tokens, completion tokens); ValueError with the backend's reason."""
        backend = self.by_name[name]
        req = ChatRequest.make(backend, messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                               meta=meta)
        with self._locks[name]:
            rep = backend.complete([req])[0]
        if not rep.ok:
            raise ValueError(rep.error)
        usage = rep.usage or {"prompt_tokens": sum(len(m["content"].split()) for m in messages),
                              "completion_tokens": len((rep.text or "").split())}  # replay: words, not tokens
        return rep.text, rep.finish_reason or "stop", usage["prompt_tokens"], usage["completion_tokens"]


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def _label(body: dict, messages: list[dict]) -> tuple[str | None, str | None, str]:
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    sid, task = meta.get("sample_id"), meta.get("task")
    if sid is None and isinstance(body.get("user"), str) and "/" in body["user"]:
        sid, task = body["user"].split("/", 1)
    if sid is not None:
        return sid, task, f"{sid}/{task}"
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return None, None, "prompt:" + digest[:16]


def _content(m: Any) -> dict:
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return {"role": str(m.get("role")), "content": "" if content is None else str(content)}


def create_app(backends: Backends, *, latency_s: float = 0.0, faults: FaultPlan | None = None,
               reasoning_field: str | None = None, stream_chunk_chars: int = 8, max_tokens_cap: int = 2048):
    """The FastAPI app (a factory, so tests and notebooks can build one with their own settings)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="reflection-lab OpenAI-compatible server")
    state = {"plan": faults or FaultPlan(), "requests": Counter(), "ok": Counter(), "faults": Counter(),
             "with_auth": 0, "total": 0, "latency_s": float(latency_s), "reasoning_field": reasoning_field}

    class Dropped(Response):
        """Starts a reply, then hangs up: the client sees the connection drop mid-body."""

        async def __call__(self, scope, receive, send) -> None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
            await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-', "more_body": True})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": list(backends.names)}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "reflection-lab"}
                                           for n in backends.names]}

    @app.get("/stats")
    async def stats() -> dict:
        return {"total": state["total"], "requests_by_key": dict(state["requests"]), "ok_by_key": dict(state["ok"]),
                "faults": dict(state["faults"]), "with_auth": state["with_auth"],
                "plan_left": {"sequence": list(state["plan"].sequence), "by_key": state["plan"].by_key}}

    @app.post("/admin/faults")
    async def set_faults(request: Request):
        try:
            state["plan"] = FaultPlan.from_dict(await request.json())
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, str(exc))
        return {"status": "ok"}

    @app.post("/admin/config")
    async def set_config(request: Request):
        """Change latency_s / reasoning_field of a running server (tests reuse one server)."""
        body = await request.json()
        if body.get("reasoning_field") not in (None, "reasoning_content", "reasoning"):
            return _error(400, "reasoning_field must be null, 'reasoning_content' or 'reasoning'")
        for k in ("latency_s", "reasoning_field"):
            if k in body:
                state[k] = body[k]
        return {"status": "ok", "latency_s": state["latency_s"], "reasoning_field": state["reasoning_field"]}

    @app.post("/admin/reset")
    async def reset() -> dict:
        for k in ("requests", "ok", "faults"):
            state[k] = Counter()
        state["with_auth"] = state["total"] = 0
        state["plan"] = FaultPlan()
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
            messages = [_content(m) for m in body["messages"]]
            model = str(body["model"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, "body must be JSON with 'model' and a 'messages' list")
        if int(body.get("n") or 1) != 1:
            return _error(400, "only n=1 is supported")
        sid, task, label = _label(body, messages)
        state["total"] += 1
        state["requests"][label] += 1
        if request.headers.get("authorization"):
            state["with_auth"] += 1
        plan: FaultPlan = state["plan"]
        fault = plan.next(label)
        state["faults"][fault] += 1
        if state["latency_s"]:
            await asyncio.sleep(float(state["latency_s"]))
        if fault == "drop":
            return Dropped()
        if fault == "malformed":
            return Response(b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess',
                            media_type="application/json")
        if fault.isdigit():
            headers = {"Retry-After": plan.retry_after} if fault in ("429", "503") else None
            return _error(int(fault), f"injected fault {fault}", "server_error" if fault != "429" else "rate_limit",
                          headers)
        if fault == "slow":
            await asyncio.sleep(plan.slow_s)
            if await request.is_disconnected():
                return Response(status_code=499)
        if model not in backends.by_name:
            return _error(404, f"model {model!r} is not served here; served: {', '.join(backends.names)}",
                          "not_found_error")
        max_tokens = min(int(body.get("max_completion_tokens") or body.get("max_tokens") or 256), max_tokens_cap)
        meta = {k: v for k, v in (("sample_id", sid), ("task", task)) if v is not None}
        try:
            text, finish, n_prompt, n_out = await run_in_threadpool(
                backends.answer, model, messages, float(body.get("temperature") or 0.0),
                float(body.get("top_p") or 1.0), max_tokens, meta)
        except ValueError as exc:
            if backends.by_name[model].kind == "replay":
                return _error(404, f"{exc} (send sample_id and task in 'metadata')", "not_found_error")
            return _error(400, str(exc))
        state["ok"][label] += 1
        reasoning_field = state["reasoning_field"]
        reasoning, content = split_reasoning(text) if reasoning_field else (None, text)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_sse(cid, created, model, reasoning, content, finish, usage if include_usage
                                          else None, reasoning_field, stream_chunk_chars),
                                     media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning_field:
            message[reasoning_field] = reasoning
        return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage})

    return app


async def _sse(cid: str, created: int, model: str, reasoning: str | None, content: str, finish: str,
               usage: dict | None, reasoning_field: str | None, chunk: int):
    """Server-sent events the way OpenAI streams: role first, then small deltas, finish, [DONE]."""
    def event(delta: dict, finish_reason: str | None = None, **extra: Any) -> bytes:
        payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    yield event({"role": "assistant", "content": ""})
    for name, text in ((reasoning_field, reasoning), ("content", content)):
        if name and text:
            for i in range(0, len(text), max(1, chunk)):
                yield event({name: text[i:i + chunk]})
                await asyncio.sleep(0)
    yield event({}, finish)
    if usage is not None:
        payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                   "usage": usage}
        yield f"data: {json.dumps(payload)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None, prog: str = "python -m reflection_lab.server") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model spec (tiny-llama, smollm2-135m, a path or hub id) to serve")
    ap.add_argument("--served-name", help="model name clients send (default: the --model spec)")
    ap.add_argument("--replay", help="serve replay data: 'default' (the shipped workshop replies) or a .jsonl path")
    ap.add_argument("--replay-name", default="replay", help="model name of the replay backend (default: replay)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency-s", type=float, default=0.0, help="fixed added latency per request (benchmarks)")
    ap.add_argument("--reasoning-field", choices=["reasoning_content", "reasoning"],
                    help="return <thinking>...</thinking> separately in this message/delta field")
    ap.add_argument("--faults", default="", help="comma-separated fault sequence, e.g. 429,500,drop,slow,malformed,ok")
    ap.add_argument("--fault-file", help="JSON {sequence: [...], by_key: {'<sample>/<task>': [...]}, slow_s, retry_after}")
    ap.add_argument("--slow-s", type=float, default=5.0, help="how long a 'slow' fault waits")
    ap.add_argument("--retry-after", default="0", help="Retry-After header of injected 429/503 replies")
    ap.add_argument("--stream-chunk-chars", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args(argv)
    if not args.model and not args.replay:
        ap.error("serve at least one of --model MODEL or --replay default (the workshop's teacher replies)")
    plan_dict: dict = json.loads(open(args.fault_file).read()) if args.fault_file else {}
    plan_dict.setdefault("sequence", [f for f in args.faults.split(",") if f])
    plan_dict.setdefault("slow_s", args.slow_s)
    plan_dict.setdefault("retry_after", args.retry_after)
    backends = Backends(args.model, args.replay, served_name=args.served_name, replay_name=args.replay_name,
                        batch_size=args.batch_size)
    app = create_app(backends, latency_s=args.latency_s, faults=FaultPlan.from_dict(plan_dict),
                     reasoning_field=args.reasoning_field, stream_chunk_chars=args.stream_chunk_chars)
    import uvicorn

    print(f"serving {', '.join(backends.names)} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
