"""Seeded, clustered, unit-norm vectors in a collection, CLIP-like: image rows, and text rows offset by a
constant "modality gap" vector, so the text queries of an image index are cross-modal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmsearch.store import ModelInfo, Store


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, *, clusters: int = 40, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres (same centres for a given dim and clusters)."""
    centres = unit(np.random.default_rng(1000 + clusters).normal(size=(clusters, dim)))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    return unit(centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 3)


def text_like(images: np.ndarray, *, gap: float = 0.7, noise: float = 0.5, seed: int = 1) -> np.ndarray:
    """Caption-like vectors: each image vector + a constant offset + noise, renormalised."""
    rng = np.random.default_rng(seed)
    dim = images.shape[1]
    offset = unit(np.random.default_rng(7).normal(size=dim))
    return unit(images + gap * offset + noise * rng.normal(size=images.shape) / np.sqrt(dim) * 3)


def add_rows(store: Store, modality: str, vectors: np.ndarray, shards: int = 1) -> np.ndarray:
    """Append ``vectors`` as ``shards`` shards of ``modality``; returns their ids."""
    all_ids = []
    for chunk in np.array_split(vectors, shards):
        ids = store.reserve_ids(len(chunk))
        if modality == "texts":
            cols = {"id": ids, "text": [f"t{i}" for i in ids], "source": ["s"] * len(ids), "key": [str(i) for i in ids],
                    "image_id": [None] * len(ids)}
        else:
            cols = {"id": ids, "uri": [f"/img/{i}.png" for i in ids], "sha256": [None] * len(ids), "bytes": [1] * len(ids),
                    "width": [int(i % 7) for i in ids], "height": [1] * len(ids), "mtime": [0.0] * len(ids),
                    "caption": [None] * len(ids)}
        store.append(modality, cols, chunk)
        all_ids.append(ids)
    return np.concatenate(all_ids)


def make_store(root: Path, *, images: int = 3000, texts: int = 300, dim: int = 32, shards: int = 3,
               seed: int = 0) -> tuple[Store, np.ndarray, np.ndarray, np.ndarray]:
    """A float32 collection with clustered image rows and cross-modal text rows.

    Returns (store, image ids, image vectors, text vectors)."""
    store = Store.open_or_create(root, ModelInfo("colour:v1", "p", dim), embedding_dtype="float32")
    image_vectors = clustered(images, dim, seed=seed)
    ids = add_rows(store, "images", image_vectors, shards)
    text_vectors = text_like(clustered(texts, dim, seed=seed + 100)) if texts else np.zeros((0, dim), np.float32)
    if texts:
        add_rows(store, "texts", text_vectors, 1)
    return store, ids, image_vectors, text_vectors


def exact_top_k(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """The IndexFlatIP oracle: exact inner-product top-k ids."""
    import faiss

    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(vectors, ids)
    return flat.search(queries, k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))
