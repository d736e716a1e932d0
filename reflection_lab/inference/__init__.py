"""Stage 06: answer held-out prompts in the Reflection format, parse every answer, watch it stream.

The backends themselves live in the llm layer (local transformers, OpenAI-compatible, scripted); here
are the stage, multi-turn `Chat`, and the live viewers (`inference.viewer`, ipywidgets, imported when used).
"""

from .chat import Chat
from .stage import InferConfig, counts, generate_journalled, load_generations, run_infer, student_for_run

__all__ = ["Chat", "InferConfig", "counts", "generate_journalled", "load_generations", "run_infer",
           "student_for_run"]
