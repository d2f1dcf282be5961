"""Incremental updates: new shards are added, deletions removed or filtered, drift triggers a rebuild."""

from __future__ import annotations

import dataclasses

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


def test_small_updates_keep_the_tuning_and_moments_until_enough_rows_changed(tmp_path) -> None:
    """A few rows added or deleted keep the tuned parameters and the score moments (tuning reads every shard, the
    moments every row) until the changes since tuning pass RETUNE_SHARE of the rows; then both are computed again."""
    from mmsearch.indexes.calibration import collection_moments, read_moments
    from mmsearch.indexes.faiss_index import RETUNE_SHARE

    store, ids, _, _ = make_store(tmp_path / "c.mms", images=2000, shards=2)
    first = build_index(store, "images", IVF)
    assert first.tuned_rows == 2000 and first.changed_since_tuning == 0
    add_rows(store, "images", clustered(30, 32, seed=5))
    store.mark_deleted("images", ids[:20].tolist())
    store.commit()
    info = update_index(store, "images", IVF)
    assert info.update == "updated: +30 vectors, 20 deletions" and info.params == first.params
    assert info.tuned_rows == 2000 and info.changed_since_tuning == 50 and info.moments_file == first.moments_file
    add_rows(store, "images", clustered(int(RETUNE_SHARE * 2000) - 40, 32, seed=6))  # 50 + 60 > 5% of 2000
    store.mark_deleted("images", ids[20:25].tolist())
    store.commit()
    info = update_index(store, "images", IVF)
    assert info.update.endswith("tuned again") and info.tuned_rows == 2065 and info.changed_since_tuning == 0
    saved, fresh = read_moments(store.root / info.moments_file), collection_moments(store, "images")
    assert info.moments_file != first.moments_file and saved.count == fresh.count == 2065
    np.testing.assert_allclose(saved.to_array(), fresh.to_array(), rtol=1e-6, atol=1e-9)  # saved as float32


def vectors_of(store) -> np.ndarray:  # noqa: ANN001
    """The first shard's stored vectors (the big part's rows)."""
    return next(store.iter_embeddings("images"))[1]


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_updates_to_a_large_index_write_a_part_of_their_own_not_the_whole_index(tmp_path, monkeypatch,
                                                                                factory: str) -> None:
    """Past PART_ROWS vectors, new rows go to a new part: a version writes that part and shares the big file with
    the versions before it (never rewritten); results are a single index's; too many parts rebuild as one."""
    from mmsearch.indexes import faiss_index

    monkeypatch.setattr(faiss_index, "PART_ROWS", 1000)
    opts = IndexOptions(factory=factory, target_recall=0.9)
    stores = [make_store(tmp_path / f"{name}.mms", images=1500, shards=1)[0] for name in ("grown", "whole")]
    grown, whole = stores
    first = build_index(grown, "images", opts)
    big = grown.root / first.file
    stamp = (big.stat().st_mtime_ns, big.stat().st_size)
    new = clustered(20, 32, seed=3)
    for store in stores:
        add_rows(store, "images", new)
    info = update_index(grown, "images", opts)
    assert info.update.startswith("updated: +20 vectors") and info.part_files[0] == first.file
    assert len(info.part_files) == 2 and (big.stat().st_mtime_ns, big.stat().st_size) == stamp
    parts = load_index(grown, "images").parts
    assert [p.ntotal for p in parts] == [1500, 20] and is_current(grown, "images")
    build_index(whole, "images", dataclasses.replace(opts, factory=info.factory))
    queries = clustered(50, 32, seed=11)
    params = {"nprobe": 16} if factory.startswith("IVF") else {"efSearch": 256} if factory.startswith("HNSW") else {}
    np.testing.assert_array_equal(load_index(grown, "images").search(queries, 10, params=params)[1][:, :5],
                                  load_index(whole, "images").search(queries, 10, params=params)[1][:, :5])
    _, found = load_index(grown, "images").search(new[:5], 1, params=params)
    assert (found[:, 0] >= 1500).all()  # the new rows, found in their part
    add_rows(grown, "images", clustered(10, 32, seed=4))  # the small last part takes the next rows
    again = update_index(grown, "images", opts)
    assert again.part_files[0] == first.file and len(again.part_files) == 2 and again.part_files[1] != info.part_files[1]
    # a deletion from each part: the big one (memory-mapped by the update, never written) filters its row, the
    # small one removes its row
    first_ids = load_index(grown, "images").search(new[:1], 1, params=params)[1][0]
    big_ids = load_index(grown, "images").search(vectors_of(grown)[:1], 1, params=params)[1][0]
    grown.mark_deleted("images", [int(first_ids[0]), int(big_ids[0])])
    grown.commit()
    deleted = update_index(grown, "images", opts)
    assert deleted.part_files[0] == first.file and (big.stat().st_mtime_ns, big.stat().st_size) == stamp
    assert deleted.masked_rows == (2 if factory.startswith("HNSW") else 1)  # HNSW filters every deletion
    found = load_index(grown, "images").search(np.concatenate([new[:1], vectors_of(grown)[:1]]), 5, params=params)[1]
    assert not np.isin(found, [first_ids[0], big_ids[0]]).any()
    monkeypatch.setattr(faiss_index, "PART_ROWS", 10)
    monkeypatch.setattr(faiss_index, "MAX_PARTS", 2)
    add_rows(grown, "images", clustered(10, 32, seed=5))
    assert len(update_index(grown, "images", opts).part_files) == 3
    add_rows(grown, "images", clustered(10, 32, seed=6))
    rebuilt = update_index(grown, "images", opts)
    assert rebuilt.update.startswith("rebuilt: the index is in 3 parts") and not rebuilt.part_files


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_deletions_from_a_large_part_are_filtered_not_written_again(tmp_path, monkeypatch, factory: str) -> None:
    """A deletion from a part of PART_ROWS vectors or more leaves that file as it is and filters the rows at query
    time (as HNSW does); past max_deleted_share the index is rebuilt without them."""
    from mmsearch.indexes import faiss_index

    monkeypatch.setattr(faiss_index, "PART_ROWS", 1000)
    opts = IndexOptions(factory=factory, target_recall=0.9)
    store, ids, vectors, _ = make_store(tmp_path / "c.mms", images=1500, shards=1)
    first = build_index(store, "images", opts)
    big = store.root / first.file
    stamp = (big.stat().st_mtime_ns, big.stat().st_size)
    gone = ids[:10]
    store.mark_deleted("images", gone.tolist())
    store.commit()
    info = update_index(store, "images", opts)
    assert info.update.startswith("updated: +0 vectors, 10 deletions") and info.file == first.file
    assert info.masked_rows == 10 and info.rows == 1490 and is_current(store, "images")
    assert (big.stat().st_mtime_ns, big.stat().st_size) == stamp
    params = {"nprobe": 16} if factory.startswith("IVF") else {}
    _, found = load_index(store, "images").search(vectors[:10], 5, params=params)
    assert not np.isin(found, gone).any() and (found[:, 0] >= 0).all()
    store.mark_deleted("images", ids[10:400].tolist())  # 400 of 1500: past the 20% limit
    store.commit()
    rebuilt = update_index(store, "images", opts)
    assert rebuilt.update.startswith("rebuilt:") and rebuilt.masked_rows == 0 and rebuilt.rows == 1100
    assert not np.isin(load_index(store, "images").search(vectors[:400], 5, params=params)[1], ids[:400]).any()


def test_an_empty_copy_of_a_memory_mapped_ivf_part_keeps_its_training_and_leaves_the_part_intact(tmp_path) -> None:
    """The first update after a build starts a part from an empty copy of the large last part, which it holds
    memory-mapped: the copy has the part's training and none of its lists, and the part answers as before."""
    import faiss

    from mmsearch.indexes.faiss_index import _empty_like

    vectors = clustered(3000, 32, seed=4)
    quantizer = faiss.IndexFlatIP(32)
    ivf = faiss.IndexIVFFlat(quantizer, 32, 16, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add_with_ids(vectors, np.arange(3000, dtype=np.int64) + 100)
    faiss.write_index(ivf, str(tmp_path / "part.faiss"))
    part = faiss.read_index(str(tmp_path / "part.faiss"), faiss.IO_FLAG_MMAP)
    faiss.extract_index_ivf(part).nprobe = 16
    before = part.search(vectors[:20], 5)
    empty = _empty_like(part)
    assert empty.ntotal == 0 and empty.is_trained and faiss.extract_index_ivf(empty).nlist == 16
    assert sum(faiss.extract_index_ivf(empty).invlists.list_size(i) for i in range(16)) == 0
    after = part.search(vectors[:20], 5)
    np.testing.assert_array_equal(before[1], after[1])
    assert part.ntotal == 3000
    empty.add_with_ids(vectors[:10], np.arange(10, dtype=np.int64) + 5000)
    faiss.extract_index_ivf(empty).nprobe = 16
    assert empty.search(vectors[:1], 1)[1][0, 0] == 5000
