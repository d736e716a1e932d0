"""Stage 06 (and 07's arms) through an OpenAI-compatible endpoint: vLLM, TGI, Ollama, the lab's own server.

Why an adapter and not a second generation loop: `generate_journalled` asks a model for `prompt_ids` and
`generate_batch(..., on_result=...)`. An endpoint takes chat messages, not token ids, so here the "prompt" is the
user text and each answer comes from the one backend layer (`make_backend(..., role="generator")`, i.e.
`OpenAIModel`), streamed, parsed and recorded exactly like a local answer. Requests run `concurrency` at a time;
each finished answer is journalled at once, so a killed run resumes with the prompts not yet answered.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable

from ..format.templates import user_text
from ..llm import make_backend
from ..llm.sampling import SamplingPreset


class EndpointGenerator:
    """The slice of `LocalModel` that stage 06 uses, answered by an OpenAI-compatible endpoint."""

    def __init__(self, spec: str, *, base_url: str | None = None, system_prompt: str | None = None,
                 **kw: Any) -> None:
        self.backend = make_backend(spec, role="generator", base_url=base_url, system_prompt=system_prompt, **kw)
        self.tokenizer = None  # the endpoint tokenizes; prompts are text

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def identity(self) -> dict[str, Any]:
        """What decides the answers (fingerprinted): the served model and where it is served."""
        return {"endpoint_model": self.backend.model, "base_url": self.backend.base_url}

    def prompt_ids(self, instruction: str, input_text: str = "") -> str:
        return user_text(instruction, input_text)

    def prompt_example(self, instruction: str, input_text: str = "") -> str:
        """The request's messages as sent, for the manifest (the endpoint applies its own chat template)."""
        return repr(self.backend.messages(self.prompt_ids(instruction, input_text)))

    def generate_batch(self, prompts: list[str], *, preset: str | SamplingPreset = "greedy",
                       max_new_tokens: int = 256, batch_size: int | None = None,
                       on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Answer every prompt (concurrency from the backend); `on_result(i, generation)` runs in this thread."""
        out: list[Any] = [None] * len(prompts)
        workers = max(1, min(int(getattr(self.backend, "concurrency", 1) or 1), len(prompts) or 1))
        with ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(self.backend.generate, p, preset=preset, max_new_tokens=max_new_tokens): i
                       for i, p in enumerate(prompts)}
            for fut in as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                if on_result is not None:
                    on_result(i, out[i])
        return out
