"""The batched answer-token loss engine behind IFD and r-IFD.

Why not the reference loop: the public IFD code scores one sequence at a time, materialises
full-vocabulary logits, locates the answer by searching the text, and returns 0 when anything
fails. Here every score is a mean cross-entropy over an exactly known token span:

* A scored sequence is an `Item`: `prefix` token ids (context, not scored) + `target` ids
  (scored). Prefix and target are tokenised separately, so the span is exact by construction.
* Items are deduplicated (s(Q) is shared by variants with the same instruction), then either
  length-sorted into padded batches (right or left padding, explicit position ids) or packed
  into rows without padding (position ids restart per item; transformers turns that into a
  block-diagonal mask, so items never attend to each other). Packing beats padding on CPUs,
  where a 135M model's matmuls are already efficient at batch 1 and padding is pure waste;
  padded batches win on GPUs.
* On CPUs the default layout shares prefixes (shared.py): a batch is one row holding each
  repeated prompt prefix once, and a custom attention keeps every item to its own context. It is
  used only after it reproduces the model's own losses on a probe; otherwise packed rows are used.
* Only the hidden states at target positions go through the LM head, in row chunks, so fp32
  logits for a whole batch (16 x 2048 x 128k = 16 GiB) never exist.
* Out of memory halves the batch budget and retries.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterable

import torch

from ..core.devices import is_out_of_memory
from ..core.errors import StageFailed
from .items import Item, ItemLoss
from .shared import active as shared_attention
from .shared import build_layout


def plan_batches(items: list[Item], batch_tokens: int, max_batch_size: int) -> list[list[Item]]:
    """Longest first (an OOM shows up on the first batch), then greedy packing under the padded-token budget."""
    batches: list[list[Item]] = []
    current: list[Item] = []
    for it in sorted(items, key=lambda x: (-len(x), x.key)):
        width = len(current[0]) if current else len(it)
        if current and ((len(current) + 1) * width > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(it)
    if current:
        batches.append(current)
    return batches


def plan_packed(items: list[Item], capacity: int) -> list[list[Item]]:
    """Best-fit decreasing bin packing of items into rows of at most `capacity` tokens."""
    import bisect

    rows: list[list[Item]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    for it in sorted(items, key=lambda x: (-len(x), x.key)):
        need = len(it)
        pos = bisect.bisect_left(free, (need, -1))
        if pos < len(free):
            room, r = free.pop(pos)
            rows[r].append(it)
            bisect.insort(free, (room - need, r))
        else:
            rows.append([it])
            bisect.insort(free, (max(capacity, need) - need, len(rows) - 1))
    return rows


def plan_shared(items: list[Item], batch_tokens: int, max_batch_size: int) -> list[list[Item]]:
    """Items in token order, so those sharing a prefix land in the same batch, cut at the token budget."""
    batches: list[list[Item]] = []
    current: list[Item] = []
    used = 0
    for it in sorted(items, key=lambda x: (x.prefix, x.target)):
        if current and (used + len(it) > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, used = [], 0
        current.append(it)
        used += len(it)
    if current:
        batches.append(current)
    return batches


class LossEngine:
    """Mean and per-token cross-entropy of each item's target tokens under a causal LM."""

    def __init__(self, model, *, pad_id: int | None, batch_tokens: int = 4096, max_batch_size: int = 64,
                 padding_side: str = "right", chunk_rows: int = 1024, pack_tokens: int = 512):
        auto = padding_side == "auto"
        if auto:
            padding_side = "right" if next(model.parameters()).device.type == "cuda" else "shared"
        if padding_side not in ("right", "left", "packed", "shared"):
            raise ValueError("padding_side must be 'right', 'left', 'packed', 'shared' or 'auto'")
        self.model = model
        self.pad_id = pad_id if pad_id is not None else 0  # always masked out, so any id will do
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.padding_side = padding_side
        self.chunk_rows = chunk_rows
        self.pack_tokens = pack_tokens  # packed rows stay short: attention cost grows with the row's square
        self.device = next(model.parameters()).device
        self.tokens_scored = 0  # tokens of the items scored (what the reference loop would compute)
        self.tokens_computed = 0  # tokens actually run through the model: padding added, shared prefixes once
        self._head_only = self._check_head_only()
        if self.padding_side == "shared" and not self._check_shared():
            if not auto:
                warnings.warn("the shared-prefix layout does not reproduce this model's losses; using packed rows",
                              stacklevel=2)
            self.padding_side = "packed"

    # -- model plumbing -------------------------------------------------------------------------
    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden).float()
        cfg = self.model.config
        if getattr(cfg, "final_logit_softcapping", None):
            cap = cfg.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        if getattr(cfg, "logit_scale", None):
            logits = logits * cfg.logit_scale
        if getattr(cfg, "logits_scaling", None):
            logits = logits / cfg.logits_scaling
        return logits

    def _check_head_only(self) -> bool:
        """Use backbone + head-on-target-rows only if it reproduces the model's own logits here."""
        try:
            ids = torch.tensor([[self.pad_id] + list(range(1, 8))],
                               device=self.device) % self.model.config.vocab_size
            with torch.inference_mode():
                mask = torch.ones_like(ids)
                full = self.model(input_ids=ids, attention_mask=mask).logits.float()
                hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                mine = self._head(hidden)
            return torch.allclose(full, mine, atol=1e-3, rtol=1e-3)
        except Exception:  # noqa: BLE001 - any surprise means: use the plain path
            return False

    def _check_shared(self) -> bool:
        """Shared-prefix losses must match scoring each probe item on its own (one item per batch)."""
        g = torch.Generator().manual_seed(0)
        vocab = self.model.config.vocab_size
        head = tuple(torch.randint(1, vocab, (9,), generator=g).tolist())
        tail = [tuple(torch.randint(1, vocab, (n,), generator=g).tolist()) for n in (3, 5, 2, 4)]
        probe = [Item(head + tail[0], tail[1]), Item(head + tail[0], tail[2]), Item(head + tail[1], tail[3]),
                 Item(head + tail[0] + tail[3], tail[0]), Item(head[:2], tail[1])]
        half = next(self.model.parameters()).dtype in (torch.float16, torch.bfloat16)
        try:
            alone = [self._forward([it], "right")[0] for it in probe]
            batched = self._forward(probe, "right")
            shared = self._forward(probe, "shared")
        except Exception:  # noqa: BLE001 - an architecture the custom attention cannot serve
            return False
        finally:
            self.tokens_scored = self.tokens_computed = 0

        def worst(got: list[ItemLoss]) -> float:
            return max(abs(x - y) for a, b in zip(alone, got) for x, y in zip(a.losses, b.losses))

        # Some kernels (bitsandbytes 4-bit on a CPU) already change losses with the batch's shape; the shared
        # layout may differ by as much as ordinary batching does, not more. A wrong context costs whole nats.
        tol = max(5e-2 if half else 1e-3, 3 * worst(batched))
        return worst(shared) <= tol

    def _target_logits(self, input_ids, attention_mask, position_ids, rows, cols) -> Iterable[torch.Tensor]:
        if self._head_only:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                           position_ids=position_ids, use_cache=False).last_hidden_state
            picked = hidden[rows, cols]
            for start in range(0, picked.shape[0], self.chunk_rows):
                yield self._head(picked[start:start + self.chunk_rows])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).logits
            picked = logits[rows, cols]
            for start in range(0, picked.shape[0], self.chunk_rows):
                yield picked[start:start + self.chunk_rows].float()

    # -- one batch ---------------------------------------------------------------------------------
    def _pack_rows(self, batch: list[Item]):
        """Rows holding items back to back (positions restart per item), padded to one width.

        Padding at a row's end restarts its positions too, so it forms its own segment that no
        item attends to. Returns the items in row order, which is the order of the losses.
        """
        rows = plan_packed(batch, min(self.batch_tokens, self.pack_tokens))
        width = max(sum(len(it) for it in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        rr, cols, targets, order = [], [], [], []
        for r, row in enumerate(rows):
            at = 0
            for it in row:
                seq = list(it.prefix) + list(it.target)
                ids[r, at:at + len(seq)] = torch.tensor(seq)
                pos[r, at:at + len(seq)] = torch.arange(len(seq))
                first = at + len(it.prefix)
                rr += [r] * len(it.target)
                cols += list(range(first - 1, first - 1 + len(it.target)))
                targets += list(it.target)
                order.append(it)
                at += len(seq)
            pos[r, at:] = torch.arange(width - at)
        return ids, None, pos, rr, cols, targets, order

    def forward_batch(self, batch: list[Item]) -> list[ItemLoss]:
        """Losses for the items of one batch, in the order given."""
        return self._forward(batch, self.padding_side)

    def _forward(self, batch: list[Item], layout_name: str) -> list[ItemLoss]:
        given = batch
        layout = None
        if layout_name == "shared":
            layout = build_layout(batch)
            input_ids, attention_mask, position_ids = layout.input_ids, None, layout.position_ids
            rows, cols, targets, batch = layout.rows, layout.cols, layout.targets, layout.order
        elif layout_name == "packed":
            input_ids, attention_mask, position_ids, rows, cols, targets, batch = self._pack_rows(batch)
        else:
            input_ids, attention_mask, position_ids, rows, cols, targets = self._pad_batch(batch, layout_name)
        dev = self.device
        rows_t, cols_t = torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)
        tgt = torch.tensor(targets, device=dev)
        losses: list[torch.Tensor] = []
        with torch.inference_mode(), (shared_attention(self.model, layout) if layout else contextlib.nullcontext()):
            done = 0
            mask = attention_mask.to(dev) if attention_mask is not None else None
            for chunk in self._target_logits(input_ids.to(dev), mask, position_ids.to(dev), rows_t, cols_t):
                picked = chunk.gather(1, tgt[done:done + chunk.shape[0], None])[:, 0]
                losses.append(torch.logsumexp(chunk, dim=-1) - picked)  # cross-entropy without a log-softmax copy
                done += chunk.shape[0]
        flat = torch.cat(losses).double().cpu().tolist()
        out, i = [], 0
        for it in batch:
            seg = flat[i:i + len(it.target)]
            i += len(it.target)
            out.append(ItemLoss(mean=math.fsum(seg) / len(seg), losses=seg))
        self.tokens_scored += sum(len(it) for it in batch)
        self.tokens_computed += input_ids.numel()
        if batch is not given:
            by_key = {it.key: loss for it, loss in zip(batch, out)}
            out = [by_key[it.key] for it in given]
        return out

    def _pad_batch(self, batch: list[Item], side: str):
        width = max(len(it) for it in batch)
        n = len(batch)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for r, it in enumerate(batch):
            seq = list(it.prefix) + list(it.target)
            off = 0 if side == "right" else width - len(seq)
            input_ids[r, off:off + len(seq)] = torch.tensor(seq)
            attention_mask[r, off:off + len(seq)] = 1
            position_ids[r, off:off + len(seq)] = torch.arange(len(seq))
            first = off + len(it.prefix)  # the first target token sits here; it is predicted one step earlier
            rows += [r] * len(it.target)
            cols += list(range(first - 1, first - 1 + len(it.target)))
            targets += list(it.target)
        return input_ids, attention_mask, position_ids, rows, cols, targets

    def _plan(self, items: list[Item]) -> list[list[Item]]:
        if self.padding_side == "shared":
            return plan_shared(items, self.batch_tokens, self.max_batch_size)
        if self.padding_side == "packed":
            cap = min(self.batch_tokens, self.pack_tokens)
            rows = plan_packed(items, cap)
            per_batch = max(1, min(self.max_batch_size, self.batch_tokens // cap))
            return [[it for row in rows[i:i + per_batch] for it in row] for i in range(0, len(rows), per_batch)]
        return plan_batches(items, self.batch_tokens, self.max_batch_size)

    # -- many items --------------------------------------------------------------------------------
    def score(self, items: Iterable[Item], *, done: dict[str, ItemLoss] | None = None,
              on_batch: Callable[[list[tuple[Item, ItemLoss]]], None] | None = None,
              shard: tuple[int, int] = (0, 1), progress: bool = False) -> dict[str, ItemLoss]:
        """Score unique items not in `done`; `shard=(rank, world)` takes every world-th batch of the global plan."""
        results: dict[str, ItemLoss] = dict(done or {})
        unique = {it.key: it for it in items}
        for it in unique.values():
            if not it.target:
                raise ValueError("an Item needs at least one target token")
            if not it.prefix:
                raise ValueError("an Item needs at least one prefix token (a start token) to predict its first target")
        rank, world = shard
        # Shard the plan of *all* items, then drop finished ones: every process then agrees on who scores
        # what, even if another process has already journalled part of its share.
        pending = [[it for it in b if it.key not in results] for b in self._plan(list(unique.values()))[rank::world]]
        pending = [b for b in pending if b]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(b) for b in pending), desc="scoring", unit="seq")
        while pending:
            batch = pending.pop(0)
            try:
                losses = self.forward_batch(batch)
            except Exception as exc:  # noqa: BLE001
                if not is_out_of_memory(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if len(batch) == 1:
                    raise StageFailed(
                        f"Out of memory scoring one sequence of {len(batch[0])} tokens. Lower max_length, load the "
                        "student in 4-bit (quant4_scoring=True), or use a smaller student.") from exc
                # Halve the budget and re-plan everything left, so later batches do not hit the same wall.
                flat = self.padding_side in ("packed", "shared")
                used = sum(len(it) for it in batch) if flat else len(batch) * len(batch[0])
                self.batch_tokens = max(1, min(self.batch_tokens, used) // 2)
                rest = batch + [it for b in pending for it in b]
                pending = self._plan(rest)
                continue
            pairs = list(zip(batch, losses))
            for it, loss in pairs:
                results[it.key] = loss
            if on_batch:
                on_batch(pairs)
            if bar:
                bar.update(len(batch))
        if bar:
            bar.close()
        return results
