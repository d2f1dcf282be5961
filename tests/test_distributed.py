"""The Ray engine against the single-machine path, on a local Ray instance (skipped without ray)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from fakes import COLOURS, ColourEncoder, make_colour_folder, noise_image  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.distributed import index_with_ray  # noqa: E402
from mmsearch.encoders import register_scheme  # noqa: E402
from mmsearch.store import Store  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
TESTS = str(Path(__file__).parent)


def register_colour() -> None:
    """Run in every Ray actor: the colour encoder is a test fake, registered per process."""
    register_scheme("colour", lambda spec, device: ColourEncoder(str(spec)))


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module; actors import this module and fakes from tests/."""
    path = os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,  # never another test run's
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _corpus(root: Path) -> Path:
    """Colour squares with captions, in a subfolder too; exact duplicates; a corrupt file."""
    names = list(COLOURS) * 3  # 24 images, 8 distinct contents
    for i, name in enumerate(names):
        folder = root / f"d{i % 3}"
        make_colour_folder(folder / f"n{i}", [name], captions=i % 2 == 0)
    noise_image(root / "noise.png", 1)
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _rows(path: Path) -> dict[str, dict]:
    store = Store.open(path)
    out = {}
    for modality, cols in (("images", ["uri", "sha256", "caption", "width"]), ("texts", ["text", "source", "image_id"])):
        table = store.scan(modality, ["id", *cols, "embedding"])
        out[modality] = {r["id"]: {k: v for k, v in r.items()} for r in table.to_pylist()}
    return out


def _assert_same(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    for modality in ("images", "texts"):
        assert ra[modality].keys() == rb[modality].keys(), modality
        for i, row in ra[modality].items():
            other = rb[modality][i]
            assert {k: v for k, v in row.items() if k != "embedding"} == {k: v for k, v in other.items() if k != "embedding"}
            np.testing.assert_allclose(np.asarray(row["embedding"], np.float32),
                                       np.asarray(other["embedding"], np.float32), atol=1e-3)
    ma, mb = Store.open(a).manifest, Store.open(b).manifest
    assert [s.rows for s in ma.shards["images"]] == [s.rows for s in mb.shards["images"]]
    assert ma.next_id == mb.next_id


@pytest.mark.parametrize("pipeline", ["actors", "data"])
def test_ray_engine_equals_single_machine(tmp_path: Path, colour_model: str, pipeline: str) -> None:
    """Both pipelines (actors that decode + encode; Ray Data CPU decode tasks feeding an encoder actor pool)
    give the single-machine collection: same rows, ids, embeddings, search results and quarantine."""
    src = _corpus(tmp_path / "src")
    single = mmsearch.index(src, out=tmp_path / "single.mms", model=colour_model, shard_rows=5, batch_size=4,
                            workers=0, index_factory="Flat")
    extra = {"num_cpus_per_worker": 0.5} if pipeline == "data" else {}
    dist = index_with_ray(src, out=tmp_path / "ray.mms", model=colour_model, shard_rows=5, batch_size=4,
                          task_rows=3, workers=2, index_factory="Flat", worker_setup=register_colour,
                          pipeline=pipeline, **extra)
    assert dist.report.images_embedded == single.report.images_embedded == 25
    assert dist.report.rejected == single.report.rejected == 1
    assert dist.report.images_deduplicated == single.report.images_deduplicated
    assert dist.report.texts_embedded == single.report.texts_embedded
    _assert_same(single.path, dist.path)
    a, b = mmsearch.open(single.path, model=colour_model), mmsearch.open(dist.path, model=colour_model)
    for query in ("red", "a blue square", "yellow"):
        ha, hb = a.search(query, k=6), b.search(query, k=6)
        assert [(h.id, round(h.score, 4)) for h in ha] == [(h.id, round(h.score, 4)) for h in hb]
    assert (dist.path / "quarantine.jsonl").read_text().count("broken.png") == 1


def test_killed_worker_still_gives_the_complete_collection(tmp_path: Path, colour_model: str) -> None:
    src = _corpus(tmp_path / "src")
    killed: list[int] = []

    def kill_one_worker(stage: str, done: int, total: int) -> None:
        if stage == "images" and not killed:
            names = [n for n in ray.util.list_named_actors() if n.startswith("mmsearch-embed-")]
            pid = ray.get(ray.get_actor(sorted(names)[0]).pid.remote())
            os.kill(pid, signal.SIGKILL)  # a process this test's Ray instance started
            killed.append(pid)

    single = mmsearch.index(src, out=tmp_path / "single.mms", model=colour_model, shard_rows=5, batch_size=2, workers=0)
    dist = index_with_ray(src, out=tmp_path / "ray.mms", model=colour_model, shard_rows=5, batch_size=2, task_rows=2,
                          workers=2, worker_setup=register_colour, progress=kill_one_worker)
    assert killed
    assert dist.report.images_embedded == 25
    _assert_same(single.path, dist.path)
    uris = [r["uri"] for r in Store.open(dist.path).scan("images", ["uri"]).to_pylist()]
    assert len(uris) == len(set(uris)) == 25


def test_single_machine_path_does_not_import_ray() -> None:
    import subprocess

    code = "import sys, mmsearch, mmsearch.api, mmsearch.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_missing_ray_says_which_extra_to_install(tmp_path: Path) -> None:
    import subprocess

    code = ("import sys; sys.modules['ray'] = None\n"
            "from mmsearch.distributed import index_with_ray\n"
            "from mmsearch.errors import MissingExtraError\n"
            "try:\n    index_with_ray(sys.argv[1])\n"
            "except MissingExtraError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "mmsearch[ray]" in out


# -- the distributed index build ---------------------------------------------------------------------


def _twin_stores(tmp_path: Path, *, deleted: int = 0) -> tuple[Store, Store, np.ndarray]:
    """Two identical float32 collections (5 image shards, some rows deleted) and text queries."""
    import shutil

    from synthetic_vectors import make_store

    store, ids, _, texts = make_store(tmp_path / "a.mms", images=3000, texts=300, dim=32, shards=5)
    if deleted:
        store.mark_deleted("images", ids[::3][:deleted].tolist())
        store.commit()
    shutil.copytree(tmp_path / "a.mms", tmp_path / "b.mms")
    return Store.open(tmp_path / "a.mms"), Store.open(tmp_path / "b.mms"), texts


def _inverted_lists(index) -> list[list[int]]:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    out = []
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        out.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n).tolist() if n else [])
    return out


@pytest.mark.parametrize("factory", ["IVF32,Flat", "PCA32,IVF16,SQ8"])
def test_distributed_ivf_build_equals_single_machine(tmp_path: Path, factory: str) -> None:
    import faiss

    from mmsearch.distributed.index_build import build_index_distributed
    from mmsearch.indexes import IndexOptions, build_index, load_index

    one, two, queries = _twin_stores(tmp_path, deleted=100)
    opts = IndexOptions(factory=factory)
    single = build_index(one, "images", opts)
    dist = build_index_distributed(two, "images", opts, ray=ray, parts=3)
    assert dist is not None and dist.factory == single.factory == factory
    assert dist.rows == single.rows == 2900 and dist.trained_rows == single.trained_rows
    assert dist.removes_ids == single.removes_ids and dist.update == "built"
    a, b = load_index(Store.open(one.root), "images"), load_index(Store.open(two.root), "images")
    ivf_a, ivf_b = faiss.extract_index_ivf(a._index), faiss.extract_index_ivf(b._index)
    # the same trained quantizer, and every inverted list holds the same ids in the same order
    np.testing.assert_array_equal(ivf_a.quantizer.reconstruct_n(0, ivf_a.nlist), ivf_b.quantizer.reconstruct_n(0, ivf_b.nlist))
    assert _inverted_lists(a._index) == _inverted_lists(b._index)
    for nprobe in (1, 4, 16):
        da, ia = a.search(queries, 10, params={"nprobe": nprobe})
        db, ib = b.search(queries, 10, params={"nprobe": nprobe})
        np.testing.assert_array_equal(ia, ib)
        # a pre-transform runs its matrix product in another process: an SQ8 code may round one step apart
        np.testing.assert_allclose(da, db, atol=1e-6 if factory.startswith("IVF") else 5e-3)
    assert dist.params == single.params and dist.recall == single.recall  # tuned the same way
    # the manifest entry is the single-machine one, and the collection opens and searches
    assert Store.open(two.root).manifest.indexes["images"].fingerprint == single.fingerprint
    hits = mmsearch.open(two.root).search(vector=queries[0], k=5)
    assert [h.id for h in hits] == [h.id for h in mmsearch.open(one.root).search(vector=queries[0], k=5)]
    # a later update (new shard) works on the merged index like on a single-machine one
    from synthetic_vectors import add_rows, clustered

    for store in (Store.open(one.root), Store.open(two.root)):
        add_rows(store, "images", clustered(50, 32, seed=9))
    from mmsearch.indexes import update_index

    ua, ub = update_index(Store.open(one.root), "images", opts), update_index(Store.open(two.root), "images", opts)
    assert ua.update == ub.update and ua.update.startswith("updated: +50") and ua.rows == ub.rows == 2950


def test_distributed_build_merges_on_disk_past_the_memory_budget(tmp_path: Path) -> None:
    from mmsearch.distributed.index_build import build_index_distributed
    from mmsearch.indexes import IndexOptions, build_index, load_index

    one, two, queries = _twin_stores(tmp_path)
    opts = IndexOptions(factory="IVF32,Flat")
    single = build_index(one, "images", opts)
    dist = build_index_distributed(two, "images", opts, ray=ray, parts=2, merge_memory_bytes=1)
    assert dist is not None and dist.rows == single.rows == 3000
    assert dist.data_files == [f"index/images.v{two.version:08d}.ivfdata"]  # named for its version, like the index
    assert (two.root / dist.data_files[0]).is_file() and not (two.root / "index" / ".parts-images").exists()
    a, b = load_index(Store.open(one.root), "images"), load_index(Store.open(two.root), "images")
    assert _inverted_lists(a._index) == _inverted_lists(b._index)
    np.testing.assert_array_equal(a.search(queries, 10, params={"nprobe": 8})[1], b.search(queries, 10, params={"nprobe": 8})[1])


def test_flat_and_hnsw_are_left_to_the_driver(tmp_path: Path) -> None:
    from mmsearch.distributed.index_build import build_index_distributed, is_mergeable, plan_parts
    from mmsearch.indexes import IndexOptions
    from mmsearch.indexes.build import new_index

    _, two, _ = _twin_stores(tmp_path)
    for factory in ("Flat", "HNSW16", "IVF16,PQ8x8,Refine(SQ8)"):
        assert not is_mergeable(new_index(factory, 32))
        assert build_index_distributed(two, "images", IndexOptions(factory=factory), ray=ray, parts=2) is None
    shards = two.manifest.shards["images"]
    groups = plan_parts(shards, 3)
    assert [s for g in groups for s in g] == shards and len(groups) == 3
    assert plan_parts(shards, 10) == [[s] for s in shards]


@pytest.mark.parametrize("factory", ["IVF32,Flat", "HNSW16"])
def test_sharded_index_parts_are_built_by_tasks_like_on_one_machine(tmp_path: Path, factory: str) -> None:
    """--index-shards: the task parts are kept (not merged), any index kind, and equal the single-machine parts."""
    from mmsearch.distributed.index_build import build_index_distributed
    from mmsearch.indexes import IndexOptions, build_index, load_index
    from mmsearch.indexes.structure import unwrap_ids

    one, two, queries = _twin_stores(tmp_path, deleted=100)
    opts = IndexOptions(factory=factory, index_shards=3)
    single = build_index(one, "images", opts)
    dist = build_index_distributed(two, "images", opts, ray=ray, parts=99)  # the shards asked for, not ``parts``
    assert dist is not None and dist.part_files == single.part_files and len(dist.part_files) == 3
    assert dist.rows == single.rows == 2900 and not (two.root / "index" / "images.faiss").exists()
    a, b = load_index(Store.open(one.root), "images"), load_index(Store.open(two.root), "images")
    for pa, pb in zip(a.parts, b.parts):
        if factory.startswith("IVF"):
            assert _inverted_lists(pa._index) == _inverted_lists(pb._index)
        else:  # each part holds the same ids (an HNSW graph itself depends on the order threads insert)
            assert sorted(unwrap_ids(pa._index)[1]) == sorted(unwrap_ids(pb._index)[1])
    if factory.startswith("IVF"):
        assert dist.params == single.params
        np.testing.assert_array_equal(a.search(queries, 10)[1], b.search(queries, 10)[1])
    assert dist.target_met and single.target_met
    hits = mmsearch.open(two.root).search(vector=queries[0], k=5)
    deleted = set(Store.open(two.root).manifest.deleted["images"])
    assert len(hits) == 5 and not deleted & {h.id for h in hits}  # deleted rows never come back


def test_ray_engine_builds_its_ivf_index_with_tasks(tmp_path: Path, colour_model: str) -> None:
    src = _corpus(tmp_path / "src")
    kw = dict(model=colour_model, shard_rows=5, batch_size=4, index_factory="IVF2,Flat")
    single = mmsearch.index(src, out=tmp_path / "single.mms", workers=0, **kw)
    dist = index_with_ray(src, out=tmp_path / "ray.mms", workers=2, worker_setup=register_colour, **kw)
    assert dist.indexes["images"].factory == single.indexes["images"].factory == "IVF2,Flat"
    assert dist.indexes["images"].rows == single.indexes["images"].rows == 25
    a, b = mmsearch.open(single.path, model=colour_model), mmsearch.open(dist.path, model=colour_model)
    for query in ("red", "a blue square"):
        ha, hb = a.search(query, k=6), b.search(query, k=6)
        assert [(h.id, round(h.score, 4)) for h in ha] == [(h.id, round(h.score, 4)) for h in hb]


def test_ray_engine_keeps_a_sharded_index(tmp_path: Path, colour_model: str) -> None:
    src = _corpus(tmp_path / "src")
    kw = dict(model=colour_model, shard_rows=5, batch_size=4, index_factory="IVF2,Flat", index_shards=2)
    single = mmsearch.index(src, out=tmp_path / "single.mms", workers=0, **kw)
    dist = index_with_ray(src, out=tmp_path / "ray.mms", workers=2, worker_setup=register_colour, **kw)
    assert len(dist.indexes["images"].part_files) == len(single.indexes["images"].part_files) == 2
    a, b = mmsearch.open(single.path, model=colour_model), mmsearch.open(dist.path, model=colour_model)
    for query in ("red", "a blue square"):
        ha, hb = a.search(query, k=6), b.search(query, k=6)
        assert [(h.id, round(h.score, 4)) for h in ha] == [(h.id, round(h.score, 4)) for h in hb]


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_ray_engine_writes_to_an_fsspec_url(tmp_path: Path, colour_model: str, scheme: str) -> None:
    import uuid

    from mmsearch.store.remote import RemoteMirror

    src = _corpus(tmp_path / "src")
    url = f"file://{tmp_path}/remote.mms" if scheme == "file" else f"memory://mms-ray-{uuid.uuid4().hex}/c.mms"
    kw = dict(model=colour_model, shard_rows=5, batch_size=4, index_factory="IVF2,Flat")
    single = mmsearch.index(src, out=tmp_path / "single.mms", workers=0, **kw)
    dist = index_with_ray(src, out=url, staging=tmp_path / "stage", workers=2, worker_setup=register_colour, **kw)
    assert dist.path == tmp_path / "stage" and dist.report.images_embedded == 25
    copy = RemoteMirror(url, tmp_path / "pulled").pull()  # what a reader of the URL gets
    _assert_same(single.path, copy)
    a, b = mmsearch.open(single.path, model=colour_model), mmsearch.open(copy, model=colour_model)
    assert [h.id for h in a.search("red", k=5)] == [h.id for h in b.search("red", k=5)]
    if scheme == "memory":
        return  # the resume path below is the same for every scheme: checked once, with file://
    # a driver restarted elsewhere (no staging left) resumes from the URL and embeds nothing again
    again = index_with_ray(src, out=url, staging=tmp_path / "stage2", workers=1, worker_setup=register_colour, **kw)
    assert again.report.images_embedded == 0 and again.report.skipped_unchanged == 25
    make_colour_folder(src / "late", ["magenta"])
    more = index_with_ray(src, out=url, staging=tmp_path / "stage2", workers=1, worker_setup=register_colour, **kw)
    assert more.report.images_embedded == 1
    assert Store.open(RemoteMirror(url, tmp_path / "pulled").pull()).manifest.live_rows("images") == 26


def _encoder_actor_pids() -> list[int]:
    """Processes of this test's Ray instance running the Ray Data encoder actors (named by their process title)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "EncodeBatch" in cmdline and "ray::" in cmdline:
                pids.append(int(entry.name))
    return sorted(pids)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the actor process through /proc")
def test_ray_data_pipeline_survives_a_killed_encoder_actor(tmp_path: Path, colour_model: str) -> None:
    src = _corpus(tmp_path / "src")
    killed: list[int] = []

    def kill_one_encoder(stage: str, done: int, total: int) -> None:
        if stage == "images" and not killed:
            pids = _encoder_actor_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)  # an actor process this test's Ray instance started
                killed.append(pids[0])

    single = mmsearch.index(src, out=tmp_path / "single.mms", model=colour_model, shard_rows=5, batch_size=2, workers=0)
    dist = index_with_ray(src, out=tmp_path / "data.mms", model=colour_model, shard_rows=5, batch_size=2, task_rows=2,
                          workers=2, num_cpus_per_worker=0.5, pipeline="data", worker_setup=register_colour,
                          progress=kill_one_encoder)
    assert killed
    assert dist.report.images_embedded == 25
    _assert_same(single.path, dist.path)
