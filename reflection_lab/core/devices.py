"""Pick the device and the precision in one place, and say what was picked.

Why one place: the precision rules are easy to get wrong in every notebook separately
(a T4 has no bf16; bf16 on a CPU without AVX512-BF16 is 2-5x slower than fp32 here).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass

from .config import ConfigError
from .runtime import package_version


@dataclass
class DeviceInfo:
    device: str  # "cuda", "mps" or "cpu"
    name: str
    dtype: str  # compute dtype: "bfloat16", "float16" or "float32"
    bf16_supported: bool
    total_memory_gib: float | None
    bitsandbytes: str  # version, or "missing"
    bnb_4bit_ok: bool
    notes: list[str]

    def as_dict(self) -> dict:
        return asdict(self)

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def summary(self) -> str:
        mem = f", {self.total_memory_gib:.1f} GiB" if self.total_memory_gib else ""
        lines = [f"device: {self.device} ({self.name}{mem}); compute dtype: {self.dtype}; "
                 f"bf16: {'yes' if self.bf16_supported else 'no'}; bitsandbytes: {self.bitsandbytes}"
                 f"{' (4-bit ok)' if self.bnb_4bit_ok else ' (no 4-bit)'}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(prefer: str | None = None, dtype: str | None = None) -> DeviceInfo:
    """Choose cuda > mps > cpu (or `prefer`), and a compute dtype that is fast and supported there."""
    import torch

    if dtype not in (None, *DTYPES):
        raise ConfigError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if prefer not in (None, *DEVICES):
        raise ConfigError(f"device must be one of {DEVICES}, not {prefer!r}")

    notes: list[str] = []
    bnb = package_version("bitsandbytes")
    if prefer in (None, "auto", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        bf16 = torch.cuda.is_bf16_supported()
        chosen = "bfloat16" if bf16 else "float16"
        if not bf16:
            notes.append(f"{props.name} has no bf16 (pre-Ampere, e.g. a T4): using fp16. Do not set bf16=True.")
        info = DeviceInfo("cuda", props.name, chosen, bf16, props.total_memory / 2**30, bnb, bnb != "missing", notes)
    elif prefer in (None, "auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        notes.append("bitsandbytes 4-bit is not supported on Apple MPS: use the profile's non-quantized setting.")
        info = DeviceInfo("mps", "Apple GPU", "float16", False, None, bnb, False, notes)
    else:
        if prefer == "cuda":
            notes.append("CUDA was asked for but torch sees no GPU: running on the CPU.")
        notes.append("CPU: float32 compute (bf16 is slower on CPUs without AVX512-BF16).")
        info = DeviceInfo("cpu", platform.processor() or platform.machine(), "float32", False, None, bnb,
                          bnb != "missing", notes)
    if dtype and dtype != "auto":
        if dtype == "bfloat16" and info.device == "cuda" and not info.bf16_supported:
            raise ConfigError(f"{info.name} does not support bfloat16 (a T4 or older GPU): use dtype='float16'.")
        info.dtype = dtype
    return info


def environment_report(packages: tuple[str, ...] = ("reflection-lab", "torch", "transformers", "peft", "bitsandbytes",
                                                       "accelerate", "datasets", "trl", "plotly", "ipywidgets")) -> str:
    """Versions first, like every good teaching notebook: most bug reports start here."""
    rows = [f"python {platform.python_version()} on {platform.system()} {platform.machine()}"]
    rows += [f"{p} {package_version(p)}" for p in packages]
    return "\n".join(rows)


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process in bytes, or None where the platform does not say.

    Why not ru_maxrss alone: it is KiB on Linux but bytes on macOS, and Windows has no `resource` module
    (psutil reports the peak working set there).
    """
    try:
        import psutil

        peak = getattr(psutil.Process().memory_info(), "peak_wset", None)  # Windows only
        if peak:
            return int(peak)
    except ImportError:  # pragma: no cover - psutil comes with the lab's dependencies
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows without psutil
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def memory_report(device: str) -> dict:
    """Current and peak memory in GiB (rounded), for before/after figures and the training manifest."""
    import torch

    rep: dict[str, float] = {}
    if device == "cuda" and torch.cuda.is_available():
        rep = {"allocated_gib": torch.cuda.memory_allocated() / 2**30,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    else:
        peak = peak_rss_bytes()
        if peak is not None:
            rep["peak_rss_gib"] = peak / 2**30
    try:
        import psutil

        rep["rss_gib"] = psutil.Process().memory_info().rss / 2**30
    except ImportError:  # pragma: no cover
        pass
    return {k: round(v, 4) for k, v in rep.items()}


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU or CPU allocation failure (torch's OutOfMemoryError, MemoryError, or the message)."""
    import torch

    if isinstance(exc, (getattr(torch, "OutOfMemoryError", MemoryError), MemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
