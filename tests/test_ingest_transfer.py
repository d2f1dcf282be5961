"""Decode workers ship uint8 pixels when the model's transform splits at ToTensor; embeddings do not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import ColourEncoder, noise_image
from PIL import Image
from torchvision import transforms as T

import mmsearch
from mmsearch.encoders.openclip import OpenCLIPEncoder
from mmsearch.encoders.registry import load_encoder, parse_spec
from mmsearch.ingest.decode import DecodeSettings, decode_image
from mmsearch.ingest.encode import BatchEncoder
from mmsearch.ingest.images import model_input_px
from mmsearch.ingest.transfer import split_transform

TINY = "openclip:mms-tiny/random"


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(97, 61), (40, 300), (224, 224), (513, 389), (31, 29)]
    return [Image.fromarray(rng.integers(0, 256, (sizes[i % 5][1], sizes[i % 5][0], 3), dtype=np.uint8)) for i in range(n)]


def _torch_tiny() -> OpenCLIPEncoder:
    """The tiny OpenCLIP model in PyTorch: its torchvision transform is the one cut at ToTensor (on ONNX Runtime the
    model's transform is NumPy and is not cut)."""
    return OpenCLIPEncoder(parse_spec(TINY), device="cpu", backend="torch")


def test_openclip_transform_splits_and_reproduces_it_bit_for_bit() -> None:
    transform = _torch_tiny().image_transform
    split = split_transform(transform)
    assert split is not None and split.mean is not None
    for image in _images(10):
        head = split.head(image)
        assert head.dtype == np.uint8 and head.ndim == 3
        assert torch.equal(split.finish(torch.from_numpy(head)[None])[0], transform(image))


@pytest.mark.parametrize("transform", [
    ColourEncoder().image_transform,  # not a Compose
    T.Compose([T.Resize(32), T.ToTensor(), T.Lambda(lambda x: x * 2)]),  # something after ToTensor besides Normalize
    T.Compose([T.Resize(32), T.PILToTensor()]),  # no ToTensor
    T.Compose([T.ToTensor(), T.Resize(32, antialias=True)]),  # tensor steps: nothing to cut
])
def test_other_transforms_are_not_split(transform: object) -> None:
    assert split_transform(transform) is None


def test_batch_encoder_gives_the_same_embeddings_from_uint8_and_float_pixels() -> None:
    encoder = _torch_tiny()
    batcher = BatchEncoder(encoder, batch_size=4)
    images = _images(7, seed=1)
    from_uint8 = batcher.images([batcher.worker_transform(im) for im in images])
    from_float = batcher.images([encoder.image_transform(im).numpy() for im in images])
    np.testing.assert_array_equal(from_uint8, from_float)


def test_indexed_embeddings_equal_encoding_with_the_whole_transform(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [noise_image(folder / f"{i:02d}.png", seed=i, size=(64 + i, 48)) for i in range(70)]
    mmsearch.index(folder, out=tmp_path / "c.mms", model=TINY, batch_size=16, workers=2, dedup=False)
    col = mmsearch.open(tmp_path / "c.mms")
    ids, vectors = (np.concatenate(part) for part in zip(*col.iter_embeddings("image")))
    stored = {col.item(int(i)).uri: v for i, v in zip(ids, vectors)}
    encoder = load_encoder(TINY)
    whole = DecodeSettings(transform=encoder.image_transform, draft_px=model_input_px(encoder.image_transform))
    decoded = [decode_image(str(p), whole) for p in paths]  # the same decode (pre-shrink) with the whole transform
    assert all(d.pixels is not None and d.pixels.dtype == np.float32 for d in decoded)
    with_whole = encoder.encode_images(torch.stack([torch.from_numpy(d.pixels) for d in decoded]))
    for path, expected in zip(paths, with_whole):
        np.testing.assert_allclose(stored[str(path)], expected, atol=2e-3)  # float16 storage


def test_the_builtin_models_transform_offers_its_own_exact_cut() -> None:
    from mmsearch.encoders.builtin import Lite0Transform

    transform = Lite0Transform()
    split = split_transform(transform)
    assert split is not None and split.multiply_subtract is not None
    images = _images(5, seed=3)
    images += [images[0].convert("RGBA"), images[1].convert("L"), images[2].convert("P"), images[3].convert("LA")]
    for image in images:
        assert torch.equal(split.finish(torch.from_numpy(split.head(image))[None])[0], transform(image))
