"""A teacher that is a local transformers model (any reflection_lab.models spec or a path).

Why left padding: in a batch, every prompt must end right where generation starts; with right
padding the model would continue after pad tokens. The attention mask hides the pads, and
`generate` derives position ids from that mask for models with absolute positions (GPT-2), so a
batched greedy reply equals the unbatched one (tests check both architectures).
Why a custom decode: models that added the Reflection tags as special tokens would lose them
with `skip_special_tokens=True`; here only non-tag special tokens are dropped.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from .base import ChatReply, ChatRequest, OnReply, error_reply

REFLECTION_TAGS = ("<thinking>", "</thinking>", "<reflection>", "</reflection>", "<output>", "</output>")


class LocalTeacher:
    """Batched generation with a local causal LM. Greedy unless a request asks for temperature > 0."""

    name = "local"

    def __init__(self, model: str, *, quant4: bool = False, batch_size: int = 8, dtype: str | None = None,
                 device: str | None = None, seed: int = 0):
        self.model = model
        self.quant4 = quant4
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.device = device
        self.seed = seed
        self._lm = None
        self._tok = None

    def __repr__(self) -> str:
        return f"LocalTeacher(model={self.model!r}, quant4={self.quant4}, batch_size={self.batch_size})"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "quant4": self.quant4, "dtype": self.dtype}

    def load(self) -> None:
        """Load tokenizer and model once (left padding for batched generation)."""
        if self._lm is not None:
            return
        from ..devices import pick_device
        from ..models import load_model, load_tokenizer

        info = pick_device(prefer=self.device, dtype=self.dtype)
        self._tok = load_tokenizer(self.model, padding_side="left")
        self._lm = load_model(self.model, quant4=self.quant4, info=info)

    @property
    def tokenizer(self):
        self.load()
        return self._tok

    def render(self, messages: Sequence[dict]) -> str:
        """The prompt text the model sees (its chat template, or a plain fallback without one)."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def _max_positions(self) -> int | None:
        cfg = self._lm.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def _stop_ids(self) -> set[int]:
        eos = self._lm.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self._tok.eos_token_id is not None:
            ids.add(self._tok.eos_token_id)
        if self._tok.pad_token_id is not None:
            ids.add(self._tok.pad_token_id)
        return ids

    def _decode(self, ids: list[int]) -> tuple[str, str]:
        stops = self._stop_ids()
        finish = "length"
        for i, t in enumerate(ids):
            if t in stops:
                ids, finish = ids[:i], "stop"
                break
        keep_special = {self._tok.convert_tokens_to_ids(t) for t in REFLECTION_TAGS if t in self._tok.get_vocab()}
        drop = set(self._tok.all_special_ids) - keep_special
        text = self._tok.decode([t for t in ids if t not in drop], skip_special_tokens=False)
        return text, finish

    def generate(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None, *,
                 concurrency: int | None = None) -> list[ChatReply]:
        """concurrency is ignored (batch_size sets the batch); replies arrive batch by batch."""
        import torch

        self.load()
        tok, lm = self._tok, self._lm
        texts = [self.render(r.messages) for r in requests]
        add_special = not (tok.bos_token and all(t.startswith(tok.bos_token) for t in texts))
        lengths = [len(tok(t, add_special_tokens=add_special)["input_ids"]) for t in texts]
        limit = self._max_positions()
        replies: dict[int, ChatReply] = {}

        def emit(i: int, rep: ChatReply) -> None:
            replies[i] = rep
            if on_reply:
                on_reply(rep)

        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if limit and lengths[i] + r.max_tokens > limit:
                emit(i, error_reply(r, f"prompt of {lengths[i]} tokens + max_tokens {r.max_tokens} exceeds the "
                                       f"model's {limit} positions"))
                continue
            groups.setdefault((r.temperature, r.top_p, r.max_tokens), []).append(i)
        for (temperature, top_p, max_tokens), idx in groups.items():
            idx.sort(key=lambda i: lengths[i])  # similar lengths together: less padding
            for start in range(0, len(idx), self.batch_size):
                batch = idx[start:start + self.batch_size]
                t0 = time.perf_counter()
                enc = tok([texts[i] for i in batch], return_tensors="pt", padding=True,
                          add_special_tokens=add_special).to(lm.device)
                sampling: dict[str, Any] = {"do_sample": False}
                if temperature > 0:
                    torch.manual_seed(self.seed)
                    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
                with torch.no_grad():
                    out = lm.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id, **sampling)
                dt = (time.perf_counter() - t0) / len(batch)
                width = enc["input_ids"].shape[1]
                for row, i in enumerate(batch):
                    text, finish = self._decode(out[row, width:].tolist())
                    emit(i, ChatReply(key=requests[i].key, text=text, finish_reason=finish, latency_s=dt,
                                      meta=requests[i].meta))
        return [replies[i] for i in range(len(requests))]
