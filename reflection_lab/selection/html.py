"""HTML pieces of the sample inspector, as pure functions (escaped text, diffs, token heatmaps).

Why HTML strings: an ipywidgets.HTML widget shows them in every notebook front end without custom
JavaScript, and tests can check them as text. Every piece of sample or teacher text goes through
html.escape, because datasets contain code, markup and the odd <script>.
"""

from __future__ import annotations

import difflib
import html
import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

CELL = "border:1px solid #ddd;padding:4px 6px;vertical-align:top;"
TEXT = "white-space:pre-wrap;font-family:inherit;margin:0;"

def diff_html(old: str, new: str) -> str:
    """Word-level diff of two texts as HTML: removed words in <del>, added words in <ins>, all escaped."""
    a, b = re.findall(r"\S+|\s+", old or ""), re.findall(r"\S+|\s+", new or "")
    out = []
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            out.append('<del style="background:#ffe0e0;color:#8b0000">' + html.escape("".join(a[i1:i2])) + "</del>")
        if op in ("insert", "replace"):
            out.append('<ins style="background:#dcf5dc;color:#064d06;text-decoration:none">'
                       + html.escape("".join(b[j1:j2])) + "</ins>")
    return f'<div style="{TEXT}">' + "".join(out) + "</div>"


def token_heatmap_html(tokens: Sequence[str], values: Sequence[float], *, mode: str = "loss",
                       vmax: float | None = None) -> str:
    """Tokens as spans shaded by value: mode "loss" (red = hard for the student) or "gain"
    (green = the instruction made this token easier, red = harder). The hover title shows the number."""
    n = min(len(tokens), len(values))
    vals = np.asarray(values[:n], dtype=float)
    finite = vals[np.isfinite(vals)]
    if vmax is None:
        vmax = float(np.max(np.abs(finite))) if len(finite) else 1.0
    vmax = vmax or 1.0
    spans = []
    for tok, v in zip(tokens[:n], vals):
        if not math.isfinite(v):
            color, label = "#eeeeee", "no value"
        else:
            alpha = min(abs(v) / vmax, 1.0) * 0.85
            rgb = "214,39,40" if mode == "loss" or v < 0 else "44,160,44"
            color, label = f"rgba({rgb},{alpha:.2f})", f"{mode} {v:.3f}"
        text = html.escape(tok).replace("\n", "\u21b5<br>")
        spans.append(f'<span title="{label}" style="background:{color};border-radius:2px">{text}</span>')
    extra = f" ({len(tokens) - n} tokens without a value)" if len(tokens) != len(values) else ""
    return f'<div style="{TEXT}line-height:1.7">' + "".join(spans) + f"</div><small>{extra}</small>"


def esc(text: str) -> str:
    return f'<div style="{TEXT}">{html.escape(text or "")}</div>'


def prompt_text(t: dict | None) -> str:
    if not t:
        return ""
    return t["instruction"] + (("\n\n" + t["input"]) if t.get("input") else "")


class JsonlIndex:
    """Byte offsets of a JSONL file's rows by key, so one row is read without loading the file.

    token_losses.jsonl can hold hundreds of MB; the index scans it once and parses only the row shown.
    """

    def __init__(self, path: str | Path, fields: tuple[str, ...] = ("id",)):
        self.path = Path(path)
        self.fields = fields
        self._offsets: dict[tuple, int] | None = None
        self._patterns = [re.compile(rb'"' + f.encode() + rb'"\s*:\s*"((?:[^"\\]|\\.)*)"') for f in fields]

    def _key(self, line: bytes) -> tuple | None:
        # Safe on whole lines: inside a JSON string every quote is escaped, so '"id": "' only
        # matches a real key (nested objects with an "id" key do not occur in these files).
        found = [p.search(line) for p in self._patterns]
        if all(found):
            return tuple(json.loads(b'"' + m.group(1) + b'"') for m in found)
        try:
            rec = json.loads(line)
        except ValueError:
            return None  # a torn last line of a journal
        return tuple(str(rec.get(f)) for f in self.fields)

    def offsets(self) -> dict[tuple, int]:
        if self._offsets is None:
            self._offsets = {}
            if self.path.exists():
                with open(self.path, "rb") as f:
                    pos = 0
                    for line in f:
                        key = self._key(line) if line.strip() else None
                        if key is not None:
                            self._offsets[key] = pos
                        pos += len(line)
        return self._offsets

    def get(self, *key: str) -> dict | None:
        off = self.offsets().get(tuple(key))
        if off is None:
            return None
        with open(self.path, "rb") as f:
            f.seek(off)
            return json.loads(f.readline())
