"""The local backend: a transformers model streamed with the tags kept, batched for evaluation and teaching.

Why a streamer of our own: Reflection 70B added its six tags as special tokens, and every stock
decoder path (`skip_special_tokens=True`, TextStreamer's default, vLLM's default) deletes special
tokens, so the answer arrives with no tags and the parser can only say `no_tags`. Keeping *all*
special tokens instead leaks `<|im_end|>`, `<|end|>` and padding into the text. `token_policy`
draws the line: every special token is dropped except the six tags; the model's end-of-turn and
EOS ids end the answer (finish_reason "stop"), running out of new tokens is "length".

Why left padding in batches: each prompt must end where generation starts. The attention mask hides
the pads and the position ids count only real tokens, which matters for learned absolute positions
(the tiny GPT-2 student); tests check that a batch gives exactly the unbatched greedy text.

One implementation of batched generation serves every caller: `generate_batch` (stages 06 and 07),
`complete` (a local teacher in stage 02, a local judge, the lab's server) and `stream` (the viewers).
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..format.chat import (REFLECTION_PROMPT, SystemPrompt, TrainingFormat, build_format, decode_keep_tags,
                           history_for_model, special_ids_except_tags, system_prompt_text, tag_token_ids)
from ..format.tags import REFLECTION_TAGS, parse
from ..format.templates import render_forward
from .base import ChatReply, ChatRequest, OnReply, Prompt, error_reply
from .sampling import SamplingPreset, StopCutter, cut_at_stop, get_preset, request_preset
from .streams import Generation, TextStream


@dataclass(frozen=True)
class TokenPolicy:
    """Which generated ids become text. tag_ids: the tags when they are single tokens."""

    tag_ids: frozenset[int]
    drop_ids: frozenset[int]  # every special token except the tags (pad, BOS/EOS, chat markers)
    stop_ids: frozenset[int]  # the model's EOS ids and the end-of-turn marker: generation ends here


def token_policy(tokenizer: Any, model: Any = None, end_ids: Sequence[int] = ()) -> TokenPolicy:
    """Decide the dropped and the stopping ids for a tokenizer (and the model's generation config)."""
    tags = tag_token_ids(tokenizer)
    stops: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    if len(end_ids) == 1:
        stops.add(int(end_ids[0]))
    return TokenPolicy(tags, special_ids_except_tags(tokenizer), frozenset(stops - tags))


class TagKeepingStreamer:
    """A transformers streamer (put/end) that turns new token ids into text chunks, tags included.

    Text is decoded incrementally over a short window (the way vLLM does it), so the chunks join to
    the same text as decoding all ids at once, and a character split across tokens (an emoji in a
    byte-level vocabulary) is held back until it is complete.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], Any], *, drop_ids: frozenset[int],
                 skip_prompt: bool = True):
        self.tokenizer, self.on_text, self.drop_ids = tokenizer, on_text, drop_ids
        self._skip = skip_prompt
        self.token_ids: list[int] = []  # every generated id, dropped ones included
        self._ids: list[int] = []       # the ids that become text
        self._prefix = self._read = 0

    def put(self, value: Any) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("TagKeepingStreamer streams one sequence; use generate_batch for batches")
        ids = [int(i) for i in value.reshape(-1).tolist()]
        if self._skip:  # generate() first hands over the prompt
            self._skip = False
            return
        self.token_ids += ids
        kept = [i for i in ids if i not in self.drop_ids]
        if kept:
            self._ids += kept
            self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        if self._read >= len(self._ids):
            return
        window = self._ids[self._prefix:]
        before = decode_keep_tags(self.tokenizer, window[:self._read - self._prefix], frozenset())
        text = decode_keep_tags(self.tokenizer, window, frozenset())
        if len(text) > len(before) and (final or not text.endswith("\ufffd")):
            self.on_text(text[len(before):])
            self._prefix, self._read = self._read, len(self._ids)


class _Cancelled:
    """A stopping criterion that ends generation when an event is set (the viewer's Stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class AnswerLoopGuard:
    """A logits processor: a run of `n` tokens the answer already holds may not be written a second time.

    Why: greedy decoding of a small model can fall into a loop that repeats one sentence to the token
    budget. transformers' `no_repeat_ngram_size` also counts the prompt, so it would forbid quoting the
    question's code; this looks only at the answer (ids after `prompt_width`, the left-padded prompts' width).
    """

    def __init__(self, n: int, prompt_width: int):
        self.n, self.width = n, prompt_width

    def banned(self, answer: list[int]) -> set[int]:
        """The tokens that would complete a second copy of an n-token run of `answer`."""
        k = self.n - 1
        if len(answer) < self.n:
            return set()
        tail = answer[-k:] if k else []
        return {answer[i + k] for i in range(len(answer) - k) if answer[i:i + k] == tail}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row, ids in enumerate(input_ids[:, self.width:].tolist()):
            ban = sorted(self.banned(ids))
            if ban:
                scores[row, ban] = float("-inf")
        return scores


class LocalStream(TextStream):
    """Runs `generate` in a worker thread and yields its text chunks; leaving early cancels it."""

    def __init__(self, lm: "LocalModel", ids: list[int], preset: SamplingPreset, max_new_tokens: int,
                 generate_kwargs: dict | None = None):
        super().__init__()
        self.model = lm.model
        self._args = (lm, ids, preset, max_new_tokens, generate_kwargs or {})
        self._cancel = threading.Event()

    def _chunks(self) -> Iterator[str]:
        lm, ids, preset, max_new, kw = self._args
        q: queue.Queue = queue.Queue()
        done = object()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.finish_reason, self.n_tokens = lm.run_streaming(ids, preset, max_new, q.put, self._cancel, kw)
            except BaseException as exc:  # re-raised in the reading thread
                failure.append(exc)
            finally:
                q.put(done)

        thread = threading.Thread(target=work, name="reflection-lab-generate", daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not done:
                yield item
        finally:
            self._cancel.set()  # a consumer that stops reading stops the model too
            thread.join()
        if failure:
            raise failure[0]


class LocalModel:
    """A transformers model (`lm`) + tokenizer + the prompt format it expects, ready to stream, batch or complete.

    `model` is the name it goes by (its spec, or base+method for a fine-tuned student): the label of its
    generations and part of every request key.
    """

    kind = "local"

    def __init__(self, lm: Any, tokenizer: Any, *, fmt: TrainingFormat | None = None, name: str | None = None,
                 system_prompt: str | SystemPrompt | None = None, template: str = "chat", batch_size: int = 8):
        self.lm, self.tokenizer = lm, tokenizer
        if fmt is None:
            vocab = tokenizer.get_vocab()
            fmt = build_format(tokenizer, template, system_prompt=system_prompt_text(system_prompt),
                               tags_as_special_tokens=all(t in vocab for t in REFLECTION_TAGS))
        self.fmt = fmt
        self.model = name or str(getattr(lm.config, "_name_or_path", "") or type(lm).__name__)
        self.policy = token_policy(tokenizer, lm, fmt.end_ids)
        self.batch_size = int(batch_size)
        self.padding_side = "left"  # tests flip it to show that right padding breaks batches

    @classmethod
    def from_spec(cls, spec: str, *, system_prompt: str | SystemPrompt | None = REFLECTION_PROMPT,
                  template: str = "chat", quant4: bool = False, dtype: str | None = None,
                  device: str | None = None, batch_size: int = 8) -> "LocalModel":
        """A base model by spec (offline name, folder or hub id), asked for the format by `system_prompt`.

        As a teacher or judge pass system_prompt=None: their requests carry their own system messages.
        quant4=True: the 4-bit weights (on a CPU dequantized: the same logits, faster; `answers_from_dequantized`).
        """
        from ..core.devices import pick_device
        from ..models import answers_from_dequantized, load_dequantized, load_model, load_tokenizer

        tok = load_tokenizer(spec, padding_side="left")
        info = pick_device(device, dtype)
        if quant4 and answers_from_dequantized(info):
            lm = load_dequantized(spec, info=info)  # the 4-bit weights, faster on a CPU
        else:
            lm = load_model(spec, quant4=quant4, info=info)
        return cls(lm, tok, name=spec, system_prompt=system_prompt, template=template, batch_size=batch_size)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model, "quant4": bool(getattr(self.lm, "is_loaded_in_4bit", False)),
                "dequantized_4bit": bool(getattr(self.lm, "reflection_lab_dequantized_4bit", False)),
                "dtype": str(getattr(self.lm, "dtype", "")).replace("torch.", ""), "template": self.fmt.template,
                "system_prompt": self.fmt.system_prompt, "tags_as_special_tokens": bool(self.policy.tag_ids),
                "stop_ids": sorted(self.policy.stop_ids)}

    @property
    def max_positions(self) -> int | None:
        cfg = self.lm.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    # -- prompts

    def prompt_ids(self, instruction: str, input: str = "") -> list[int]:
        """Exactly the training prompt (same template, system message, BOS and token boundary)."""
        return self.fmt.prompt_ids(self.tokenizer, instruction, input)

    def messages_ids(self, messages: Sequence[dict], *, keep_reasoning: bool = False) -> list[int]:
        """A chat history as prompt ids; earlier assistant turns lose their reasoning first (unless kept)."""
        msgs = history_for_model(messages, keep_reasoning=keep_reasoning)
        single = msgs and msgs[-1].get("role") == "user" and len(msgs) == 1 + (msgs[0].get("role") == "system")
        if single and (msgs[0].get("role") != "system" or self.fmt.system_prompt == msgs[0]["content"]):
            return self.prompt_ids(msgs[-1]["content"])  # single turn: exactly the training prompt
        tok, fmt = self.tokenizer, self.fmt
        if fmt.system_prompt and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": fmt.system_prompt}] + msgs
        if fmt.template == "chat":
            text = str(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        else:  # no chat template: earlier turns written in the fallback template, one after another
            parts = [m["content"].rstrip() + "\n\n" for m in msgs if m["role"] == "system"]
            for m in msgs:
                if m["role"] == "user":
                    parts.append(render_forward(tok, fmt.template, m["content"]))
                elif m["role"] == "assistant":
                    parts.append(m["content"] + fmt.end_text + "\n\n")
            text = "".join(parts)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if fmt.prepend_bos and fmt.bos_id is not None and (not ids or ids[0] != fmt.bos_id):
            ids = [fmt.bos_id] + ids
        return ids

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.prompt_ids(prompt)
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
            return self.messages_ids(prompt)
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(i, int) for i in prompt):
            return [int(i) for i in prompt]
        raise TypeError("a prompt is a user message (str), chat messages (list of dicts) or token ids (list of int)")

    def decode(self, ids: Sequence[int], stop: tuple[str, ...] = ()) -> tuple[str, str, int]:
        """(text, finish_reason, tokens used) of generated ids: cut at the first stop id or stop text, tags kept."""
        ids = [int(i) for i in ids]
        finish, used = "length", len(ids)
        for k, t in enumerate(ids):
            if t in self.policy.stop_ids:
                ids, finish, used = ids[:k], "stop", k + 1
                break
        text = decode_keep_tags(self.tokenizer, ids, self.policy.drop_ids)
        cut, stopped = cut_at_stop(text, stop)
        if stopped:
            return cut, "stop", self._tokens_until(ids, stop)
        return text, finish, used

    def _tokens_until(self, ids: list[int], stop: tuple[str, ...]) -> int:
        """How many ids it took to complete a stop text (binary search: a longer prefix still contains it)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if cut_at_stop(decode_keep_tags(self.tokenizer, ids[:mid], self.policy.drop_ids), stop)[1]:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _check_fits(self, n_prompt: int, max_new_tokens: int) -> str | None:
        limit = self.max_positions
        if limit and n_prompt + max_new_tokens > limit:
            return (f"prompt of {n_prompt} tokens + max_new_tokens {max_new_tokens} exceeds the model's {limit} "
                    "positions; shorten the prompt or lower max_new_tokens")
        return None

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else min(self.policy.stop_ids))

    def _generate(self, rows: list[list[int]], preset: SamplingPreset, max_new_tokens: int, **kw: Any) -> Any:
        """One `generate` call on padded rows; returns (output ids, padded width)."""
        import torch

        width, pad = max(len(r) for r in rows), self._pad_id()
        left = self.padding_side == "left"
        ids = [[pad] * (width - len(r)) + r if left else r + [pad] * (width - len(r)) for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) if left else [1] * len(r) + [0] * (width - len(r)) for r in rows]
        device = self.lm.device
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)
        attention = torch.tensor(mask, dtype=torch.long, device=device)
        extra: dict[str, Any] = {}
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        if "position_ids" in inspect.signature(base.forward).parameters:
            # count real tokens only: learned absolute positions (GPT-2) must not see the pads
            extra["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
        if not preset.greedy and preset.seed is not None:
            torch.manual_seed(preset.seed)
        if preset.stop:  # a row ends once its text holds a stop text; `decode` cuts there
            extra.update(stop_strings=list(preset.stop), tokenizer=self.tokenizer)
        if preset.loop_guard:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList([AnswerLoopGuard(preset.loop_guard, width)])
        with torch.no_grad():
            out = self.lm.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                      eos_token_id=sorted(self.policy.stop_ids) or None, pad_token_id=pad,
                                      **preset.hf_kwargs(), **extra, **kw)
        return out, width

    # -- generation

    def run_streaming(self, ids: list[int], preset: SamplingPreset, max_new_tokens: int,
                      on_text: Callable[[str], Any], cancel: threading.Event | None = None,
                      generate_kwargs: dict | None = None) -> tuple[str, int]:
        """Generate for one prompt in this thread, calling on_text per chunk; returns (finish_reason, tokens)."""
        problem = self._check_fits(len(ids), max_new_tokens)
        if problem:
            raise ValueError(problem)
        cutter = StopCutter(preset.stop)

        def emit(chunk: str) -> None:
            if part := cutter.feed(chunk):
                on_text(part)

        streamer = TagKeepingStreamer(self.tokenizer, emit, drop_ids=self.policy.drop_ids | self.policy.stop_ids)
        kw = dict(generate_kwargs or {})
        if cancel is not None:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList([*kw.get("stopping_criteria", []), _Cancelled(cancel)])
        out, width = self._generate([ids], preset, max_new_tokens, streamer=streamer, **kw)
        _, finish, used = self.decode(out[0, width:].tolist(), preset.stop)
        if finish == "length" and cancel is not None and cancel.is_set() and used < max_new_tokens:
            finish = "cancelled"
        return finish, used

    def stream(self, prompt: Prompt, *, preset: str | SamplingPreset = "greedy", max_new_tokens: int = 256,
               generate_kwargs: dict | None = None) -> LocalStream:
        """Text chunks as the model writes them (tags kept); iterate, then `.result()`."""
        return LocalStream(self, self.encode(prompt), get_preset(preset), max_new_tokens, generate_kwargs)

    def generate(self, prompt: Prompt, **kw: Any) -> Generation:
        return self.stream(prompt, **kw).result()

    def generate_batch(self, prompts: Sequence[Prompt], *, preset: str | SamplingPreset = "greedy",
                       max_new_tokens: int = 256, batch_size: int | None = None,
                       on_result: Callable[[int, Generation], Any] | None = None,
                       generate_kwargs: dict | None = None) -> list[Generation]:
        """Generate for many prompts in length-sorted, left-padded batches (greedy by default).

        Results come back in prompt order; `on_result(index, generation)` is called as each batch
        finishes (the stage journals there). A prompt that does not fit gets finish_reason "error".
        """
        preset = get_preset(preset)
        size = max(1, batch_size or self.batch_size)
        encoded = [self.encode(p) for p in prompts]
        results: dict[int, Generation] = {}

        def emit(i: int, gen: Generation) -> None:
            results[i] = gen
            if on_result:
                on_result(i, gen)

        todo = []
        for i, ids in enumerate(encoded):
            problem = self._check_fits(len(ids), max_new_tokens)
            if problem:
                emit(i, Generation("", "error", parse(""), model=self.model, error=problem))
            else:
                todo.append(i)
        todo.sort(key=lambda i: -len(encoded[i]))  # longest batch first: an out-of-memory error shows at once
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            t0 = time.perf_counter()
            out, width = self._generate([encoded[i] for i in batch], preset, max_new_tokens, **(generate_kwargs or {}))
            seconds = (time.perf_counter() - t0) / len(batch)
            for row, i in enumerate(batch):
                text, finish, used = self.decode(out[row, width:].tolist(), preset.stop)
                emit(i, Generation(text, finish, parse(text, truncated=finish == "length"), model=self.model,
                                   n_tokens=used, seconds=seconds))
        return [results[i] for i in range(len(prompts))]


    def complete(self, requests: Sequence[ChatRequest], on_reply: OnReply | None = None, *,
                 concurrency: int | None = None) -> list[ChatReply]:
        """Chat requests answered with `generate_batch`, grouped by their sampling settings.

        concurrency is ignored (batch_size sets the batch); replies arrive batch by batch. A request
        that does not fit the model's positions gets an error reply, never an exception.
        """
        replies: dict[int, ChatReply] = {}
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p, r.max_tokens), []).append(i)
        for (temperature, top_p, max_tokens), idx in groups.items():
            # a request is sent as its sender wrote it (a teacher's, a judge's, a server client's history)
            encoded = [self.messages_ids(requests[i].messages, keep_reasoning=True) for i in idx]

            def emit(k: int, gen: Generation, idx: list[int] = idx, encoded: list = encoded) -> None:
                req = requests[idx[k]]
                rep = error_reply(req, gen.error) if gen.error else ChatReply(
                    key=req.key, text=gen.text, finish_reason=gen.finish_reason, latency_s=gen.seconds, meta=req.meta,
                    usage={"prompt_tokens": len(encoded[k]), "completion_tokens": gen.n_tokens or 0})
                replies[idx[k]] = rep
                if on_reply:
                    on_reply(rep)

            self.generate_batch(encoded, preset=request_preset(temperature, top_p), max_new_tokens=max_tokens,
                                on_result=emit)
        return [replies[i] for i in range(len(requests))]


__all__ = ["LocalModel", "LocalStream", "TagKeepingStreamer", "TokenPolicy", "token_policy"]
