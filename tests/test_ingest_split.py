"""Cores used where the time goes (issue 16): in-process decoding overlapped with an encoder thread, and the uint8
cut of OpenCLIP's torch-free transform (decode workers ship a quarter of the bytes, the same floats)."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import ColourEncoder, noise_image
from PIL import Image

import mmsearch
import mmsearch.ingest.stage as stage
from mmsearch.encoders import register_scheme
from mmsearch.encoders.openclip_onnx import ClipImageTransform, probe_images
from mmsearch.ingest.transfer import split_transform

register_scheme("splitcolour", lambda spec, device: ColourEncoder(str(spec)))
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# -- the encoder thread -----------------------------------------------------------------------------------
def test_overlapped_runs_embed_in_one_other_thread_in_order() -> None:
    threads: set[str] = set()

    def embed(batch: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        return [x * 10 for x in batch]

    batches = iter([[1, 2], [3], [4, 5, 6], [7]])
    out = list(stage.overlapped(batches, embed))  # type: ignore[arg-type]
    assert out == [[10, 20], [30], [40, 50, 60], [70]]
    assert len(threads) == 1 and threading.current_thread().name not in threads


def test_overlapped_raises_the_encoder_error_here_and_drops_what_was_not_started() -> None:
    started: list[int] = []

    def embed(batch: list[int]) -> list[int]:
        started.append(batch[0])
        if batch[0] == 2:
            raise RuntimeError("encoder failed on batch 2")
        return batch

    stream = stage.overlapped(iter([[n] for n in range(1, 50)]), embed)  # type: ignore[arg-type]
    assert next(stream) == [1]
    with pytest.raises(RuntimeError, match="batch 2"):
        list(stream)
    assert max(started) <= 3  # at most the batch queued behind the failing one was started, never the rest


def test_a_consumer_that_stops_early_stops_the_encoder() -> None:
    started: list[int] = []

    def embed(batch: list[int]) -> list[int]:
        started.append(batch[0])
        return batch

    stream = stage.overlapped(iter([[n] for n in range(100)]), embed)  # type: ignore[arg-type]
    assert next(stream) == [0]
    stream.close()
    assert len(started) <= 3


@pytest.mark.parametrize("dedup", [True, False])
def test_in_process_overlap_embeds_exactly_as_one_after_the_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   dedup: bool) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in range(23):
        noise_image(folder / f"n{n:02d}.png", seed=n % 9, size=(30 + n % 9, 24))  # 9 contents
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    results = {}
    for overlap in (False, True):
        monkeypatch.setattr(stage, "OVERLAP_ENCODE", overlap)
        r = mmsearch.index(folder, out=tmp_path / f"{overlap}.mms", model="splitcolour:v1", batch_size=4,
                           workers=0, dedup=dedup)
        results[overlap] = r.report
    assert results[True].images_embedded == results[False].images_embedded == 23
    assert results[True].images_deduplicated == results[False].images_deduplicated == (14 if dedup else 0)
    assert dict(results[True].rejected_reasons) == dict(results[False].rejected_reasons)
    from mmsearch.store import Store

    stores = [Store.open(tmp_path / f"{overlap}.mms") for overlap in (False, True)]
    tables = [s.scan("images", ["id", "uri", "sha256"]).to_pydict() for s in stores]
    assert tables[0] == tables[1]
    vectors = [s.embeddings_by_id("images", tables[0]["id"]) for s in stores]
    assert all(np.array_equal(vectors[0][i], vectors[1][i]) for i in tables[0]["id"])


# -- OpenCLIP's uint8 cut ----------------------------------------------------------------------------------
def test_the_clip_transform_cuts_at_uint8_and_finishes_to_the_same_floats() -> None:
    transform = ClipImageTransform(224, OPENAI_MEAN, OPENAI_STD, "clip-224")
    split = split_transform(transform, numpy=True)
    assert split is not None  # verified on transfer's own probe image, bit for bit
    head = pickle.loads(pickle.dumps(split.head))  # the workers get it pickled
    rng = np.random.default_rng(3)
    images = [*probe_images(), Image.fromarray(rng.integers(0, 256, (900, 1300, 4), dtype=np.uint8), "RGBA")]
    pixels = [head(img.convert("RGB")) for img in images]
    assert all(p.dtype == np.uint8 and p.shape == (3, 224, 224) for p in pixels)
    batch = split.finish(np.stack(pixels))
    whole = np.stack([transform(img.convert("RGB")) for img in images])
    assert batch.dtype == whole.dtype == np.float32
    assert np.array_equal(batch, whole)


# -- decoding: transparency onto white in one pass ---------------------------------------------------------
@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBa", "La", "PA"])
def test_transparency_goes_onto_white_exactly_as_alpha_compositing(mode: str) -> None:
    from mmsearch.ingest.decode import to_rgb

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (256, 300, 4), dtype=np.uint8)
    pixels[:, :256, 3] = np.arange(256, dtype=np.uint8)[:, None]  # every alpha value, against many colours
    rgba = Image.fromarray(pixels, "RGBA")
    if mode == "La":
        image = rgba.convert("LA").convert("La")
    elif mode == "PA":  # a palette image with an alpha band
        image = rgba.convert("RGB").convert("P").convert("PA")
        image.putalpha(rgba.getchannel("A"))
    else:
        image = rgba.convert(mode)
    assert image.mode == mode
    straight = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
    reference = Image.new("RGBA", image.size, (255, 255, 255, 255))
    reference.alpha_composite(straight)  # what to_rgb did before issue 16
    expected = np.asarray(reference.convert("RGB"))
    got = to_rgb(image)
    assert got.mode == "RGB"
    assert np.array_equal(np.asarray(got), expected)
    # and against the arithmetic itself: c * a + 255 * (1 - a), rounded
    a = np.asarray(straight)[..., 3:].astype(np.float64) / 255
    exact = np.round(np.asarray(straight)[..., :3] * a + 255 * (1 - a))
    assert np.abs(np.asarray(got) - exact).max() <= 1


@pytest.mark.parametrize("chosen", [0, 2])
def test_the_automatic_split_switches_to_workers_after_the_probe_without_losing_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chosen: int) -> None:
    """Whatever the first batches' costs choose, the rest is decoded (here, or by that many processes) and every
    file gets the row and the vector it gets with ``workers=0``."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in range(29):
        noise_image(folder / f"n{n:02d}.png", seed=n % 11, size=(30 + n % 11, 24))
    (folder / "n05x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a reject inside the probe
    (folder / "n25x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # and one after it
    choices: list[int] = []

    def choose(batcher: object, decode_times: list[float], ipc_s: float) -> int:
        choices.append(len(decode_times))
        return chosen

    monkeypatch.setattr(stage, "choose_workers", choose)
    auto = mmsearch.index(folder, out=tmp_path / "auto.mms", model="splitcolour:v1", batch_size=4)
    fixed = mmsearch.index(folder, out=tmp_path / "zero.mms", model="splitcolour:v1", batch_size=4, workers=0)
    assert choices == [8]
    assert auto.report.images_embedded == fixed.report.images_embedded == 29
    assert auto.report.images_deduplicated == fixed.report.images_deduplicated == 18
    assert dict(auto.report.rejected_reasons) == dict(fixed.report.rejected_reasons)
    from mmsearch.store import Store

    stores = [Store.open(tmp_path / name) for name in ("auto.mms", "zero.mms")]
    tables = [s.scan("images", ["id", "uri", "sha256"]).to_pydict() for s in stores]
    assert tables[0] == tables[1]
    vectors = [s.embeddings_by_id("images", tables[0]["id"]) for s in stores]
    assert all(np.array_equal(vectors[0][i], vectors[1][i]) for i in tables[0]["id"])
