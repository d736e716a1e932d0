"""The transformers Trainer as stage 05 uses it: arguments, length-grouped batches, answer-only logits."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from .config import FinetuneConfig
from .data import ExampleDataset, LengthGroupedSampler


def checkpointing_args(enabled: bool) -> dict:
    """Activation checkpointing under the TrainingArguments name this transformers knows.

    Why: transformers 5.24 renamed gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs) and
    warns on the old names; 5.0, the lab's floor, knows only the old ones.
    """
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: enabled, f"{key}_kwargs": {"use_reentrant": False}}


def training_args(config: FinetuneConfig, out_dir: Path, info: Any, has_eval: bool, world: int = 1) -> Any:
    from transformers import TrainingArguments

    save_steps, eval_steps = config.auto_steps()
    cuda = info.device == "cuda"
    return TrainingArguments(
        output_dir=str(out_dir), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=float(config.warmup_ratio),  # a float below 1 is a fraction of max_steps
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, optim=config.optim,
        logging_steps=1, eval_strategy="steps" if has_eval else "no", eval_steps=eval_steps if has_eval else None,
        save_strategy="steps", save_steps=save_steps, save_total_limit=config.save_total_limit,
        seed=config.seed, data_seed=config.seed,
        use_cpu=not cuda, ddp_backend="gloo" if world > 1 and not cuda else None,  # CPU DDP needs both
        bf16=cuda and info.dtype == "bfloat16", fp16=cuda and info.dtype == "float16",
        **checkpointing_args(config.gradient_checkpointing), ddp_find_unused_parameters=False,
        report_to=config.reporters(), disable_tqdm=True, remove_unused_columns=False, label_names=["labels"],
        prediction_loss_only=True,  # eval needs the loss only; keeping eval logits costs batch x length x vocab
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, save_only_model=False,
    )


def supports_logits_to_keep(model: Any) -> bool:
    """True when the causal LM's forward takes a boolean (batch, length) `logits_to_keep` mask.

    Why the import check: transformers releases before `modeling_utils.slice_logits_to_keep` (5.0 among them)
    take `logits_to_keep` but only as positions, and index with a mask fails; those train on full logits.
    """
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return "logits_to_keep" in inspect.signature(causal_lm(model).forward).parameters


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside DataParallel / DDP (`.module`) and peft (`get_base_model()`) wrappers."""
    base = model
    while True:
        if hasattr(base, "get_base_model") and base is not base.get_base_model():
            base = base.get_base_model()
        elif type(base).__name__ in ("DistributedDataParallel", "DataParallel"):
            base = base.module
        else:
            return base


# Models whose forward ends in `logits = lm_head(hidden[kept])` with nothing after it (no soft-capping or scale),
# so the head can be applied outside the forward, in chunks.
CHUNKABLE_HEADS = ("llama", "qwen2", "qwen3", "mistral")


def plain_output_head(model: Any) -> Any:
    """The model's output projection when the loss may apply it in chunks, else None.

    Why so narrow: a peft wrapper on the head (trainable tag tokens) adds rows a bare matmul would miss, and some
    architectures change the logits after the head (Gemma's soft-capping); those keep the model's own head.
    """
    import torch

    base = causal_lm(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if getattr(base.config, "model_type", None) not in CHUNKABLE_HEADS or type(head) is not torch.nn.Linear:
        return None
    return head


def token_losses(logits: Any, target: Any, ban_ids: Any = None) -> Any:
    """Per-token cross-entropy; with `ban_ids` ((tokens, k) ids, -1 for none) a (tokens, 2) tensor whose second
    column is the unlikelihood -log(1 - p), p the probability the model puts on those ids together.

    Unlikelihood training (Welleck et al., 2019) pushes chosen wrong tokens down directly, where cross-entropy
    only pulls the right one up. A position whose own target is one of the ids gets 0 there.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    ce = F.cross_entropy(logits, target, reduction="none")
    if ban_ids is None:
        return ce
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    banned = (logits.gather(1, ban_ids.clamp(min=0)) - log_z).exp() * (ban_ids >= 0)
    banned = banned * (ban_ids != target[:, None])  # "<" written as text where it belongs is no error
    p = banned.sum(-1).clamp(max=1 - 1e-6)
    return torch.stack([ce, -torch.log1p(-p)], dim=-1)


def _head_token_losses(hidden: Any, weight: Any, bias: Any, target: Any, autocast_dtype: Any,
                       ban_ids: Any = None) -> Any:
    import torch
    import torch.nn.functional as F

    # The model's forward ran under the Trainer's autocast (bf16/fp16 on a GPU); the head, applied here outside that
    # forward, gets the same. Without autocast the hidden states take the head's dtype (a bf16 `lora` base).
    with torch.autocast(hidden.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = F.linear(hidden if autocast_dtype else hidden.to(weight.dtype), weight, bias)
    return token_losses(logits, target, ban_ids)


def chunked_cross_entropy(hidden: Any, head: Any, target: Any, chunk: int, autocast_dtype: Any = None,
                          ban_ids: Any = None) -> Any:
    """Per-token cross-entropy of `head(hidden)` against `target`, `chunk` rows at a time (with `ban_ids`, the
    (tokens, 2) losses of `token_losses`).

    Why: at SmolLM2's 49,152-token vocabulary one batch's answer logits, their softmax and its gradient are
    three (tokens x vocabulary) fp32 tensors, about 2.4 GB for 4,000 tokens. With gradients on, each chunk is
    checkpointed: its logits are dropped after the forward and recomputed in the backward, one chunk at a time.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if hidden.shape[0] == 0:  # no trained token: a zero loss that still has a graph
        zero = hidden[:, 0].float() * 0.0
        return zero if ban_ids is None else torch.stack([zero, zero], dim=-1)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        bans = None if ban_ids is None else ban_ids[start:start + chunk]
        args = (hidden[start:start + chunk], head.weight, head.bias, target[start:start + chunk], autocast_dtype, bans)
        parts.append(checkpoint(_head_token_losses, *args, use_reentrant=False) if grad
                     else _head_token_losses(*args))
    return torch.cat(parts)


class _HeadSkipped:
    """Within the block the output head returns its input, so the forward hands back hidden states."""

    def __init__(self, head: Any) -> None:
        self.head = head
        self.own = None

    def __enter__(self) -> None:
        self.own = self.head.__dict__.get("forward")  # a forward set on the instance (e.g. by accelerate's hooks)
        self.head.forward = lambda hidden: hidden

    def __exit__(self, *exc: Any) -> None:
        if self.own is not None:
            self.head.forward = self.own
        else:
            del self.head.forward  # the class's own forward again


def answer_only_loss(model: Any, inputs: dict, chunk_tokens: int = 0, autocast_dtype: Any = None,
                     unlikelihood: float = 0.0) -> tuple[Any, int, Any]:
    """(summed cross-entropy, number of trained tokens, outputs), computed on the trained positions only.

    `inputs` holds input_ids, attention_mask, labels (unshifted, -100 where untrained), maybe the boolean
    `logits_to_keep` mask from `PadToLongest(keep_logits=True)` (then the model projects only those
    positions onto the vocabulary; the result equals its own loss on full logits, tests check it) and
    maybe `loss_weights` (tag_loss_weight), which scale each trained token's loss. With `chunk_tokens` and
    a kept-positions mask, the head is applied `chunk_tokens` positions at a time (`chunked_cross_entropy`)
    where `plain_output_head` allows it, under `autocast_dtype` when training in mixed precision; `outputs.logits`
    is then None. With `ban_mask` and `ban_ids` (open_tag_unlikelihood) and `unlikelihood` > 0, each marked
    position adds `unlikelihood` x -log(1 - p(a token that opens a tag)), unweighted by `loss_weights`.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    weights = inputs.pop("loss_weights", None)
    ban_mask, ban_ids = inputs.pop("ban_mask", None), inputs.pop("ban_ids", None)
    trained = labels[:, 1:] != -100
    target = labels[:, 1:][trained]  # row-major, the order in which kept logits come back
    bans = None
    if ban_mask is not None and unlikelihood > 0:
        rows = trained.nonzero()[:, 0]
        bans = ban_ids[rows].masked_fill(~ban_mask[:, 1:][trained][:, None], -1)
    head = plain_output_head(model) if chunk_tokens and "logits_to_keep" in inputs else None
    if head is not None:
        with _HeadSkipped(head):
            outputs = model(**inputs)
        hidden = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        outputs = type(outputs)(**{k: v for k, v in outputs.items() if k != "logits"})  # those were hidden states
        losses = chunked_cross_entropy(hidden, head, target, chunk_tokens, autocast_dtype, bans)
    else:
        outputs = model(**inputs)
        if "logits_to_keep" in inputs:
            logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        else:
            logits = outputs.logits[:, :-1][trained]
        losses = token_losses(logits, target, bans)
    extra = 0.0
    if bans is not None:
        losses, extra = losses[:, 0], unlikelihood * losses[:, 1].sum()
    if weights is not None:
        losses = losses * weights[:, 1:][trained].to(losses.dtype)
    return losses.sum() + extra, int(target.numel()), outputs


def give_tag_rows_their_own_lr(optimizer: Any, model: Any, scale: float) -> None:
    """Move the trained tag-token rows into a param group of their own at `scale` x the learning rate.

    Why: the six new rows start close together (each the mean of its spelling's rows), and at the LoRA
    learning rate 40 steps moved them too little to tell `<output>` from `</output>` (docs/finetune.md).
    Call before the scheduler is built, so it takes this group's rate as its base.
    """
    rows = {id(p) for name, p in model.named_parameters() if p.requires_grad and "trainable_tokens_delta" in name}
    if not rows:
        return
    moved = []
    for group in optimizer.param_groups:
        moved += [p for p in group["params"] if id(p) in rows]
        group["params"] = [p for p in group["params"] if id(p) not in rows]
    lr = optimizer.defaults["lr"] * scale
    optimizer.add_param_group({"params": moved, "lr": lr, "weight_decay": 0.0})


def make_trainer(model: Any, args: Any, train: ExampleDataset, eval_ds: ExampleDataset | None, collator: Any,
                  config: FinetuneConfig, callbacks: list) -> Any:
    from transformers import Trainer

    class LabTrainer(Trainer):
        """Trainer with length-grouped batches in an order fixed by (seed, epoch), and answer-only logits."""

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if not config.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(train.lengths, config.batch_size, seed=config.seed)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            """Resume with the LoRA factors in the dtype they trained in: peft's `load_adapter` casts bf16
            factors to fp32, and a resumed run would then follow another loss curve."""
            from .model import cast_lora_factors, lora_factor_dtype

            target = model if model is not None else self.model
            dtype = lora_factor_dtype(target)
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            if dtype is not None:
                cast_lora_factors(target, dtype)

        def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
            # transformers at the declared floor takes no `model` argument here; later ones take one
            optimizer = super().create_optimizer(*args, **kwargs)
            if config.tag_rows_lr_scale != 1.0:
                model = args[0] if args else kwargs.get("model")
                give_tag_rows_their_own_lr(optimizer, self.model if model is None else model,
                                           config.tag_rows_lr_scale)
            return optimizer

        def _autocast_dtype(self) -> Any:
            """The half dtype the Trainer's mixed precision runs the forward in (None: no mixed precision)."""
            import torch

            return torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if not {"logits_to_keep", "loss_weights", "ban_mask"} & set(inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            total, n, outputs = answer_only_loss(model, inputs, config.loss_chunk_tokens, self._autocast_dtype(),
                                                 config.open_tag_unlikelihood)
            # the same normalisation as Trainer.compute_loss with a model that takes num_items_in_batch
            if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            else:
                loss = total / max(n, 1)
            return (loss, outputs) if return_outputs else loss

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = LabTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_ds, data_collator=collator,
                         callbacks=callbacks)
    for cb in (PrinterCallback, ProgressCallback):  # the lab's own progress replaces the raw log dicts
        trainer.remove_callback(cb)
    return trainer
