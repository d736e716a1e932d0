"""Stage 03: IFD and r-IFD of every version under the student (exact spans, a batched engine, shared prefixes).

Light at import: the engine (torch) loads when a stage or `score_pair` runs.
"""

from .encode import PASSES, PairEncoder, combine, start_token_id
from .items import Item, ItemLoss, Missing
from .stage import ScoreConfig, load_scores, run_score, score_pair, scores_table

__all__ = ["PASSES", "Item", "ItemLoss", "Missing", "PairEncoder", "ScoreConfig", "combine", "load_scores",
           "run_score", "score_pair", "scores_table", "start_token_id"]
