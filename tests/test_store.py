from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmsearch.errors import CollectionNotFoundError, CorruptShardError, EncoderMismatchError, SchemaVersionError
from mmsearch.store import ModelInfo, Store
from mmsearch.store.atomic import write_bytes_atomic

MODEL = ModelInfo(spec="colour:v1", preprocess_id="p", dim=4)
RAW = ModelInfo(spec="colour:v1", preprocess_id="p", dim=4, normalized=False)  # _texts writes raw vectors


def _texts(store: Store, texts: list[str], seed: int = 0, commit: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(texts), 4)).astype(np.float32)
    cols = {"id": store.reserve_ids(len(texts)), "text": texts, "source": ["s"] * len(texts),
            "key": texts, "image_id": [None] * len(texts)}
    if commit:
        store.append("texts", cols, vectors)
    else:
        store.write_shard("texts", cols, vectors)
    return vectors


def test_append_scan_round_trip(tmp_path) -> None:
    store = Store.open_or_create(tmp_path / "c.mms", MODEL, embedding_dtype="float32")
    vectors = _texts(store, ["a", "b", "c"])
    reopened = Store.open(tmp_path / "c.mms")
    table = reopened.scan("texts")
    assert table.column("text").to_pylist() == ["a", "b", "c"]
    ids, emb = next(reopened.iter_embeddings("texts"))
    assert ids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(emb, vectors)


def test_shard_is_plain_parquet_with_fixed_size_embeddings_and_contract(tmp_path) -> None:
    store = Store.open_or_create(tmp_path / "c.mms", MODEL)
    _texts(store, ["a", "b"])
    pf = pq.read_table(tmp_path / "c.mms" / "texts" / "part-00000.parquet")
    emb_type = pf.schema.field("embedding").type
    assert emb_type.list_size == 4 and str(emb_type.value_type) == "halffloat"
    meta = json.loads(pf.schema.metadata[b"mmsearch"])
    assert meta["model"] == "colour:v1" and meta["dim"] == 4
    # vectors never repeat: the embedding column is not dictionary-encoded (that only slows reads), the others are
    group = pq.ParquetFile(tmp_path / "c.mms" / "texts" / "part-00000.parquet").metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    embedding = next(e for name, e in encodings.items() if name.startswith("embedding"))
    assert not any("DICTIONARY" in e for e in embedding) and any("DICTIONARY" in e for e in encodings["text"])


def test_deletions_hide_rows(tmp_path) -> None:
    store = Store.open_or_create(tmp_path / "c.mms", MODEL)
    _texts(store, ["a", "b", "c"])
    store.mark_deleted("texts", [1])
    store.commit()
    reopened = Store.open(tmp_path / "c.mms")
    assert reopened.scan("texts").column("text").to_pylist() == ["a", "c"]
    assert reopened.manifest.live_rows("texts") == 2
    assert next(reopened.iter_embeddings("texts"))[0].tolist() == [0, 2]


def test_deleted_ids_are_saved_in_files_a_commit_writing_only_the_new_ones(tmp_path) -> None:
    root = tmp_path / "c.mms"
    store = Store.open_or_create(root, MODEL)
    _texts(store, [str(i) for i in range(40)])
    store.mark_deleted("texts", [3, 1, 4])
    store.commit()
    store.commit()  # nothing new: no new file
    store.mark_deleted("texts", [1, 5, 9])  # 1 is already deleted
    store.commit()
    assert sorted(p.name for p in (root / "deleted").iterdir()) == ["texts-00000.parquet", "texts-00001.parquet"]
    assert pq.read_table(root / "deleted" / "texts-00001.parquet").column("id").to_pylist() == [5, 9]
    entry = json.loads((root / "manifest.json").read_text())["deleted"]["texts"]
    assert entry["count"] == 5 and [f["rows"] for f in entry["files"]] == [3, 2]
    reopened = Store.open(root)
    assert reopened.manifest.deleted["texts"] == [3, 1, 4, 5, 9] and reopened.manifest.live_rows("texts") == 35
    reopened.verify()
    # past MAX_DELETION_FILES files, the next commit writes them as one, in the same order
    from mmsearch.store.manifest import MAX_DELETION_FILES

    more = MAX_DELETION_FILES - 1  # 2 files + 14 commits = 16 files; the 15th commit writes one
    for i in range(more):
        reopened.mark_deleted("texts", [10 + i])
        reopened.commit()
    reopened.vacuum(retention_s=0)  # the pieces stay while older versions list them
    files = sorted(p.name for p in (root / "deleted").iterdir())
    assert len(files) == 1 and Store.open(root).manifest.deleted["texts"] == [3, 1, 4, 5, 9, *range(10, 10 + more)]
    assert pq.read_table(root / "deleted" / files[0]).num_rows == 5 + more


def test_a_manifest_with_inline_deleted_ids_is_read_and_moves_them_to_a_file(tmp_path) -> None:
    root = tmp_path / "c.mms"
    store = Store.open_or_create(root, MODEL)
    _texts(store, ["a", "b", "c"])
    data = json.loads((root / "manifest.json").read_text())
    data["deleted"] = {"images": [], "texts": [1]}  # as manifests were written before deletion files
    (root / "manifest.json").write_text(json.dumps(data))
    old = Store.open(root)
    assert old.scan("texts").column("text").to_pylist() == ["a", "c"]
    old.mark_deleted("texts", [2])
    old.commit()
    assert json.loads((root / "manifest.json").read_text())["deleted"]["texts"]["count"] == 2
    assert Store.open(root).scan("texts").column("text").to_pylist() == ["a"]


def test_a_killed_commit_leaves_no_deletions_behind(tmp_path) -> None:
    root = tmp_path / "c.mms"
    store = Store.open_or_create(root, MODEL)
    _texts(store, ["a", "b", "c"])
    store.mark_deleted("texts", [0])
    store.commit()
    # a run killed after writing its deletion file, before the manifest: the file does not count, and goes
    pq.write_table(pq.read_table(root / "deleted" / "texts-00000.parquet"), root / "deleted" / "texts-00001.parquet")
    assert Store.open(root).manifest.deleted["texts"] == [0]
    store.close()  # the killed run is gone: its writer lock with it
    Store.open_or_create(root, MODEL)
    assert sorted(p.name for p in (root / "deleted").iterdir()) == ["texts-00000.parquet"]
    # a deletion file that lost rows is reported, not read as fewer deletions
    pq.write_table(pq.read_table(root / "deleted" / "texts-00000.parquet").slice(0, 0), root / "deleted" / "texts-00000.parquet")
    with pytest.raises(CorruptShardError, match="deleted ids"):
        Store.open(root)


def test_uncommitted_shard_does_not_count_and_is_removed(tmp_path) -> None:
    store = Store.open_or_create(tmp_path / "c.mms", MODEL)
    _texts(store, ["a"])
    _texts(store, ["b"], commit=False)  # a run killed after writing the shard, before the manifest
    (tmp_path / "c.mms" / "texts" / ".tmp-part-00009.parquet.xyz").write_bytes(b"half")
    assert Store.open(tmp_path / "c.mms").scan("texts").num_rows == 1
    store.close()  # the killed run is gone: its writer lock with it
    again = Store.open_or_create(tmp_path / "c.mms", MODEL)
    assert sorted(p.name for p in (tmp_path / "c.mms" / "texts").iterdir()) == ["part-00000.parquet"]
    _texts(again, ["c"])
    assert again.scan("texts").column("text").to_pylist() == ["a", "c"]


def test_missing_collection(tmp_path) -> None:
    with pytest.raises(CollectionNotFoundError, match="mmsearch index"):
        Store.open(tmp_path / "nope")


def test_model_mismatch_on_append(tmp_path) -> None:
    Store.open_or_create(tmp_path / "c.mms", MODEL)
    with pytest.raises(EncoderMismatchError):
        Store.open_or_create(tmp_path / "c.mms", ModelInfo(spec="other:v1", preprocess_id="p", dim=4))


def test_future_format_version_is_refused(tmp_path) -> None:
    Store.open_or_create(tmp_path / "c.mms", MODEL)
    path = tmp_path / "c.mms" / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError):
        Store.open(tmp_path / "c.mms")


def test_truncated_shard_is_reported(tmp_path) -> None:
    store = Store.open_or_create(tmp_path / "c.mms", MODEL)
    _texts(store, ["a", "b"])
    shard = tmp_path / "c.mms" / "texts" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(CorruptShardError):
        Store.open(tmp_path / "c.mms").scan("texts")
    with pytest.raises(CorruptShardError, match="checksum"):
        Store.open(tmp_path / "c.mms").verify()


def test_atomic_write_leaves_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "f.json"
    write_bytes_atomic(target, b"old")
    from mmsearch.store.atomic import atomic_path

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new-but-incomplete")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_shards_record_their_id_range_and_a_read_by_id_opens_only_the_shards_holding_the_ids(tmp_path) -> None:
    root = tmp_path / "c.mms"
    store = Store.open_or_create(root, RAW, embedding_dtype="float32")
    first = _texts(store, ["a", "b"])
    _texts(store, ["c", "d"], seed=1)
    data = json.loads((root / "manifest.json").read_text())
    # beside the shard entries, not in them: an mmsearch that does not know the ranges still reads the entries
    assert data["shard_id_ranges"]["texts"] == {"texts/part-00000.parquet": [0, 1], "texts/part-00001.parquet": [2, 3]}
    assert all("id_min" not in entry for entry in data["shards"]["texts"])
    reopened = Store.open(root)
    assert [(s.id_min, s.id_max) for s in reopened.manifest.shards["texts"]] == [(0, 1), (2, 3)]
    (root / "texts" / "part-00001.parquet").unlink()  # ids 0 and 1 never need this file
    found = reopened.embeddings_by_id("texts", [1, 0])
    np.testing.assert_allclose(found[0], first[0], rtol=1e-6)
    assert reopened.read_shard(reopened.manifest.shards["texts"][1], ["text"], ids=np.array([0])).num_rows == 0
    with pytest.raises(CorruptShardError):  # an id in the missing shard's range still reaches the file
        reopened.embeddings_by_id("texts", [3])


def test_a_manifest_without_id_ranges_or_with_unknown_shard_fields_is_read(tmp_path) -> None:
    root = tmp_path / "c.mms"
    store = Store.open_or_create(root, RAW, embedding_dtype="float32")
    _texts(store, ["a", "b"])
    _texts(store, ["c"], seed=1)
    data = json.loads((root / "manifest.json").read_text())
    del data["shard_id_ranges"]  # as an mmsearch before the ranges writes it
    data["shards"]["texts"][0]["written_by_a_newer_mmsearch"] = 1
    write_bytes_atomic(root / "manifest.json", json.dumps(data).encode())
    reopened = Store.open(root)
    assert [s.id_min for s in reopened.manifest.shards["texts"]] == [None, None]
    assert sorted(reopened.embeddings_by_id("texts", [0, 2])) == [0, 2]  # the footers decide, as before
    reopened.close()


def test_the_next_writer_records_the_id_ranges_an_older_mmsearch_left_out(tmp_path) -> None:
    root = tmp_path / "c.mms"
    store = Store.open_or_create(root, RAW, embedding_dtype="float32")
    _texts(store, ["a", "b"])
    _texts(store, ["c", "d", "e"], seed=1)
    store.close()
    data = json.loads((root / "manifest.json").read_text())
    del data["shard_id_ranges"]  # as an mmsearch before the ranges writes it
    write_bytes_atomic(root / "manifest.json", json.dumps(data).encode())
    writer = Store.open_for_writing(root)
    assert [s.id_min for s in writer.manifest.shards["texts"]] == [None, None]
    _texts(writer, ["f"], seed=2)  # any write: its version lists every shard's range, from the footers
    writer.close()
    reopened = Store.open(root)
    assert [(s.id_min, s.id_max) for s in reopened.manifest.shards["texts"]] == [(0, 1), (2, 4), (5, 5)]
    (root / "texts" / "part-00001.parquet").unlink()  # ids 0, 1 and 5 never need this file now
    assert sorted(reopened.embeddings_by_id("texts", [1, 5])) == [1, 5]
    reopened.close()


@pytest.mark.parametrize(("values", "type_name"), [
    ([1, 2, None], "int64"), (np.arange(5), "int64"), ([3, None], "int32"), ([1.5, None, 2.0], "float64"),
    (np.float16([1, 2]), "float16"), ([True, False, None], "bool"), (np.array([True, False] * 9), "bool"),
    (["a", "é漢", None, ""], "string"), ([], "string"), ([], "int64"), (np.array(["x", "y"], dtype=object), "string"),
    ([["a", "b"], [], None, ["c"]], "list<string>"), ([[0.5, 0.25], []], "list<float>"), ([], "list<float>"),
])
def test_arrow_arrays_from_buffers_equal_pyarrows(values, type_name) -> None:
    """The store's array builder (no pandas import) gives what ``pyarrow.array`` gives, nulls included."""
    import pyarrow as pa

    from mmsearch.store import arrow

    types = {"int64": pa.int64(), "int32": pa.int32(), "float64": pa.float64(), "float16": pa.float16(),
             "bool": pa.bool_(), "string": pa.string(), "list<string>": pa.list_(pa.string()),
             "list<float>": pa.list_(pa.float32())}
    got = arrow.array(values, types[type_name])
    got.validate(full=True)
    expected = pa.array(values, type=types[type_name])
    assert got.equals(expected) and got.null_count == expected.null_count
