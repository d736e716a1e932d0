"""Stage 04: the student's selection (array decisions, reasons in words), its figures and widgets.

Light at import: figures (plotly) and widgets (ipywidgets) are imported as submodules when used:
`from reflection_lab.selection import figures` / `from reflection_lab.selection.widgets import selection_lab`.
"""

from .reasons import Decision
from .rules import DROP_REASONS, FORMS, KEPT_OUTCOMES, OUTCOMES, REFUSAL_PHRASES, SCORE_KEYS, SelectConfig
from .stage import run_select
from .table import Selection, SelectionTable, decide, scores_frame

__all__ = ["DROP_REASONS", "FORMS", "KEPT_OUTCOMES", "OUTCOMES", "REFUSAL_PHRASES", "SCORE_KEYS", "Decision",
           "SelectConfig", "Selection", "SelectionTable", "decide", "run_select", "scores_frame"]
