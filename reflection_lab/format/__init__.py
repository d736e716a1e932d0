"""The Reflection format: the tags and their streaming parser, the scoring templates, the chat format.

Light on purpose (no torch): every stage, the model backends and the server read and write this format.
"""

from .chat import (REFLECTION_PROMPT, SYSTEM_PROMPTS, SystemPrompt, TrainingFormat, add_reflection_tokens, build_format,
                   decode_keep_tags, history_for_model, system_prompt_text)
from .tags import REFLECTION_TAGS, ParsedResponse, StreamParser, parse, split_reasoning, strip_reasoning
from .templates import TEMPLATES, render, render_forward, user_text

__all__ = ["REFLECTION_PROMPT", "REFLECTION_TAGS", "SYSTEM_PROMPTS", "TEMPLATES", "ParsedResponse", "StreamParser",
           "SystemPrompt", "TrainingFormat", "add_reflection_tokens", "build_format", "decode_keep_tags",
           "history_for_model", "parse", "render", "render_forward", "split_reasoning", "strip_reasoning",
           "system_prompt_text", "user_text"]
