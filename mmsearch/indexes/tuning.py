"""Tuning search parameters to a target recall@k, measured against exact search on held-out queries.

The primary parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is found by doubling until the target
is met, then bisecting down to the smallest value that meets it. With a refine layer this is repeated
for a few ``k_factor`` values and the fastest setting that meets the target wins. Recall is monotone in
each parameter in practice, which is what the search relies on.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SearchFn = Callable[[np.ndarray, int, dict], np.ndarray]  # (queries, k, params) -> ids (n, k)
K_FACTORS = (2.0, 4.0, 8.0, 16.0)
TIMING_REPEATS = 3
TUNING_MARGIN = 0.005  # the tuning queries are a sample: aim a little higher so unseen queries meet the target


@dataclass(frozen=True)
class Tuning:
    """The chosen search parameters and what they measured on the tuning queries."""

    params: dict[str, float] = field(default_factory=dict)
    recall: float = 1.0
    latency_ms: float = 0.0  # per query, queries searched as one batch
    target_met: bool = True
    queries: int = 0


class ExactNeighbours:
    """Exact inner-product top-k collection ids of ``queries``, fed (ids, vectors) batches as they stream by
    (so a build can compute them on its add pass). FAISS's brute-force ``knn`` per batch, merged in a
    ``ResultHeap``; rows hold -1 where the collection has fewer than ``k`` vectors."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        import faiss

        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self._heap = faiss.ResultHeap(len(self.queries), k, keep_max=True)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        import faiss

        if not len(ids) or not len(self.queries):
            return
        n = min(self.k, len(ids))
        scores, pos = faiss.knn(self.queries, np.ascontiguousarray(vectors, dtype=np.float32), n,
                                metric=faiss.METRIC_INNER_PRODUCT)
        self._heap.add_result(scores, np.where(pos >= 0, np.asarray(ids, np.int64)[np.clip(pos, 0, None)], -1))

    def result(self) -> np.ndarray:
        """(queries, k) ids, best first."""
        self._heap.finalize()
        return self._heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (truth rows may be short when the index is small)."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0


def drop_self(ids: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """Each row without its query's own id (held-out queries taken from the index), cut to ``k``."""
    if exclude is None:
        return ids[:, :k]
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, (found, own) in enumerate(zip(ids, exclude)):
        kept = found[found != own][:k]
        out[row, :len(kept)] = kept
    return out


def tune(search: SearchFn, queries: np.ndarray, truth: np.ndarray, *, k: int, target_recall: float,
         limits: dict[str, float], exclude: np.ndarray | None = None) -> Tuning:
    """The fastest parameters within ``limits`` that reach ``target_recall`` (else the most accurate)."""
    measure = _Measure(search, queries, truth, k, exclude)
    goal = min(1.0, target_recall + TUNING_MARGIN)
    primary = next((name for name in ("nprobe", "efSearch") if name in limits), None)
    if primary is None:
        params = {"k_factor": max(K_FACTORS)} if "k_factor" in limits else {}
        return _timed(measure, params, target_recall)
    secondaries = [{"k_factor": f} for f in K_FACTORS] if "k_factor" in limits else [{}]
    low = k if primary == "efSearch" else 1
    found = []
    for extra in secondaries:
        value = _smallest(lambda v, e=extra: measure.recall({primary: v, **e}), low, int(limits[primary]), goal)
        if value is not None:
            found.append({primary: value, **extra})
    if not found:
        return _timed(measure, {primary: int(limits[primary]), **secondaries[-1]}, target_recall)
    return min((_timed(measure, p, target_recall) for p in found), key=lambda t: t.latency_ms)


def _smallest(recall_of: Callable[[int], float], low: int, high: int, target: float) -> int | None:
    """The smallest integer in [low, high] whose recall meets ``target`` (doubling, then bisection)."""
    value, previous = low, low - 1
    while recall_of(value) < target:
        if value >= high:
            return None
        previous, value = value, min(value * 2, high)
    while value - previous > 1:
        middle = (value + previous) // 2
        if recall_of(middle) >= target:
            value = middle
        else:
            previous = middle
    return value


def _timed(measure: _Measure, params: dict[str, float], target: float) -> Tuning:
    recall = measure.recall(params)
    seconds = [measure.seconds(params) for _ in range(TIMING_REPEATS)]
    latency_ms = 1e3 * statistics.median(seconds) / max(len(measure.queries), 1)
    return Tuning(params=dict(params), recall=round(recall, 4), latency_ms=round(latency_ms, 4),
                  target_met=recall >= target, queries=len(measure.queries))


class _Measure:
    """Recall of a parameter setting on the tuning queries, cached."""

    def __init__(self, search: SearchFn, queries: np.ndarray, truth: np.ndarray, k: int,
                 exclude: np.ndarray | None) -> None:
        self.search, self.queries, self.truth, self.k, self.exclude = search, queries, truth, k, exclude
        self._cache: dict[tuple, float] = {}

    def recall(self, params: dict[str, float]) -> float:
        key = tuple(sorted(params.items()))
        if key not in self._cache:
            found = self.search(self.queries, self.k + (self.exclude is not None), params)
            self._cache[key] = recall_at_k(drop_self(found, self.exclude, self.k), self.truth)
        return self._cache[key]

    def seconds(self, params: dict[str, float]) -> float:
        started = time.perf_counter()
        self.search(self.queries, self.k + (self.exclude is not None), params)
        return time.perf_counter() - started
