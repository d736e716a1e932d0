"""Stage 03: IFD and r-IFD of every version under the student (exact spans, a batched engine, shared prefixes;
`scoring_mode="reference"` encodes the published procedure's spans instead: published.py).

Light at import: the engine (torch) loads when a stage or `score_pair` runs.
"""

from .encode import PASSES, SCORING_MODES, PairEncoder, combine, make_encoder, start_token_id
from .items import Item, ItemLoss, Missing
from .stage import ScoreConfig, load_scores, run_score, score_pair, score_pairs, scores_table

__all__ = ["PASSES", "SCORING_MODES", "Item", "ItemLoss", "Missing", "PairEncoder", "ScoreConfig", "combine",
           "load_scores", "make_encoder", "run_score", "score_pair", "score_pairs", "scores_table", "start_token_id"]
