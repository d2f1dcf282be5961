from __future__ import annotations

import pickle

import numpy as np
import torch
from PIL import Image

from mmsearch.encoders import embed_pil_images, load_encoder
from mmsearch.encoders.openclip import OpenCLIPEncoder
from mmsearch.encoders.registry import parse_spec


def test_tiny_model_embeds_unit_vectors(tiny_model: str) -> None:
    enc = load_encoder(tiny_model)
    texts = enc.encode_texts(["a red car", "a cat"])
    images = embed_pil_images(enc, [Image.new("RGB", (50, 40), (200, 10, 10))])
    assert texts.shape == (2, enc.dim) and images.shape == (1, enc.dim)
    assert texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(texts[0], texts[1])


def test_random_weights_are_identical_in_every_load(tiny_model: str) -> None:
    a = OpenCLIPEncoder(parse_spec(tiny_model)).encode_texts(["hello"])
    torch.manual_seed(1234)  # the global RNG must not matter
    b = OpenCLIPEncoder(parse_spec(tiny_model)).encode_texts(["hello"])
    np.testing.assert_array_equal(a, b)


def test_local_weights_file_round_trip(tiny_model: str, tmp_path) -> None:
    enc = OpenCLIPEncoder(parse_spec(tiny_model), backend="torch")
    path = tmp_path / "tiny.pt"
    torch.save(enc._model.state_dict(), path)
    from_file = load_encoder(f"openclip:mms-tiny@{path}")
    assert from_file.spec == f"openclip:mms-tiny@{path}"
    np.testing.assert_allclose(from_file.encode_texts(["x"]), enc.encode_texts(["x"]), atol=1e-6)


def test_transform_is_picklable_and_stable(tiny_model: str) -> None:
    enc = load_encoder(tiny_model)
    t = pickle.loads(pickle.dumps(enc.image_transform))
    img = Image.new("RGB", (64, 64), (1, 2, 3))
    assert np.array_equal(np.asarray(t(img)), np.asarray(enc.image_transform(img)))
    assert "Resize" in enc.preprocess_id and "Normalize" in enc.preprocess_id


def test_empty_text_batch(tiny_model: str) -> None:
    enc = load_encoder(tiny_model)
    assert enc.encode_texts([]).shape == (0, enc.dim)
