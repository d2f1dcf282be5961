"""A sharded index: parts over runs of Parquet shards, one trained quantizer, saved apart, searched together."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic_vectors import add_rows, clustered, exact_top_k, make_store, recall

import mmsearch
from mmsearch.errors import ConfigError
from mmsearch.indexes import IndexOptions, ShardedSearchIndex, build_index, is_current, load_index, resolve_options, update_index
from mmsearch.store import Store


def _twins(tmp_path: Path, *, shards: int = 5) -> tuple[Store, Store, np.ndarray, np.ndarray, np.ndarray]:
    """Two identical collections (images in ``shards`` Parquet shards) and their text queries."""
    store, ids, vectors, texts = make_store(tmp_path / "one.mms", images=3000, texts=300, dim=32, shards=shards)
    shutil.copytree(tmp_path / "one.mms", tmp_path / "sharded.mms")
    return store, Store.open(tmp_path / "sharded.mms"), ids, vectors, texts


@pytest.mark.parametrize("factory", ["IVF32,Flat", "Flat", "PCA32,IVF16,SQ8"])
def test_sharded_index_answers_like_one_index(tmp_path: Path, factory: str) -> None:
    one, two, ids, vectors, queries = _twins(tmp_path)
    single = build_index(one, "images", IndexOptions(factory=factory))
    sharded = build_index(two, "images", IndexOptions(factory=factory, index_shards=3))
    assert sharded.rows == single.rows == 3000 and sharded.trained_rows == single.trained_rows
    stem = f"index/images.v{two.version:08d}"  # named for the version they were built for (and published as)
    assert sharded.part_files == [f"{stem}.shards/part-{i:05d}.faiss" for i in range(3)]
    assert all((two.root / f).is_file() for f in sharded.part_files) and not (two.root / f"{stem}.faiss").exists()
    assert sharded.params == single.params and sharded.recall == single.recall  # one quantizer: the same tuning
    a, b = load_index(one, "images"), load_index(two, "images")
    assert isinstance(b, ShardedSearchIndex) and len(b.parts) == 3 and b.ntotal == 3000
    sizes = [p.ntotal for p in b.parts]
    assert sum(sizes) == 3000 and min(sizes) > 0  # disjoint parts, every one filled
    knobs = [{}] if factory == "Flat" else [{"nprobe": n} for n in (1, 4, 16)]
    for params in knobs:
        da, ia = a.search(queries, 10, params=params)
        db, ib = b.search(queries, 10, params=params)
        np.testing.assert_array_equal(ia, ib)  # each list is split between the parts, searched alike
        np.testing.assert_allclose(da, db, atol=1e-5)
    for i in range(3):  # one query at a time: the parts are searched in threads
        np.testing.assert_array_equal(a.search(queries[i], 10)[1], b.search(queries[i], 10)[1])
    # filters: a large allowed set goes through the id selectors of every part, a small one is exact
    for allowed in (ids[::2], ids[::50]):
        np.testing.assert_array_equal(a.search(queries[:30], 10, allowed_ids=allowed)[1],
                                      b.search(queries[:30], 10, allowed_ids=allowed)[1])
        assert np.isin(b.search(queries[:30], 10, allowed_ids=allowed)[1], allowed).all()
    for i in (0, 1499, 2999):  # a stored vector, from whichever part holds it
        np.testing.assert_allclose(b.reconstruct(int(ids[i])), a.reconstruct(int(ids[i])), atol=1e-6)


def test_sharded_hnsw_reaches_its_target_and_filters_deletions(tmp_path: Path) -> None:
    _, two, ids, vectors, queries = _twins(tmp_path)
    opts = IndexOptions(factory="HNSW16", index_shards=2, target_recall=0.95)
    info = build_index(two, "images", opts)
    assert info.target_met and info.recall >= 0.95 and len(info.part_files) == 2 and not info.removes_ids
    truth = exact_top_k(queries, ids, vectors, 10)
    assert recall(load_index(two, "images").search(queries, 10)[1], truth) >= 0.9
    gone = ids[:3000:7]
    two.mark_deleted("images", gone.tolist())
    two.commit()
    updated = update_index(two, "images", opts)
    assert updated.update.startswith("updated: +0 vectors") and updated.masked_rows == len(gone)
    found = load_index(two, "images").search(queries, 50)[1]
    assert not np.isin(found, gone).any() and (found >= 0).all()


def test_updates_add_to_the_last_part_and_remove_from_every_part(tmp_path: Path) -> None:
    one, two, ids, _, queries = _twins(tmp_path)
    opts = IndexOptions(factory="IVF32,Flat", target_recall=0.9)
    build_index(one, "images", opts)
    first = build_index(two, "images", IndexOptions(factory="IVF32,Flat", target_recall=0.9, index_shards=3))
    before = [p.ntotal for p in load_index(two, "images").parts]
    new = clustered(200, 32, seed=9)
    gone = np.concatenate([ids[:5], ids[1500:1505], ids[-5:]])  # in the first, middle and last part
    for store in (one, two):
        add_rows(store, "images", new)
        store.mark_deleted("images", gone.tolist())
        store.commit()
    mtimes = [(two.root / f).stat().st_mtime_ns for f in first.part_files]
    # options not given again: the saved index's, sharding included
    assert resolve_options(two, "images").index_shards == 3
    ua = update_index(one, "images", resolve_options(one, "images"))
    ub = update_index(two, "images", resolve_options(two, "images"))
    assert ub.update == ua.update == "updated: +200 vectors, 15 deletions, tuned again"  # 215 > 5% of 3000
    assert ub.rows == ua.rows == 3185
    assert len(ub.part_files) == 3 and is_current(two, "images")
    parts = load_index(two, "images").parts
    assert set(ub.part_files).isdisjoint(first.part_files)  # every part lost a row: each was saved anew
    assert [(two.root / f).stat().st_mtime_ns for f in first.part_files] == mtimes  # published files never rewritten
    assert [p.ntotal for p in parts][:2] == [before[0] - 5, before[1] - 5] and parts[2].ntotal == before[2] - 5 + 200
    a, b = load_index(one, "images"), load_index(two, "images")
    for nprobe in (2, 32):
        np.testing.assert_array_equal(a.search(queries, 10, params={"nprobe": nprobe})[1],
                                      b.search(queries, 10, params={"nprobe": nprobe})[1])
    assert not np.isin(b.search(queries, 100, params={"nprobe": 32})[1], gone).any()
    # a later update that only adds rows rewrites only the last part
    mtimes = [(two.root / f).stat().st_mtime_ns for f in ub.part_files]
    add_rows(two, "images", clustered(10, 32, seed=11))
    later = update_index(two, "images", resolve_options(two, "images"))
    assert later.update == "updated: +10 vectors, 0 deletions"
    assert later.part_files[:2] == ub.part_files[:2] and later.part_files[2] != ub.part_files[2]
    assert [(two.root / f).stat().st_mtime_ns for f in ub.part_files] == mtimes
    assert load_index(two, "images").ntotal == 3195


def _index_files(store: Store) -> list[str]:
    return sorted(p.relative_to(store.root).as_posix() for p in (store.root / "index").rglob("*.faiss"))


def test_changing_the_number_of_shards_rebuilds_and_drops_the_old_files(tmp_path: Path) -> None:
    store, *_ = make_store(tmp_path / "c.mms", images=2000, shards=4)
    info = build_index(store, "images", IndexOptions(factory="IVF16,Flat", index_shards=4))
    assert len(info.part_files) == 4 and _index_files(store) == sorted(info.part_files)
    info = update_index(store, "images", IndexOptions(factory="IVF16,Flat", index_shards=2))
    assert info.update == "rebuilt: the index options changed" and len(info.part_files) == 2
    store.vacuum(retention_s=0)  # the old layout's files go with the versions that listed them
    assert _index_files(store) == sorted(info.part_files)
    info = update_index(store, "images", IndexOptions(factory="IVF16,Flat"))
    assert info.part_files == [] and info.file.endswith(".faiss") and (store.root / info.file).is_file()
    store.vacuum(retention_s=0)
    assert _index_files(store) == [info.file]
    assert load_index(store, "images").ntotal == 2000
    info = update_index(store, "images", IndexOptions(factory="IVF16,Flat", index_shards=2))
    store.vacuum(retention_s=0)
    assert len(info.part_files) == 2 and _index_files(store) == sorted(info.part_files)


def test_more_shards_than_parquet_shards_gives_one_part_per_shard(tmp_path: Path) -> None:
    store, *_ = make_store(tmp_path / "c.mms", images=600, shards=2)
    info = build_index(store, "images", IndexOptions(factory="Flat", index_shards=8))
    assert len(info.part_files) == 2 and info.index_shards == 8
    with pytest.raises(ConfigError, match="index_shards"):
        IndexOptions(index_shards=0)


def test_a_missing_part_means_no_index(tmp_path: Path) -> None:
    store, *_ = make_store(tmp_path / "c.mms", images=600, shards=2)
    info = build_index(store, "images", IndexOptions(factory="Flat", index_shards=2))
    (store.root / info.part_files[1]).unlink()
    assert not is_current(store, "images")
    rebuilt = update_index(store, "images", IndexOptions(factory="Flat", index_shards=2))
    assert rebuilt.update == "built" and all((store.root / f).is_file() for f in rebuilt.part_files)


def test_index_and_cli_keep_a_sharded_collection(tmp_path: Path, colour_model: str, monkeypatch) -> None:
    from click.testing import CliRunner
    from fakes import COLOURS, make_colour_folder

    from mmsearch.cli.main import main

    for i, name in enumerate(COLOURS):  # 8 distinct images: no tied scores
        make_colour_folder(tmp_path / "photos" / f"d{i}", [name], captions=True)
    kw = dict(model=colour_model, workers=0, shard_rows=2, index_factory="Flat")
    single = mmsearch.index(tmp_path / "photos", out=tmp_path / "single.mms", **kw)
    sharded = mmsearch.index(tmp_path / "photos", out=tmp_path / "sharded.mms", index_shards=3, **kw)
    assert len(sharded.indexes["images"].part_files) == 3 and single.indexes["images"].part_files == []
    a, b = mmsearch.open(single.path), mmsearch.open(sharded.path)
    for query in ("red", "a blue square"):
        assert [(h.id, round(h.score, 5)) for h in a.search(query, k=8)] == [
            (h.id, round(h.score, 5)) for h in b.search(query, k=8)]
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["info", str(sharded.path)])
    assert out.exit_code == 0 and "in 3 parts" in out.output, out.output
    out = CliRunner().invoke(main, ["index", "photos", "-o", "cli.mms", "--model", colour_model, "--workers", "0",
                                    "--shard-rows", "2", "--index-shards", "2"])
    assert out.exit_code == 0, out.output
    assert len(Store.open(tmp_path / "cli.mms").manifest.indexes["images"].part_files) == 2
