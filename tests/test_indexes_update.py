"""Incremental updates: new shards are added, deletions removed or filtered, drift triggers a rebuild."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_vectors import add_rows, clustered, make_store

from mmsearch.indexes import IndexOptions, build_index, is_current, load_index, update_index
from mmsearch.indexes import choice as choice_module

IVF = IndexOptions(factory="IVF16,Flat", target_recall=0.9)


def _top1(store, vectors: np.ndarray) -> np.ndarray:
    return load_index(store, "images").search(vectors, 1)[1][:, 0]


def test_new_shards_are_added_without_retraining(tmp_path) -> None:
    store, ids, _, _ = make_store(tmp_path / "c.mms", images=2000, shards=2)
    first = build_index(store, "images", IVF)
    new = clustered(300, 32, seed=9)
    new_ids = add_rows(store, "images", new)
    info = update_index(store, "images", IVF)
    assert info.update.startswith("updated: +300 vectors") and info.trained_rows == first.trained_rows
    assert info.rows == 2300 and info.rows_since_training == 300 and is_current(store, "images")
    found = load_index(store, "images").search(new[:20], 1, params={"nprobe": 16})[1][:, 0]
    assert (found == new_ids[:20]).all()


def test_too_many_rows_after_training_rebuilds_and_says_why(tmp_path) -> None:
    store, *_ = make_store(tmp_path / "c.mms", images=1000, shards=1)
    build_index(store, "images", IVF)
    add_rows(store, "images", clustered(1200, 32, seed=4))
    info = update_index(store, "images", IVF)
    assert info.update.startswith("rebuilt:") and "added after training" in info.update
    assert info.rows_since_training == 0 and info.rows == 2200


@pytest.mark.parametrize("factory, removes", [("IVF16,Flat", True), ("Flat", True), ("HNSW16", False)])
def test_deleted_ids_never_come_back(tmp_path, factory: str, removes: bool) -> None:
    store, ids, vectors, _ = make_store(tmp_path / "c.mms", images=1500, shards=2)
    opts = IndexOptions(factory=factory, target_recall=0.9)
    build_index(store, "images", opts)
    gone = ids[:50]
    store.mark_deleted("images", gone.tolist())
    store.commit()
    info = update_index(store, "images", opts)
    assert info.update.startswith("updated") and info.removes_ids is removes
    assert info.masked_rows == (0 if removes else 50) and info.rows == 1450
    index = load_index(store, "images")
    assert index.ntotal == (1450 if removes else 1500)
    _, found = index.search(vectors[:50], 20)
    assert not np.isin(found, gone).any()
    assert (found[:, 0] >= 0).all()


def test_masked_deletions_past_the_limit_rebuild(tmp_path) -> None:
    store, ids, _, _ = make_store(tmp_path / "c.mms", images=1000, shards=1)
    opts = IndexOptions(factory="HNSW16", max_deleted_share=0.2)
    build_index(store, "images", opts)
    store.mark_deleted("images", ids[:300].tolist())
    store.commit()
    info = update_index(store, "images", opts)
    assert info.update.startswith("rebuilt:") and "only filtered out" in info.update
    assert info.masked_rows == 0 and load_index(store, "images").ntotal == 700


def test_outgrowing_flat_switches_kind(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(choice_module, "FLAT_MAX_ROWS", 1500)
    store, *_ = make_store(tmp_path / "c.mms", images=1000, shards=1)
    assert build_index(store, "images").factory == "Flat"
    add_rows(store, "images", clustered(1000, 32, seed=5))
    info = update_index(store, "images")
    assert info.update.startswith("rebuilt:") and info.factory.startswith("IVF") and info.factory.endswith(",Flat")


def test_changed_options_or_rewritten_shards_rebuild(tmp_path) -> None:
    store, *_ = make_store(tmp_path / "c.mms", images=600, shards=2)
    build_index(store, "images", IVF)
    info = update_index(store, "images", IndexOptions(factory="IVF16,Flat", target_recall=0.8))
    assert info.update == "rebuilt: the index options changed"
    store.manifest.shards["images"].pop(0)
    store.commit()
    info = update_index(store, "images", IndexOptions(factory="IVF16,Flat", target_recall=0.8))
    assert info.update == "rebuilt: shards were rewritten or removed" and info.rows == 300


def test_no_rows_left_removes_the_index(tmp_path) -> None:
    store, ids, _, _ = make_store(tmp_path / "c.mms", images=100, shards=1)
    build_index(store, "images")
    store.mark_deleted("images", ids.tolist())
    store.commit()
    assert update_index(store, "images") is None and "images" not in store.manifest.indexes
