"""Stage 07: did reflection and selection help? Arms, metrics with intervals, a pairwise judge, a report.

Light at import: the report's figures (plotly) load when a report is written (`evaluate.report`).
"""

from .arms import ARM_TITLES, ARMS, arm_data
from .judge import Comparison, answer_view, run_judge, scripted_judge
from .metrics import extract_number, numbers_in, paired_bootstrap, score_answer
from .results import build_metrics, format_table, load_arm_rows, load_generations, load_metrics
from .stage import EvaluateConfig, load_eval_rows, run_evaluate

__all__ = ["ARMS", "ARM_TITLES", "Comparison", "EvaluateConfig", "answer_view", "arm_data", "build_metrics",
           "extract_number", "format_table", "load_arm_rows", "load_eval_rows", "load_generations", "load_metrics",
           "numbers_in", "paired_bootstrap", "run_evaluate", "run_judge", "score_answer", "scripted_judge"]
