"""The exact index against brute-force numpy on seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch.errors import IndexNotFoundError
from mmsearch.indexes import build_index, is_current, load_index
from mmsearch.store import ModelInfo, Store


def _store(tmp_path, n: int, dim: int = 16, shards: int = 3, seed: int = 0) -> tuple[Store, np.ndarray]:
    store = Store.open_or_create(tmp_path / "c.mms", ModelInfo("colour:v1", "p", dim), embedding_dtype="float32")
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for chunk in np.array_split(np.arange(n), shards):
        store.append("texts", {"id": store.reserve_ids(len(chunk)), "text": [str(i) for i in chunk],
                               "source": ["s"] * len(chunk), "key": [str(i) for i in chunk],
                               "image_id": [None] * len(chunk)}, vectors[chunk])
    return store, vectors


@pytest.mark.parametrize("n, k", [(1, 1), (50, 5), (500, 10), (500, 500)])
def test_flat_matches_brute_force(tmp_path, n: int, k: int) -> None:
    store, vectors = _store(tmp_path, n)
    build_index(store, "texts")
    index = load_index(Store.open(store.root), "texts")
    queries = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    scores, ids = index.search(queries, k)
    exact = queries @ vectors.T
    expected_ids = np.argsort(-exact, axis=1)[:, :k]
    np.testing.assert_allclose(scores, np.take_along_axis(exact, expected_ids, 1), rtol=1e-5, atol=1e-5)
    assert (ids == expected_ids).mean() > 0.99  # ties may swap


def test_deleted_rows_leave_the_rebuilt_index(tmp_path) -> None:
    store, vectors = _store(tmp_path, 20)
    build_index(store, "texts")
    store.mark_deleted("texts", [3])
    store.commit()
    assert not is_current(store, "texts")
    build_index(store, "texts")
    assert is_current(store, "texts")
    _, ids = load_index(store, "texts").search(vectors[3:4], 20)
    assert 3 not in ids[0] and load_index(store, "texts").ntotal == 19


def test_no_rows_no_index(tmp_path) -> None:
    store, _ = _store(tmp_path, 5)
    assert build_index(store, "images") is None
    with pytest.raises(IndexNotFoundError, match="no image index"):
        load_index(store, "images")


def test_reconstruct_returns_stored_vector(tmp_path) -> None:
    store, vectors = _store(tmp_path, 10)
    build_index(store, "texts")
    np.testing.assert_allclose(load_index(store, "texts").reconstruct(4), vectors[4], atol=1e-6)
