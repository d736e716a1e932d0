"""Share a finished stage 05: a merged fp16 folder with a hub-ready model card, and an optional push to the Hub.

Why here and not in the training code: exporting reads only what stage 05 left behind (adapter, meta, card) and
04_select's data, so it works on any finished run, also one trained on another machine. Pushing uses
huggingface_hub's own `create_repo` / `upload_folder`, so authentication, retries and large files behave the way
Hub users already know; the lab adds only the layout and a clear error when no token is present.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..core.errors import LabError
from ..core.runs import Run
from .artifacts import META_FILE, adapter_dir, merge_adapter

# Offline names whose weights stand for a published checkpoint (the card's base_model must be a hub id).
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


class ExportError(LabError, RuntimeError):
    """Exporting or pushing a stage 05 result failed; the message says what to set or run."""


def hub_base_model(spec: str) -> str | None:
    """The hub id a model card may name as base_model, or None (a tiny in-code student or a local folder)."""
    if spec in HUB_IDS:
        return HUB_IDS[spec]
    if spec.startswith(("tiny-", "/", ".", "~")) or Path(spec).exists() or spec.count("/") != 1:
        return None
    return spec


def card_header(base: str | None, library: str, tags: tuple[str, ...] = ("reflection-lab", "ifd")) -> str:
    """The YAML front matter the Hub reads (base_model links the model tree; library_name picks the widget)."""
    lines = ["---", f"library_name: {library}"]
    if base:
        lines.append(f"base_model: {base}")
    lines += ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    return "\n".join(lines)


def write_card(folder: Path, stage: Path, base: str | None, library: str) -> None:
    """README.md = front matter + stage 05's MODEL_CARD.md (what was trained on what, and its limits)."""
    body = (stage / "MODEL_CARD.md").read_text(encoding="utf-8") if (stage / "MODEL_CARD.md").exists() else ""
    note = "" if base else ("\n> The base model has no hub id (an in-code test student or a local folder), so this "
                            "card names none.\n")
    (folder / "README.md").write_text(card_header(base, library) + body + note, encoding="utf-8")


def export_merged(run: Run, out_dir: str | Path | None = None) -> Path:
    """A standalone fp16 model folder (LoRA folded in) with a hub-ready README.md; reuses 05_finetune/merged/."""
    folder = adapter_dir(run)
    meta = json.loads((folder / META_FILE).read_text())
    stage = run.root / "05_finetune"
    out = Path(out_dir) if out_dir else run.root / "export" / "merged"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if meta["method"] == "full":
        shutil.copytree(folder, tmp)
    elif (stage / "merged" / "config.json").exists():
        shutil.copytree(stage / "merged", tmp)
    else:
        merge_adapter(folder, tmp)
    write_card(tmp, stage, hub_base_model(meta["base_model"]), "transformers")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def hub_token(token: str | None = None) -> str:
    """The token to push with: the argument, HF_TOKEN, or the one `hf auth login` saved; else a one-line error."""
    from huggingface_hub import get_token

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise ExportError("pushing to the Hub needs a token and none was found: set HF_TOKEN or run "
                          "`hf auth login` (a write token from https://huggingface.co/settings/tokens)")
    return token


def push_run(run: Run, repo: str, *, merged: Path | None = None, private: bool = False,
             token: str | None = None) -> dict[str, str]:
    """Upload the adapter (repo/adapter), the merged model (repo root) and 04_select data (dataset repo-data).

    Returns {what: repo id}. The adapter goes to a subfolder so one model repo holds both forms.
    """
    from huggingface_hub import HfApi

    if repo.count("/") != 1:
        raise ExportError(f"--push needs a repo id 'owner/name', not {repo!r}")
    token = hub_token(token)
    api = HfApi(token=token)
    folder = adapter_dir(run)
    meta = json.loads((folder / META_FILE).read_text())
    stage = run.root / "05_finetune"
    pushed: dict[str, str] = {}
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    if merged is not None:
        api.upload_folder(repo_id=repo, folder_path=str(merged), repo_type="model",
                          commit_message="reflection-lab: merged fp16 model")
        pushed["merged"] = repo
    card_dir = run.root / "export" / "adapter_card"
    card_dir.mkdir(parents=True, exist_ok=True)
    write_card(card_dir, stage, hub_base_model(meta["base_model"]), "peft")
    api.upload_folder(repo_id=repo, folder_path=str(folder), path_in_repo="adapter", repo_type="model",
                      commit_message="reflection-lab: LoRA adapter")
    api.upload_file(path_or_fileobj=str(card_dir / "README.md"), path_in_repo="adapter/README.md", repo_id=repo,
                    repo_type="model", commit_message="reflection-lab: adapter card")
    pushed["adapter"] = repo
    select = run.root / "04_select"
    if (select / "selected.jsonl").exists():
        data_repo = f"{repo}-data"
        api.create_repo(data_repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=data_repo, folder_path=str(select), repo_type="dataset",
                          allow_patterns=["*.jsonl", "*.json"], commit_message="reflection-lab: 04_select data")
        pushed["data"] = data_repo
    return pushed


def export_run(run: Run, *, merged: bool = True, push: str | None = None, private: bool = False,
               out_dir: str | Path | None = None, token: str | None = None) -> dict[str, Any]:
    """The CLI's `export`: optionally write the merged folder, optionally push; returns what was done."""
    if push:
        hub_token(token)  # fail before the (slow) merge when the push could not happen anyway
    result: dict[str, Any] = {"adapter": str(adapter_dir(run))}
    folder = export_merged(run, out_dir) if merged else None
    if folder is not None:
        result["merged"] = str(folder)
    if push:
        result["pushed"] = push_run(run, push, merged=folder, private=private, token=token)
    return result
