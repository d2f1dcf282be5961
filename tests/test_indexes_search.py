"""Filtered (pre-filtered) search returns k results from the allowed set; memory-mapped loading."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_vectors import clustered, exact_top_k, make_store, recall

from mmsearch.indexes import IndexOptions, build_index, load_index


@pytest.fixture(scope="module")
def store_data(tmp_path_factory):
    store, ids, vectors, _ = make_store(tmp_path_factory.mktemp("flt") / "c.mms", images=3000)
    return store, ids, vectors, clustered(30, 32, seed=77)


@pytest.fixture(scope="module", params=["IVF32,Flat", "HNSW16", "Flat", "IVF16,PQ8x4,Refine(Flat)"])
def built(request, tmp_path_factory):
    store, ids, vectors, _ = make_store(tmp_path_factory.mktemp("built") / "c.mms", images=3000)
    build_index(store, "images", IndexOptions(factory=request.param, target_recall=0.9))
    return request.param, load_index(store, "images"), ids, vectors, clustered(30, 32, seed=77)


@pytest.mark.parametrize("share", [0.003, 0.05, 0.5])
def test_filtered_search_returns_k_allowed_results(built, share: float) -> None:
    factory, index, ids, vectors, queries = built
    allowed = np.random.default_rng(1).choice(ids, size=max(int(share * len(ids)), 1), replace=False)
    k = 10
    _, found = index.search(queries, k, allowed_ids=allowed)
    want = min(k, len(allowed))
    assert ((found >= 0).sum(axis=1) == want).all()  # k results whenever k are allowed
    assert np.isin(found[found >= 0], allowed).all()
    mask = np.isin(ids, allowed)
    truth = exact_top_k(queries, ids[mask], vectors[mask], want)
    assert recall(found[:, :want], truth) >= (0.99 if factory == "Flat" else 0.7)


def test_filter_with_no_match_returns_nothing(store_data) -> None:
    store, _, _, queries = store_data
    build_index(store, "images", IndexOptions(factory="IVF32,Flat"))
    _, found = load_index(store, "images").search(queries, 5, allowed_ids=np.array([], np.int64))
    assert (found == -1).all()


def test_mmap_load_answers_like_a_full_load_and_reconstructs_from_shards(store_data) -> None:
    store, ids, vectors, queries = store_data
    build_index(store, "images", IndexOptions(factory="IVF32,Flat"))
    full, mapped = load_index(store, "images", mmap=False), load_index(store, "images", mmap=True)
    np.testing.assert_array_equal(full.search(queries, 10)[1], mapped.search(queries, 10)[1])
    np.testing.assert_allclose(mapped.reconstruct(int(ids[7])), vectors[7], atol=1e-6)
    assert mapped.search_params == full.search_params and "nprobe" in mapped.search_params
    # mapped lists are read through the page cache: no prefetch threads started on every search
    import faiss

    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped._index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.prefetch_nthread == 0
