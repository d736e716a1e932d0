"""Stage 01: instruction data from common formats into one schema, every dropped row reported with a reason."""

from .load import (NAMED_SOURCES, DataError, DataReport, check_unique_ids, load_samples, normalize, read_rows,
                   source_path, stratified_subset)
from .stage import DataConfig, run_data, source_hash

__all__ = ["NAMED_SOURCES", "DataConfig", "DataError", "DataReport", "check_unique_ids", "load_samples", "normalize",
           "read_rows", "run_data", "source_hash", "source_path", "stratified_subset"]
