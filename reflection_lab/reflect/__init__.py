"""Stage 02: a teacher reflects on every sample (prompts as package data, forgiving parsing, the stage)."""

from .parse import Parsed, parse_instruction_reflection, parse_response_reflection, parse_section
from .prompts import STYLES, PromptSet, load_prompts
from .stage import TASKS, ReflectConfig, build_request, run_reflect

__all__ = ["STYLES", "TASKS", "Parsed", "PromptSet", "ReflectConfig", "build_request", "load_prompts",
           "parse_instruction_reflection", "parse_response_reflection", "parse_section", "run_reflect"]
