"""What the scoring engine scores: an `Item` (prefix ids, then scored target ids), its loss, or why not.

Light on purpose (no torch): the encoder builds items, the stage plans and journals them, tests
inspect them, and only the engine needs a model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    prefix: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def key(self) -> str:
        h = hashlib.sha1()
        h.update(",".join(map(str, self.prefix)).encode())
        h.update(b"|")
        h.update(",".join(map(str, self.target)).encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.prefix) + len(self.target)


@dataclass(frozen=True)
class Missing:
    """A score that cannot be computed, with the reason (never a 0 or NaN that passes `< 1`)."""

    reason: str


@dataclass
class ItemLoss:
    mean: float
    losses: list[float]
