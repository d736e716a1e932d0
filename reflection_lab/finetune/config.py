"""Stage 05's settings and its errors: what the fine-tuned result depends on, and messages that say what to change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.config import ConfigError, StageConfig
from ..core.errors import LabError

METHODS = ("qlora", "lora", "full")
ADAPTER_DTYPES = ("auto", "float32", "bfloat16")
REPORTERS = ("none", "tensorboard", "trackio", "wandb")
REPORTER_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
OOM_ADVICE = ("lower batch_size (and raise grad_accum to keep the effective batch), lower max_length, "
              "use quant4 (method='qlora'), and keep gradient_checkpointing=True")


class FinetuneError(LabError, RuntimeError):
    """A training problem with a message that names its cause and what to change."""


class FinetuneDataError(FinetuneError):
    """The training set is empty or too small to train on."""


class FinetuneOOMError(FinetuneError):
    """Training ran out of memory."""


@dataclass(frozen=True)
class FinetuneConfig(StageConfig):
    """Everything the result depends on (it is the stage fingerprint's config)."""

    STAGE = "finetune"
    # where logs also go, and in how many pieces the loss is computed, do not change the trained weights
    RUNTIME = ("report_to", "loss_chunk_tokens")

    student: str = "tiny-llama"
    method: str = "qlora"  # "qlora" (4-bit base + LoRA), "lora" (full-precision base + LoRA), "full"
    max_steps: int = 30
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    # the LoRA factors' dtype: "auto" keeps them in bf16 over a 4-bit base (as TRL and the QLoRA paper do; on a
    # CPU the training's peak RSS fell by half, docs/finetune.md) unless the device computes in fp16 (a T4,
    # where the Trainer's fp16 scaler wants fp32 weights); fp32 over a full-precision base
    adapter_dtype: str = "auto"
    tags_as_special_tokens: bool = False
    # the six tag rows' learning rate as a multiple of learning_rate (only with tags_as_special_tokens)
    tag_rows_lr_scale: float = 1.0
    template: str = "chat"  # the chat template, or the '### Instruction' fallback when a model has none
    # the loss of each Reflection-tag token and of the end-of-turn marker times this (1: the plain loss);
    # the evaluation loss is weighted the same way
    tag_loss_weight: float = 1.0
    # inside <output>, the loss also pushes down the token that opens a tag, times this (0: off): the small
    # students' usual slip is a second <output> or a <thinking> where </output> belongs (docs/finetune.md)
    open_tag_unlikelihood: float = 0.0
    system_prompt: str | None = None  # None: the model's default; "reflection", "none" or literal text
    max_length: int = 1024
    overflow: str = "truncate"  # an answer over max_length: "truncate" it or "drop" the sample
    min_samples: int = 4
    eval_fraction: float = 0.1
    eval_steps: int | None = None  # None: about 5 evaluations per run
    save_steps: int | None = None  # None: about 5 checkpoints per run (at most every 50 steps)
    save_total_limit: int = 2
    gradient_checkpointing: bool = True
    group_by_length: bool = True
    answer_logits_only: bool = True  # project only answer-predicting positions onto the vocabulary (same loss)
    # answer positions projected onto the vocabulary at a time, each chunk recomputed in the backward pass: the
    # (tokens x vocabulary) logits never exist at once (same loss; 0: all at once)
    loss_chunk_tokens: int = 1024
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    merge: bool = False  # also write merged fp16 weights to 05_finetune/merged/
    report_to: str = "none"  # train_log.jsonl always; also "tensorboard", "trackio" or "wandb"

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        return dict(student=profile.student, method="qlora" if profile.quant4 else "lora",
                    max_steps=profile.max_steps, batch_size=profile.batch_size, grad_accum=profile.grad_accum,
                    learning_rate=profile.learning_rate, lora_r=profile.lora_r, lora_alpha=profile.lora_alpha,
                    lora_dropout=profile.lora_dropout, tags_as_special_tokens=profile.tags_as_special_tokens,
                    system_prompt=profile.train_system_prompt, tag_loss_weight=profile.tag_loss_weight,
                    open_tag_unlikelihood=profile.open_tag_unlikelihood,
                    gradient_checkpointing=profile.gradient_checkpointing,
                    template=profile.template, max_length=profile.max_length, seed=profile.seed,
                    dtype=profile.dtype, device=profile.device, merge=profile.merge, report_to=profile.report_to)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"FinetuneConfig.method must be one of {METHODS}, not {self.method!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"FinetuneConfig.{name} must be at least 1, not {getattr(self, name)}")
        if self.loss_chunk_tokens < 0:
            raise ConfigError(f"FinetuneConfig.loss_chunk_tokens must be 0 (off) or more, not {self.loss_chunk_tokens}")
        if not self.tag_loss_weight > 0:
            raise ConfigError(f"FinetuneConfig.tag_loss_weight must be above 0, not {self.tag_loss_weight}")
        if not self.open_tag_unlikelihood >= 0:
            raise ConfigError(f"FinetuneConfig.open_tag_unlikelihood must be 0 (off) or more, "
                              f"not {self.open_tag_unlikelihood}")
        if not self.tag_rows_lr_scale > 0:
            raise ConfigError(f"FinetuneConfig.tag_rows_lr_scale must be above 0, not {self.tag_rows_lr_scale}")
        if self.report_to not in REPORTERS:
            raise ConfigError(f"FinetuneConfig.report_to must be one of {REPORTERS}, not {self.report_to!r}")
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise ConfigError(f"FinetuneConfig.adapter_dtype must be one of {ADAPTER_DTYPES}, "
                              f"not {self.adapter_dtype!r}")
        if self.overflow not in ("truncate", "drop"):
            raise ConfigError(f"FinetuneConfig.overflow must be 'truncate' or 'drop', not {self.overflow!r}")

    def reporters(self) -> list[str]:
        """The Trainer's `report_to` list; a missing logger package fails here, before any training starts."""
        import importlib.util

        if self.report_to == "none":
            return []
        package = REPORTER_PACKAGES[self.report_to]
        if importlib.util.find_spec(package) is None:
            raise FinetuneError(f"report_to={self.report_to!r} needs the package {package!r}, which is not "
                                f"installed: pip install {package} (or set report_to=none)")
        return [self.report_to]

    def resolved_adapter_dtype(self, compute_dtype: str) -> str:
        """The dtype the LoRA factors train in, given the device's compute dtype ("auto" resolved)."""
        if self.adapter_dtype != "auto":
            return self.adapter_dtype
        return "bfloat16" if self.method == "qlora" and compute_dtype != "float16" else "float32"

    def auto_steps(self) -> tuple[int, int]:
        every = max(1, min(50, self.max_steps // 5))
        return self.save_steps or every, self.eval_steps or every
