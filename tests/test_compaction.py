"""Small shards are merged at the end of a write: a collection written a few rows at a time stays a few files,
searches as one written at once, and keeps its index (updated, not rebuilt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mmsearch
from mmsearch.errors import StoreError
from mmsearch.store import ModelInfo, Store
from mmsearch.store.compact import MIN_RUN, small_runs
from mmsearch.store.manifest import MANIFEST_NAME, Manifest, ShardInfo

MODEL = ModelInfo(spec="colour:v1", preprocess_id="p", dim=4, normalized=False)
WORDS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"]


def _append(store: Store, texts: list[str], seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(len(texts), 4)).astype(np.float32)
    store.append("texts", {"id": store.reserve_ids(len(texts)), "text": texts, "source": ["s"] * len(texts),
                           "key": texts, "image_id": [None] * len(texts)}, vectors)
    return vectors


def test_merge_shards_keeps_rows_order_ids_and_deleted_rows(tmp_path: Path) -> None:
    store = Store.open_or_create(tmp_path / "c.mms", MODEL, embedding_dtype="float32")
    vectors = np.concatenate([_append(store, [f"t{i}a", f"t{i}b"], seed=i) for i in range(5)])
    store.mark_deleted("texts", [3])
    store.commit()
    run = store.manifest.shards["texts"][1:4]
    merged = store.merge_shards("texts", run, max_rows=4)
    store.commit()
    assert [s.rows for s in merged] == [4, 2]
    assert [(s.id_min, s.id_max) for s in merged] == [(2, 5), (6, 7)]
    reopened = Store.open(tmp_path / "c.mms")
    files = [s.file for s in reopened.manifest.shards["texts"]]
    assert files[0] == "texts/part-00000.parquet" and files[-1] == "texts/part-00004.parquet" and len(files) == 4
    table = reopened.scan("texts", include_deleted=True)
    assert table.column("id").to_pylist() == list(range(10))  # same rows, same order, the deleted one kept
    assert reopened.scan("texts").column("id").to_pylist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    ids, got = zip(*reopened.iter_embeddings("texts"))
    np.testing.assert_array_equal(np.concatenate(got), np.delete(vectors, 3, axis=0))
    assert reopened.embeddings_by_id("texts", [7])[7].tolist() == vectors[7].tolist()  # read by id: the id ranges


def test_merge_shards_refuses_shards_that_are_not_a_run_of_this_version(tmp_path: Path) -> None:
    store = Store.open_or_create(tmp_path / "c.mms", MODEL)
    for i in range(3):
        _append(store, [f"t{i}"], seed=i)
    shards = store.manifest.shards["texts"]
    with pytest.raises(StoreError, match="consecutive"):
        store.merge_shards("texts", [shards[0], shards[2]], max_rows=10)


def test_small_runs_are_runs_of_enough_consecutive_shards_under_half_the_shard_size() -> None:
    def shard(i: int, rows: int) -> ShardInfo:
        return ShardInfo(file=f"texts/part-{i:05d}.parquet", rows=rows, sha256="", created_at=0.0)

    sizes = [100] + [1] * MIN_RUN + [60] + [2] * (MIN_RUN - 1) + [49] * MIN_RUN
    shards = [shard(i, rows) for i, rows in enumerate(sizes)]
    runs = small_runs(shards, shard_rows=100)
    assert [[s.rows for s in run] for run in runs] == [[1] * MIN_RUN, [2] * (MIN_RUN - 1) + [49] * MIN_RUN]
    assert small_runs(shards, shard_rows=2) == []  # nothing is under one row


def test_many_one_row_writes_stay_few_files_and_search_as_one_write(tmp_path: Path, colour_model: str) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = [{"id": i, "text": f"a {WORDS[i % 8]} thing number {i}"} for i in range(3 * MIN_RUN + 2)]
    out = tmp_path / "grown.mms"
    for n in range(1, len(lines) + 1):
        corpus.write_text("".join(json.dumps(line) + "\n" for line in lines[:n]), encoding="utf-8")
        result = mmsearch.index(corpus, out=out, model=colour_model, retention_s=0)
        assert result.report.texts_embedded == 1
        if n > 1:  # the index took the new row in place, also when shards were merged before or after it
            assert result.indexes["texts"].update.startswith("updated"), result.indexes["texts"].update
    with Store.open(out) as store:
        shards = store.manifest.shards["texts"]
        assert len(shards) < MIN_RUN and sum(s.rows for s in shards) == len(lines)
        assert len(list((out / "texts").glob("*.parquet"))) == len(shards)  # the old files went with their versions
    once = mmsearch.index(corpus, out=tmp_path / "once.mms", model=colour_model)
    assert once.report.texts_embedded == len(lines)
    grown, whole = mmsearch.open(out), mmsearch.open(tmp_path / "once.mms")
    for query in ("a red thing", "blue", "black and white"):
        assert ([(h.text, round(h.score, 5)) for h in grown.search(query, k=5, modality="text")]
                == [(h.text, round(h.score, 5)) for h in whole.search(query, k=5, modality="text")])
    # a row of a merged shard can still be removed, and the index says so
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines[1:]), encoding="utf-8")
    result = mmsearch.index(corpus, out=out, model=colour_model)
    assert result.report.deleted == 1 and result.indexes["texts"].update.startswith("updated")
    assert lines[0]["text"] not in [h.text for h in mmsearch.open(out).search("a red thing", k=50, modality="text")]


def test_listed_files_of_a_version_are_its_files(tmp_path: Path, colour_model: str) -> None:
    """The clean-up lists each version's files from its JSON (no parsing into entries): the same list."""
    from fakes import make_colour_folder

    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue"])
    out = tmp_path / "c.mms"
    mmsearch.index(folder, out=out, model=colour_model)
    (folder / "red.png").unlink()
    mmsearch.index(folder, out=out, model=colour_model)
    col = mmsearch.open(out)
    col.set_metadata([col.search("green", k=1)[0].id], {"rating": [5]})
    data = json.loads((out / MANIFEST_NAME).read_bytes())
    manifest = Manifest.from_dict(data)
    assert data["deleted"]["images"]["count"] == 1 and data["labels"] and data["extra"] and data["indexes"]
    assert sorted(Manifest.listed_files(data)) == sorted(manifest.files())
