"""The model stage 05 trains: a 4-bit (or full-precision) base with LoRA, or every weight for a full fine-tune."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from ..format.chat import add_reflection_tokens
from .config import FinetuneConfig


def _embedding_name(model: Any) -> str:
    emb = model.get_input_embeddings()
    for name, mod in model.named_modules():
        if mod is emb:
            return name.split(".")[-1]
    return "embed_tokens"


def keep_4bit_weights_trainable(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for fast CPU inference while we train.

    Why: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight the first time it
    runs in eval mode without grad (an eval-loss pass, a sample generation). The repacked layer then
    uses a kernel with no autograd support, so later training steps silently get no gradient through
    the frozen 4-bit weights (LoRA factors of earlier layers train on wrong gradients). Measured here:
    after one eval pass, layer-0 LoRA gradients differ by as much as their own size. Returns how many
    layers were switched.
    """
    n = 0
    for mod in model.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def cast_lora_factors(model: Any, dtype: str) -> str:
    """Put the trainable LoRA A/B factors in `dtype` (peft creates them in fp32); returns the dtype's name.

    Why bf16 over a 4-bit base: TRL's QLoRA path does the same, and on a CPU it halved the training's peak
    RSS (benchmarks/RESULTS.md). peft casts each layer's input to the factors' dtype and the product back, so the
    base layer's output and the loss stay in the compute dtype. Trainable tag rows stay as they are.
    """
    import torch

    target = getattr(torch, dtype)
    for param in _lora_factors(model):
        if param.dtype != target:
            param.data = param.data.to(target)
    return dtype


def lora_factor_dtype(model: Any) -> str | None:
    """The dtype name of the trainable LoRA factors (None without any)."""
    first = next(iter(_lora_factors(model)), None)
    return None if first is None else str(first.dtype).removeprefix("torch.")


def _lora_factors(model: Any) -> list:
    return [p for name, p in model.named_parameters() if p.requires_grad and ("lora_A" in name or "lora_B" in name)]


def build_model(config: FinetuneConfig, tokenizer: Any, info: Any) -> tuple[Any, dict]:
    """Load the base (4-bit for QLoRA), add tag rows when needed, wrap with LoRA. Returns (model, facts)."""
    from ..models import load_model

    quant4 = config.method == "qlora"
    # A full fine-tune keeps fp32 master weights (bf16/fp16 only as autocast on a GPU); pure bf16 AdamW
    # updates round small steps away.
    load_info = dataclasses.replace(info, dtype="float32") if config.method == "full" else info
    model = load_model(config.student, quant4=quant4, info=load_info)
    facts: dict[str, Any] = {"quant4": quant4, "compute_dtype": info.dtype}
    if quant4:
        keep_4bit_weights_trainable(model)
    tag_ids: list[int] = []
    if config.tags_as_special_tokens:
        tag_ids = add_reflection_tokens(tokenizer, model)
        facts["embeddings_resized_to"] = int(model.get_input_embeddings().weight.shape[0])
    model.config.use_cache = False
    if config.method == "full":
        if quant4:
            raise ValueError("method='full' trains every weight and cannot use a 4-bit base")
        model.train()
        facts["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model, facts
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quant4:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_kwargs: dict[str, Any] = {}
    if tag_ids:
        # Only the six new rows of the (possibly tied) embedding train, not the whole matrix.
        lora_kwargs["trainable_token_indices"] = {_embedding_name(model): tag_ids}
    lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM", bias="none", **lora_kwargs)
    model = get_peft_model(model, lcfg)
    facts["adapter_dtype"] = cast_lora_factors(model, config.resolved_adapter_dtype(info.dtype))
    if tag_ids:
        # peft would save the whole resized embedding (and the tied head) with every checkpoint because the
        # vocabulary grew; the six trained rows already hold everything the base lacks.
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    trainable, total = model.get_nb_trainable_parameters()
    facts.update(trainable_parameters=int(trainable), all_parameters=int(total))
    return model, facts
