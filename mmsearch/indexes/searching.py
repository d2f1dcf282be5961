"""A loaded index answering top-k queries with collection ids: search parameters, id filters, deletions.

Filters are pre-filters: a FAISS ``IDSelectorBitmap`` restricts the search itself, so a filtered query
still returns ``k`` results. When an approximate search finds fewer (a selective filter leaves few
candidates in the probed lists or graph neighbourhood), it is widened (nprobe / efSearch x4) and, for
small allowed sets, answered exactly over their vectors.

A sharded index (:class:`ShardedSearchIndex`) is several such indexes over disjoint rows, sharing one
trained quantizer: each part is searched with the same parameters and filter (in threads, as FAISS's own
``IndexShards`` does), the per-part top-k are merged with FAISS's ``merge_knn_results``, and widening and
the exact fallback are decided once over the merged result.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from ..errors import QueryError, StoreError
from .structure import knob_limits, knob_values, search_parameters, unwrap_ids

EXACT_FILTER_MAX_ROWS = 4096
WIDEN_FACTOR = 4
VectorReader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class _Searcher:
    """What every searcher shares: query checks, tuned defaults, the pre-filter with widening, exact search."""

    info: Any
    _masked: np.ndarray
    _defaults: dict[str, float]
    _exact: bool

    @property
    def ntotal(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def search_params(self) -> dict[str, float]:
        """The search parameters used by default (tuned at build time)."""
        return dict(self._defaults)

    def reconstruct(self, item_id: int) -> np.ndarray:
        """The stored vector of collection id ``item_id``."""
        ids, vectors = self._vectors(np.array([int(item_id)], dtype=np.int64))
        if not len(ids):
            raise StoreError(f"id {item_id} is not in the {self.info.modality} index")
        return vectors[0]

    def search(self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None,
               params: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) queries -> (scores (n, k) float32, ids (n, k) int64); missing slots have id -1.

        ``allowed_ids`` restricts results to those ids (a pre-filter); ``params`` overrides the tuned
        search parameters (``nprobe``, ``efSearch``, ``k_factor``) for this call.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.info.dim:
            raise StoreError(f"query dim {q.shape[1]} != index dim {self.info.dim}")
        values = {**self._defaults, **self._check_params(params or {})}
        allowed = None if allowed_ids is None else np.setdiff1d(np.asarray(allowed_ids, np.int64), self._masked)
        if allowed is not None and (len(allowed) == 0 or (not self._exact and len(allowed) <= EXACT_FILTER_MAX_ROWS)):
            return self._exact_search(q, k, allowed)
        if allowed is None and not len(self._masked):
            return self._search_with(q, k, values, None)
        return self._filtered(q, k, values, allowed)

    # -- what a searcher provides ------------------------------------------------------------------
    def _limits(self) -> dict[str, float]:
        raise NotImplementedError

    def _search_with(self, q: np.ndarray, k: int, values: dict[str, float], filt: Any) -> tuple[np.ndarray, np.ndarray]:
        """One search at ``values``; ``filt`` is what :meth:`_filter` made (None: no filter)."""
        raise NotImplementedError

    def _filter(self, allowed: np.ndarray | None) -> tuple[Any, int]:
        """(the filter the search applies, how many indexed vectors it admits)."""
        raise NotImplementedError

    def _vectors(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------
    def _check_params(self, params: dict[str, float]) -> dict[str, float]:
        limits = self._limits()
        unknown = sorted(set(params) - set(limits))
        if unknown:
            raise QueryError(f"search parameters {unknown} do not apply to a {self.info.factory!r} index; "
                             f"it takes {sorted(limits) or 'none'}")
        for name, value in params.items():
            if not 1 <= value <= limits[name]:
                raise QueryError(f"{name} must be from 1 to {limits[name]}, not {value}")
        return dict(params)

    def _filtered(self, q: np.ndarray, k: int, values: dict[str, float],
                  allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        filt, available = self._filter(allowed)
        want = min(k, available)
        limits = self._limits()
        while True:
            scores, ids = self._search_with(q, k, values, filt)
            if (ids >= 0).sum(axis=1).min() >= want:
                break
            wider = {n: min(v * WIDEN_FACTOR, limits[n]) for n, v in values.items() if n != "k_factor"}
            if wider == {n: v for n, v in values.items() if n != "k_factor"}:
                if allowed is not None and len(allowed) <= EXACT_FILTER_MAX_ROWS * 8:
                    return self._exact_search(q, k, allowed)
                break
            values = {**values, **wider}
        del filt  # the search read it until here
        return scores, ids

    def _exact_search(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = self._vectors(allowed)
        scores = q @ vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_scores[:, :top.shape[1]] = np.take_along_axis(scores, top, axis=1)
        out_ids[:, :top.shape[1]] = ids[top]
        return out_scores, out_ids


class SearchIndex(_Searcher):
    """A loaded FAISS index of one modality. ``info`` is its :class:`IndexInfo`.

    ``masked_ids`` are deleted ids still inside the index (HNSW and refine cannot remove them; a large part keeps
    them rather than be written again): they are filtered out of every result. ``vector_reader`` reads stored
    vectors by id when the index cannot reconstruct them (memory-mapped lists, compressed codes).
    """

    def __init__(self, index: Any, info: Any, *, masked_ids: np.ndarray | None = None,
                 vector_reader: VectorReader | None = None) -> None:
        self._index = index
        self._inner, self._labels = unwrap_ids(index)
        self.info = info
        self._masked = np.unique(np.asarray(masked_ids if masked_ids is not None else [], dtype=np.int64))
        self._reader = vector_reader
        self._defaults = {k: v for k, v in dict(info.params).items() if k in knob_values(index)}
        self._exact = _is_exact(self._inner)

    @property
    def ntotal(self) -> int:
        """Vectors in the index (deleted-but-masked ones included)."""
        return int(self._index.ntotal)

    def _limits(self) -> dict[str, float]:
        return knob_limits(self._index)

    def _search_with(self, q: np.ndarray, k: int, values: dict[str, float], filt: Any) -> tuple[np.ndarray, np.ndarray]:
        keep: list[Any] = []
        params = search_parameters(self._inner, values, None if filt is None else filt[0], keep)
        try:
            scores, ids = self._inner.search(q, k, params=params)
        except RuntimeError as exc:
            raise QueryError(f"the {self.info.factory!r} index cannot run this search (filters or "
                             f"parameters it does not support): {str(exc).strip().splitlines()[-1]}") from exc
        if self._labels is not None:
            ids = np.where(ids >= 0, self._labels[np.clip(ids, 0, None)], -1)
        return scores, ids

    def _filter(self, allowed: np.ndarray | None) -> tuple[Any, int]:
        """An IDSelectorBitmap over the label space the searched index sees (with the bits it reads), and
        how many it admits."""
        import faiss

        if self._labels is not None:
            mask = ~np.isin(self._labels, self._masked) if len(self._masked) else np.ones(len(self._labels), bool)
            if allowed is not None:
                mask &= np.isin(self._labels, allowed)
        else:  # the index holds collection ids (IVF)
            if allowed is None:  # all but the masked: deletions a large part keeps (faiss_index.PART_ROWS)
                batch = faiss.IDSelectorBatch(len(self._masked), faiss.swig_ptr(self._masked))
                return (faiss.IDSelectorNot(batch), (batch, self._masked)), max(self.ntotal - len(self._masked), 0)
            mask = np.zeros(int(allowed.max(initial=-1)) + 1, dtype=bool)
            mask[allowed] = True
        bits = np.packbits(mask, bitorder="little")
        return (faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits), int(mask.sum())

    def _index_vectors(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(found ids, vectors) reconstructed by the index itself; None when it cannot (ids it lacks, codes)."""
        try:
            if self._labels is not None:
                wanted = wanted[np.isin(wanted, self._labels)]
            return wanted, np.asarray(self._index.reconstruct_batch(wanted), dtype=np.float32).reshape(-1, self.info.dim)
        except RuntimeError:
            return None

    def live_vectors(self) -> np.ndarray:
        """Every live vector of an exact (Flat) index, float32, in the index's order: what the score moments of a
        small index are computed from when no moments file was kept (``IndexRecord.moments_in_index``)."""
        if not self._exact:
            raise StoreError(f"the {self.info.factory!r} {self.info.modality} index does not keep its vectors exactly")
        vectors = np.asarray(self._inner.reconstruct_n(0, int(self._inner.ntotal)), dtype=np.float32)
        if len(self._masked) and self._labels is not None:
            vectors = vectors[~np.isin(self._labels, self._masked)]
        return vectors.reshape(-1, self.info.dim)

    def _vectors(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids, vectors) for ``wanted``: reconstructed by the index, else read from the shards."""
        wanted = np.setdiff1d(wanted, self._masked)
        found = self._index_vectors(wanted)
        if found is not None:
            return found
        if self._reader is None:
            raise StoreError(f"the {self.info.modality} index cannot return stored vectors")
        return self._reader(wanted)


class ShardedSearchIndex(_Searcher):
    """Several :class:`SearchIndex` parts over disjoint rows of one modality, searched as one index.

    The parts share the trained quantizer (so one set of tuned parameters fits all) and ``info``. Each
    search runs on every part with the same parameters and filter, and the per-part top-k are merged;
    results equal a single index holding the same vectors. A batch of at least as many queries as CPUs
    runs part after part (FAISS already spreads the queries over the cores); fewer queries (FAISS searches
    one query on one core) run one thread per part (FAISS releases the GIL).
    """

    def __init__(self, parts: list[SearchIndex], info: Any, *, masked_ids: np.ndarray | None = None,
                 vector_reader: VectorReader | None = None) -> None:
        if not parts:
            raise StoreError(f"the {info.modality} index has no parts")
        self.parts = parts
        self.info = info
        self._masked = np.unique(np.asarray(masked_ids if masked_ids is not None else [], dtype=np.int64))
        self._reader = vector_reader
        self._defaults = parts[0].search_params
        self._exact = parts[0]._exact
        self._pool = None
        if len(parts) > 1:
            self._pool = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="mmsearch-shard")
            weakref.finalize(self, self._pool.shutdown, wait=False)

    @property
    def ntotal(self) -> int:
        """Vectors in all parts (deleted-but-masked ones included)."""
        return sum(p.ntotal for p in self.parts)

    def _limits(self) -> dict[str, float]:
        return self.parts[0]._limits()

    def _search_with(self, q: np.ndarray, k: int, values: dict[str, float], filt: Any) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        def one(part: SearchIndex, f: Any) -> tuple[np.ndarray, np.ndarray]:
            return part._search_with(q, k, values, f)

        filters = filt or [None] * len(self.parts)
        if self._pool is None or len(q) >= (os.cpu_count() or 1):
            results = [one(p, f) for p, f in zip(self.parts, filters)]
        else:
            results = list(self._pool.map(one, self.parts, filters))
        scores = np.stack([r[0] for r in results]).astype(np.float32)
        ids = np.stack([r[1] for r in results]).astype(np.int64)
        scores[ids < 0] = -np.inf  # empty slots last, whatever a part filled them with
        return faiss.merge_knn_results(scores, ids, keep_max=True)

    def _filter(self, allowed: np.ndarray | None) -> tuple[Any, int]:
        made = [p._filter(allowed) for p in self.parts]
        available = sum(n for _, n in made)
        if allowed is not None:  # parts holding ids admit every allowed id, theirs or not
            available = min(available, len(allowed))
        return [f for f, _ in made], available

    def _vectors(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructed by the part that holds them all (one id: the usual case), else read from the shards."""
        wanted = np.setdiff1d(wanted, self._masked)
        for part in self.parts:
            found = part._index_vectors(wanted)
            if found is not None and len(found[0]) == len(wanted):
                return found
        if self._reader is None:
            raise StoreError(f"the {self.info.modality} index cannot return stored vectors")
        return self._reader(wanted)


def _is_exact(index: Any) -> bool:
    import faiss

    return isinstance(index, faiss.IndexFlat)
