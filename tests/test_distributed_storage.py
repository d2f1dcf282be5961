"""Collections at fsspec URLs: the local mirror pushed to and pulled from file:// and memory:// (no Ray needed)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed")

from synthetic_vectors import add_rows, clustered, make_store  # noqa: E402

from mmsearch.errors import ConfigError  # noqa: E402
from mmsearch.indexes import IndexOptions, build_index  # noqa: E402
from mmsearch.store import Store  # noqa: E402
from mmsearch.store.remote import RemoteMirror, filesystem_for, is_url  # noqa: E402


def _same(a: Path, b: Path) -> None:
    sa, sb = Store.open(a), Store.open(b)
    assert sa.manifest.to_json() == sb.manifest.to_json()
    for modality in ("images", "texts"):
        ta, tb = sa.scan(modality), sb.scan(modality)
        assert ta.equals(tb)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_push_then_pull_gives_the_same_collection(tmp_path: Path, scheme: str) -> None:
    url = f"file://{tmp_path}/remote.mms" if scheme == "file" else f"memory://mms-test-{uuid.uuid4().hex}/c.mms"
    local = tmp_path / "stage"
    store, *_ = make_store(local, images=300, texts=30, dim=8, shards=3)
    build_index(store, "images", IndexOptions(factory="Flat"))
    (local / "quarantine.jsonl").write_text('{"uri": "x", "reason": "corrupt"}\n')
    mirror = RemoteMirror(url, local)
    assert mirror.remote_manifest() is None
    first = mirror.push()
    assert first == 3 + 1 + 2 + 1  # image shards, the text shard, index + its json, the quarantine
    assert mirror.remote_manifest()["next_id"] == Store.open(local).manifest.next_id
    if scheme == "file":  # a file:// collection is a plain collection directory
        _same(local, tmp_path / "remote.mms")
    # a second push sends only what changed (the quarantine has no checksum: always sent)
    assert mirror.push() == 1
    add_rows(store, "images", clustered(20, 8, seed=3))
    assert mirror.push() == 2  # the new shard and the quarantine; the manifest always goes last

    fresh = RemoteMirror(url, tmp_path / "elsewhere").pull()
    _same(local, fresh)
    index_file = Store.open(local).manifest.indexes["images"].file
    assert (fresh / index_file).read_bytes() == (local / index_file).read_bytes()
    assert (fresh / "quarantine.jsonl").read_text() == (local / "quarantine.jsonl").read_text()
    # pulling again into an up-to-date copy fetches nothing (no file changes)
    before = {p: p.stat().st_mtime_ns for p in fresh.rglob("*.parquet")}
    RemoteMirror(url, fresh).pull()
    assert before == {p: p.stat().st_mtime_ns for p in fresh.rglob("*.parquet")}


def test_pull_replaces_a_stale_local_copy(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/remote.mms"
    store, *_ = make_store(tmp_path / "a", images=100, texts=0, dim=8, shards=2)
    RemoteMirror(url, tmp_path / "a").push()
    stale, *_ = make_store(tmp_path / "b", images=50, texts=0, dim=8, shards=1, seed=5)
    copy = RemoteMirror(url, tmp_path / "b").pull()
    _same(tmp_path / "a", copy)
    ids, vectors = next(Store.open(copy).iter_embeddings("images"))
    np.testing.assert_array_equal(ids, np.arange(50))
    # a URL with no collection empties a stale local copy instead of pushing it back later by mistake
    empty = RemoteMirror(f"file://{tmp_path}/none.mms", tmp_path / "b").pull()
    assert not (empty / "manifest.json").exists()


def test_urls_and_paths() -> None:
    assert is_url("s3://bucket/x.mms") and is_url("file:///tmp/x") and not is_url("/tmp/x") and not is_url(Path("/tmp"))
    fs, path = filesystem_for("/tmp/x")
    assert fs is None and path == "/tmp/x"
    fs, path = filesystem_for("file:///tmp/x.mms")
    assert "file" in fs.protocol and path == "/tmp/x.mms"
    with pytest.raises(ConfigError):
        RemoteMirror("/not/a/url")
    with pytest.raises(ConfigError):
        filesystem_for("nosuchscheme-xyz://bucket/x")


def test_a_sharded_index_travels_part_by_part(tmp_path: Path) -> None:
    url = f"memory://mms-test-{uuid.uuid4().hex}/c.mms"
    store, *_ = make_store(tmp_path / "stage", images=300, texts=30, dim=8, shards=3)
    info = build_index(store, "images", IndexOptions(factory="Flat", index_shards=3))
    assert RemoteMirror(url, tmp_path / "stage").push() == 3 + 1 + 3 + 1  # shards, the 3 parts + the index json
    fresh = RemoteMirror(url, tmp_path / "elsewhere").pull()
    for rel in info.part_files:
        assert (fresh / rel).read_bytes() == (store.root / rel).read_bytes()
    from mmsearch.indexes import load_index

    queries = np.eye(8, dtype=np.float32)
    np.testing.assert_array_equal(load_index(Store.open(fresh), "images").search(queries, 5)[1],
                                  load_index(store, "images").search(queries, 5)[1])


def test_deletion_files_travel_with_the_collection(tmp_path: Path) -> None:
    url = f"memory://mms-test-{uuid.uuid4().hex}/c.mms"
    store, ids, *_ = make_store(tmp_path / "stage", images=100, texts=0, dim=8, shards=2)
    store.mark_deleted("images", ids[:7].tolist())
    store.commit()
    assert RemoteMirror(url, tmp_path / "stage").push() == 2 + 1  # the shards and the deletion file
    fresh = Store.open(RemoteMirror(url, tmp_path / "elsewhere").pull())
    assert fresh.manifest.deleted["images"] == ids[:7].tolist() and fresh.manifest.live_rows("images") == 93
    fresh.verify()
