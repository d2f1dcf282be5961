"""The Ray engine on a 3-node cluster on this machine (head + 2 workers, tests/ray_cluster.py): a clean run,
a worker node killed mid-ingest and mid-index-build, the driver killed mid-run, a reader polling meanwhile,
and an s3:// collection on an S3 emulator. Each compares with the single-machine collection."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from fakes import COLOURS, make_colour_folder, noise_image  # noqa: E402
from ray_cluster import ON_WORKERS, LocalCluster, actor_nodes, make_bucket, register_colour, s3_emulator  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.distributed import index_with_ray  # noqa: E402
from mmsearch.distributed.index_build import PART_DELAY_ENV  # noqa: E402
from mmsearch.store import Store  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
HELPER = str(Path(__file__).parent / "ray_cluster.py")
KW = dict(shard_rows=5, batch_size=2, index_factory="IVF2,Flat")
RAY_KW = dict(task_rows=2, workers=2, num_cpus_per_worker=0.5, resources_per_worker=ON_WORKERS,
              worker_setup=register_colour, index_parts=4)


@pytest.fixture(scope="module")
def s3_env():
    """The S3 emulator's environment (started before the cluster, whose nodes inherit it), or why none."""
    with s3_emulator() as env:
        yield env


@pytest.fixture(scope="module")
def cluster(s3_env):
    """Head (the driver's node, 1 CPU) + 2 worker nodes (1 CPU each), this test process the driver."""
    c = LocalCluster(workers=2)
    env = {**(s3_env if isinstance(s3_env, dict) else {}), PART_DELAY_ENV: "1.5"}  # index parts last 1.5 s
    c.connect(ray, env=env)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def two_workers(cluster):
    """The cluster with 2 live worker nodes, given back so after a test that killed one."""
    cluster.keep_workers(2)
    yield cluster
    cluster.keep_workers(2)


def _corpus(root: Path) -> Path:
    """26 inputs: colour squares with captions in subfolders, exact duplicates, one noise image, one corrupt file."""
    for i, name in enumerate(list(COLOURS) * 3):
        make_colour_folder(root / f"d{i % 3}" / f"n{i}", [name], captions=i % 2 == 0)
    noise_image(root / "noise.png", 1)
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _rows(path: Path) -> dict[str, dict]:
    store = Store.open(path)
    out = {}
    for modality, cols in (("images", ["uri", "sha256", "caption"]), ("texts", ["text", "source", "image_id"])):
        out[modality] = {r["id"]: r for r in store.scan(modality, ["id", *cols, "embedding"]).to_pylist()}
    store.close()
    return out


def _index_lists(path: Path) -> list[list[int]]:
    """The ids of every inverted list of the images index, in order."""
    import faiss

    store = Store.open(path)
    index = faiss.read_index(str(path / store.manifest.indexes["images"].file))
    store.close()
    ivf = faiss.extract_index_ivf(index)
    return [faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).tolist() if ivf.invlists.list_size(i)
            else [] for i in range(ivf.nlist)]


def _assert_same(a: Path, b: Path) -> None:
    """Same rows, ids, embeddings, shards, index lists and search results."""
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
    assert _index_lists(a) == _index_lists(b)
    ca, cb = mmsearch.open(a, model="colour:v1"), mmsearch.open(b, model="colour:v1")
    for query in ("red", "a blue square", "yellow"):
        assert [(h.id, round(h.score, 4)) for h in ca.search(query, k=6)] == \
               [(h.id, round(h.score, 4)) for h in cb.search(query, k=6)]
    ca.close()
    cb.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(the corpus, its single-machine collection): what every cluster run must equal."""
    root = tmp_path_factory.mktemp("reference")
    src = _corpus(root / "src")
    single = mmsearch.index(src, out=root / "single.mms", model="colour:v1", workers=0, **KW)
    return src, single.path


def test_clean_run_spreads_over_the_worker_nodes(two_workers: LocalCluster, reference, tmp_path: Path) -> None:
    src, single = reference
    seen: dict[str, str] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "images" and not seen:
            seen.update(actor_nodes(ray))

    dist = index_with_ray(src, out=tmp_path / "ray.mms", model="colour:v1", progress=progress, **KW, **RAY_KW)
    names = [two_workers.name_of(n) for n in seen.values()]
    assert len(names) == 2 and None not in names and len(set(names)) == 2, names  # one actor per worker node (SPREAD)
    assert dist.report.images_embedded == 25 and dist.report.cluster.tasks_lost == 0
    assert dist.indexes["images"].factory == "IVF2,Flat"
    _assert_same(single, dist.path)


def test_worker_node_killed_mid_ingest(two_workers: LocalCluster, reference, tmp_path: Path, caplog) -> None:
    """A worker node SIGKILLed while its actor holds tasks: only those tasks are lost; they run again on the
    actor Ray restarts on the surviving node, and the collection equals the clean run's."""
    src, single = reference
    killed: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "images" and not killed:
            nodes = actor_nodes(ray)
            name = next(two_workers.name_of(n) for n in nodes.values() if two_workers.name_of(n))
            killed.append(two_workers.node_id(name))
            two_workers.remove_worker(name)

    with caplog.at_level(logging.WARNING, logger="mmsearch.distributed"):
        dist = index_with_ray(src, out=tmp_path / "ray.mms", model="colour:v1", progress=progress, **KW, **RAY_KW)
    events = dist.report.cluster
    assert killed and events.nodes_lost == killed
    assert events.tasks_retried >= 1 and events.tasks_lost == events.tasks_retried
    assert any(e["task"].startswith("image task") and e["node_lost"] for e in events.events)
    assert "lost image task" in caplog.text and "retrying" in caplog.text and killed[0][:12] in caplog.text
    assert dist.report.to_dict()["cluster"]["nodes_lost"] == killed
    assert dist.report.images_embedded == 25
    _assert_same(single, dist.path)


def test_worker_node_killed_mid_index_build(two_workers: LocalCluster, reference, tmp_path: Path, caplog) -> None:
    """A worker node SIGKILLed while the index part tasks run: its parts run again on the other node and
    the merged index has the same inverted lists as the single-machine build."""
    src, single = reference
    killed: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "index" and done == 0 and not killed:  # the images index's parts were just submitted
            busy = _busy_worker_node(two_workers)
            killed.append(two_workers.node_id(busy))
            two_workers.remove_worker(busy)

    with caplog.at_level(logging.WARNING, logger="mmsearch.distributed"):
        dist = index_with_ray(src, out=tmp_path / "ray.mms", model="colour:v1", progress=progress, **KW, **RAY_KW)
    events = dist.report.cluster
    assert killed and events.nodes_lost == killed
    assert any("index part" in e["task"] for e in events.events), events.events
    assert "lost images index part" in caplog.text
    _assert_same(single, dist.path)


def _busy_worker_node(cluster: LocalCluster, timeout_s: float = 60) -> str:
    """A worker node one of whose processes is running an index part now (it sleeps PART_DELAY_ENV seconds first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name in sorted(cluster.workers, reverse=True):
            if cluster.running(name, "ray::add_part"):
                return name
        time.sleep(0.05)
    raise AssertionError("no index part started on a worker node")


def test_killed_driver_resumes_from_its_last_checkpoint(two_workers: LocalCluster, reference, tmp_path: Path) -> None:
    """The driver SIGKILLed mid-run: the collection stays at its published version, and a re-run takes the
    checkpointed shards as they are (embedding only the rest) and ends equal to the clean run."""
    src, single = reference
    out, marker = tmp_path / "ray.mms", tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(HELPER).parent), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, HELPER, "drive", two_workers.address, str(src), str(out),
                               "--stall-after", "14", "--marker", str(marker), "--factory", KW["index_factory"]],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert driver.poll() is None, driver.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the driver never reached 14 images"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)  # the driver process this test started
        driver.wait(timeout=30)
    draft = json.loads((out / "_draft.json").read_text())
    committed = sum(s["rows"] for s in draft["shards"]["images"])
    assert committed >= 10  # two shards of 5 were checkpointed before the driver stalled at 14 images
    assert Store.open(out).manifest.live_rows("images") == 0  # readers still see the version before the run

    rerun = index_with_ray(src, out=out, model="colour:v1", **KW, **RAY_KW)
    assert rerun.report.images_embedded == 25 - committed  # the checkpointed rows were not embedded again
    _assert_same(single, rerun.path)


def test_reader_sees_only_whole_versions_during_a_cluster_run(two_workers: LocalCluster, reference,
                                                              tmp_path: Path) -> None:
    """A reader process opening + searching in a loop while the driver writes: never an error, versions only
    go up, each version always shows the same rows, and it ends on the last one published."""
    src, single = reference
    out, log, stop = tmp_path / "ray.mms", tmp_path / "reader.jsonl", tmp_path / "stop"
    mmsearch.index(src / "d0", out=out, model="colour:v1", workers=0, **KW)  # a collection to read before the cluster run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(HELPER).parent), os.environ.get("PYTHONPATH", "")])}
    reader = subprocess.Popen([sys.executable, HELPER, "read", str(out), str(log), str(stop)], env=env,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not log.exists() or not log.read_text().strip():
            assert reader.poll() is None, reader.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        index_with_ray(src, out=out, model="colour:v1", **KW, **RAY_KW)
        final = Store.open(out).version
        deadline = time.monotonic() + 30
        while f'"version": {final},' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.write_text("")
        reader.wait(timeout=30)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    errors = [x for x in lines if "error" in x]
    assert not errors, errors[:3]
    versions = [x["version"] for x in lines]
    assert versions == sorted(versions) and versions[-1] == final
    rows_of: dict[int, set[int]] = {}
    for x in lines:
        rows_of.setdefault(x["version"], set()).add(x["rows"])
    assert all(len(r) == 1 for r in rows_of.values()), rows_of  # a version never changes under a reader
    assert rows_of[final] == {len(mmsearch.open(single, model="colour:v1"))}


def test_cluster_run_writes_an_s3_collection(two_workers: LocalCluster, s3_env, reference, tmp_path: Path) -> None:
    """s3:// on the S3 emulator: the driver pushes the checkpoints and publishes the version (a conditional
    write), the index tasks on the worker nodes read the shards from the bucket, a fresh pull equals the clean run."""
    if isinstance(s3_env, str):
        pytest.skip(s3_env)
    from mmsearch.store.remote import RemoteMirror

    src, single = reference
    make_bucket(s3_env, "mms-cluster")
    url = "s3://mms-cluster/photos.mms"
    dist = index_with_ray(src, out=url, model="colour:v1", staging=tmp_path / "stage", **KW, **RAY_KW)
    assert dist.report.images_embedded == 25
    mirror = RemoteMirror(url, tmp_path / "pulled")
    assert mirror.conditional_writes()
    assert mirror.remote_manifest()["version"] == Store.open(dist.path).version
    _assert_same(single, mirror.pull())
