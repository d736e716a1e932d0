"""Tiny offline students: a byte-level BPE tokenizer and a small causal LM, built in code.

Why: tests and the CI profile need real transformers models without a model hub. Two
architectures are built because padding bugs hide on RoPE models (relative positions) and
show up on learned absolute positions (GPT-2 style).

The recipe is deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# A chat template with {% generation %} markers so TRL's assistant-only loss and
# `return_assistant_tokens_mask` work on it.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

RECIPE_VERSION = 1

_SUBJECTS = ["the student", "a teacher", "the model", "my friend", "the city", "a farmer", "the program",
             "the function", "this answer", "the recipe", "a train", "the store", "our team", "the river"]
_VERBS = ["explains", "computes", "translates", "writes", "checks", "returns", "describes", "sells",
          "travels", "improves", "counts", "fixes", "compares", "summarises"]
_OBJECTS = ["the result", "a short email", "the total cost", "every number", "the list", "a better answer",
            "the instruction", "three apples", "the bug", "a clear summary", "the distance", "the loop"]
_TAILS = ["step by step.", "in two sentences.", "for a beginner.", "with an example.", "carefully.",
          "in French.", "in Python.", "before noon.", "per hour.", "without errors."]
_QUESTIONS = ["What is {a} plus {b}?", "How many minutes are in {a} hours?", "Write a function that adds {a} and {b}.",
              "Translate 'good morning' into Spanish.", "Why is the sky blue?", "Fix the bug in this loop.",
              "Summarise the text in {a} words.", "If a pen costs {a} dollars, what do {b} pens cost?"]


def training_corpus() -> list[str]:
    """Deterministic text covering plain prose, Q/A pairs, digits, code symbols and the tags."""
    lines = []
    for s, v, o, t in itertools.islice(itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _TAILS), 0, 12000, 37):
        lines.append(f"{s.capitalize()} {v} {o} {t}")
    for i, q in enumerate(_QUESTIONS * 12):
        a, b = 3 + i % 17, 2 + (i * 7) % 23
        lines.append(f"Question: {q.format(a=a, b=b)} Answer: The answer is {a + b}.")
        lines.append(
            f"<thinking>\nFirst add {a} and {b}.\n<reflection>\nCheck: {a} + {b} = {a + b}.\n</reflection>\n"
            f"</thinking>\n<output>\n{a + b}\n</output>"
        )
    lines += ["0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 -7 50% $12", "def f(x): return [x * 2 for x in range(10)]",
              "if a < b and c >= d: print(a, b) # {} () [] = + - * / \" ' : ;", "Instruction: Response: Input: ###"]
    return lines


def build_tokenizer():
    """Train a byte-level BPE tokenizer (about 1k tokens) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    bos = tok.token_to_id("<|bos|>")
    # BOS through the post-processor, so s(A) can score the answer's first token.
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>", unk_token="<|unk|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|eos|>"],
        chat_template=CHAT_TEMPLATE, padding_side="right", model_max_length=2048,
    )


def build_tiny_student(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    max_positions: int = 2048,
) -> Path:
    """Build and save a tiny student. arch: "llama" (RoPE) or "gpt2" (absolute positions)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError(f"hidden_size/num_heads must be an even integer (RoPE needs an even head_dim); "
                         f"got {hidden_size}/{num_heads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=num_layers, num_attention_heads=num_heads,
                          num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
                          tie_word_embeddings=True, **ids)
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                         n_positions=max_positions, tie_word_embeddings=True, **ids)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama' or 'gpt2'")
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|eos|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "reflection_lab_recipe.json").write_text(json.dumps(
        {"recipe_version": RECIPE_VERSION, "arch": arch, "hidden_size": hidden_size, "num_layers": num_layers,
         "num_heads": num_heads, "seed": seed, "max_positions": max_positions}, indent=1, sort_keys=True))
    return out
