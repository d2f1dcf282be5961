"""Looking inside a FAISS index: its layers, what it can do, and search parameters for it.

An mmsearch index is either an ``IndexIVF*`` holding the collection ids itself (removal works, lists
can be memory-mapped) or an ``IndexIDMap2`` around any other index. Search parameters are built per
layer (pre-transform -> refine -> IVF / HNSW), with the id selector at the layer that filters.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

KNOBS = ("nprobe", "efSearch", "k_factor")
MAX_EF_SEARCH = 4096


def layers(index: Any) -> Iterator[Any]:
    """The index and the indexes it wraps, outermost first, each downcast to its concrete type."""
    import faiss

    current = faiss.downcast_index(index)
    while current is not None:
        yield current
        if isinstance(current, (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexPreTransform)):
            current = faiss.downcast_index(current.index)
        elif isinstance(current, faiss.IndexRefine):
            current = faiss.downcast_index(current.base_index)
        else:
            current = None


def find_layer(index: Any, kind: str) -> Any | None:
    """The first layer of FAISS class ``kind`` (``"IndexIVF"``, ``"IndexHNSW"``, ``"IndexRefine"``), if any."""
    import faiss

    cls = getattr(faiss, kind)
    return next((layer for layer in layers(index) if isinstance(layer, cls)), None)


def unwrap_ids(index: Any) -> tuple[Any, np.ndarray | None]:
    """(the index searched, position -> id array) for an IDMap2; (index, None) when it holds ids itself."""
    import faiss

    top = faiss.downcast_index(index)
    if isinstance(top, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.downcast_index(top.index), faiss.vector_to_array(top.id_map).astype(np.int64)
    return top, None


def knob_values(index: Any) -> dict[str, float]:
    """The search parameters this index has, with their current values."""
    values: dict[str, float] = {}
    ivf, hnsw, refine = (find_layer(index, k) for k in ("IndexIVF", "IndexHNSW", "IndexRefine"))
    if ivf is not None:
        values["nprobe"] = int(ivf.nprobe)
    if hnsw is not None:
        values["efSearch"] = int(hnsw.hnsw.efSearch)
    if refine is not None:
        values["k_factor"] = float(refine.k_factor)
    return values


def knob_limits(index: Any) -> dict[str, float]:
    """The largest useful value of each search parameter."""
    ivf = find_layer(index, "IndexIVF")
    limits: dict[str, float] = {"efSearch": MAX_EF_SEARCH, "k_factor": 64.0}
    if ivf is not None:
        limits["nprobe"] = int(ivf.nlist)
    return {k: v for k, v in limits.items() if k in knob_values(index)}


def search_parameters(index: Any, values: dict[str, float], selector: Any | None, keep: list[Any]) -> Any | None:
    """A SearchParameters tree for ``index`` (its layers below any id map) with ``values`` and ``selector``.

    ``keep`` collects every object created: SWIG does not keep nested parameters alive on its own.
    """
    import faiss

    layer = faiss.downcast_index(index)
    if isinstance(layer, faiss.IndexRefine):
        base = search_parameters(layer.base_index, values, selector, keep)
        params = faiss.IndexRefineSearchParameters(k_factor=float(values.get("k_factor", layer.k_factor)),
                                                   base_index_params=base)
    elif isinstance(layer, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform(index_params=search_parameters(layer.index, values, selector, keep))
    elif isinstance(layer, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=int(values.get("nprobe", layer.nprobe)))
    elif isinstance(layer, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(values.get("efSearch", layer.hnsw.efSearch)))
    elif selector is None:
        return None  # some indexes (IndexPQ, LSH...) refuse any parameters
    else:
        params = faiss.SearchParameters()
    if selector is not None and not isinstance(layer, (faiss.IndexRefine, faiss.IndexPreTransform)):
        params.sel = selector
    keep.append(params)
    return params


def removes_ids(index: Any) -> bool:
    """True when deleting from ``index`` (as mmsearch wraps it) really removes vectors.

    IVF indexes holding ids and flat-coded ones under an IDMap2 do; HNSW and refine layers cannot, so
    their deletions are filtered at query time instead.
    """
    import faiss

    inner, labels = unwrap_ids(index)
    if labels is None:
        return isinstance(inner, faiss.IndexIVF)
    return isinstance(inner, faiss.IndexFlatCodes)
