"""End to end with the tiny random OpenCLIP model: index a generated folder, query all four ways,
re-run incrementally, survive a kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import ColourEncoder, make_colour_folder, noise_image

import mmsearch
from mmsearch.encoders import register_scheme


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(6):
        p = noise_image(root / ("sub" if i % 2 else "") / f"img{i}.{'jpg' if i % 3 else 'png'}", seed=i)
        p.with_suffix(".txt").write_text(f"caption number {i} about thing {i * 7}")
    shutil.copy(root / "img0.png", root / "copy_of_img0.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


def test_tiny_model_all_four_directions(folder: Path, tiny_model: str) -> None:
    result = mmsearch.index(folder, model=tiny_model, batch_size=3)
    assert result.path == folder.parent / "photos.mms"
    assert result.report.images_embedded == 7 and result.report.texts_embedded == 6
    assert result.report.rejected == 1
    col = mmsearch.open(result.path)

    # image -> image: the exact copy comes back with score ~1 (float16 storage)
    hits = col.search(image=folder / "img0.png", k=2)
    assert {Path(h.uri).name for h in hits} == {"img0.png", "copy_of_img0.png"}
    assert all(h.score == pytest.approx(1.0, abs=2e-3) for h in hits)
    # text -> text: a caption finds itself first
    for i in range(6):
        top = col.search(f"caption number {i} about thing {i * 7}", modality="text", k=1)[0]
        assert top.text == f"caption number {i} about thing {i * 7}" and top.score == pytest.approx(1.0, abs=2e-3)
        assert top.metadata["image_id"] is not None
    # text -> image and image -> text run and return ranked, well-formed hits
    t2i = col.search("caption number 3 about thing 21", k=7)
    i2t = col.search(image=folder / "sub" / "img1.jpg", modality="text", k=6)
    for hits in (t2i, i2t):
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True) and all(-1.001 <= s <= 1.001 for s in scores)
    assert len(t2i) == 7 and len(i2t) == 6
    # the caption of an image is linked to it: image id -> caption text
    img1 = next(h for h in col.search(image=folder / "sub" / "img1.jpg", k=7) if h.uri.endswith("img1.jpg"))
    assert img1.caption == "caption number 1 about thing 7"
    linked = [h for h in col.search(id=img1.id, modality="text", k=6) if h.metadata["image_id"] == img1.id]
    assert [h.text for h in linked] == ["caption number 1 about thing 7"]


def test_rerun_embeds_nothing_then_follows_changes(folder: Path, tiny_model: str) -> None:
    first = mmsearch.index(folder, model=tiny_model)
    again = mmsearch.index(folder)  # model taken from the collection
    assert again.report.images_embedded == 0 and again.report.texts_embedded == 0
    assert again.report.skipped_unchanged == 7 and again.report.skipped_quarantined == 1
    assert again.indexes == {}  # nothing changed, nothing rebuilt

    noise_image(folder / "img2.jpg", seed=99)  # changed content
    os.utime(folder / "img2.jpg", (1, 1))
    (folder / "img4.jpg").unlink()  # removed (its caption sidecar stays, orphaned)
    noise_image(folder / "new.png", seed=100)  # added, no caption
    third = mmsearch.index(folder)
    assert third.report.images_embedded == 2 and third.report.deleted == 1 and third.report.replaced == 1
    col = mmsearch.open(first.path)
    uris = sorted(Path(h.uri).name for h in col.search(image=folder / "new.png", k=50))
    assert uris == sorted(["img0.png", "copy_of_img0.png", "img1.jpg", "img2.jpg", "img3.png", "img5.jpg", "new.png"])
    # the replaced image's old caption row is gone; the new one is there once
    texts = [h.text for h in col.search("caption", modality="text", k=50)]
    assert texts.count("caption number 2 about thing 14") == 1
    assert "caption number 4 about thing 28" not in texts


def test_different_model_on_existing_collection_is_refused(folder: Path, tiny_model: str, colour_model: str) -> None:
    mmsearch.index(folder, model=tiny_model)
    with pytest.raises(mmsearch.EncoderMismatchError):
        mmsearch.index(folder, model=colour_model)


class _SlowColour(ColourEncoder):
    def encode_images(self, batch):  # slow enough to be killed mid-run
        time.sleep(0.15)
        return super().encode_images(batch)


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_end_to_end import _SlowColour
from mmsearch.encoders import register_scheme
register_scheme("slowcolour", lambda spec, device: _SlowColour(str(spec)))
import mmsearch
mmsearch.index({folder!r}, out={out!r}, model="slowcolour:v1", batch_size=2, shard_rows=2, workers=0)
"""


def test_kill_9_then_rerun_loses_nothing_and_duplicates_nothing(tmp_path) -> None:
    names = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"]
    folder = make_colour_folder(tmp_path / "imgs", names)
    for i in range(8):  # more images: copies under other names
        shutil.copy(next(folder.rglob(f"{names[i]}.png")), folder / f"extra{i}.png")
    out = tmp_path / "c.mms"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(folder), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 60
    draft = out / "_draft.json"  # the run's checkpoints; readers see none of it until the run publishes
    while time.time() < deadline:
        try:
            if len(json.loads(draft.read_text())["shards"]["images"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = len(json.loads(draft.read_text())["shards"]["images"])
    assert 2 <= committed < 8, "the run should have been killed part-way"
    assert mmsearch.open(out).info()["images"] == 0  # a reader sees the last published version, not half a run

    register_scheme("slowcolour", lambda spec, device: _SlowColour(str(spec)))
    result = mmsearch.index(folder, out=out, model="slowcolour:v1", batch_size=4, workers=0)
    assert result.report.skipped_unchanged >= 4
    col = mmsearch.open(out)
    uris = [h.uri for h in col.search("red", k=100)]
    assert len(uris) == 16 and len(set(uris)) == 16
    assert col.info()["texts"] == 8
    captions = [h.text for h in col.search("red", modality="text", k=100)]
    assert sorted(captions) == sorted(f"a {n} square" for n in names)
    np.testing.assert_allclose(col.search("a black square", k=1)[0].score, 1.0, atol=1e-3)
