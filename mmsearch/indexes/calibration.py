"""The no-match calibration of an index, computed when it is built and kept with it.

Two signals, both per model and per collection:

- the raw threshold (:func:`threshold_from_null_scores`): a high percentile of the best scores that unrelated
  text queries (:data:`mmsearch.query.calibration.NULL_QUERIES`, from the caller's encoder) reach here. Kept for
  indexes built before the moments below; it does not travel between collections of different density (on a
  set of flags every flag scores 0.8 against "the flag of X", far above any unrelated phrase).
- the match z-score (:func:`match_z`): how far a hit's score stands above the query's *own* score distribution
  over the whole collection, in standard deviations. The mean and variance of ``q . x`` over every stored
  vector ``x`` are exact from the collection's mean vector and covariance (:class:`ScoreMoments`, summed shard
  by shard at build time), so it needs no scan at query time and works for text and image queries alike. A
  hit is a good match when its z-score is above :func:`z_cut` of the collection's size: the expected best of
  that many unrelated, normally distributed scores (``sqrt(2 ln n)``), a cut fitted on no data set. Copies of
  a hit (equal scores) count once (:func:`match_marks`), so two copies of the answer do not hide each other.

``benchmarks/no_match.py`` measures both on the shared evaluation sets (docs/no-match.md).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..store import Store
from ..store.atomic import write_bytes_atomic

PERCENTILE = 95.0
MIN_SCORE_STD = 1e-3  # a query whose scores spread less than this scores every row alike: nothing stands out
#: in a collection of a handful of items the cut is at most this share of the largest z-score possible there
#: (:func:`_z_bound`), so that a hit far above all the others can still be a match (a design constant, fitted on
#: no data; it changes the cut only for collections of fewer than 7 items)
SMALL_COLLECTION_SHARE = 0.9
DUPLICATE_GAP = 1e-5  # hits whose scores differ by no more are taken for copies of one item


def threshold_from_null_scores(best_scores: np.ndarray) -> float:
    """The raw no-match threshold: the PERCENTILE-th percentile of unrelated queries' best scores."""
    scores = np.asarray(best_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return float("-inf")
    return float(np.percentile(scores, PERCENTILE))


class ScoreMoments:
    """Count, mean vector and covariance of a collection's vectors, accumulated chunk by chunk (a shard at a
    time) in float64; from them, the mean and variance of any query's scores over the whole collection."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer = np.zeros((dim, dim), dtype=np.float64)
        self._covariance: np.ndarray | None = None  # kept between queries; add/remove drop it

    @classmethod
    def of(cls, chunks: Iterable[np.ndarray]) -> ScoreMoments:
        """The moments of all rows of ``chunks`` (e.g. ``embeddings for _ids, embeddings in store.iter_embeddings(m)``)."""
        moments: ScoreMoments | None = None
        for chunk in chunks:
            chunk = np.atleast_2d(np.asarray(chunk))
            if moments is None:
                moments = cls(chunk.shape[1])
            moments.add(chunk)
        if moments is None:
            raise ValueError("no vectors to compute score moments from: pass at least one (n, dim) chunk")
        return moments

    def add(self, vectors: np.ndarray) -> None:
        """Add ``(n, dim)`` vectors."""
        v = np.asarray(vectors, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self._sum.shape[0]:
            raise ValueError(f"expected (n, {self._sum.shape[0]}) vectors, got shape {v.shape}")
        self.count += v.shape[0]
        self._sum += v.sum(axis=0)
        self._outer += v.T @ v
        self._covariance = None

    def remove(self, vectors: np.ndarray) -> None:
        """Take out ``(n, dim)`` vectors added before (rows deleted since the moments were computed)."""
        v = np.asarray(vectors, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self._sum.shape[0] or v.shape[0] > self.count:
            raise ValueError(f"cannot remove {v.shape} vectors from moments of {self.count} (n, {self._sum.shape[0]}) rows")
        self.count -= v.shape[0]
        self._sum -= v.sum(axis=0)
        self._outer -= v.T @ v
        self._covariance = None

    @property
    def mean(self) -> np.ndarray:
        """The mean vector (float64)."""
        return self._sum / max(self.count, 1)

    @property
    def covariance(self) -> np.ndarray:
        """The (population) covariance matrix (float64), computed once until rows are added or removed."""
        if self._covariance is None:
            mean = self.mean
            self._covariance = self._outer / max(self.count, 1) - np.outer(mean, mean)
        return self._covariance

    def score_mean_std(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the mean and standard deviation of its inner-product scores over the collection (at least
        MIN_SCORE_STD, so that float noise on a query that scores every row alike is no match)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
        variance = ((q @ self.covariance) * q).sum(axis=1)  # BLAS; einsum here cost 0.2 ms a query
        return q @ self.mean, np.sqrt(np.maximum(variance, MIN_SCORE_STD**2))

    def to_array(self) -> np.ndarray:
        """One float64 array to save with the index: row 0 the count, row 1 the sum, then the sum of outer products."""
        head = np.zeros((2, self._sum.shape[0]), dtype=np.float64)
        head[0, 0], head[1] = self.count, self._sum
        return np.concatenate([head, self._outer])

    @classmethod
    def from_array(cls, array: np.ndarray) -> ScoreMoments:
        """The moments saved by :meth:`to_array`."""
        a = np.asarray(array, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1] + 2:
            raise ValueError(f"not saved score moments (shape {a.shape}); rebuild the index with `mmsearch index`")
        moments = cls(a.shape[1])
        moments.count, moments._sum, moments._outer = int(a[0, 0]), a[1].copy(), a[2:].copy()
        return moments


def match_z(queries: np.ndarray, scores: np.ndarray, moments: ScoreMoments) -> np.ndarray:
    """The z-scores of ``scores`` (``(n,)`` or ``(n, k)``: one row of hit scores per query) against each query's
    own score distribution over the collection: ``(score - mean) / std``."""
    mean, std = moments.score_mean_std(queries)
    s = np.asarray(scores, dtype=np.float64)
    shape = (-1,) + (1,) * (s.ndim - 1)
    return (s - mean.reshape(shape)) / std.reshape(shape)


def z_cut(rows: int) -> float:
    """The default z-score above which a hit is a good match in a collection of ``rows`` vectors: the expected
    best z-score of ``rows`` unrelated (standard normal) scores, ``sqrt(2 ln rows)``."""
    return math.sqrt(2.0 * math.log(max(int(rows), 2)))


def match_marks(scores: np.ndarray, mean: np.ndarray, std: np.ndarray, rows: int | np.ndarray) -> np.ndarray:
    """Per hit, whether it is a good match: ``scores`` ``(n, k)``, each query's hits (non-finite padding is never
    a match); ``mean``, ``std``: each query's score mean and spread over all ``rows`` items. A hit is good when
    its z-score is above ``z_cut`` of the collection's size, with copies counted once: hits that tie with it
    (within DUPLICATE_GAP, e.g. the same photo twice) leave one of them in the statistics, so that two copies of
    the answer in a small collection do not hide each other. In a collection of fewer than 7 items the cut is at
    most SMALL_COLLECTION_SHARE of the largest z-score possible there, which ``sqrt(2 ln n)`` exceeds for n <= 5."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n = np.broadcast_to(np.asarray(rows, dtype=np.float64), (s.shape[0],))[:, None]
    mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1)
    total = mean * n
    squares = (np.asarray(std, dtype=np.float64).reshape(-1, 1) ** 2 + mean**2) * n
    finite = np.isfinite(s)
    safe = np.where(finite, s, 0.0)
    ties = (np.abs(safe[:, :, None] - safe[:, None, :]) <= DUPLICATE_GAP) & finite[:, :, None] & finite[:, None, :]
    extra = ties.sum(axis=2) - 1  # copies of each hit beyond itself among the hits
    rest = n - extra
    m = (total - extra * safe) / np.maximum(rest, 1)
    spread = np.sqrt(np.maximum((squares - extra * safe**2) / np.maximum(rest, 1) - m**2, MIN_SCORE_STD**2))
    cut = np.minimum(np.sqrt(2.0 * np.log(np.maximum(rest, 2))), SMALL_COLLECTION_SHARE * _z_bound(rest))
    return finite & (rest >= 2) & ((safe - m) / spread > cut)


def _z_bound(rows: np.ndarray) -> np.ndarray:
    """The largest z-score any one of ``rows`` scores can have against their own mean and spread, (n - 1) / sqrt(n):
    reached when the others all score alike. Under ``sqrt(2 ln n)`` for n <= 5, where no hit could pass that cut."""
    n = np.maximum(np.asarray(rows, dtype=np.float64), 1.0)
    return (n - 1.0) / np.sqrt(n)


def good_matches(queries: np.ndarray, scores: np.ndarray, moments: ScoreMoments) -> np.ndarray:
    """Per hit, whether it is a good match (:func:`match_marks`): ``scores`` ``(n, k)``, each query's hits as a
    search returns them."""
    mean, std = moments.score_mean_std(queries)
    return match_marks(scores, mean, std, moments.count)


def collection_moments(store: Store, modality: str) -> ScoreMoments:
    """The score moments of a collection's live ``modality`` rows (one read pass over its shards)."""
    return ScoreMoments.of(vectors for _ids, vectors in store.iter_embeddings(modality))


def write_moments(path: Path, moments: ScoreMoments) -> None:
    """Save moments as one ``.npy`` file, atomically, in float32: half the bytes of float64 (a version writes one
    whenever its index is tuned again, 0.6 MB at 384 dimensions), scores' mean and deviation the same to 1e-6, and
    the layout every mmsearch reads (:meth:`ScoreMoments.from_array` takes any float dtype)."""
    buffer = io.BytesIO()
    np.save(buffer, moments.to_array().astype(np.float32), allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


def read_moments(path: Path) -> ScoreMoments:
    """Moments saved by :func:`write_moments`."""
    return ScoreMoments.from_array(np.load(path, allow_pickle=False))
