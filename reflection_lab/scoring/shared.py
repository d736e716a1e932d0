"""Shared-prefix layout for the scoring engine: each repeated prompt prefix is computed once.

Why: the four IFD / r-IFD passes repeat long token prefixes. Every chat-templated prompt starts
with the same system header, every reverse prompt with the same request text, and the versions of
one sample share their whole instruction (s(A|Q)) or their whole answer (s(Q | reverse prompt)).
On a CPU a 135M student is compute-bound, so the only way to go faster is to compute less.

A batch becomes one row: each shared prefix (an *anchor*) once, then each item's own tokens. A
custom attention function lets every segment attend to its chain of anchors and causally to
itself, and to nothing else; positions continue after the anchor. Every token thus sees exactly
the context it would see alone. The engine checks this against the model's own logits before
using the layout and falls back to packed rows where it does not hold.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ATTN_NAME = "reflection_lab_segments"
_ACTIVE: contextvars.ContextVar[SharedLayout | None] = contextvars.ContextVar("reflection_lab_layout",
                                                                                 default=None)
_LOCK = threading.Lock()  # one shared batch at a time: the attention switch is made on the model object
_ORIGINAL: dict[int, str] = {}  # id(model config) -> its own attention, while switched


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def _longest_proper(seq: tuple[int, ...], anchors: set[tuple[int, ...]], lengths: list[int]) -> tuple[int, ...] | None:
    """The longest anchor that is a proper prefix of `seq` (`lengths`: anchor lengths, descending)."""
    for n in lengths:
        if n < len(seq) and seq[:n] in anchors:
            return seq[:n]
    return None


def find_anchors(prefixes: Sequence[tuple[int, ...]], min_len: int = 4) -> dict[tuple[int, ...], tuple[int, ...] | None]:
    """Shared prefixes worth computing once, each mapped to its parent anchor (or None).

    Candidates are the branch points of the prefixes' trie: the common prefix of neighbours in
    sorted order, and a prefix that several items have in full minus its last token (an anchor must
    leave each item at least one own token, whose output predicts the first target token). An
    anchor that ends up serving a single child saves nothing and is dropped.
    """
    counts = Counter(prefixes)
    uniq = sorted(counts)
    cands: set[tuple[int, ...]] = set()
    for p, c in counts.items():
        if c > 1 and len(p) - 1 >= min_len:
            cands.add(p[:-1])
    for a, b in itertools.pairwise(uniq):
        k = min(_lcp(a, b), len(a) - 1, len(b) - 1)
        if k >= min_len:
            cands.add(a[:k])
    while True:
        lengths = sorted({len(c) for c in cands}, reverse=True)
        parent = {c: _longest_proper(c, cands, lengths) for c in cands}
        children: Counter = Counter(parent.values())
        for p, c in counts.items():
            children[_longest_proper(p, cands, lengths)] += c
        lonely = {c for c in cands if children[c] < 2}
        if not lonely:
            return parent
        cands -= lonely


@dataclass
class Segment:
    start: int
    end: int
    context: tuple[tuple[int, int], ...]  # row ranges of the anchors this segment sees, outermost first

    @property
    def context_len(self) -> int:
        return sum(b - a for a, b in self.context)


@dataclass
class SharedLayout:
    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    segments: list[Segment]
    rows: list[int]
    cols: list[int]
    targets: list[int]
    order: list  # the items, in the order of their losses
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @property
    def computed_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def mask(self, seg: Segment, device) -> torch.Tensor:
        """Attend to every context token, and causally within the segment."""
        key = (seg.context_len, seg.end - seg.start)
        if key not in self.masks:
            ctx, n = key
            self.masks[key] = torch.ones(n, ctx + n, dtype=torch.bool, device=device).tril(diagonal=ctx)
        return self.masks[key]


def build_layout(batch: Sequence, min_anchor: int = 4) -> SharedLayout:
    """One row holding each anchor once and each item's own tokens, with exact positions."""
    items = sorted(batch, key=lambda it: (it.prefix, it.target))
    parent = find_anchors([it.prefix for it in items], min_anchor)
    lengths = sorted({len(a) for a in parent}, reverse=True)
    ids: list[int] = []
    pos: list[int] = []
    segments: list[Segment] = []
    placed: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}  # anchor -> context incl. itself

    def place(anchor: tuple[int, ...] | None) -> tuple[tuple[int, int], ...]:
        if anchor is None:
            return ()
        if anchor not in placed:
            up = parent[anchor]
            ctx = place(up)
            start = len(ids)
            base = len(up) if up else 0
            ids.extend(anchor[base:])
            pos.extend(range(base, len(anchor)))
            segments.append(Segment(start, len(ids), ctx))
            placed[anchor] = ctx + ((start, len(ids)),)
        return placed[anchor]

    rows, cols, targets = [], [], []
    anchors = set(parent)
    for it in items:
        anchor = _longest_proper(it.prefix, anchors, lengths)
        ctx = place(anchor)
        base = len(anchor) if anchor else 0
        own = list(it.prefix[base:]) + list(it.target)
        start = len(ids)
        ids.extend(own)
        pos.extend(range(base, base + len(own)))
        segments.append(Segment(start, len(ids), ctx))
        first = start + len(it.prefix) - base  # row index of the first target token
        cols += range(first - 1, first - 1 + len(it.target))
        rows += [0] * len(it.target)
        targets += it.target
    return SharedLayout(torch.tensor([ids]), torch.tensor([pos]), segments, rows, cols, targets, items)


def _own_attention(module):
    """The model's own attention function, for calls made outside a shared batch while the model is switched."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = _ORIGINAL.get(id(getattr(module, "config", None)), "sdpa")
    fn = ALL_ATTENTION_FUNCTIONS._global_mapping.get(name)
    if fn is None:  # "eager" lives in each model's own module
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"cannot find attention {name!r} for {type(module).__name__} outside a shared batch")
    return fn


def segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention restricted to each segment's anchors and itself (query/key/value: batch, heads, T, dim)."""
    layout = _ACTIVE.get()
    if layout is None:  # e.g. a viewer thread generating with the same model while a batch is scored
        return _own_attention(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    for unsupported in ("sliding_window", "softcap", "s_aux", "position_bias"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(f"the shared-prefix layout does not handle {unsupported}")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    outs = []
    for seg in layout.segments:
        q = query[:, :, seg.start:seg.end]
        if seg.context:
            spans = [*seg.context, (seg.start, seg.end)]
            k = torch.cat([key[:, :, a:b] for a, b in spans], dim=2)
            v = torch.cat([value[:, :, a:b] for a, b in spans], dim=2)
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask(seg, q.device), scale=scaling))
        else:
            k, v = key[:, :, seg.start:seg.end], value[:, :, seg.start:seg.end]
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def segment_mask(*args, config=None, **kwargs):
    """No mask inside a shared batch (segments encode it); the model's own mask for anyone else meanwhile."""
    if _ACTIVE.get() is not None:
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    own = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(_ORIGINAL.get(id(config), "sdpa"))
    own = own or ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["sdpa"]
    return own(*args, config=config, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, segment_attention)
    AttentionMaskInterface.register(ATTN_NAME, segment_mask)


@contextlib.contextmanager
def active(model, layout: SharedLayout) -> Iterator[None]:
    """Run the model with segment attention over `layout`, restoring its own attention afterwards.

    The switch is made on the model object, so it is serialised: one shared batch at a time in a process.
    Other threads that use the model meanwhile get its own attention and mask (see segment_attention).
    """
    _register()
    with _LOCK:
        before = model.config._attn_implementation
        _ORIGINAL[id(model.config)] = before
        token = None
        try:
            model.set_attn_implementation(ATTN_NAME)
            token = _ACTIVE.set(layout)
            yield
        finally:
            if token is not None:
                _ACTIVE.reset(token)
            model.set_attn_implementation(before)
            _ORIGINAL.pop(id(model.config), None)
