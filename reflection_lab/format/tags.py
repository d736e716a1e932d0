"""Parse Reflection-format responses, in one piece or as a stream.

Reflection 70B reasons inside ``<thinking>...</thinking>``, corrects itself in zero
or more ``<reflection>...</reflection>`` blocks nested inside the thinking, and
answers inside ``<output>...</output>``.  Real generations deviate (truncation,
stop strings, stripped special tokens, quoted tags), so nothing here raises on any
text: you get what could be recovered plus :class:`Diagnostic` records.

:func:`parse` runs the same state machine as :class:`StreamParser` on one chunk,
so a streamed ``result()`` equals ``parse()`` of the whole text for every
chunking.  Each character is examined a bounded number of times (linear time).

Policies
--------
* Answer: ``answer`` is the text of the *first* ``<output>`` block, else ``None``.
  It never falls back to the whole text or to the reasoning.
* Truncation: pass ``truncated=True`` when the generation hit the token limit
  (finish_reason ``"length"``).  Cut inside thinking: reasoning only, ``answer`` is
  ``None``.  Cut inside output: the partial output is the answer and
  ``output_complete`` is False, unless ``accept_partial_output=False``.
* Reflections: a reflection's text stays visible inside its thinking block's text
  (tags removed) and is also listed in ``reflections`` with input offsets.  A
  reflection outside thinking is listed only, never part of output or outside text.
* Whitespace: every block's content and every run of outside text is stripped of
  surrounding whitespace (as llama.cpp does); a whitespace-only block becomes
  ``""`` with an ``empty_block`` warning.
* Tag syntax: only ``thinking``, ``reflection`` and ``output`` are tags (so
  ``x < 3``, ``a<b>c`` and HTML stay text).  Names match case-insensitively and
  spaces/tabs may sit inside the brackets (``< /Output >``); such a variant counts,
  with a ``nonstandard_tag`` warning.  Attributes (``<thinking type="x">``) make
  it not a tag: that text stays literal.  Look-alike characters are text too.
* Code: tags inside Markdown code spans and fenced code blocks are text.  A code
  span ends at the matching backtick run or at the end of its line (so a stray
  backtick hides tags only up to the end of that line); a fence (at the start of a
  line or of a block) runs until a closing fence line or the end of the text
  (``unclosed_code_block`` warning).
* Expected tags: closing tags always count.  An opening tag counts where the
  format allows it (any opener outside blocks, ``<reflection>`` inside thinking);
  anywhere else it counts only at the start of a line or right after another tag,
  and then repairs the structure (``<output>`` closes an unclosed thinking, a
  second opener of an open kind is dropped as ``nested_tag``); mid-line it is
  literal text with a ``literal_tag`` note.  So a model quoting its system prompt
  ("...give the answer inside <output> tags") does not end its reasoning.
  Limitation: a quote outside any block, a quoted ``<reflection>`` inside
  thinking, or a quoted closing tag is still read as structure.
* Several blocks: every thinking block is kept (``thinking`` joins them); the
  first output is the answer; each extra block gets an error diagnostic.
* No tags at all: a ``no_tags`` error telling the user to decode with
  ``skip_special_tokens=False`` (the six tags are special tokens).
* Prefill: use ``prefilled_thinking=True`` when the prompt ended with
  ``<thinking>``; otherwise an opener-less ``</thinking>`` is a
  ``stray_closing_tag`` whose message suggests it.
* Offsets are character offsets into the input text (the decoded text for bytes).

Diagnostic codes (stable).  Errors: ``no_tags``, ``missing_output``,
``missing_thinking``, ``unclosed_tag`` (a warning for an ``<output>`` open at the
end), ``stray_closing_tag``, ``misnested_tag``, ``nested_tag``,
``reflection_outside_thinking``, ``multiple_thinking``, ``thinking_after_output``,
``multiple_outputs``.  Warnings: ``nonstandard_tag``, ``empty_block``,
``truncated``, ``unclosed_code_block``.  Info: ``literal_tag``.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = [
    "ERROR", "INFO", "OUTPUT", "OUTSIDE", "REFLECTION", "REFLECTION_TAGS", "THINKING", "WARNING",
    "Block", "BlockEnd", "BlockStart", "ByteStreamParser", "Diagnostic", "DiagnosticEvent",
    "Event", "ParsedResponse", "Span", "StreamParser", "TextDelta", "parse", "split_reasoning", "strip_reasoning",
]

THINKING, REFLECTION, OUTPUT, OUTSIDE = "thinking", "reflection", "output", "outside"
TAG_NAMES = (THINKING, REFLECTION, OUTPUT)
# The six tags as they appear in text (and as tokens, when a tokenizer adds them as special tokens).
REFLECTION_TAGS = tuple(t for name in TAG_NAMES for t in (f"<{name}>", f"</{name}>"))
ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Diagnostic:
    """A deviation from the format: ``code`` is stable, ``message`` is for people."""

    code: str
    message: str
    position: int
    severity: str = ERROR


@dataclass(frozen=True)
class Span:
    """A run of text outside every block, stripped; start/end cover the raw run."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Block:
    """One thinking, reflection or output block.

    ``start``/``end`` cover the tags; ``content_start``/``content_end`` the raw
    content.  ``closed`` is False when the block's own closing tag never came.
    """

    kind: str
    index: int
    text: str
    start: int
    end: int
    content_start: int
    content_end: int
    closed: bool
    parent: str | None = None


@dataclass(frozen=True)
class ParsedResponse:
    """Everything recovered from one response; see the module policies."""

    thinking_blocks: tuple[Block, ...] = ()
    reflections: tuple[Block, ...] = ()
    output_blocks: tuple[Block, ...] = ()
    outside: tuple[Span, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()
    truncated: bool = False
    accept_partial_output: bool = True

    @property
    def thinking(self) -> str | None:
        """All thinking text (reflections included), blocks joined by a blank line."""
        if not self.thinking_blocks:
            return None
        return "\n\n".join(b.text for b in self.thinking_blocks)

    @property
    def output(self) -> str | None:
        """Text of the first output block, complete or not."""
        return self.output_blocks[0].text if self.output_blocks else None

    @property
    def output_complete(self) -> bool:
        return bool(self.output_blocks) and self.output_blocks[0].closed

    @property
    def answer(self) -> str | None:
        """The first output's text, else None.

        With ``truncated=True`` and ``accept_partial_output=False`` a first output
        lacking its closing tag is rejected (None); it is never replaced by reasoning.
        """
        if not self.output_blocks:
            return None
        if self.truncated and not self.output_complete and not self.accept_partial_output:
            return None
        return self.output_blocks[0].text

    @property
    def outside_text(self) -> str:
        return "\n\n".join(s.text for s in self.outside)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == ERROR)

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]

    @property
    def well_formed(self) -> bool:
        """One closed thinking, one closed output, and no error diagnostics."""
        return (
            len(self.thinking_blocks) == 1
            and self.thinking_blocks[0].closed
            and len(self.output_blocks) == 1
            and self.output_blocks[0].closed
            and not self.errors
        )


@dataclass(frozen=True)
class BlockStart:
    kind: str
    index: int
    position: int


@dataclass(frozen=True)
class BlockEnd:
    kind: str
    index: int
    position: int
    closed: bool


@dataclass(frozen=True)
class TextDelta:
    """New text of a block (``kind``/``index``) or of an outside run.

    Thinking deltas and the reflection deltas inside that thinking block
    concatenate to the thinking text; each kind's deltas to its own text.
    """

    kind: str
    index: int
    text: str


@dataclass(frozen=True)
class DiagnosticEvent:
    diagnostic: Diagnostic


Event = BlockStart | BlockEnd | TextDelta | DiagnosticEvent

# ---------------------------------------------------------------- tag matching

_MAX_TAG_LEN = 32  # bounds how much text a possible partial tag can hold back
_NEED, _FAIL, _DONE = 0, 1, 2
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_BLANKS = " \t"


def _match_tag(s: str, i: int, final: bool) -> tuple[int, int, str, bool]:
    """Match ``<`` blanks ``/``? blanks name blanks ``>`` at ``s[i]``.

    Returns (status, end, name, closing).  _NEED only when every available
    character fits a tag, so the verdict never depends on where chunks split.
    """
    n = len(s)
    stop = min(n, i + _MAX_TAG_LEN)
    at_end = (_NEED if n < i + _MAX_TAG_LEN and not final else _FAIL, 0, "", False)
    fail = (_FAIL, 0, "", False)
    j = i + 1
    while j < stop and s[j] in _BLANKS:
        j += 1
    if j == stop:
        return at_end
    closing = s[j] == "/"
    if closing:
        j += 1
        while j < stop and s[j] in _BLANKS:
            j += 1
        if j == stop:
            return at_end
    k = j
    while k < stop and s[k] in _LETTERS:
        k += 1
    word = s[j:k].lower()
    if not word or not any(t.startswith(word) for t in TAG_NAMES):
        return fail
    if k == stop:
        return at_end
    if word not in TAG_NAMES:
        return fail
    while k < stop and s[k] in _BLANKS:
        k += 1
    if k == stop:
        return at_end
    if s[k] != ">":
        return fail
    return (_DONE, k + 1, word, closing)


# ------------------------------------------------------------ Markdown code

_TEXT, _SPAN, _FENCE_INFO, _FENCE = range(4)
_PATTERNS = {
    (_TEXT, ""): re.compile(r"[<`~\n]"),
    (_SPAN, "`"): re.compile(r"[`\n]"),
    (_FENCE_INFO, "`"): re.compile(r"[`\n]"),
    (_FENCE_INFO, "~"): re.compile(r"\n"),
    (_FENCE, "`"): re.compile(r"[`\n]"),
    (_FENCE, "~"): re.compile(r"[~\n]"),
}
_RUNS = {"`": re.compile(r"`*"), "~": re.compile(r"~*")}
_NON_BLANK = re.compile(r"[^ \t]")


class _Text:
    """Streams one block's content with its surrounding whitespace stripped.

    Trailing whitespace is held back until later non-space text proves it inner;
    a reflection inside thinking passes its stripped pieces up to the thinking.
    """

    __slots__ = ("events", "held", "parent", "parts", "started")

    def __init__(self, events: list[Event], parent: _Text | None = None) -> None:
        self.parts: list[str] = []
        self.held: list[tuple[str, str, int]] = []
        self.started = False
        self.parent = parent
        self.events = events

    def add(self, text: str, kind: str, index: int) -> None:
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        body = text.rstrip()
        if not body:
            self.held.append((text, kind, index))
            return
        if self.held:
            for piece in self.held:
                self._out(*piece)
            self.held.clear()
        self._out(body, kind, index)
        if len(body) < len(text):
            self.held.append((text[len(body):], kind, index))

    def _out(self, text: str, kind: str, index: int) -> None:
        self.parts.append(text)
        if self.parent is not None:
            self.parent.add(text, kind, index)
        else:
            self.events.append(TextDelta(kind, index, text))

    def finish(self) -> str:
        self.held.clear()
        return "".join(self.parts)


class _Open:
    __slots__ = ("content_start", "index", "kind", "parent", "start", "text")

    def __init__(self, kind: str, index: int, start: int, content_start: int,
                 parent: str | None, text: _Text) -> None:
        self.kind, self.index, self.start = kind, index, start
        self.content_start, self.parent, self.text = content_start, parent, text


# ------------------------------------------------------------------- parser


class StreamParser:
    """Incremental parser: ``feed`` chunks of any size, then ``finish``.

    A possible partial tag at the end of a chunk (at most 32 characters) is held
    back and released unchanged if it turns out not to be a tag.
    """

    def __init__(self, *, truncated: bool = False, prefilled_thinking: bool = False,
                 accept_partial_output: bool = True) -> None:
        self.truncated = truncated
        self.accept_partial_output = accept_partial_output
        self._events: list[Event] = []
        self._held = ""            # possible partial tag, starts with "<"
        self._pos = 0              # input offset of the first unconsumed character
        self._mode = _TEXT
        self._pat = _PATTERNS[(_TEXT, "")]
        self._code_char, self._code_len, self._code_pos = "", 0, 0
        self._run_char, self._run_len, self._run_pos, self._run_fence_ok = "", 0, 0, False
        self._line_start, self._indent = True, 0
        self._stack: list[_Open] = []
        self._counts = {THINKING: 0, REFLECTION: 0, OUTPUT: 0}
        self._blocks: dict[str, list[Block]] = {THINKING: [], REFLECTION: [], OUTPUT: []}
        self._outside: list[Span] = []
        self._seg: _Text | None = None
        self._seg_start = 0
        self._diags: list[Diagnostic] = []
        self._tags = 0
        self._done = False
        self._result: ParsedResponse | None = None
        if prefilled_thinking:
            self._open(THINKING, 0, 0)

    # -- public

    def feed(self, chunk: str) -> list[Event]:
        if self._done:
            raise RuntimeError("feed() called after finish()")
        if chunk:
            self._scan(self._held + chunk, final=False)
        return self._take()

    def finish(self) -> list[Event]:
        """Flush held text, close what is open and add end-of-text diagnostics."""
        if self._done:
            return self._take()
        self._done = True
        if self._held:
            self._scan(self._held, final=True)
        if self._run_char:
            self._end_run()
        end = self._pos
        if self._mode in (_FENCE, _FENCE_INFO):
            self._diag("unclosed_code_block", "code fence never closed; tags after it"
                       " were read as text", self._code_pos, WARNING)
        if self.truncated:
            self._diag("truncated", self._truncation_message(), end, WARNING)
        while self._stack:
            b = self._stack[-1]
            if not self.truncated:
                if b.kind == OUTPUT:
                    self._diag("unclosed_tag", "<output> not closed: the output may be "
                               "incomplete (expected if '</output>' is a stop string)",
                               b.start, WARNING)
                else:
                    self._diag("unclosed_tag", f"<{b.kind}> never closed", b.start)
            self._close_top(end, end, closed=False)
        self._end_segment(end)
        if not self._tags:
            self._diag("no_tags", "no <thinking>/<reflection>/<output> tags found; they "
                       "are special tokens, so decode with skip_special_tokens=False",
                       0)
        else:
            if not self._counts[OUTPUT]:
                self._diag("missing_output", "no <output> block: there is no answer", end)
            if not self._counts[THINKING]:
                self._diag("missing_thinking", "no <thinking> block", 0)
        return self._take()

    def result(self) -> ParsedResponse:
        """The parsed response; finishes the stream first if needed."""
        if not self._done:
            self.finish()
        if self._result is None:
            b = self._blocks
            self._result = ParsedResponse(
                tuple(b[THINKING]), tuple(b[REFLECTION]), tuple(b[OUTPUT]),
                tuple(self._outside), tuple(self._diags), self.truncated,
                self.accept_partial_output)
        return self._result

    # -- scanning

    def _take(self) -> list[Event]:
        events = self._events[:]
        self._events.clear()  # _Text objects keep a reference to this list
        return events

    def _scan(self, buf: str, final: bool) -> None:
        self._held = ""
        n = len(buf)
        i = t0 = 0  # t0: start of text not yet routed to the current block
        while i < n:
            if self._run_char:
                j = _RUNS[self._run_char].match(buf, i).end()  # type: ignore[union-attr]
                self._run_len += j - i
                i = j
                if i < n:
                    self._end_run()
                continue
            m = self._pat.search(buf, i)
            j = m.start() if m else n
            if j > i:
                if self._line_start:
                    if _NON_BLANK.search(buf, i, j):
                        self._line_start = False
                    else:
                        self._indent += j - i
                i = j
            if m is None:
                break
            c = buf[i]
            if c == "\n":
                self._newline()
                i += 1
            elif c == "<":
                status, end, name, closing = _match_tag(buf, i, final)
                if status == _NEED:
                    self._held = buf[i:]
                    break
                if status == _FAIL:
                    self._line_start = False
                    i += 1
                    continue
                self._route(buf[t0:i])
                t0 = i
                if self._on_tag(name, closing, buf[i:end], self._pos + i, self._pos + end):
                    t0 = end
                    self._line_start, self._indent = True, 0
                else:
                    self._line_start = False
                i = end
            elif c == "`" or (self._line_start and self._indent <= 3):
                self._run_char, self._run_pos = c, self._pos + i
                self._run_fence_ok = self._line_start and self._indent <= 3
                self._line_start = False
            else:  # a tilde that cannot open or close a fence
                self._line_start = False
                i += 1
        consumed = n - len(self._held)
        self._route(buf[t0:consumed])
        self._pos += consumed

    def _set_mode(self, mode: int) -> None:
        self._mode = mode
        self._pat = _PATTERNS[(mode, "" if mode == _TEXT else self._code_char)]

    def _newline(self) -> None:
        self._line_start, self._indent = True, 0
        if self._mode == _SPAN:
            self._set_mode(_TEXT)
        elif self._mode == _FENCE_INFO:
            self._set_mode(_FENCE)

    def _end_run(self) -> None:
        """A backtick/tilde run ended: it may open or close code."""
        c, m, fence_ok = self._run_char, self._run_len, self._run_fence_ok
        self._run_char, self._run_len = "", 0
        mode = self._mode
        if mode == _TEXT:
            if fence_ok and m >= 3 or c == "`":
                self._code_char, self._code_len, self._code_pos = c, m, self._run_pos
                self._set_mode(_FENCE_INFO if fence_ok and m >= 3 else _SPAN)
        elif mode == _SPAN:
            if m == self._code_len:
                self._set_mode(_TEXT)
        elif mode == _FENCE_INFO:
            # CommonMark: a backtick in a backtick fence's info string means the
            # opening run was an inline code span after all.
            if c == "`" == self._code_char:
                self._set_mode(_TEXT if m == self._code_len else _SPAN)
        elif c == self._code_char and fence_ok and m >= self._code_len:
            self._set_mode(_TEXT)

    def _route(self, s: str) -> None:
        if not s:
            return
        if self._stack:
            top = self._stack[-1]
            top.text.add(s, top.kind, top.index)
            return
        if self._seg is None:
            self._seg = _Text(self._events)
        self._seg.add(s, OUTSIDE, len(self._outside))

    # -- structure

    def _diag(self, code: str, message: str, position: int, severity: str = ERROR) -> None:
        d = Diagnostic(code, message, position, severity)
        self._diags.append(d)
        self._events.append(DiagnosticEvent(d))

    def _on_tag(self, name: str, closing: bool, raw: str, start: int, end: int) -> bool:
        """Apply a tag; False means it is literal text (see module policies)."""
        if not closing and self._stack:
            top = self._stack[-1].kind
            expected = name == REFLECTION and top == THINKING
            if not expected and not self._line_start:
                self._diag("literal_tag", f"{raw!r} inside <{top}> kept as text: "
                           "unexpected tags count only at the start of a line", start, INFO)
                return False
        self._end_segment(start)
        self._tags += 1
        canonical = f"</{name}>" if closing else f"<{name}>"
        if raw != canonical:
            self._diag("nonstandard_tag", f"{raw!r} read as {canonical}", start, WARNING)
        if closing:
            self._close_tag(name, start, end)
        else:
            self._open_tag(name, start, end)
        self._seg_start = end
        return True

    def _open_tag(self, name: str, start: int, end: int) -> None:
        stack = self._stack
        top = stack[-1].kind if stack else None
        if top is None or (name == REFLECTION and top == THINKING):
            self._open(name, start, end)
        elif any(b.kind == name for b in stack):
            self._diag("nested_tag", f"<{name}> inside an open <{name}>; tag ignored", start)
        elif name == REFLECTION:  # inside an output
            self._open(name, start, end)
        else:
            while stack:
                self._diag("unclosed_tag", f"<{stack[-1].kind}> not closed before "
                           f"<{name}>; closed there", stack[-1].start)
                self._close_top(start, start, closed=False)
            self._open(name, start, end)

    def _open(self, name: str, start: int, end: int) -> None:
        parent = self._stack[-1] if self._stack else None
        counts = self._counts
        if name == THINKING:
            if counts[OUTPUT]:
                self._diag("thinking_after_output", "<thinking> after an <output>", start)
            if counts[THINKING]:
                self._diag("multiple_thinking", "more than one <thinking> block", start)
        elif name == OUTPUT and counts[OUTPUT]:
            self._diag("multiple_outputs", "more than one <output> block; the first "
                       "one is the answer", start)
        elif name == REFLECTION and (parent is None or parent.kind != THINKING):
            self._diag("reflection_outside_thinking", "<reflection> outside <thinking>",
                       start)
        index = counts[name]
        counts[name] += 1
        feeds_thinking = name == REFLECTION and parent is not None and parent.kind == THINKING
        text = _Text(self._events, parent.text if feeds_thinking and parent else None)
        self._stack.append(_Open(name, index, start, end,
                                 parent.kind if parent else None, text))
        self._events.append(BlockStart(name, index, start))

    def _close_tag(self, name: str, start: int, end: int) -> None:
        stack = self._stack
        idx = next((k for k in range(len(stack) - 1, -1, -1) if stack[k].kind == name), -1)
        if idx < 0:
            hint = ""
            if name == THINKING and not self._counts[THINKING] and not self._counts[OUTPUT]:
                hint = ("; if the prompt was prefilled with <thinking>, parse with "
                        "prefilled_thinking=True")
            self._diag("stray_closing_tag", f"</{name}> without an open <{name}>; "
                       f"tag ignored{hint}", start)
            return
        while len(stack) - 1 > idx:
            self._diag("misnested_tag", f"</{name}> closes <{name}> while "
                       f"<{stack[-1].kind}> is still open", start)
            self._close_top(start, start, closed=False)
        self._close_top(start, end, closed=True)

    def _close_top(self, content_end: int, end: int, closed: bool) -> None:
        b = self._stack.pop()
        text = b.text.finish()
        if not text:
            self._diag("empty_block", f"<{b.kind}> block is empty", b.start, WARNING)
        self._blocks[b.kind].append(Block(b.kind, b.index, text, b.start, end,
                                          b.content_start, content_end, closed, b.parent))
        self._events.append(BlockEnd(b.kind, b.index, end, closed))

    def _end_segment(self, position: int) -> None:
        seg, self._seg = self._seg, None
        if seg is not None:
            text = seg.finish()
            if text:
                self._outside.append(Span(text, self._seg_start, position))

    def _truncation_message(self) -> str:
        where = self._stack[-1].kind if self._stack else None
        if where == OUTPUT:
            verdict = ("accepted as the answer (output_complete=False)"
                       if self.accept_partial_output else
                       "rejected (accept_partial_output=False)")
            return f"token limit hit inside <output>: partial output {verdict}"
        if where is None:
            return "token limit hit outside any block"
        return f"token limit hit inside <{where}>: reasoning only, no answer"


class ByteStreamParser:
    """A :class:`StreamParser` fed UTF-8 bytes; characters may split across chunks.

    Invalid bytes become U+FFFD.
    """

    def __init__(self, **options: bool) -> None:
        self._parser = StreamParser(**options)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._done = False

    def feed(self, chunk: bytes) -> list[Event]:
        return self._parser.feed(self._decoder.decode(chunk))

    def finish(self) -> list[Event]:
        if self._done:
            return []
        self._done = True
        events = self._parser.feed(self._decoder.decode(b"", final=True))
        return events + self._parser.finish()

    def result(self) -> ParsedResponse:
        self.finish()
        return self._parser.result()


def parse(text: str, *, truncated: bool = False, prefilled_thinking: bool = False,
          accept_partial_output: bool = True) -> ParsedResponse:
    """Parse a whole response (see the module docstring for the policies).

    ``truncated``: the generation stopped at the token limit (finish_reason
    "length").  ``prefilled_thinking``: the prompt already opened ``<thinking>``.
    ``accept_partial_output``: whether a truncated ``<output>`` is still the answer.
    """
    parser = StreamParser(truncated=truncated, prefilled_thinking=prefilled_thinking,
                          accept_partial_output=accept_partial_output)
    parser.feed(text)
    return parser.result()


def strip_reasoning(text: str, *, prefilled_thinking: bool = False) -> str:
    """Text to keep in multi-turn history: the first output, else the outside text.

    Thinking and reflections are always dropped, so reasoning never leaks into the
    next prompt (a tag-less text is kept whole: it is all outside text).
    """
    r = parse(text, prefilled_thinking=prefilled_thinking)
    out = r.output
    return out if out is not None else r.outside_text


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(the first thinking block's raw content, the text without that block), both stripped.

    What a server with a reasoning parser returns in `reasoning_content` and `content`. The
    reasoning keeps its inner <reflection> tags; an unclosed thinking runs to the end of the text;
    any later thinking block stays in the content; a text without thinking is all content (None).
    """
    blocks = parse(text).thinking_blocks
    if not blocks:
        return None, text
    first = blocks[0]
    return text[first.content_start:first.content_end].strip(), (text[:first.start] + text[first.end:]).strip()
