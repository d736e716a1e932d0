"""Training examples for stage 05: prompt + answer ids with an exact answer span, batches, the split.

Why so exact: the prompt and the answer are tokenised *separately* (format.chat.TrainingFormat) and
their ids concatenated, so the boundary never moves by a token. Only the answer and the end-of-turn
marker after it carry labels; the prompt and the padding are -100. Padding is masked by position
(the collator knows which positions it added), never by comparing ids with `pad_token_id`, because
on SmolLM2 the pad token *is* the end-of-turn token that we want trained.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

from ..format.chat import TrainingFormat
from ..format.tags import OUTPUT, REFLECTION_TAGS

OUTPUT_OPEN, OUTPUT_CLOSE = f"<{OUTPUT}>", f"</{OUTPUT}>"

# --- examples ----------------------------------------------------------------------------------------


@dataclass
class EncodeReport:
    """What happened to each selected row on its way into a training example."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_ids: dict[str, list[str]] = field(default_factory=dict)
    max_length: int = 0
    overflow: str = "truncate"

    def drop(self, reason: str, sid: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.dropped_ids.setdefault(reason, []).append(sid)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.kept} of {self.rows} rows kept"]
        if self.truncated:
            parts.append(f"{self.truncated} answers truncated to max_length={self.max_length}")
        parts += [f"{n} dropped ({reason})" for reason, n in self.dropped.items()]
        return "; ".join(parts)


Tokens = tuple[list[int], list[tuple[int, int]]]


def answer_tokens(tokenizer: Any, answer: str) -> Tokens:
    """(ids, character offsets) of an answer tokenised alone, as it is trained.

    Needs a fast tokenizer (character offsets); every model the lab loads has one.
    """
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _tag_spans(answer: str, tags: Sequence[str]) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for tag in tags for m in re.finditer(re.escape(tag), answer)]


def tag_token_mask(tokenizer: Any, answer: str, tokens: Tokens | None = None) -> tuple[list[int], list[bool]]:
    """(answer ids, True where a token overlaps a Reflection tag): the tokens that carry the format."""
    ids, offsets = tokens or answer_tokens(tokenizer, answer)
    spans = _tag_spans(answer, REFLECTION_TAGS)
    return ids, [any(a < end and start < b for start, end in spans) for a, b in offsets]


def output_block_marks(tokenizer: Any, answer: str,
                       tokens: Tokens | None = None) -> tuple[list[int], list[bool], list[int]]:
    """(answer ids, True for each token predicted inside the `<output>` block, the ids that open a tag).

    The marked tokens run from the first one after `<output>` up to and including the first token of its
    `</output>`: at each of them a well-formed answer never starts a new tag. The opening ids are the first
    tokens of this answer's opening tags, less any that also starts a closing tag (a tokenizer that splits
    `</` into `<` and `/` gives none, and then nothing is pushed down).
    """
    ids, offsets = tokens or answer_tokens(tokenizer, answer)

    def first_ids(tags: list[str]) -> set[int]:
        starts = {start for start, _ in _tag_spans(answer, tags)}
        return {ids[i] for i, (a, b) in enumerate(offsets) if any(a <= s < b for s in starts)}

    opening = [t for t in REFLECTION_TAGS if not t.startswith("</")]
    closing = [t for t in REFLECTION_TAGS if t.startswith("</")]
    openers = sorted(first_ids(opening) - first_ids(closing))
    start = answer.find(OUTPUT_OPEN)
    end = answer.find(OUTPUT_CLOSE, start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        return ids, [False] * len(ids), openers
    begin = start + len(OUTPUT_OPEN)
    return ids, [begin <= a <= end for a, _ in offsets], openers


def encode_example(fmt: TrainingFormat, tokenizer: Any, instruction: str, input: str, answer: str,
                   max_length: int, overflow: str = "truncate",
                   tag_weight: float = 1.0, open_tag_unlikelihood: float = 0.0) -> tuple[dict | None, str | None, bool]:
    """(example, drop reason, truncated). Labels cover exactly the answer ids plus the end marker.

    tag_weight != 1 adds `weights`: the loss of each tag token and of the end marker is multiplied by it
    (1 for the other answer tokens), so a short run spends more of its gradient on the structure.
    open_tag_unlikelihood > 0 adds `ban_mask` (1 where a token is predicted inside the `<output>` block) and
    `ban_ids` (the tokens that open a tag): the loss then also pushes those tokens down there.
    """
    if not answer.strip():
        return None, "empty answer", False
    prompt = fmt.prompt_ids(tokenizer, instruction, input)
    marked = tag_weight != 1.0 or open_tag_unlikelihood > 0
    # tokenised once, with offsets only when a mark needs them (a slow tokenizer has none)
    tokens = (answer_tokens(tokenizer, answer) if marked
              else (list(tokenizer(answer, add_special_tokens=False)["input_ids"]), []))
    answer_ids, in_tag, in_output, openers = tokens[0], [], [], []
    if tag_weight != 1.0:
        _, in_tag = tag_token_mask(tokenizer, answer, tokens)
    if open_tag_unlikelihood > 0:
        _, in_output, openers = output_block_marks(tokenizer, answer, tokens)
    target = answer_ids + fmt.end_ids
    room = max_length - len(prompt)
    truncated = False
    if room < 1:
        return None, "prompt longer than max_length", False
    if len(target) > room:
        if overflow == "drop":
            return None, "longer than max_length", False
        # cut the answer and leave the end marker off: a cut answer must not teach the model to stop there
        target = answer_ids[:room]
        truncated = True
    ids = prompt + target
    example = {"input_ids": ids, "labels": [-100] * len(prompt) + target, "length": len(ids)}
    if tag_weight != 1.0:
        marks = (in_tag + [True] * len(fmt.end_ids))[:len(target)]
        example["weights"] = [0.0] * len(prompt) + [tag_weight if m else 1.0 for m in marks]
    if open_tag_unlikelihood > 0:
        marks = (in_output + [False] * len(fmt.end_ids))[:len(target)]
        example["ban_mask"] = [0] * len(prompt) + [int(m and bool(openers)) for m in marks]
        example["ban_ids"] = openers
    return example, None, truncated


def encode_rows(rows: Sequence[dict], fmt: TrainingFormat, tokenizer: Any, *, max_length: int,
                overflow: str = "truncate", tag_weight: float = 1.0,
                open_tag_unlikelihood: float = 0.0) -> tuple[list[dict], EncodeReport]:
    """Encode selected rows ({id, instruction, input, output}) into training examples, with a report."""
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
    report = EncodeReport(rows=len(rows), max_length=max_length, overflow=overflow)
    out = []
    for row in rows:
        sid = str(row.get("id", len(out)))
        ex, reason, truncated = encode_example(fmt, tokenizer, row.get("instruction", ""), row.get("input", "") or "",
                                               row.get("output", "") or "", max_length, overflow, tag_weight,
                                               open_tag_unlikelihood)
        if ex is None:
            report.drop(reason or "unknown", sid)
            continue
        ex["id"] = sid
        report.truncated += int(truncated)
        out.append(ex)
    report.kept = len(out)
    return out, report


class ExampleDataset:
    """A list of encoded examples that the Trainer can index (no `datasets` round trip needed)."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    @property
    def lengths(self) -> list[int]:
        return [e["length"] for e in self.examples]


@dataclass
class PadToLongest:
    """Right-pad a batch to its longest member; labels -100 and attention 0 on the added positions.

    With `keep_logits=True` the batch also carries `logits_to_keep`, a boolean (batch, length) mask of
    the positions whose next token is trained. transformers then projects only those hidden states onto
    the vocabulary: on SmolLM2 (49k-token vocabulary) the logits are the largest tensors of a step, and
    prompt and padding positions would be computed only to be ignored.
    """

    pad_id: int
    pad_to_multiple_of: int | None = None
    keep_logits: bool = False

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = int(math.ceil(longest / m) * m)
        ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for r, f in enumerate(features):
            n = len(f["input_ids"])
            ids[r, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.tensor(f["labels"], dtype=torch.long)
            mask[r, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "weights" in features[0]:
            weights = torch.zeros((len(features), longest), dtype=torch.float32)
            for r, f in enumerate(features):
                weights[r, :len(f["weights"])] = torch.tensor(f["weights"], dtype=torch.float32)
            batch["loss_weights"] = weights
        if "ban_mask" in features[0]:
            batch["ban_mask"] = torch.zeros((len(features), longest), dtype=torch.bool)
            batch["ban_ids"] = torch.full((len(features), max(1, *(len(f["ban_ids"]) for f in features))), -1,
                                          dtype=torch.long)
            for r, f in enumerate(features):
                batch["ban_mask"][r, :len(f["ban_mask"])] = torch.tensor(f["ban_mask"], dtype=torch.bool)
                batch["ban_ids"][r, :len(f["ban_ids"])] = torch.tensor(f["ban_ids"], dtype=torch.long)
        if self.keep_logits:
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100
            batch["logits_to_keep"] = keep
        return batch


class LengthGroupedSampler:
    """Random batches of similar length, the same for the same (seed, epoch) in every process and after resume.

    Why not transformers' own: it shuffles with the global torch RNG at the start of each epoch,
    which after a resume is in a different state than in the uninterrupted run, so the resumed run
    would see other batches. Here the order depends only on `seed` and the epoch set by the Trainer.
    Within a window of `mega` batches the samples are sorted by length and cut into batches; the
    full batches are then shuffled (a short one stays last), and the longest batch goes first so an
    out-of-memory error shows at step 1.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega: int = 50):
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self, epoch: int | None = None) -> list[int]:
        rng = random.Random(f"{self.seed}:{self.epoch if epoch is None else epoch}")
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        window = self.batch_size * self.mega
        batches: list[list[int]] = []
        for start in range(0, len(idx), window):
            chunk = sorted(idx[start:start + window], key=lambda i: -self.lengths[i])
            batches += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        # a short batch must stay last: the DataLoader cuts the flat order every batch_size indices
        tail = [b for b in batches if len(b) < self.batch_size]
        batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches[0], batches[longest] = batches[longest], batches[0]
        return [i for b in batches + tail for i in b]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())


def split_train_eval(rows: list[dict], eval_fraction: float, seed: int,
                     min_eval_rows: int = 8) -> tuple[list[dict], list[dict]]:
    """A seeded split; no eval split when there are fewer than `min_eval_rows` rows in all."""
    if eval_fraction <= 0 or len(rows) < min_eval_rows:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(f"split:{seed}").shuffle(order)
    n_eval = max(1, int(round(len(rows) * eval_fraction)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
