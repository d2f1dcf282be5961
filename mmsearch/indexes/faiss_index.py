"""FAISS indexes built from a collection's shards, saved beside them, loaded for queries.

The index kind is a FAISS factory string (``Flat`` today: exact inner product over unit vectors,
i.e. cosine similarity). Approximate kinds (HNSW, IVF-PQ) slot in through the same
``factory`` argument; ids are the collection's int64 row ids (``IDMap2``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import IndexBuildError, IndexNotFoundError, StoreError
from ..store import Store
from ..store.atomic import write_bytes_atomic, write_with_atomic

INDEX_DIR = "index"
DEFAULT_FACTORY = "Flat"


@dataclass(frozen=True)
class IndexInfo:
    """What an index file holds and how it was built (also stored in the manifest)."""

    modality: str
    factory: str
    rows: int
    dim: int
    metric: str
    model_spec: str
    file: str
    fingerprint: str  # of the shards + deletions it was built from
    built_at: float = field(default_factory=time.time)
    build_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


def fingerprint(store: Store, modality: str) -> str:
    """Changes whenever the live rows of ``modality`` change."""
    m = store.manifest
    h = hashlib.sha256()
    for s in m.shards[modality]:
        h.update(f"{s.file}:{s.sha256};".encode())
    h.update(",".join(map(str, sorted(m.deleted[modality]))).encode())
    return h.hexdigest()[:32]


def is_current(store: Store, modality: str) -> bool:
    """True when the saved index of ``modality`` matches the collection's current rows."""
    info = store.manifest.indexes.get(modality)
    if not info:
        return False
    return info.get("fingerprint") == fingerprint(store, modality) and (store.root / info["file"]).is_file()


def build_index(store: Store, modality: str, *, factory: str = DEFAULT_FACTORY) -> IndexInfo | None:
    """Build, save and register the index of ``modality``; None (and no index) when it has no rows."""
    import faiss

    model = store.manifest.model
    started = time.perf_counter()
    if store.manifest.live_rows(modality) == 0:
        _forget(store, modality)
        return None
    try:
        index = faiss.index_factory(model.dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"FAISS cannot build index {factory!r}: {exc}") from exc
    if not index.is_trained:
        raise IndexBuildError(f"index {factory!r} needs training, which this version does not do yet; use 'Flat'")
    for ids, vectors in store.iter_embeddings(modality):
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors), ids)
    rel = f"{INDEX_DIR}/{modality}.faiss"
    write_with_atomic(store.root / rel, lambda tmp: faiss.write_index(index, str(tmp)))
    info = IndexInfo(modality=modality, factory=factory, rows=int(index.ntotal), dim=model.dim,
                     metric=model.metric, model_spec=model.spec, file=rel,
                     fingerprint=fingerprint(store, modality),
                     build_seconds=round(time.perf_counter() - started, 4))
    write_bytes_atomic(store.root / INDEX_DIR / f"{modality}.json", json.dumps(asdict(info), indent=2).encode())
    store.manifest.indexes[modality] = asdict(info)
    store.commit()
    return info


def _forget(store: Store, modality: str) -> None:
    for suffix in (".faiss", ".json"):
        (store.root / INDEX_DIR / f"{modality}{suffix}").unlink(missing_ok=True)
    if store.manifest.indexes.pop(modality, None) is not None:
        store.commit()


class SearchIndex:
    """A loaded FAISS index answering top-k inner-product queries with collection ids."""

    def __init__(self, index: Any, info: IndexInfo) -> None:
        self._index = index
        self.info = info

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""
        return int(self._index.ntotal)

    def reconstruct(self, item_id: int) -> np.ndarray:
        """The stored vector of collection id ``item_id``."""
        try:
            return np.asarray(self._index.reconstruct(int(item_id)), dtype=np.float32)
        except RuntimeError as exc:
            raise StoreError(f"id {item_id} is not in the {self.info.modality} index") from exc

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) queries -> (scores (n, k) float32, ids (n, k) int64); missing slots have id -1."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.info.dim:
            raise StoreError(f"query dim {q.shape[1]} != index dim {self.info.dim}")
        scores, ids = self._index.search(q, k)
        return scores, ids


def load_index(store: Store, modality: str) -> SearchIndex:
    """Load the saved index of ``modality``; checks it was built under the collection's model."""
    import faiss

    raw = store.manifest.indexes.get(modality)
    if not raw or not (store.root / raw["file"]).is_file():
        raise IndexNotFoundError(modality.rstrip("s"), str(store.root))
    info = IndexInfo(**raw)
    if info.model_spec != store.manifest.model.spec or info.dim != store.manifest.model.dim:
        raise StoreError(f"index {info.file} was built for model {info.model_spec!r}; rebuild it with `mmsearch index`")
    try:
        index = faiss.read_index(str(store.root / info.file))
    except RuntimeError as exc:
        raise StoreError(f"cannot read index {info.file}: {exc}; rebuild it with `mmsearch index`") from exc
    return SearchIndex(index, info)
