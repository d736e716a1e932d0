"""Stage 01: instruction data from common formats into one schema, every dropped row reported with a reason."""

from .load import (NAMED_SOURCES, DataError, DataReport, DatasetSpecError, HubSpec, check_unique_ids, is_local_source,
                   load_samples, normalize, parse_hub_spec, read_rows, source_path, stratified_subset)
from .stage import DataConfig, run_data, source_hash

__all__ = ["NAMED_SOURCES", "DataConfig", "DataError", "DataReport", "DatasetSpecError", "HubSpec", "check_unique_ids",
           "is_local_source", "load_samples", "normalize", "parse_hub_spec", "read_rows", "run_data", "source_hash",
           "source_path", "stratified_subset"]
