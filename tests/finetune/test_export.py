"""`reflection-lab export`: merged fp16 folder with a hub model card, push through huggingface_hub (no network)."""

from __future__ import annotations

import pytest

from finetune_helpers import make_selected_run, one_thread, tiny_rows
from reflection_lab.finetune import FinetuneConfig, run_finetune
from reflection_lab.finetune.export import ExportError, export_run, hub_base_model

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
FAST = dict(student="tiny-llama", max_length=256, lora_r=8, lora_alpha=16, learning_rate=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_path):
    run = make_selected_run(tmp_path_factory.mktemp("export") / "run", tiny_rows(12))
    run_finetune(run, FinetuneConfig(max_steps=2, eval_fraction=0, **FAST), progress=False)
    return run


def test_the_card_names_a_hub_id_never_a_local_path(tmp_path):
    assert hub_base_model("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_base_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_base_model("tiny-llama") is None
    (tmp_path / "org").mkdir()
    assert hub_base_model(str(tmp_path / "org")) is None and hub_base_model("./a/b") is None


def test_merged_export_is_fp16_with_a_card_and_matches_the_adapter(trained, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from reflection_lab.finetune import load_finetuned

    out = export_run(trained, merged=True, out_dir=tmp_path / "merged")
    folder = tmp_path / "merged"
    assert out["merged"] == str(folder)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "base_model:" not in card  # tiny: no hub id
    assert "fine-tuned by reflection-lab" in card and str(tmp_path) not in card.split("---")[1]
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert merged.dtype == torch.float16
    peft_model, _ = load_finetuned(trained, quant4=False)
    x = torch.randint(10, 600, (1, 12))
    with torch.no_grad():
        assert (peft_model(input_ids=x).logits - merged.float()(input_ids=x).logits).abs().max().item() < 5e-2


def test_a_qlora_adapter_in_full_precision_answers_as_the_4bit_model_it_was_trained_on(trained):
    import torch
    from peft import PeftModel

    from reflection_lab.finetune import load_finetuned
    from reflection_lab.finetune.artifacts import adapter_dir
    from reflection_lab.finetune.model import keep_4bit_weights_trainable
    from reflection_lab.models import load_model

    x = torch.randint(10, 600, (1, 12))
    as_trained, _ = load_finetuned(trained)  # QLoRA: over the 4-bit base
    keep_4bit_weights_trainable(as_trained)  # fp32 4-bit kernels, as in training (not the CPU's bf16 ones)
    full, _ = load_finetuned(trained, quant4=False)
    assert not any(type(m).__name__ == "Linear4bit" for m in full.modules())
    original = PeftModel.from_pretrained(load_model("tiny-llama"), str(adapter_dir(trained))).eval()
    with torch.no_grad():
        want = as_trained(input_ids=x).logits
        assert (full(input_ids=x).logits - want).abs().max().item() < 1e-4
        # what the lab did before: the adapter over the original weights, a different model
        assert (original(input_ids=x).logits - want).abs().max().item() > 1e-2


def test_push_without_a_token_is_one_line_before_any_work(trained, monkeypatch, capsys):
    import huggingface_hub

    from reflection_lab.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ExportError, match="HF_TOKEN"):
        export_run(trained, merged=False, push="me/model")
    assert main(["export", "--run", str(trained.root), "--merged", "--push", "me/model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pushing to the Hub needs a token")
    assert not (trained.root / "export" / "merged").exists()  # failed before merging


def test_push_uploads_adapter_merged_and_selected_data_with_the_hub_library(trained, tmp_path, monkeypatch):
    import huggingface_hub

    calls: list[tuple[str, dict]] = []
    for name in ("create_repo", "upload_folder", "upload_file"):
        monkeypatch.setattr(huggingface_hub.HfApi, name,
                            lambda self, *a, _n=name, **k: calls.append((_n, {**k, "args": a, "token": self.token})))
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    out = export_run(trained, merged=True, push="me/model", private=True, out_dir=tmp_path / "m")
    assert out["pushed"] == {"merged": "me/model", "adapter": "me/model", "data": "me/model-data"}
    assert all(k["token"] == "hf_test" for _, k in calls)
    repos = [(k["args"][0], k["repo_type"], k["private"]) for n, k in calls if n == "create_repo"]
    assert repos == [("me/model", "model", True), ("me/model-data", "dataset", True)]
    uploads = {(k["repo_id"], k.get("path_in_repo")): k["folder_path"] for n, k in calls if n == "upload_folder"}
    assert uploads[("me/model", None)] == str(tmp_path / "m")
    assert uploads[("me/model", "adapter")].endswith("adapter")
    assert uploads[("me/model-data", None)].endswith("04_select")
    card = [k for n, k in calls if n == "upload_file"][0]
    assert card["path_in_repo"] == "adapter/README.md" and "library_name: peft" in open(card["path_or_fileobj"]).read()


def test_a_bad_repo_id_is_named(trained, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(ExportError, match="owner/name"):
        export_run(trained, merged=False, push="just-a-name")
