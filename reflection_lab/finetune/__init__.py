"""Stage 05: QLoRA (or LoRA, or full) fine-tuning on the selection, resumable, with its artifacts and model card.

Light at import: torch, transformers and peft load when a stage runs or a result is loaded.
"""

from .artifacts import (META_FILE, adapter_dir, finetuned_model, load_finetuned, merge_adapter, read_train_log,
                        training_format)
from .config import METHODS, FinetuneConfig, FinetuneDataError, FinetuneError, FinetuneOOMError
from .stage import run_finetune

__all__ = ["META_FILE", "METHODS", "FinetuneConfig", "FinetuneDataError", "FinetuneError", "FinetuneOOMError",
           "adapter_dir", "finetuned_model", "load_finetuned", "merge_adapter", "read_train_log", "run_finetune",
           "training_format"]
