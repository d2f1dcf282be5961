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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
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


def test_ray_engine_equals_single_machine(tmp_path: Path, colour_model: str) -> None:
    src = _corpus(tmp_path / "src")
    single = mmsearch.index(src, out=tmp_path / "single.mms", model=colour_model, shard_rows=5, batch_size=4,
                            workers=0, index_factory="Flat")
    dist = index_with_ray(src, out=tmp_path / "ray.mms", model=colour_model, shard_rows=5, batch_size=4,
                          task_rows=3, workers=2, index_factory="Flat", worker_setup=register_colour)
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

    # a re-run (a restarted driver) embeds nothing; a new file is embedded like on one machine
    again = index_with_ray(src, out=tmp_path / "ray.mms", model=colour_model, shard_rows=5, worker_setup=register_colour)
    assert again.report.images_embedded == 0 and again.report.skipped_unchanged == 25
    make_colour_folder(src / "late", ["magenta"])
    single2 = mmsearch.index(src, out=tmp_path / "single.mms", model=colour_model, shard_rows=5, batch_size=4, workers=0)
    dist2 = index_with_ray(src, out=tmp_path / "ray.mms", model=colour_model, shard_rows=5, batch_size=4,
                           worker_setup=register_colour)
    assert dist2.report.images_embedded == single2.report.images_embedded == 1
    _assert_same(single2.path, dist2.path)


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
