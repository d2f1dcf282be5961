"""The no-match signal (mmsearch.indexes.calibration): a hit's z-score against its query's own score distribution
over the collection, cut at the expected best of that many unrelated scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmsearch.indexes.calibration import ScoreMoments, good_matches, match_z, threshold_from_null_scores, z_cut
from tests.synthetic_vectors import clustered, unit


def test_moments_summed_shard_by_shard_are_those_of_the_whole_collection() -> None:
    vectors = clustered(500, 32, seed=3)
    whole = ScoreMoments.of([vectors])
    chunked = ScoreMoments.of(np.array_split(vectors, 7))
    assert whole.count == chunked.count == 500
    np.testing.assert_allclose(chunked.mean, vectors.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(chunked.covariance, np.cov(vectors.T, bias=True), atol=1e-6)
    saved = ScoreMoments.from_array(chunked.to_array())
    np.testing.assert_allclose(saved.covariance, chunked.covariance)
    np.testing.assert_allclose(saved.mean, whole.mean, atol=1e-9)
    chunked.remove(vectors[400:])  # rows deleted since: taken out again
    np.testing.assert_allclose(chunked.covariance, np.cov(vectors[:400].T, bias=True), atol=1e-6)
    with pytest.raises(ValueError, match="cannot remove"):
        chunked.remove(vectors)  # more rows than it holds
    with pytest.raises(ValueError, match="rebuild the index"):
        ScoreMoments.from_array(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="at least one"):
        ScoreMoments.of([])


def test_match_z_is_the_z_score_over_every_stored_vector_without_a_scan() -> None:
    items, queries = clustered(800, 48, seed=1), clustered(20, 48, seed=2)
    scores = queries @ items.T
    expected = (scores - scores.mean(axis=1, keepdims=True)) / scores.std(axis=1, keepdims=True)
    top = np.sort(scores, axis=1)[:, ::-1][:, :5]  # the hits a search returns: their z-scores, row by row
    got = match_z(queries, top, ScoreMoments.of(np.array_split(items, 3)))
    np.testing.assert_allclose(got, np.sort(expected, axis=1)[:, ::-1][:, :5], atol=1e-4)
    np.testing.assert_allclose(match_z(queries, top[:, 0], ScoreMoments.of([items])), got[:, 0], atol=1e-9)


def test_in_a_dense_collection_the_raw_threshold_calls_everything_a_match_and_the_z_score_does_not() -> None:
    # like a set of flags: every item shares a strong common component, so any on-topic query scores high
    # against all of them, far above what unrelated queries reach
    dim, n = 64, 300
    rng = np.random.default_rng(0)
    common = unit(rng.normal(size=dim))
    items = unit(2.0 * common + rng.normal(size=(n, dim)) / np.sqrt(dim) * 2)
    queries = unit(items + rng.normal(size=(n, dim)) / np.sqrt(dim) * 0.8)  # query n's answer is item n
    nulls = unit(rng.normal(size=(32, dim)) - 3 * common)  # unrelated, off-topic queries
    scores = queries @ items.T
    there = scores.max(axis=1)
    removed = np.where(np.eye(n, dtype=bool), -np.inf, scores).max(axis=1)
    raw = threshold_from_null_scores((nulls @ items.T).max(axis=1))
    assert (there > raw).mean() == 1.0 and (removed > raw).mean() == 1.0  # good_match on every result list
    cut = z_cut(n)
    z_there = match_z(queries, there, ScoreMoments.of([items]))
    z_removed = np.array([match_z(queries[i:i + 1], removed[i:i + 1], ScoreMoments.of([np.delete(items, i, 0)]))[0]
                          for i in range(n)])
    assert (z_there > cut).mean() > 0.8 and (z_removed > cut).mean() < 0.2
    np.testing.assert_array_equal(good_matches(queries, there[:, None], ScoreMoments.of([items]))[:, 0], z_there > cut)


def test_a_query_that_scores_every_row_alike_matches_nothing() -> None:
    items = np.eye(8, dtype=np.float32)  # one-hot items; a query with no preference scores 1/sqrt(8) on each
    query = unit(np.ones((1, 8))).astype(np.float32)
    scores = (query @ items.T)[:, :3]
    assert not good_matches(query, scores, ScoreMoments.of([items])).any()
    assert good_matches(items[:1], np.array([[1.0]]), ScoreMoments.of([items])).all()  # an exact item does


def test_a_copy_of_the_answer_does_not_hide_it() -> None:
    # five items, two of them the same: against all five, neither copy stands out (z 1.22 < cut 1.79); counted
    # once, the copy stands out of the four (z 1.73 > cut 1.67), so both are good matches
    items = np.eye(8, dtype=np.float32)[[0, 0, 1, 2, 3]]
    query, scores, moments = items[:1], np.array([[1.0, 1.0, 0.0]]), ScoreMoments.of([items])
    assert (match_z(query, scores, moments)[0, :2] < z_cut(5)).all()
    assert good_matches(query, scores, moments).tolist() == [[True, True, False]]
    padded = np.array([[1.0, -np.inf, np.nan]])  # fewer hits than asked for: padding is never a match
    assert good_matches(items[2:3], padded, moments).tolist() == [[True, False, False]]


@pytest.mark.parametrize("rows", [50, 2000])
def test_the_cut_grows_with_the_collection_so_unrelated_queries_stay_below_it(rows: int) -> None:
    assert z_cut(rows) == pytest.approx(math.sqrt(2 * math.log(rows))) and z_cut(1) == z_cut(2) > 0
    rng = np.random.default_rng(rows)
    items, queries = unit(rng.normal(size=(rows, 32))), unit(rng.normal(size=(300, 32)))  # nothing matches
    best = match_z(queries, (queries @ items.T).max(axis=1), ScoreMoments.of([items]))
    assert (best > z_cut(rows)).mean() < 0.1  # few unrelated queries pass it ...
    assert z_cut(rows) - 1 < np.median(best) < z_cut(rows)  # ... and it sits just above their typical best


def test_moments_of_a_collection_are_of_its_live_rows_and_survive_a_save(tmp_path) -> None:
    from mmsearch.indexes.calibration import collection_moments, read_moments, write_moments
    from tests.synthetic_vectors import make_store

    store, ids, vectors, _ = make_store(tmp_path / "c.mms", images=400, texts=0, shards=3)
    store.mark_deleted("images", ids[:50].tolist())
    store.commit()
    moments = collection_moments(store, "images")
    assert moments.count == 350
    np.testing.assert_allclose(moments.covariance, np.cov(vectors[50:].T, bias=True), atol=1e-6)
    write_moments(tmp_path / "m.npy", moments)
    again = read_moments(tmp_path / "m.npy")
    assert again.count == 350 and (tmp_path / "m.npy").stat().st_size < 34 * 32 * 4 + 256  # float32 on disk
    np.testing.assert_allclose(again.to_array(), moments.to_array(), rtol=1e-6, atol=1e-9)
    queries = vectors[:20]
    for got, want in zip(again.score_mean_std(queries), moments.score_mean_std(queries)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_a_three_item_collection_can_have_a_match(tmp_path, colour_model: str) -> None:
    """No z-score among 5 or fewer items can reach sqrt(2 ln n): without the small-collection cut a collection of
    three colour squares could never find its red one."""
    import mmsearch
    from tests.fakes import make_colour_folder

    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue"])
    col = mmsearch.open(mmsearch.index(folder, out=tmp_path / "c.mms", model=colour_model).path)
    hits = col.search("a red square", k=3)
    assert hits[0].uri.endswith("red.png") and hits[0].good_match
    assert not any(h.good_match for h in hits[1:])



def _marks(root, queries: np.ndarray) -> tuple[list[list[bool | None]], ScoreMoments]:  # noqa: ANN001
    import mmsearch

    col = mmsearch.open(root)
    try:
        hits = col.search_batch([mmsearch.Q(vector=q) for q in queries], k=5)
        return [[h.good_match for h in row] for row in hits], col._score_moments("images")
    finally:
        col.close()


def test_a_small_exact_index_keeps_no_moments_file_and_marks_as_if_it_did(tmp_path, monkeypatch) -> None:
    """Up to MOMENTS_IN_INDEX_ROWS rows a Flat index keeps no moments file (it is dim x dim whatever the rows): a
    query computes them from the index's vectors, and every hit's mark is the one the file would have given."""
    from mmsearch.indexes import faiss_index
    from mmsearch.indexes.calibration import collection_moments
    from mmsearch.indexes.faiss_index import build_index
    from tests.synthetic_vectors import make_store

    def collection(root):  # noqa: ANN001, ANN202
        store, ids, vectors, _ = make_store(root, images=300, texts=0, shards=2)
        store.mark_deleted("images", ids[:30].tolist())  # a deleted row is in neither
        store.commit()
        return store, build_index(store, "images"), vectors

    store, info, vectors = collection(tmp_path / "small.mms")
    assert info.factory == "Flat" and info.moments_in_index and info.moments_file is None
    assert not list((store.root / "index").glob("*.moments.npy"))
    fresh = collection_moments(store, "images")
    store.close()
    queries = vectors[::7] + 0.3 * clustered(len(vectors[::7]), 32, seed=9)
    marks, computed = _marks(tmp_path / "small.mms", queries)
    assert computed.count == fresh.count == 270
    np.testing.assert_allclose(computed.covariance, fresh.covariance, atol=1e-6)
    np.testing.assert_allclose(computed.mean, fresh.mean, atol=1e-7)

    monkeypatch.setattr(faiss_index, "MOMENTS_IN_INDEX_ROWS", 100)  # the same collection, with a file
    store, info, _ = collection(tmp_path / "filed.mms")
    assert not info.moments_in_index and (store.root / info.moments_file).is_file()
    store.close()
    assert _marks(tmp_path / "filed.mms", queries)[0] == marks
    flat = [m for row in marks for m in row]
    assert any(flat) and not all(flat)  # the marks say something
