"""The reflection prompts: plain-text templates shipped in reflection_lab/reflect/prompts/, editable in a notebook.

Why templates as files: learners should read exactly what the teacher is asked, change it, and
see the change recorded. `PromptSet.version_tag` is the shipped version while the texts are
unchanged, and gains an `+edited.<hash>` suffix after any edit, so an artifact always says which
wording produced it (and the request keys change with the wording, so no stale reply is reused).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

from ..llm.base import Message

STYLES = ("reflection", "plain")
TEMPLATE_FIELDS = ("instruction_system", "instruction_user", "instruction_user_input", "response_system",
                   "response_system_input", "response_user", "response_user_input", "style_plain", "style_reflection")
_SLOT = re.compile(r"\{(instruction|input|output|answer_style)\}")
# What each user template must contain: its slots and the markers the parser looks for.
_REQUIRED = {
    "instruction_user": ("{instruction}", "{output}", "{answer_style}", "[New Instruction]", "[New Answer]", "[End]"),
    "instruction_user_input": ("{instruction}", "{input}", "{output}", "{answer_style}", "[New Instruction]",
                               "[New Answer]", "[End]"),
    "response_user": ("{instruction}", "{output}", "{answer_style}", "[Better Answer]", "[End]"),
    "response_user_input": ("{instruction}", "{input}", "{output}", "{answer_style}", "[Better Answer]", "[End]"),
}


def fill(template: str, **values: str) -> str:
    """Replace {instruction} / {input} / {output} / {answer_style} in one pass.

    One pass, so braces or slot names inside the sample text (code, JSON) are never re-expanded.
    """
    return _SLOT.sub(lambda m: values.get(m.group(1), m.group(0)), template)


@dataclass
class PromptSet:
    """All templates of both reflection tasks. Edit fields freely, then pass it to run_reflect(prompts=...)."""

    instruction_system: str
    instruction_user: str
    instruction_user_input: str
    response_system: str
    response_system_input: str
    response_user: str
    response_user_input: str
    style_plain: str
    style_reflection: str
    version: str
    shipped_sha256: str = ""

    @property
    def sha256(self) -> str:
        texts = {name: getattr(self, name) for name in TEMPLATE_FIELDS}
        return hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()

    @property
    def edited(self) -> bool:
        return self.sha256 != self.shipped_sha256

    @property
    def version_tag(self) -> str:
        return f"{self.version}+edited.{self.sha256[:10]}" if self.edited else self.version

    def check(self) -> list[str]:
        """Problems that would break rendering or parsing (missing slots or markers)."""
        out = []
        for name, needed in _REQUIRED.items():
            missing = [n for n in needed if n not in getattr(self, name)]
            if missing:
                out.append(f"{name} lacks {', '.join(missing)}")
        return out

    def answer_style(self, style: str) -> str:
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
        return (self.style_reflection if style == "reflection" else self.style_plain).strip()

    def instruction_messages(self, instruction: str, input: str, output: str, style: str = "reflection") -> list[Message]:
        """Messages asking the teacher to judge a pair and write a new instruction and answer."""
        has_input = bool(input and input.strip())
        user = self.instruction_user_input if has_input else self.instruction_user
        text = fill(user, instruction=instruction, input=input, output=output, answer_style=self.answer_style(style))
        return [{"role": "system", "content": self.instruction_system.strip()}, {"role": "user", "content": text.strip()}]

    def response_messages(self, instruction: str, input: str, output: str, style: str = "reflection") -> list[Message]:
        """Messages asking the teacher to judge an answer and write a better one."""
        has_input = bool(input and input.strip())
        system = self.response_system_input if has_input else self.response_system
        user = self.response_user_input if has_input else self.response_user
        text = fill(user, instruction=instruction, input=input, output=output, answer_style=self.answer_style(style))
        return [{"role": "system", "content": system.strip()}, {"role": "user", "content": text.strip()}]

    def show(self, task: str = "instruction", style: str = "reflection", sample: dict | None = None) -> str:
        """The rendered messages for one (example) sample, for reading in a notebook."""
        s = sample or {"instruction": "Convert 3 km to miles.", "input": "", "output": "About 1.9 miles."}
        make = self.instruction_messages if task == "instruction" else self.response_messages
        msgs = make(s["instruction"], s.get("input", ""), s["output"], style)
        return "\n\n".join(f"=== {m['role']} ===\n{m['content']}" for m in msgs)

    def save(self, folder: str | Path) -> Path:
        """Write the templates as .txt files (load them back with load_prompts(folder))."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name in TEMPLATE_FIELDS:
            (out / f"{name}.txt").write_text(getattr(self, name), encoding="utf-8")
        (out / "version.txt").write_text(self.version + "\n", encoding="utf-8")
        return out

    def copy(self, **changes: str) -> "PromptSet":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


def load_prompts(folder: str | Path | None = None) -> PromptSet:
    """The shipped templates (package data), or the .txt files of a folder saved with PromptSet.save."""
    def read(name: str) -> str:
        if folder is not None:
            return (Path(folder) / f"{name}.txt").read_text(encoding="utf-8")
        return resources.files(__package__).joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")

    texts = {name: read(name) for name in TEMPLATE_FIELDS}
    shipped = texts if folder is None else load_prompts().as_dict()
    base = PromptSet(**{k: shipped[k] for k in TEMPLATE_FIELDS}, version="", shipped_sha256="")
    version = read("version").strip()
    return PromptSet(**texts, version=version, shipped_sha256=base.sha256)

