"""Stage 05 on the real offline student (SmolLM2-135M, 4-bit on the CPU) with Reflection-format answers.

Slow: converts SmolLM2 once (~30 s) and trains a few QLoRA steps. The longer end-to-end measurement
(60 steps, well-formed share on 40 held-out prompts) is `python tests/finetune_helpers.py smollm2-e2e`.
"""

from __future__ import annotations

import pytest

from finetune_helpers import eval_prompts, generate_answers, make_selected_run, one_thread, workshop_reflection_rows
from reflection_lab.finetune import FinetuneConfig, load_finetuned, run_finetune, training_format

pytestmark = pytest.mark.slow
_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


def test_smollm2_masks_the_answer_with_pad_equal_to_eos(smollm2_path):
    from reflection_lab.models import load_tokenizer
    from reflection_lab.finetune.data import PadToLongest, encode_rows
    from reflection_lab.format.chat import build_format

    tok = load_tokenizer("smollm2-135m")
    assert tok.pad_token_id == tok.eos_token_id  # <|im_end|>
    fmt = build_format(tok, "chat")
    assert fmt.end_text == "<|im_end|>" and fmt.end_ids == [tok.eos_token_id] and not fmt.prepend_bos
    rows = workshop_reflection_rows()[:3]
    exs, _ = encode_rows(rows, fmt, tok, max_length=768)
    batch = PadToLongest(tok.pad_token_id)(exs)
    for r, (row, ex) in enumerate(zip(rows, exs)):
        answer = tok(row["output"], add_special_tokens=False)["input_ids"]
        trained = [t for t in batch["labels"][r].tolist() if t != -100]
        assert trained == answer + [tok.eos_token_id]


def test_smollm2_qlora_with_tag_tokens_trains_saves_and_reloads(tmp_path, smollm2_path):
    from reflection_lab.format.chat import tags_are_single_tokens

    run = make_selected_run(tmp_path / "run", workshop_reflection_rows()[:12])
    cfg = FinetuneConfig(student="smollm2-135m", method="qlora", max_steps=3, batch_size=2, learning_rate=1e-3,
                         max_length=384, eval_fraction=0, tags_as_special_tokens=True)
    m = run_finetune(run, cfg, progress=False)
    assert m["status"] == "complete" and m["counts"]["steps"] == 3
    assert m["model"]["embeddings_resized_to"] == 49152 + 6
    card = run.path("finetune", "MODEL_CARD.md").read_text()
    assert "dequantized from Q4_1" in card and "special tokens" in card
    model, tok = load_finetuned(run, quant4=True)
    assert tags_are_single_tokens(tok) and model.get_input_embeddings().weight.shape[0] == len(tok)
    assert any(type(mod).__name__ == "Linear4bit" for mod in model.modules())
    out = generate_answers(model, tok, training_format(run), eval_prompts()[:1], max_new_tokens=12)
    assert out[0]["text"].strip() and "<|im_end|>" not in out[0]["text"]
