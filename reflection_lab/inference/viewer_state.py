"""The plain-Python side of the live viewers: what each pane shows, and how chunks reach it.

Why apart from the widgets: tests (and scripts) drive `StreamView` directly, feeding chunks and
reading pane contents, with no browser and no ipywidgets. `StreamView` feeds `tags.StreamParser`
and keeps the panes from its events (thinking with a mark where each reflection sits, one box per
reflection, the output, text outside the tags, diagnostics). `Throttle` limits redraws (default
every 50 ms: a widget update per token would flood the front end). `drive_all` reads several
streams in turn, one chunk each, so a comparison fills both columns together.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from ..format.tags import (ERROR, INFO, OUTPUT, OUTSIDE, REFLECTION, THINKING, WARNING, BlockEnd, BlockStart,
                           Diagnostic, DiagnosticEvent, Event, ParsedResponse, StreamParser, TextDelta, parse)
from ..llm.streams import Generation, finish_parser

TEXT = "white-space:pre-wrap;word-break:break-word;margin:0;font-family:inherit;"
COLORS = {THINKING: "#eef3fb", REFLECTION: "#fff4d6", OUTPUT: "#e6f6e6", OUTSIDE: "#f3f3f3"}
SEVERITY = {ERROR: "#b00020", WARNING: "#a05a00", INFO: "#555"}
CURSOR = '<span style="opacity:.6">\u258c</span>'

class Throttle:
    """True at most once per `interval_s` (plus whenever forced): how often panes are redrawn."""

    def __init__(self, interval_s: float = 0.05, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self.last = float("-inf")
        self.count = 0

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        if force or now - self.last >= self.interval_s:
            self.last, self.count = now, self.count + 1
            return True
        return False


class StreamView:
    """The panes of one generation, rebuilt from parser events as chunks arrive."""

    def __init__(self, title: str = ""):
        self.title = title
        self.reset()

    def reset(self, prompt: str = "") -> None:
        self.prompt = prompt
        self.parser = StreamParser()
        self.raw = ""
        self.segments: list[tuple[str, Any]] = []  # thinking pane: ("text", s) | ("reflection", i) | ("break", i)
        self.thinking_blocks: list[str] = []
        self.reflections: dict[int, dict] = {}      # i -> {"text", "closed", "in_thinking"}
        self.outputs: dict[int, dict] = {}          # i -> {"text", "closed"}
        self.outside: dict[int, str] = {}
        self.diagnostics: list[Diagnostic] = []
        self.stack: list[tuple[str, int]] = []      # open blocks
        self.status = "idle"  # idle, running, done, error, cancelled
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.notes: list[str] = []
        self.n_chunks = 0
        self.n_tokens: int | None = None
        self.started: float | None = None
        self.seconds = 0.0
        self.version = 0  # bumped on every change; widgets redraw only when it moved
        self._result: ParsedResponse | None = None

    # -- input

    def start(self, prompt: str = "") -> None:
        self.reset(prompt)
        self.status, self.started = "running", time.perf_counter()
        self.version += 1

    def feed(self, chunk: str) -> list[Event]:
        if self.status != "running":
            self.start(self.prompt)
        self.raw += chunk
        self.n_chunks += 1
        events = self.parser.feed(chunk)
        self.apply(events)
        self.version += 1
        return events

    def finish(self, finish_reason: str | None = "stop", *, error: str | None = None, n_tokens: int | None = None,
               notes: Sequence[str] = ()) -> list[Event]:
        """End of stream: flush the parser (truncated when finish_reason says so) and freeze the panes."""
        if self.status == "idle":
            self.start(self.prompt)
        self.finish_reason = finish_reason or ("error" if error else "stop")
        events = finish_parser(self.parser, self.finish_reason)
        self.apply(events)
        self._result = self.parser.result()
        self.error, self.n_tokens, self.notes = error, n_tokens, list(notes)
        self.status = "error" if error else "cancelled" if self.finish_reason == "cancelled" else "done"
        self.seconds = time.perf_counter() - (self.started or time.perf_counter())
        self.version += 1
        return events

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            if isinstance(ev, BlockStart):
                self._start(ev)
            elif isinstance(ev, TextDelta):
                self._text(ev)
            elif isinstance(ev, BlockEnd):
                self.stack = [b for b in self.stack if b != (ev.kind, ev.index)]
                target = self.reflections if ev.kind == REFLECTION else self.outputs if ev.kind == OUTPUT else None
                if target is not None and ev.index in target:
                    target[ev.index]["closed"] = ev.closed
            elif isinstance(ev, DiagnosticEvent):
                self.diagnostics.append(ev.diagnostic)

    def _start(self, ev: BlockStart) -> None:
        top = self.stack[-1][0] if self.stack else None
        if ev.kind == THINKING:
            self.thinking_blocks.append("")
            if len(self.thinking_blocks) > 1:
                self.segments.append(("break", ev.index))
        elif ev.kind == REFLECTION:
            self.reflections[ev.index] = {"text": "", "closed": None, "in_thinking": top == THINKING}
            if top == THINKING:
                self.segments.append(("reflection", ev.index))
        elif ev.kind == OUTPUT:
            self.outputs[ev.index] = {"text": "", "closed": None}
        self.stack.append((ev.kind, ev.index))

    def _text(self, ev: TextDelta) -> None:
        if ev.kind == OUTSIDE:
            self.outside[ev.index] = self.outside.get(ev.index, "") + ev.text
        elif ev.kind == OUTPUT:
            self.outputs[ev.index]["text"] += ev.text
        elif ev.kind == REFLECTION:
            r = self.reflections[ev.index]
            r["text"] += ev.text
            if r["in_thinking"] and self.thinking_blocks:
                self.thinking_blocks[-1] += ev.text
        elif ev.kind == THINKING:
            self.thinking_blocks[-1] += ev.text
            mark = None
            if self.stack and self.stack[-1][0] == REFLECTION and self.segments and \
                    self.segments[-1][0] == "reflection":
                # whitespace held back before a <reflection> arrives with its first text: put it before the mark
                mark = self.segments.pop()
            if self.segments and self.segments[-1][0] == "text":
                self.segments[-1] = ("text", self.segments[-1][1] + ev.text)
            else:
                self.segments.append(("text", ev.text))
            if mark:
                self.segments.append(mark)

    # -- what the panes show

    @property
    def thinking(self) -> str | None:
        """All thinking text so far, reflections included (equals ParsedResponse.thinking at the end)."""
        return "\n\n".join(self.thinking_blocks) if self.thinking_blocks else None

    @property
    def thinking_pane(self) -> str:
        """The thinking without its reflections (they have their own boxes), with [reflection i] marks."""
        parts = {"text": lambda v: v, "reflection": lambda v: f"[reflection {v + 1}]", "break": lambda v: "\n\n"}
        return "".join(parts[kind](value) for kind, value in self.segments)

    @property
    def reflection_texts(self) -> list[str]:
        return [self.reflections[i]["text"] for i in sorted(self.reflections)]

    @property
    def output(self) -> str | None:
        return self.outputs[0]["text"] if 0 in self.outputs else None

    @property
    def outside_text(self) -> str:
        return "\n\n".join(self.outside[i] for i in sorted(self.outside) if self.outside[i])

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]

    @property
    def result(self) -> ParsedResponse | None:
        """The parse of the whole text, once finished."""
        return self._result

    def generation(self) -> Generation:
        res = self._result or parse(self.raw)
        return Generation(self.raw, self.finish_reason or "stop", res, model=self.title, n_tokens=self.n_tokens,
                          error=self.error, seconds=self.seconds, notes=list(self.notes))

    def summary(self) -> dict[str, Any]:
        res = self._result
        return {"model": self.title, "status": self.status, "finish_reason": self.finish_reason,
                "well_formed": res.well_formed if res else None, "reflections": len(self.reflections),
                "output_chars": len(self.output or ""), "tokens": self.n_tokens, "chunks": self.n_chunks,
                "seconds": round(self.seconds, 2), "diagnostics": self.codes}

    # -- HTML (every model text is escaped: answers contain code and markup)

    def _open(self, kind: str, index: int | None = None) -> bool:
        return self.status == "running" and any(k == kind and (index is None or i == index) for k, i in self.stack)

    def status_html(self) -> str:
        state = {"idle": "ready", "running": "generating\u2026"}.get(self.status, self.finish_reason or self.status)
        bits = [f"<b>{html.escape(self.title)}</b>" if self.title else "", f"<span>{html.escape(state)}</span>",
                f"{len(self.raw)} chars in {self.n_chunks} chunks"]
        if self.n_tokens is not None:
            bits.append(f"{self.n_tokens} tokens")
        if self.status not in ("idle", "running"):
            bits.append(f"{self.seconds:.1f} s")
        if self._result is not None:
            ok = self._result.well_formed
            bits.append(f'<span style="color:{"#1b6e1b" if ok else SEVERITY[ERROR]}">'
                        f'{"well formed" if ok else "not well formed"}</span>')
        text = " \u00b7 ".join(b for b in bits if b)
        for line in ([self.error] if self.error else []) + self.notes:
            text += f'<div style="color:#555;font-size:90%">{html.escape(line)}</div>'
        return text

    def thinking_html(self) -> str:
        out = []
        for kind, value in self.segments:
            if kind == "text":
                out.append(html.escape(value))
            elif kind == "reflection":
                out.append(f'<span style="background:{COLORS[REFLECTION]};border:1px solid #e0c060;border-radius:3px;'
                           f'padding:0 4px;font-size:85%">\u21a9 reflection {value + 1}</span>')
            else:
                out.append("<hr style='margin:4px 0'>")
        body = "".join(out) + (CURSOR if self._open(THINKING) and not self._open(REFLECTION) else "")
        return _box("thinking", body or _empty(self.status), COLORS[THINKING])

    def reflection_html(self, index: int) -> str:
        r = self.reflections[index]
        where = "inside thinking" if r["in_thinking"] else "outside thinking"
        state = "" if r["closed"] is None else "" if r["closed"] else " \u00b7 never closed"
        body = html.escape(r["text"]) + (CURSOR if self._open(REFLECTION, index) else "")
        return _box(f"reflection {index + 1} ({where}{state})", body or _empty(self.status), COLORS[REFLECTION])

    def output_html(self) -> str:
        if not self.outputs:
            return _box("output", _empty(self.status, "no <output> yet" if self.status == "running" else "no <output>"),
                        COLORS[OUTPUT])
        o = self.outputs[0]
        state = " \u00b7 incomplete" if o["closed"] is False else ""
        extra = f" \u00b7 {len(self.outputs) - 1} more output block(s) ignored" if len(self.outputs) > 1 else ""
        body = html.escape(o["text"]) + (CURSOR if self._open(OUTPUT, 0) else "")
        return _box(f"output{state}{extra}", body, COLORS[OUTPUT])

    def outside_html(self) -> str:
        text = self.outside_text
        return _box("text outside the tags", html.escape(text), COLORS[OUTSIDE]) if text else ""

    def diagnostics_html(self) -> str:
        if not self.diagnostics:
            return "" if self.status != "done" else '<div style="color:#1b6e1b">no diagnostics</div>'
        items = "".join(f'<li style="color:{SEVERITY.get(d.severity, "#000")}"><code>{html.escape(d.code)}</code> '
                        f"{html.escape(d.message)}</li>" for d in self.diagnostics)
        return f'<div><b>diagnostics</b><ul style="margin:2px 0 2px 18px;padding:0">{items}</ul></div>'


def _box(label: str, body: str, color: str) -> str:
    return (f'<div style="background:{color};border:1px solid #ccc;border-radius:4px;padding:4px 8px;margin:2px 0">'
            f'<div style="font-size:80%;color:#555">{html.escape(label)}</div><div style="{TEXT}">{body}</div></div>')


def _empty(status: str, text: str = "(empty)") -> str:
    return f'<span style="color:#999">{html.escape(text if status != "idle" else "")}</span>'


# --- moving chunks from streams into views ------------------------------------------------------------


def _finish_view(view: StreamView, stream: Any, error: str | None = None, cancelled: bool = False) -> None:
    finish = "error" if error else getattr(stream, "finish_reason", None) or ("cancelled" if cancelled else "stop")
    view.finish(finish, error=error or getattr(stream, "error", None), n_tokens=getattr(stream, "n_tokens", None),
                notes=getattr(stream, "notes", ()) or ())


def drive(view: StreamView, stream: Iterable[str], *, on_update: Callable[[], Any] | None = None,
          throttle: Throttle | None = None, stop: threading.Event | None = None) -> Generation:
    """Feed every chunk of `stream` into `view`, calling on_update when the throttle allows."""
    return drive_all([(view, stream)], on_update=on_update, throttle=throttle, stop=stop)[0]


def drive_all(pairs: Sequence[tuple[StreamView, Iterable[str]]], *, on_update: Callable[[], Any] | None = None,
              throttle: Throttle | None = None, stop: threading.Event | None = None) -> list[Generation]:
    """Read several streams in turn, one chunk each, until all end (or `stop` is set)."""
    throttle = throttle or Throttle()
    active = []
    for view, stream in pairs:
        if view.status != "running":
            view.start(view.prompt)
        active.append((view, stream, iter(stream)))
    while active:
        for item in list(active):
            view, stream, it = item
            if stop is not None and stop.is_set():
                getattr(stream, "close", lambda: None)()
                _finish_view(view, stream, cancelled=True)
                active.remove(item)
                continue
            try:
                view.feed(next(it))
            except StopIteration:
                _finish_view(view, stream)
                active.remove(item)
            except Exception as exc:  # shown in the view; the other stream goes on
                _finish_view(view, stream, error=f"{type(exc).__name__}: {exc}")
                active.remove(item)
        if on_update and active and throttle.due():
            on_update()
    if on_update:
        on_update()
    return [view.generation() for view, _ in pairs]


def compare_summary_html(views: Sequence[StreamView]) -> str:
    """A small table comparing finished generations (format, length, diagnostics)."""
    rows = [v.summary() for v in views]
    cols = ["model", "finish_reason", "well_formed", "reflections", "output_chars", "tokens", "seconds", "diagnostics"]
    head = "".join(f'<th style="text-align:left;padding:2px 8px">{c.replace("_", " ")}</th>' for c in cols)
    body = "".join("<tr>" + "".join(f'<td style="padding:2px 8px">{html.escape(_cell(r[c]))}</td>' for c in cols)
                   + "</tr>" for r in rows)
    return f'<table style="border-collapse:collapse;font-size:90%"><tr>{head}</tr>{body}</table>'


def _cell(value: Any) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, list):
        return ", ".join(value) or "none"
    return str(value)


__all__ = ["StreamView", "Throttle", "compare_summary_html", "drive", "drive_all"]
