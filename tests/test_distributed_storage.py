"""Collections at fsspec URLs: the local mirror pushed to and pulled from file:// and memory:// (no Ray needed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed")

from ray_cluster import s3_emulator as running_emulator  # noqa: E402
from synthetic_vectors import add_rows, clustered, make_store  # noqa: E402

from mmsearch.errors import CollectionBusyError, CommitConflictError, ConfigError  # noqa: E402
from mmsearch.indexes import IndexOptions, build_index  # noqa: E402
from mmsearch.store import Store  # noqa: E402
from mmsearch.store.remote import LEASE_NAME, RemoteMirror, filesystem_for, is_url  # noqa: E402


def _same(a: Path, b: Path) -> None:
    sa, sb = Store.open(a), Store.open(b)
    assert sa.manifest.to_json() == sb.manifest.to_json()
    for modality in ("images", "texts"):
        ta, tb = sa.scan(modality), sb.scan(modality)
        assert ta.equals(tb)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_push_then_pull_gives_the_same_collection(tmp_path: Path, scheme: str, monkeypatch) -> None:
    from mmsearch.indexes import faiss_index

    monkeypatch.setattr(faiss_index, "MOMENTS_IN_INDEX_ROWS", 0)  # a moments file travels too (300 rows keep none)
    url = f"file://{tmp_path}/remote.mms" if scheme == "file" else f"memory://mms-test-{uuid.uuid4().hex}/c.mms"
    local = tmp_path / "stage"
    store, *_ = make_store(local, images=300, texts=30, dim=8, shards=3)
    build_index(store, "images", IndexOptions(factory="Flat"))
    (local / "quarantine.jsonl").write_text('{"uri": "x", "reason": "corrupt"}\n')
    mirror = RemoteMirror(url, local)
    assert mirror.remote_manifest() is None
    first = mirror.push()
    assert first == 3 + 1 + 3 + 1  # image shards, the text shard, index + its json + its score moments, the quarantine
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
    assert RemoteMirror(url, tmp_path / "stage").push() == 3 + 1 + 3 + 2  # shards, the 3 parts + the index json + moments
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


# -- a second writer: the writer lease and the conditional commit (file://, memory://, s3:// on an S3 emulator) --
@pytest.fixture(scope="module")
def s3_emulator():
    """moto_server on 127.0.0.1 with boto / s3fs pointed at it, or the reason it cannot run."""
    with running_emulator() as env:
        yield env


@pytest.fixture(params=["file", "memory", "s3"])
def url(request, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/remote.mms"
    if request.param == "memory":
        return f"memory://mms-test-{uuid.uuid4().hex}/c.mms"
    env = request.getfixturevalue("s3_emulator")
    if isinstance(env, str):
        pytest.skip(env)
    from ray_cluster import make_bucket

    bucket = f"mms-{uuid.uuid4().hex[:12]}"
    make_bucket(env, bucket)
    return f"s3://{bucket}/c.mms"


def test_the_store_offers_conditional_writes(url: str, tmp_path: Path) -> None:
    mirror = RemoteMirror(url, tmp_path / "a")
    assert mirror.conditional_writes()  # file://, memory:// and S3 (If-None-Match: *) all honour put-if-absent
    assert not [p for p in mirror.fs.find(mirror.path) if ".mms-probe" in p]  # the probe object is gone


def test_a_second_writer_is_refused_while_the_lease_is_held(url: str, tmp_path: Path) -> None:
    first, second = RemoteMirror(url, tmp_path / "a"), RemoteMirror(url, tmp_path / "b")
    first.acquire(wait_s=0, lease_s=30, command="mmsearch index ./photos")
    try:
        with pytest.raises(CollectionBusyError, match=r"being written by pid \d+ on .*mmsearch index ./photos.*lease until"):
            second.acquire(wait_s=0.5)
        first.renew()
    finally:
        first.release()
    assert first.read_lease() is None
    second.acquire(wait_s=0)  # free again
    second.release()


def test_stale_leases_are_taken_over(url: str, tmp_path: Path) -> None:
    mirror = RemoteMirror(url, tmp_path / "a")
    lease = f"{mirror.path}/{LEASE_NAME}"
    mirror.fs.makedirs(mirror.path, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder in ({"host": socket.gethostname(), "pid": dead.pid, "expires": time.time() + 600},  # a killed driver here
                   {"host": "elsewhere", "pid": 1, "expires": time.time() - 1}):  # expired, another host
        mirror.fs.pipe_file(lease, json.dumps({"id": "old", "since": time.time(), **holder}).encode())
        mirror.acquire(wait_s=0)
        assert mirror.read_lease()["id"] == mirror.lease_id
        mirror.release()
    mirror.fs.pipe_file(lease, json.dumps({"id": "old", "host": "elsewhere", "pid": 1, "since": time.time(),
                                           "expires": time.time() + 600}).encode())
    with pytest.raises(CollectionBusyError, match="elsewhere"):
        mirror.acquire(wait_s=0)


@pytest.mark.parametrize("race", [False, True])
def test_two_writers_of_one_version_one_commit_wins(url: str, tmp_path: Path, race: bool, monkeypatch) -> None:
    """Two writers that both started from version V (the lease bypassed or expired) publish V+1: the second is
    refused (CommitConflictError), the remote keeps the first's version. ``race``: the second checked the remote
    before the first published (its check passes), so the put-if-absent of _versions/ is what refuses it."""
    base, *_ = make_store(tmp_path / "base", images=40, texts=0, dim=8, shards=1)
    RemoteMirror(url, tmp_path / "base").push()
    a, b = RemoteMirror(url, tmp_path / "a"), RemoteMirror(url, tmp_path / "b")
    before = a.remote_manifest()
    sa, sb = Store.open_for_writing(a.pull()), Store.open_for_writing(b.pull())
    add_rows(sa, "images", clustered(10, 8, seed=1))
    add_rows(sb, "images", clustered(20, 8, seed=2))
    a.push()
    if race:
        monkeypatch.setattr(b, "remote_manifest", lambda: before)
    with pytest.raises(CommitConflictError):
        b.push()
    monkeypatch.undo()
    assert a.remote_manifest()["version"] == sa.version and a.remote_manifest()["next_id"] == 50
    _same(tmp_path / "a", RemoteMirror(url, tmp_path / "fresh").pull())


def test_without_conditional_writes_the_lease_still_refuses(tmp_path: Path) -> None:
    """A store without put-if-absent: the lease is written and read back (best effort), and still refuses a
    second writer; the commit checks the remote version right before writing the manifest."""
    url = f"memory://mms-test-{uuid.uuid4().hex}/c.mms"
    first, second = RemoteMirror(url, tmp_path / "a"), RemoteMirror(url, tmp_path / "b")
    first._conditional = second._conditional = False
    first.acquire(wait_s=0, lease_s=30)
    with pytest.raises(CollectionBusyError):
        second.acquire(wait_s=0)
    store, *_ = make_store(tmp_path / "a", images=40, texts=0, dim=8, shards=1)
    first.push()
    first.release()
    stale = Store.open_for_writing(second.pull())
    add_rows(store, "images", clustered(5, 8, seed=1))
    first.push()
    add_rows(stale, "images", clustered(5, 8, seed=2))
    with pytest.raises(CommitConflictError):
        second.push()


def test_a_checkpoint_at_the_url_is_resumed_from_another_staging_copy(tmp_path: Path) -> None:
    """A run killed before it published: its checkpoint (``_draft.json`` + the shards it lists) is at the URL,
    so a driver restarted on another machine (another staging copy) resumes it instead of embedding again."""
    from mmsearch.distributed.ray_engine import MirroredStore

    url = f"memory://mms-test-{uuid.uuid4().hex}/c.mms"
    make_store(tmp_path / "a", images=40, texts=0, dim=8, shards=1)
    first = RemoteMirror(url, tmp_path / "a")
    first.push()
    model = Store.open(tmp_path / "a").manifest.model
    store = MirroredStore.open_or_create(tmp_path / "a", model)
    store.mirror = first
    with pytest.raises(KeyboardInterrupt):
        with store.transaction("index"):
            add_rows(store, "images", clustered(15, 8, seed=4), shards=3)  # three checkpoints, each pushed
            raise KeyboardInterrupt  # the driver dies here
    store.close()
    assert first.remote_manifest()["next_id"] == 40  # nothing published
    assert first.fs.exists(f"{first.path}/_draft.json")

    elsewhere = RemoteMirror(url, tmp_path / "b").pull()
    resumed = MirroredStore.open_or_create(elsewhere, model)
    assert resumed.manifest.rows("images") == 55  # the 15 checkpointed rows are kept, not embedded again
    resumed.mirror = RemoteMirror(url, tmp_path / "b")
    with resumed.transaction("index"):
        add_rows(resumed, "images", clustered(5, 8, seed=5))
    assert resumed.mirror.remote_manifest()["next_id"] == 60
    assert not resumed.mirror.fs.exists(f"{resumed.mirror.path}/_draft.json")  # spent once published
    resumed.close()
    _same(tmp_path / "b", RemoteMirror(url, tmp_path / "c").pull())
