"""Stage 06 helpers: generate Reflection-format answers and read them as they stream.

Three backends share one shape (a `stream(prompt, preset=..., max_new_tokens=...)` method that
returns a `TextStream` of text chunks, and `generate(...)` that returns a `Generation`):

* `LocalModel` (inference_local.py): a transformers model, streamed through a streamer that keeps
  the six tags even when they are special tokens, and batched, left-padded generation.
* `OpenAIModel` (inference_openai.py): any OpenAI-compatible endpoint with stream=True; reasoning
  that a server returns in a separate `reasoning_content` / `reasoning` field is merged back into
  a `<thinking>` block so the same parser reads every backend.
* `ScriptedModel` (here): replays fixed texts in small chunks; for demos and tests without a model.

Why one chunk protocol: the live viewer (viewer.py), the multi-turn `Chat` and the stage
function (`run_infer`, inference_stage.py) then work with any backend, and the parser
(tags.StreamParser) sees the same text whether it came from a GPU, a server or a test.
Truncation policy: a finish_reason of "length" (or a cancelled stream) parses with
`truncated=True`, so reasoning cut off mid-thought is never taken as the answer.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from .tags import ParsedResponse, StreamParser, parse, strip_reasoning

# finish reasons after which the text is cut off (the parser is told truncated=True)
TRUNCATING = ("length", "cancelled")


# --- presets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingPreset:
    """Named decoding settings. temperature 0 means greedy (deterministic, used for evaluation)."""

    name: str
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = 0
    note: str = ""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def hf_kwargs(self) -> dict[str, Any]:
        """Arguments for transformers' `generate`."""
        kw: dict[str, Any] = {"do_sample": False} if self.greedy else {
            "do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or 0}
        if self.repetition_penalty:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw

    def openai_kwargs(self) -> dict[str, Any]:
        """Arguments for an OpenAI-compatible chat completion."""
        kw: dict[str, Any] = {"temperature": max(0.0, self.temperature), "top_p": self.top_p}
        if not self.greedy and self.seed is not None:
            kw["seed"] = self.seed
        return kw

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SamplingPreset] = {
    "greedy": SamplingPreset("greedy", note="deterministic; the default for evaluation"),
    "reflection": SamplingPreset("reflection", temperature=0.7, top_p=0.95,
                                 note="the settings Reflection 70B's model card suggested"),
    "creative": SamplingPreset("creative", temperature=1.0, top_p=0.95, top_k=50,
                               note="more varied text; expect more format slips"),
}


def get_preset(preset: str | SamplingPreset) -> SamplingPreset:
    if isinstance(preset, SamplingPreset):
        return preset
    if preset not in PRESETS:
        raise KeyError(f"unknown sampling preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


@dataclass(frozen=True)
class SystemPrompt:
    """A named system message. `text=None` sends none (what a student trained without one saw)."""

    name: str
    text: str | None
    note: str = ""


# The lab's own wording. It names the tags because a model that was not fine-tuned on the format
# can only learn them from here; when the tags are special tokens the prompt contains them as such.
REFLECTION_PROMPT = SystemPrompt(
    "reflection",
    "Before you answer, work through the problem step by step between <thinking> and </thinking>. "
    "If you spot an error in that reasoning, write the correction between <reflection> and "
    "</reflection>, still inside the thinking, then carry on. After </thinking>, put only the final "
    "answer between <output> and </output>.",
    note="asks a base model for the format; compare it with the fine-tuned student")
SYSTEM_PROMPTS: dict[str, SystemPrompt] = {
    "reflection": REFLECTION_PROMPT,
    "none": SystemPrompt("none", None, note="no system message"),
}


def system_prompt_text(prompt: str | SystemPrompt | None) -> str | None:
    """A preset name, a SystemPrompt, literal text or None -> the text to send (or None)."""
    if prompt is None or isinstance(prompt, SystemPrompt):
        return prompt.text if prompt else None
    return SYSTEM_PROMPTS[prompt].text if prompt in SYSTEM_PROMPTS else prompt


# --- results and streams ---------------------------------------------------------------------------


def parsed_record(p: ParsedResponse) -> dict[str, Any]:
    """The parsed fields written to 06_infer/generations.jsonl (diagnostics as stable codes)."""
    return {"thinking": p.thinking, "reflections": [b.text for b in p.reflections], "output": p.output,
            "answer": p.answer, "output_complete": p.output_complete, "well_formed": p.well_formed,
            "diagnostics": p.codes}


@dataclass
class Generation:
    """One finished generation: the raw text (tags kept), why it stopped, and the parse."""

    text: str
    finish_reason: str  # "stop", "length", "cancelled", "error" (or what a server reported)
    parsed: ParsedResponse
    model: str = ""
    n_tokens: int | None = None
    reasoning_field: str | None = None  # set when a server sent reasoning in this separate delta field
    error: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.finish_reason in TRUNCATING

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"model": self.model, "text": self.text, "finish_reason": self.finish_reason,
                               "n_tokens": self.n_tokens, "parsed": parsed_record(self.parsed)}
        if self.reasoning_field:
            rec["reasoning_field"] = self.reasoning_field
        if self.error:
            rec["error"] = self.error
        return rec


def finish_parser(parser: StreamParser, finish_reason: str | None) -> list:
    """Finish a live parser with the truncation flag that the finish reason implies.

    Why here: the finish reason is only known at the end of a stream, after the parser was built.
    """
    parser.truncated = finish_reason in TRUNCATING
    return parser.finish()


class TextStream:
    """Text chunks of one generation as they arrive; after the last one: finish_reason, text, result().

    Subclasses implement `_chunks`. `close()` asks the backend to stop early (finish "cancelled").
    """

    model: str = ""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.reasoning_field: str | None = None
        self.n_tokens: int | None = None
        self.error: str | None = None
        self.notes: list[str] = []
        self._parts: list[str] = []
        self._t0 = time.perf_counter()
        self._seconds: float | None = None
        self._iter: Iterator[str] | None = None

    def _chunks(self) -> Iterator[str]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def _run(self) -> Iterator[str]:
        inner = self._chunks()
        try:
            for chunk in inner:
                if chunk:
                    self._parts.append(chunk)
                    yield chunk
        except GeneratorExit:
            self.finish_reason = self.finish_reason or "cancelled"
            raise
        except Exception as exc:
            self.finish_reason, self.error = "error", self.error or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            close = getattr(inner, "close", None)
            if close:
                close()  # a backend's own clean-up (stop a worker thread, close a connection) runs now
            self._seconds = time.perf_counter() - self._t0

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]
        self.finish_reason = self.finish_reason or "cancelled"

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def result(self) -> Generation:
        """Read what is left, then parse the whole text (equal to a live StreamParser's result)."""
        for _ in self:
            pass
        finish = self.finish_reason or "stop"
        return Generation(self.text, finish, parse(self.text, truncated=finish in TRUNCATING), model=self.model,
                          n_tokens=self.n_tokens, reasoning_field=self.reasoning_field, error=self.error,
                          seconds=self._seconds or 0.0, notes=list(self.notes))


class ScriptedStream(TextStream):
    def __init__(self, text: str, *, chunk_chars: int = 6, delay_s: float = 0.0, finish_reason: str = "stop",
                 model: str = "scripted"):
        super().__init__()
        self._text, self._n, self._delay, self._finish = text, max(1, chunk_chars), delay_s, finish_reason
        self.model = model

    def _chunks(self) -> Iterator[str]:
        for i in range(0, len(self._text), self._n):
            if self._delay:
                time.sleep(self._delay)
            yield self._text[i:i + self._n]
        self.finish_reason = self._finish


class ScriptedModel:
    """Replays fixed answers (one per call, cycling) in small chunks: the viewer without a model."""

    def __init__(self, texts: str | Sequence[str], *, name: str = "scripted", chunk_chars: int = 6,
                 delay_s: float = 0.0, finish_reason: str = "stop"):
        self.texts = [texts] if isinstance(texts, str) else list(texts)
        self.name, self.chunk_chars, self.delay_s, self.finish_reason = name, chunk_chars, delay_s, finish_reason
        self.calls: list[Any] = []

    def stream(self, prompt: Any, *, preset: str | SamplingPreset = "greedy", max_new_tokens: int = 256
               ) -> ScriptedStream:
        self.calls.append(prompt)
        text = self.texts[(len(self.calls) - 1) % len(self.texts)]
        return ScriptedStream(text, chunk_chars=self.chunk_chars, delay_s=self.delay_s,
                              finish_reason=self.finish_reason, model=self.name)

    def generate(self, prompt: Any, **kw: Any) -> Generation:
        return self.stream(prompt, **kw).result()


def open_stream(backend: Any, prompt: Any, preset: str | SamplingPreset, max_new_tokens: int) -> Iterable[str]:
    """A backend's stream, or the iterable a plain callable `fn(prompt, preset, max_new_tokens)` returns."""
    if hasattr(backend, "stream"):
        return backend.stream(prompt, preset=preset, max_new_tokens=max_new_tokens)
    return backend(prompt, get_preset(preset), max_new_tokens)


def backend_name(backend: Any) -> str:
    return str(getattr(backend, "name", None) or getattr(backend, "model", None) or
               getattr(backend, "__name__", None) or type(backend).__name__)


# --- multi-turn ------------------------------------------------------------------------------------


def history_for_model(messages: Sequence[dict], *, keep_reasoning: bool = False) -> list[dict]:
    """A copy of a chat history ready to send again: assistant turns keep only their output.

    Why: earlier reasoning would crowd the context and teach the model to copy it (DeepSeek's API
    rejects it outright); `tags.strip_reasoning` keeps the first <output> (or the untagged text).
    """
    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "assistant" and not keep_reasoning and isinstance(m.get("content"), str):
            m["content"] = strip_reasoning(m["content"])
        out.append(m)
    return out


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


# --- names that live in the backend modules (imported on first use: no torch or openai at import) ---

_LAZY = {
    "LocalModel": "inference_local", "LocalStream": "inference_local", "TagKeepingStreamer": "inference_local",
    "TokenPolicy": "inference_local", "token_policy": "inference_local",
    "OpenAIModel": "inference_openai", "OpenAIStream": "inference_openai", "ReasoningMerger": "inference_openai",
    "InferenceError": "inference_openai",
    "run_infer": "inference_stage", "load_generations": "inference_stage", "student_for_run": "inference_stage",
}


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from .inference_local import LocalModel, LocalStream, TagKeepingStreamer, TokenPolicy, token_policy
    from .inference_openai import InferenceError, OpenAIModel, OpenAIStream, ReasoningMerger
    from .inference_stage import load_generations, run_infer, student_for_run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Chat", "Generation", "InferenceError", "LocalModel", "LocalStream", "OpenAIModel", "OpenAIStream",
           "PRESETS", "REFLECTION_PROMPT", "ReasoningMerger", "SYSTEM_PROMPTS", "SamplingPreset", "ScriptedModel",
           "ScriptedStream", "SystemPrompt", "TRUNCATING", "TagKeepingStreamer", "TextStream", "TokenPolicy",
           "backend_name", "finish_parser", "get_preset", "history_for_model", "load_generations", "open_stream",
           "parsed_record", "run_infer", "student_for_run", "system_prompt_text", "token_policy"]
