"""A calibrated "no good match" signal.

A hit is a good match when its score stands out from the query's own scores over the whole collection: its
z-score (:func:`match_z`, from the collection's mean vector and covariance, :class:`ScoreMoments`) is above
:func:`z_cut` of the collection's size. Below it, an assistant should say it found nothing rather than pass
noise along. The older raw threshold is a high percentile of the best scores that *unrelated* text queries
(NULL_QUERIES: abstract, non-visual phrases) reach against the collection. Both are computed when the index
is built (:mod:`mmsearch.indexes.calibration`), so a query process never recomputes them; docs/no-match.md
has the measurements.
"""

from __future__ import annotations

from ..indexes.calibration import (
    PERCENTILE,
    ScoreMoments,
    good_matches,
    match_marks,
    match_z,
    threshold_from_null_scores,
    z_cut,
)

NULL_QUERIES = (
    "the quarterly tax filing deadline", "how to reset a forgotten router password", "an abstract theorem about prime numbers",
    "the interest rate set by the central bank", "a recursive function in a programming language",
    "the grammar rules of the subjunctive mood", "a lease agreement for an apartment", "the minutes of a board meeting",
    "a philosophical argument about free will", "the terms and conditions of a software licence",
    "an insurance claim form", "the syllabus of a statistics course", "a probability distribution with heavy tails",
    "the history of medieval trade law", "a checksum mismatch error message", "the regulations on data retention",
    "an estimate of next year's inflation", "the password policy of a company", "a proof by contradiction",
    "the schedule of a university semester", "a compiler optimisation pass", "the exchange rate between two currencies",
    "a dispute about a parking fine", "the abstract of a sociology paper", "an invoice with an overdue payment",
    "a debate about tax reform", "the definition of a vector space", "a request for a refund by email",
    "the results of an opinion poll", "an argument about the meaning of a word", "a cache invalidation strategy",
    "the timeline of a legal appeal",
)
__all__ = ["NULL_QUERIES", "PERCENTILE", "ScoreMoments", "good_matches", "match_marks", "match_z",
           "threshold_from_null_scores", "z_cut"]
