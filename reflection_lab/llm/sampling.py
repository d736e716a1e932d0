"""Named decoding settings, translated once for transformers' `generate` and for OpenAI-compatible servers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

END_OF_ANSWER = "</output>"


@dataclass(frozen=True)
class SamplingPreset:
    """Named decoding settings. temperature 0 means greedy (deterministic, used for evaluation)."""

    name: str
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None  # None: the model's own default
    repetition_penalty: float | None = None
    seed: int | None = 0
    # generation ends once the text contains one of these (kept in the text): the Reflection format is
    # complete at "</output>", and a small student that has learned the format only partly tends to start
    # a second <thinking> block after it instead of its end-of-turn token
    stop: tuple[str, ...] = (END_OF_ANSWER,)
    # a run of this many tokens the answer already holds may not be written again (0: off): breaks the exact
    # repeats of a greedy loop, but not the prompt's quotes that transformers' no_repeat_ngram_size forbids.
    # Local models only: an OpenAI-compatible server has no such option.
    loop_guard: int = 0
    note: str = ""

    def __post_init__(self) -> None:
        if self.loop_guard < 0:
            raise ValueError(f"preset {self.name!r}: loop_guard must be 0 (off) or a run length, not {self.loop_guard}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def hf_kwargs(self) -> dict[str, Any]:
        """Arguments for transformers' `generate`."""
        kw: dict[str, Any] = {"do_sample": False} if self.greedy else {
            "do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        if not self.greedy and self.top_k is not None:
            kw["top_k"] = self.top_k  # 0 turns top-k off; None keeps the model's own generation config
        if self.repetition_penalty:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw

    def openai_kwargs(self) -> dict[str, Any]:
        """Arguments for an OpenAI-compatible chat completion."""
        if self.loop_guard:
            raise ValueError(f"preset {self.name!r} has loop_guard={self.loop_guard}, which only a local model "
                             "applies; an OpenAI-compatible server has no such option: use loop_guard=0 there")
        kw: dict[str, Any] = {"temperature": max(0.0, self.temperature), "top_p": self.top_p}
        if not self.greedy and self.seed is not None:
            kw["seed"] = self.seed
        return kw  # `stop` is applied by the client while it reads (see StopCutter): the text keeps it

    def as_dict(self) -> dict:
        """JSON-shaped (lists, not tuples), so a manifest read back equals the one written."""
        return {**asdict(self), "stop": list(self.stop)}

    def fingerprint(self) -> dict:
        """What decides the text (the note does not): the part of a stage's fingerprint."""
        return {k: v for k, v in self.as_dict().items() if k != "note"}


PRESETS: dict[str, SamplingPreset] = {
    "greedy": SamplingPreset("greedy", note="deterministic; the default for evaluation"),
    "reflection": SamplingPreset("reflection", temperature=0.7, top_p=0.95, top_k=0,
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


def request_preset(temperature: float, top_p: float, seed: int | None = 0) -> SamplingPreset:
    """The preset a chat request's own sampling fields describe (greedy at temperature 0, no stop text)."""
    return SamplingPreset("request", temperature=float(temperature), top_p=float(top_p), seed=seed, stop=())


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text up to and including the first stop text it contains, and whether there was one."""
    ends = [text.index(s) + len(s) for s in stop if s and s in text]
    return (text[:min(ends)], True) if ends else (text, False)


class StopCutter:
    """Cuts a stream of text chunks right after the first stop text, which may straddle two chunks.

    Endpoints would drop a matched stop text (OpenAI's rule) and a local model's last token may carry
    characters past it; cutting on the client keeps the closing tag in the text for every backend.
    """

    def __init__(self, stop: tuple[str, ...]):
        self.stop = tuple(s for s in stop if s)
        self.text = ""
        self.stopped = False

    def feed(self, chunk: str) -> str:
        """The part of `chunk` to pass on (all of it until a stop text completes, nothing after)."""
        if self.stopped or not self.stop:
            return "" if self.stopped else chunk
        before = len(self.text)
        self.text, self.stopped = cut_at_stop(self.text + chunk, self.stop)
        return self.text[before:]
