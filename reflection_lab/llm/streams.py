"""Text as it streams from any backend, and the parsed `Generation` it ends as.

Why one chunk protocol: the live viewers, the multi-turn `Chat`, stage 06 and stage 07 then work
with any backend, and the parser (format.tags.StreamParser) sees the same text whether it came
from a GPU, a server or a test. Truncation policy: a finish_reason of "length" (or a cancelled
stream) parses with `truncated=True`, so reasoning cut off mid-thought is never taken as the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..format.tags import ParsedResponse, StreamParser, parse
from .sampling import SamplingPreset, get_preset

# finish reasons after which the text is cut off (the parser is told truncated=True)
TRUNCATING = ("length", "cancelled")


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


def open_stream(backend: Any, prompt: Any, preset: str | SamplingPreset, max_new_tokens: int) -> Iterable[str]:
    """A backend's stream, or the iterable a plain callable `fn(prompt, preset, max_new_tokens)` returns."""
    if hasattr(backend, "stream"):
        return backend.stream(prompt, preset=preset, max_new_tokens=max_new_tokens)
    return backend(prompt, get_preset(preset), max_new_tokens)


def backend_name(backend: Any) -> str:
    """The name a backend (or a plain generating function) goes by in labels and results."""
    model = getattr(backend, "model", None)
    return str(model if isinstance(model, str) and model else getattr(backend, "__name__", None) or
               type(backend).__name__)
