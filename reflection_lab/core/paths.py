"""Where the lab keeps things outside a run: the model cache and the workshop data it ships.

Why here: the model loaders, the data stage and the replay backend all need these two places, and
none of them should import another to find out.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted and generated models live (REFLECTION_LAB_CACHE overrides)."""
    root = os.environ.get("REFLECTION_LAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reflection-lab")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_data_dir() -> Path:
    """The project's data/ folder (REFLECTION_LAB_DATA overrides, e.g. for a non-editable install)."""
    env = os.environ.get("REFLECTION_LAB_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"Workshop data folder not found at {path}. Clone the repository (the data lives in its data/ folder) "
            "and install it with `pip install -e .`, or set REFLECTION_LAB_DATA to the folder."
        )
    return path
