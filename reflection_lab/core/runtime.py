"""Where the code is running: a Jupyter kernel, Colab, one of several `accelerate launch` processes.

Why one module: progress bars, live plots, the Colab install and the data-parallel stages each
need one of these answers, and two detections of the same thing drift apart.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from typing import Callable


def package_version(name: str) -> str:
    """The installed version of a distribution, or "missing"."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets can be shown), False in scripts and tests."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def on_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ


def process_group() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) under `accelerate launch` / torchrun; (0, 1, no-op) otherwise.

    accelerate only forms a CPU process group (gloo) when asked with cpu=True; on GPUs it picks NCCL.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone
