"""The plain reference loop: one sequence at a time, full logits, a labels-masked loss.

Why in the package: the engine's tests hold it to this loop, and the benchmarks time the engine
against it, so both must use the same one. It shares nothing with the engine but the items: batch
size 1, no padding, no shared prefixes, the whole vocabulary projected at every position (the way
the public IFD code computes it, hidden states included when asked).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .items import Item


def reference_loss(model: Any, prefix: Sequence[int], target: Sequence[int], *, hidden_states: bool = False) -> float:
    """Mean cross-entropy of `target` after `prefix`, from one forward pass over prefix + target."""
    dev = next(model.parameters()).device
    ids = torch.tensor([list(prefix) + list(target)], device=dev)
    labels = ids.clone()
    labels[0, :len(prefix)] = -100
    with torch.no_grad():
        logits = model(input_ids=ids, output_hidden_states=hidden_states).logits.float()
    return F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100).item()


def reference_losses(model: Any, items: Sequence[Item], *, hidden_states: bool = False) -> dict[str, float]:
    """reference_loss of every item, by item key."""
    return {it.key: reference_loss(model, it.prefix, it.target, hidden_states=hidden_states) for it in items}
