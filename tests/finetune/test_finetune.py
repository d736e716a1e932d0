"""Stage 05 in one process on the tiny student: outputs, reload, methods, tags, merge, bad inputs, progress."""

from __future__ import annotations

import json
import shutil

import pytest

from finetune_helpers import losses, make_selected_run, one_thread, tiny_rows
from reflection_lab.finetune import (FinetuneConfig, FinetuneDataError, FinetuneOOMError, load_finetuned, run_finetune,
                                     training_format)
from reflection_lab.core.config import ConfigError
from reflection_lab.finetune.model import keep_4bit_weights_trainable
from reflection_lab.core.runs import read_jsonl, sha256_path

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
FAST = dict(student="tiny-llama", max_length=256, lora_r=8, lora_alpha=16, learning_rate=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_path):
    run = make_selected_run(tmp_path_factory.mktemp("ft") / "run", tiny_rows(30))
    cfg = FinetuneConfig(max_steps=8, eval_steps=4, save_steps=4, **FAST)
    return run, cfg, run_finetune(run, cfg, progress=False)


def test_qlora_run_writes_a_complete_stage(trained):
    run, cfg, m = trained
    assert m["status"] == "complete"
    assert set(m["outputs"]) == {"adapter", "train_log.jsonl", "MODEL_CARD.md"}
    c = m["counts"]
    assert (c["train_samples"], c["eval_samples"], c["steps"], c["processes"]) == (27, 3, 8, 1)
    assert c["final_train_loss"] < c["first_train_loss"]
    adapter = run.path("finetune", "adapter")
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "reflection_lab_format.json",
            "reflection_lab_finetune.json"} <= names
    assert "tokenizer.json" not in names  # tags are plain text here: the base tokenizer is unchanged
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    targets = {t.split(".")[-1] for t in acfg["target_modules"]}
    assert acfg["r"] == 8 and targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    log = read_jsonl(run.path("finetune", "train_log.jsonl"))
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert all(b["tokens"] > a["tokens"] for a, b in zip(train, train[1:]))
    assert [r["step"] for r in log if r["kind"] == "eval"] == [4, 8]
    assert "before" in m["memory"] and "peak_rss_gib" in m["memory"]["after"]
    assert m["format"]["template"] == "chat" and m["format"]["end_text"] == "<|end|>"
    card = run.path("finetune", "MODEL_CARD.md").read_text()
    for needle in ("tiny-llama", "qlora", "4-bit NF4", "Train loss", "## Limitations", "27 train / 3 eval",
                   "LoRA factors in bfloat16"):
        assert needle in card
    assert m["model"]["adapter_dtype"] == "bfloat16"  # over a 4-bit base on a CPU, as TRL's QLoRA path
    import torch
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(adapter / "adapter_model.safetensors")).values()} == {torch.bfloat16}
    assert (run.path("finetune", "checkpoints") / "checkpoint-8").is_dir()


def test_rerun_with_the_same_inputs_reuses_the_result(trained, monkeypatch):
    import transformers

    run, cfg, m = trained
    monkeypatch.setattr(transformers.Trainer, "train", lambda *a, **k: pytest.fail("retrained a current stage"))
    assert run_finetune(run, cfg, progress=False)["finished"] == m["finished"]


def test_adapter_reloads_in_4bit_and_generates(trained):
    import torch

    run, _, _ = trained
    model, tok = load_finetuned(run, quant4=True)
    assert type(model).__name__ == "PeftModelForCausalLM" and tok.padding_side == "left"
    assert any(type(mod).__name__ == "Linear4bit" for mod in model.modules())
    default, _ = load_finetuned(run)  # on this CPU: the same 4-bit weights, dequantized
    assert not any(type(mod).__name__ == "Linear4bit" for mod in default.modules())
    fmt = training_format(run)
    ids = torch.tensor([fmt.prompt_ids(tok, "Explain apples")])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert tok.convert_tokens_to_ids("<|end|>") in model.generation_config.eos_token_id


def test_an_eval_pass_does_not_change_later_gradients(tiny_llama_path):
    """Guards the bitsandbytes CPU repacking pitfall (see keep_4bit_weights_trainable)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from reflection_lab.models import load_model

    model = load_model("tiny-llama", quant4=True)
    assert keep_4bit_weights_trainable(model) == 14
    torch.manual_seed(0)
    pm = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    x = torch.randint(10, 600, (2, 20))

    def grads():
        pm.train()
        pm.zero_grad()
        pm(input_ids=x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in pm.named_parameters() if p.grad is not None}

    before = grads()
    pm.eval()
    with torch.no_grad():
        pm(input_ids=x)
    after = grads()
    assert max((before[n] - after[n]).abs().max().item() for n in before) == 0.0


def test_tags_as_special_tokens_are_trained_saved_and_decoded(tmp_path, tiny_llama_path):
    import torch

    from reflection_lab.format.tags import parse
    from reflection_lab.format.tags import REFLECTION_TAGS
    from reflection_lab.format.chat import decode_keep_tags, tags_are_single_tokens

    run = make_selected_run(tmp_path / "run", tiny_rows(16, seed=1))
    cfg = FinetuneConfig(max_steps=10, eval_fraction=0, tags_as_special_tokens=True,
                         **{**FAST, "learning_rate": 2e-2})
    m = run_finetune(run, cfg, progress=False)
    adapter = run.path("finetune", "adapter")
    assert (adapter / "tokenizer.json").exists()  # the tokenizer travels with the adapter
    meta = json.loads((adapter / "reflection_lab_finetune.json").read_text())
    assert meta["tags_as_special_tokens"] and meta["embeddings_resized_to"] == meta["vocab_size"]
    assert m["format"]["tag_ids"] == meta["tag_ids"]
    model, tok = load_finetuned(run)
    assert tags_are_single_tokens(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    fmt = training_format(run)
    prompt = fmt.prompt_ids(tok, "Explain apples rivers")
    thinking = tok.convert_tokens_to_ids("<thinking>")

    def p_thinking(mdl):
        with torch.no_grad():
            logits = mdl(input_ids=torch.tensor([prompt])).logits[0, -1]
        return torch.softmax(logits.float(), -1)[thinking].item()

    trained_p = p_thinking(model)
    with model.disable_adapter():
        base_p = p_thinking(model)
    assert trained_p > 2 * base_p  # the new rows and LoRA learned to open with <thinking>
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("trainable_tokens_delta" in k for k in keys)
    assert not any("base_layer.weight" in k for k in keys)  # only the 6 rows, not the resized matrix
    # the tag rows come from the adapter, whatever the resize put there on load
    x = torch.tensor([prompt + meta["tag_ids"]])
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        again, _ = load_finetuned(run)
        with torch.no_grad():
            outs.append(again(input_ids=x).logits)
    assert torch.equal(outs[0], outs[1])
    answer = tiny_rows(1, seed=5)[0]["output"]
    ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    assert decode_keep_tags(tok, ids) == answer and parse(decode_keep_tags(tok, ids)).well_formed
    assert not any(t in tok.decode(ids, skip_special_tokens=True) for t in REFLECTION_TAGS)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_plain_lora_and_full_fine_tune(tmp_path, tiny_llama_path, method):
    run = make_selected_run(tmp_path / "run", tiny_rows(12))
    m = run_finetune(run, FinetuneConfig(method=method, max_steps=3, eval_fraction=0, **FAST), progress=False)
    assert m["status"] == "complete" and m["counts"]["steps"] == 3
    folder = "model" if method == "full" else "adapter"
    assert folder in m["outputs"]
    model, tok = load_finetuned(run)
    assert not any(type(mod).__name__ == "Linear4bit" for mod in model.modules())
    assert (type(model).__name__ == "PeftModelForCausalLM") == (method == "lora")


def test_the_lora_factors_dtype_follows_the_base_and_the_device():
    qlora, lora = FinetuneConfig(method="qlora"), FinetuneConfig(method="lora")
    assert qlora.resolved_adapter_dtype("float32") == "bfloat16"  # a CPU
    assert qlora.resolved_adapter_dtype("bfloat16") == "bfloat16"  # Ampere and newer
    assert qlora.resolved_adapter_dtype("float16") == "float32"  # a T4: the fp16 scaler wants fp32 weights
    assert lora.resolved_adapter_dtype("float32") == lora.resolved_adapter_dtype("bfloat16") == "float32"
    assert FinetuneConfig(method="qlora", adapter_dtype="float32").resolved_adapter_dtype("float32") == "float32"
    with pytest.raises(ConfigError, match="adapter_dtype"):
        FinetuneConfig(adapter_dtype="fp8")


def test_fp32_factors_over_a_4bit_base_when_asked(tmp_path, tiny_llama_path):
    import torch

    run = make_selected_run(tmp_path / "run", tiny_rows(12))
    m = run_finetune(run, FinetuneConfig(max_steps=2, eval_fraction=0, adapter_dtype="float32", **FAST), progress=False)
    assert m["status"] == "complete" and m["model"]["adapter_dtype"] == "float32"
    from safetensors.torch import load_file

    saved = load_file(str(run.path("finetune", "adapter") / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    model, _ = load_finetuned(run)
    assert {p.dtype for n, p in model.named_parameters() if "lora_A" in n} == {torch.float32}


def test_merge_writes_fp16_weights_that_match_the_adapter(tmp_path, tiny_llama_path):
    import torch
    from transformers import AutoModelForCausalLM

    run = make_selected_run(tmp_path / "run", tiny_rows(12))
    m = run_finetune(run, FinetuneConfig(max_steps=3, eval_fraction=0, merge=True, **FAST), progress=False)
    assert "merged" in m["outputs"]
    merged = AutoModelForCausalLM.from_pretrained(run.path("finetune", "merged"))
    assert merged.dtype == torch.float16
    peft_model, _ = load_finetuned(run, quant4=False)
    x = torch.randint(10, 600, (1, 16))
    with torch.no_grad():
        a = peft_model(input_ids=x).logits
        b = merged.float()(input_ids=x).logits
    assert (a - b).abs().max().item() < 5e-2


# --- bad inputs --------------------------------------------------------------------------------------


def test_empty_selection_says_which_stage_to_loosen(tmp_path, tiny_llama_path):
    run = make_selected_run(tmp_path / "run", [], config={"total": 40})
    with pytest.raises(FinetuneDataError) as err:
        run_finetune(run, FinetuneConfig(**FAST), progress=False)
    msg = str(err.value)
    assert "selection kept 0 samples of 40" in msg and "04_select" in msg and "loosen thresholds" in msg
    m = run.manifest("finetune")
    assert m["status"] == "failed" and m["error"] == msg and m["error_type"] == "FinetuneDataError"


def test_tiny_selection_is_refused_with_the_threshold(tmp_path, tiny_llama_path):
    run = make_selected_run(tmp_path / "run", tiny_rows(2))
    with pytest.raises(FinetuneDataError, match=r"selection kept 2 samples .*min_samples=4"):
        run_finetune(run, FinetuneConfig(**FAST), progress=False)


def test_everything_over_the_limit_is_reported(tmp_path, tiny_llama_path):
    run = make_selected_run(tmp_path / "run", tiny_rows(6, min_words=60, max_words=80))
    with pytest.raises(FinetuneDataError, match=r"6 dropped \(longer than max_length\).*raise max_length"):
        run_finetune(run, FinetuneConfig(**{**FAST, "max_length": 40}, overflow="drop"), progress=False)
    m = run_finetune(run, FinetuneConfig(**{**FAST, "max_length": 40}, max_steps=2, eval_fraction=0),
                     progress=False)
    assert m["counts"]["truncated"] == 6 and "6 answers were truncated to max_length=40" in m["notes"]


def test_out_of_memory_is_explained_and_the_previous_adapter_survives(trained, tmp_path, monkeypatch):
    import torch
    import transformers

    src, cfg, _ = trained
    run = type(src)(shutil.copytree(src.root, tmp_path / "run"))
    before = sha256_path(run.path("finetune", "adapter"))

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "training_step", boom)
    bigger = FinetuneConfig(**{**cfg.as_dict(), "batch_size": 64})
    with pytest.raises(FinetuneOOMError) as err:
        run_finetune(run, bigger, progress=False)
    for needle in ("Out of memory", "batch_size", "max_length", "quant4", "gradient_checkpointing"):
        assert needle in str(err.value)
    m = run.manifest("finetune")
    assert m["status"] == "failed" and "Out of memory" in m["error"]
    assert m["previous_complete"]["outputs"]["adapter"] == before
    assert sha256_path(run.path("finetune", "adapter")) == before
    with pytest.warns(UserWarning, match="previous complete result"):
        model, _ = load_finetuned(run)
    monkeypatch.undo()
    m = run_finetune(run, cfg, progress=False)  # the old config again: trains afresh and completes
    assert m["status"] == "complete" and m.get("previous_complete") is None


# --- resume bookkeeping, progress and the live plot ---------------------------------------------------


def test_only_marked_checkpoints_are_resumed_and_the_log_is_trimmed(tmp_path):
    from reflection_lab.finetune.callbacks import COMPLETE_MARKER, last_complete_checkpoint, trim_log
    from reflection_lab.core.runs import write_jsonl_atomic

    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("{}")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-4"  # 6 was torn by the kill
    log = tmp_path / "log.jsonl"
    write_jsonl_atomic(log, [{"key": f"train:{s}", "kind": "train", "step": s, "loss": 1.0} for s in range(1, 7)])
    with open(log, "a") as f:
        f.write('{"key": "train:7", "kind": "tr')  # torn last line
    assert [r["step"] for r in trim_log(log, 4)] == [1, 2, 3, 4]
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3, 4]


class _State:
    def __init__(self, max_steps):
        self.global_step, self.max_steps, self.is_world_process_zero = 0, max_steps, True


def test_notebook_progress_redraws_a_plain_figure(monkeypatch):
    import plotly.graph_objects as go

    from reflection_lab.finetune.callbacks import ProgressCallback

    shown = []
    cb = ProgressCallback(live_plot=True, notebook=True, every=2, display=shown.append)
    st = _State(6)
    cb.on_train_begin(None, st, None)
    assert type(shown[0]).__name__ == "VBox"
    for step in range(1, 7):
        st.global_step = step
        cb.on_step_end(None, st, None)
        cb.add_row({"kind": "train", "step": step, "loss": 3.0 - step * 0.1})
        if step % 3 == 0:
            cb.add_row({"kind": "eval", "step": step, "eval_loss": 3.0 - step * 0.05})
    cb.on_train_end(None, st, None)
    figs = [x for x in shown if isinstance(x, go.Figure)]
    assert figs and not any(isinstance(x, go.FigureWidget) for x in shown)
    assert cb.bar.value == 6 and cb.bar.bar_style == "success" and "done" in cb.label.value
    last = figs[-1]
    assert [t.name for t in last.data] == ["train loss", "eval loss"]
    assert list(last.data[0].x) == [1, 2, 3, 4, 5, 6] and list(last.data[1].x) == [3, 6]


def test_text_progress_prints_a_few_lines():
    from reflection_lab.finetune.callbacks import ProgressCallback

    lines = []
    cb = ProgressCallback(live_plot=False, notebook=False, print_fn=lines.append)
    st = _State(20)
    cb.on_train_begin(None, st, None)
    for step in range(1, 21):
        st.global_step = step
        cb.on_step_end(None, st, None)
        cb.add_row({"kind": "train", "step": step, "loss": 1.0})
    assert len(lines) == 10 and lines[-1].startswith("step 20/20 | loss 1.0000")


def test_the_log_reads_back_into_the_loss_figure(trained):
    from reflection_lab.finetune import read_train_log
    from reflection_lab.finetune.callbacks import loss_figure

    run, _, _ = trained
    assert sorted(losses(run)) == list(range(1, 9)) and sorted(losses(run, "eval")) == [4, 8]
    fig = loss_figure(read_train_log(run))
    assert list(fig.data[0].x) == list(range(1, 9)) and list(fig.data[1].x) == [4, 8]


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_answer_only_logits_give_the_models_own_loss(spec, tiny_llama_path, tiny_gpt2_path):
    import torch

    from reflection_lab.finetune.trainer import answer_only_loss, supports_logits_to_keep
    from reflection_lab.models import load_model, load_tokenizer
    from reflection_lab.finetune.data import PadToLongest, encode_rows
    from reflection_lab.format.chat import build_format

    tok = load_tokenizer(spec)
    exs, _ = encode_rows(tiny_rows(6, seed=4), build_format(tok, "chat"), tok, max_length=256)
    batch = PadToLongest(tok.pad_token_id, keep_logits=True)(exs)
    model = load_model(spec)
    if not supports_logits_to_keep(model):
        assert not hasattr(__import__("transformers").modeling_utils, "slice_logits_to_keep")
        pytest.skip("this transformers slices logits_to_keep by position only: the lab trains on full logits")
    with torch.no_grad():
        total, n, out = answer_only_loss(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert n == int((batch["labels"][:, 1:] != -100).sum()) and out.logits.shape[-2:] == (n, len(tok))
    assert (total / n).item() == pytest.approx(full.loss.item(), abs=1e-5)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_a_chunked_loss_gives_the_same_loss_and_gradients_as_the_whole_logits(chunk, tiny_llama_path):
    """loss_chunk_tokens applies the head a few positions at a time (recomputed in backward): same numbers."""
    import torch

    from peft import LoraConfig, get_peft_model

    from reflection_lab.finetune.data import PadToLongest, encode_rows
    from reflection_lab.finetune.trainer import answer_only_loss, plain_output_head, supports_logits_to_keep
    from reflection_lab.format.chat import build_format
    from reflection_lab.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_llama_path)
    exs, _ = encode_rows(tiny_rows(6, seed=4), build_format(tok, "chat"), tok, max_length=256, tag_weight=3.0)
    batch = PadToLongest(tok.pad_token_id, keep_logits=True)(exs)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)  # B nonzero: all factors get grads
    model = get_peft_model(load_model(tiny_llama_path), lora)
    if not supports_logits_to_keep(model):
        pytest.skip("this transformers takes no boolean logits_to_keep mask")
    assert plain_output_head(model) is not None
    results = []
    for chunk_tokens in (0, chunk):
        model.zero_grad()
        total, n, out = answer_only_loss(model, batch, chunk_tokens)
        total.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((total.item(), n, grads, out.logits))
    (whole, n0, g0, logits0), (chunked, n1, g1, logits1) = results
    assert n0 == n1 > chunk or chunk > n0
    assert logits0 is not None and logits1 is None
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-3, atol=1e-5)  # summation order only


def test_the_chunked_loss_follows_mixed_precision_and_half_weights(tiny_llama_path):
    """Under the Trainer's autocast the chunks run in the same half dtype; a bf16 head without autocast still works."""
    import torch

    from reflection_lab.finetune.data import PadToLongest, encode_rows
    from reflection_lab.finetune.trainer import answer_only_loss, supports_logits_to_keep
    from reflection_lab.format.chat import build_format
    from reflection_lab.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_llama_path)
    exs, _ = encode_rows(tiny_rows(4, seed=5), build_format(tok, "chat"), tok, max_length=256)
    batch = PadToLongest(tok.pad_token_id, keep_logits=True)(exs)
    model = load_model(tiny_llama_path)
    if not supports_logits_to_keep(model):
        pytest.skip("this transformers takes no boolean logits_to_keep mask")
    with torch.no_grad():
        exact, n, _ = answer_only_loss(model, batch, 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            whole, _, _ = answer_only_loss(model, batch, 0)
            chunked, _, _ = answer_only_loss(model, batch, 7, torch.bfloat16)
        half, _, _ = answer_only_loss(model.to(torch.bfloat16), batch, 7)  # no autocast, bf16 weights
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-2)
    assert half.item() == pytest.approx(exact.item(), rel=2e-2)
    assert chunked.item() == pytest.approx(exact.item(), rel=2e-2)


def test_the_chunked_loss_of_no_trained_token_is_a_zero_with_a_graph_and_the_head_gets_its_forward_back():
    import torch

    from reflection_lab.finetune.trainer import _HeadSkipped, chunked_cross_entropy

    head = torch.nn.Linear(4, 10, bias=False)
    hidden = torch.zeros(0, 4, requires_grad=True)
    loss = chunked_cross_entropy(hidden, head, torch.zeros(0, dtype=torch.long), 8).sum()
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad is not None
    x = torch.ones(1, 4)
    with _HeadSkipped(head):
        assert head(x) is x
    assert head(x).shape == (1, 10) and "forward" not in head.__dict__
    hooked = head.__dict__["forward"] = lambda h: h * 2  # an instance forward set by someone else stays
    with _HeadSkipped(head):
        assert head(x) is x
    assert head.__dict__["forward"] is hooked


def test_heads_with_a_wrapper_or_another_architecture_keep_the_models_own_projection(tiny_gpt2_path):
    from reflection_lab.finetune.trainer import plain_output_head
    from reflection_lab.models import load_model

    assert plain_output_head(load_model(tiny_gpt2_path)) is None  # gpt2 is not in CHUNKABLE_HEADS


def test_training_arguments_switch_checkpointing_on_without_a_deprecated_name(tmp_path):
    """transformers 5.24 renamed gradient_checkpointing; the lab passes whichever name the installed version has."""
    import warnings

    from reflection_lab.core.devices import pick_device
    from reflection_lab.finetune.trainer import training_args

    for enabled in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            args = training_args(FinetuneConfig(gradient_checkpointing=enabled), tmp_path, pick_device(), False)
        assert args.gradient_checkpointing is enabled  # the old name mirrors the new one where both exist
        assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_tag_rows_lr_scale_reaches_the_training(tmp_path):
    """The same run with the tag rows at 20x the rate ends with other tag rows (the option is not ignored)."""
    from safetensors import safe_open

    def tag_rows(scale: float):
        run = make_selected_run(tmp_path / f"run{scale}", tiny_rows(16, seed=1))
        cfg = FinetuneConfig(max_steps=3, eval_fraction=0, tags_as_special_tokens=True, tag_rows_lr_scale=scale,
                             **{**FAST, "learning_rate": 1e-3})
        run_finetune(run, cfg, progress=False)
        with safe_open(str(run.path("finetune", "adapter") / "adapter_model.safetensors"), "pt") as f:
            return next(f.get_tensor(k) for k in f.keys() if "trainable_tokens_delta" in k)

    import torch

    once, again, scaled = tag_rows(1.0), tag_rows(1), tag_rows(20.0)
    assert torch.equal(once, again)  # the run is deterministic, so a difference below comes from the scale
    assert not torch.equal(once, scaled)


def test_tag_rows_lr_scale_group(tmp_path):
    """Only the trainable_tokens_delta parameters leave the default groups, and none is left behind twice."""
    import torch

    from reflection_lab.finetune.trainer import give_tag_rows_their_own_lr

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trainable_tokens_delta = torch.nn.Parameter(torch.zeros(2, 3))
            self.lora_A = torch.nn.Parameter(torch.zeros(3, 3))

    net = Net()
    opt = torch.optim.AdamW([{"params": list(net.parameters()), "weight_decay": 0.01}], lr=1e-3)
    give_tag_rows_their_own_lr(opt, net, 30.0)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert opt.param_groups[0]["params"][0] is net.lora_A
    assert opt.param_groups[1]["params"][0] is net.trainable_tokens_delta
    assert opt.param_groups[1]["lr"] == pytest.approx(3e-2) and opt.param_groups[1]["weight_decay"] == 0.0


def test_open_tag_unlikelihood_reaches_the_training(tmp_path):
    """A run with the unlikelihood term logs a higher first loss (the same weights plus a positive term) and has
    another fingerprint, so it never resumes from, or is taken for, a run without it; a negative weight is refused."""
    def first_loss(weight: float) -> tuple[float, str]:
        run = make_selected_run(tmp_path / f"run{weight}", tiny_rows(16, seed=1))
        cfg = FinetuneConfig(max_steps=2, eval_fraction=0, open_tag_unlikelihood=weight, **FAST)
        m = run_finetune(run, cfg, progress=False)
        return m["counts"]["first_train_loss"], m["fingerprint"]

    (plain, plain_fp), (pushed, pushed_fp) = first_loss(0.0), first_loss(50.0)
    assert pushed > plain and pushed_fp != plain_fp
    with pytest.raises(ConfigError, match="open_tag_unlikelihood"):
        FinetuneConfig(open_tag_unlikelihood=-1).validate()
