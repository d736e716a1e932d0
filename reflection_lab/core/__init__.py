"""The base every stage stands on: the run directory, stage configs, devices, the runtime, paths.

Imports no stage. Light on purpose: nothing here imports torch at import time.
"""

from .config import ConfigError, StageConfig
from .devices import DeviceInfo, environment_report, memory_report, pick_device
from .paths import cache_dir, repo_data_dir
from .runs import STAGES, VARIANTS, Journal, MissingStageError, Run, read_jsonl
from .runtime import in_notebook, on_colab, process_group

__all__ = ["STAGES", "VARIANTS", "ConfigError", "DeviceInfo", "Journal", "MissingStageError", "Run", "StageConfig",
           "cache_dir", "environment_report", "in_notebook", "memory_report", "on_colab", "pick_device",
           "process_group", "read_jsonl", "repo_data_dir"]
