"""The no-match threshold of an index, computed when it is built (the queries come from the caller's encoder:
:data:`mmsearch.query.calibration.NULL_QUERIES`, unrelated phrases) and kept in its record."""

from __future__ import annotations

import numpy as np

PERCENTILE = 95.0


def threshold_from_null_scores(best_scores: np.ndarray) -> float:
    """The no-match threshold: the PERCENTILE-th percentile of unrelated queries' best scores."""
    scores = np.asarray(best_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return float("-inf")
    return float(np.percentile(scores, PERCENTILE))
