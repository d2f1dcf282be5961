"""The quick start's promise: the real built-in model, offline, gets obvious queries right on the
bundled sample (data/sample ships with the repository)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import mmsearch

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
NAMES = ["cat_chelsea", "coffee_cup", "red_sports_car", "red_bus", "lighthouse", "dogs_in_window",
         "dahlia_flower", "pizza_slice"]
QUERIES = {  # query -> the image that must come first (README shows these)
    "a cat": "cat_chelsea",
    "a red car": "red_sports_car",
    "a cup of coffee": "coffee_cup",
    "a lighthouse": "lighthouse",
    "a red bus": "red_bus",
    "two dogs": "dogs_in_window",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory) -> mmsearch.Collection:
    folder = tmp_path_factory.mktemp("sample")
    for name in NAMES:
        shutil.copy(SAMPLE / f"{name}.jpg", folder)
        shutil.copy(SAMPLE / f"{name}.txt", folder)
    result = mmsearch.index(folder, out=folder / "c.mms")  # the default model: builtin
    assert result.model == "builtin:v4" and result.report.images_embedded == len(NAMES)
    return mmsearch.open(result.path)


@pytest.mark.parametrize("query, expected", QUERIES.items())
def test_text_to_image(col, query: str, expected: str) -> None:
    assert Path(col.search(query, k=1)[0].uri).stem == expected


@pytest.mark.parametrize("name", ["cat_chelsea", "lighthouse", "red_bus", "coffee_cup"])
def test_image_to_its_caption(col, name: str) -> None:
    caption = (SAMPLE / f"{name}.txt").read_text().strip()
    hits = col.search(image=SAMPLE / f"{name}.jpg", modality="text", k=2)
    assert caption in [h.text for h in hits]


def test_image_to_image_finds_itself(col) -> None:
    top = col.search(image=SAMPLE / "dahlia_flower.jpg", k=1)[0]
    assert Path(top.uri).stem == "dahlia_flower" and top.score == pytest.approx(1.0, abs=2e-3)
