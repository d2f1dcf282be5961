"""The query layer with the colour encoder: every direction has a known right answer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fakes import COLOURS, make_colour_folder
from PIL import Image

import mmsearch
from mmsearch import EncoderMismatchError, QueryError


@pytest.fixture
def col(tmp_path, colour_model: str) -> mmsearch.Collection:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue", "yellow", "cyan", "magenta"])
    (tmp_path / "corpus.txt").write_text("the sky is blue today\nfresh green grass\nno colour here\n")
    result = mmsearch.index([folder, tmp_path / "corpus.txt"], out=tmp_path / "c.mms", model=colour_model)
    return mmsearch.open(result.path)


def test_text_to_image(col) -> None:
    for name in ["red", "green", "blue", "yellow", "cyan", "magenta"]:
        top = col.search(f"a {name} square", k=3)[0]
        assert top.uri.endswith(f"/{name}.png") and top.score == pytest.approx(1.0, abs=1e-3)
        assert top.caption == f"a {name} square" and top.modality == "image"


def test_image_to_text(col, tmp_path) -> None:
    hits = col.search(image=Image.new("RGB", (9, 9), COLOURS["blue"]), modality="text", k=3)
    assert hits[0].text == "a blue square" or hits[0].text == "the sky is blue today"
    assert {h.text for h in hits[:2]} == {"a blue square", "the sky is blue today"}
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_image_to_image_all_input_kinds(col, tmp_path) -> None:
    path = tmp_path / "imgs" / "red.png"
    for query in [path, str(path), path.read_bytes(), Image.open(path), np.asarray(Image.open(path))]:
        top = col.search(image=query, k=1)[0]
        assert top.uri == str(path)


def test_text_to_text(col) -> None:
    hits = col.search("fresh green grass", modality="text", k=2)
    assert {h.text for h in hits} == {"fresh green grass", "a green square"}
    assert hits[0].uri.endswith(("corpus.txt", "green.png"))


def test_vector_and_id_queries(col) -> None:
    vec = np.zeros(8, dtype=np.float32)
    vec[list(COLOURS).index("yellow")] = 3.0  # not unit length: normalised for you
    assert col.search(vector=vec, k=1)[0].uri.endswith("yellow.png")
    red = col.search("red", k=1)[0]
    by_id = col.search(id=red.id, k=5, modality="text")
    assert by_id[0].text == "a red square"
    assert red.id not in [h.id for h in col.search(id=red.id, k=5)]  # the item itself is left out


def test_k_larger_than_collection(col) -> None:
    assert len(col.search("red", k=100)) == 6


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"text": "a", "image": b"x"}, "exactly one"),
    ({"text": "  "}, "empty"),
    ({"text": "a", "k": 0}, "k must be"),
    ({"text": "a", "k": 10**9}, "k must be"),
    ({"text": "a", "modality": "audio"}, "modality"),
    ({"image": b"not an image"}, "cannot read the query image"),
    ({"vector": np.ones(3)}, "dimensions"),
    ({"vector": np.zeros(8)}, "zero"),
    ({"id": 10**6}, "no item with id"),
])
def test_bad_queries_raise_query_error(col, kwargs, match) -> None:
    with pytest.raises(QueryError, match=match):
        col.search(**kwargs)


def test_open_with_other_model_is_an_error(col, tiny_model) -> None:
    with pytest.raises(EncoderMismatchError, match="colour:v1"):
        mmsearch.open(col.path, model=tiny_model)
    assert mmsearch.open(col.path, model="colour:v1").model == "colour:v1"


def test_hit_json_form(col) -> None:
    import json

    d = col.search("red", k=1)[0].to_dict()
    assert set(d) == {"id", "score", "modality", "uri", "text", "caption", "metadata", "good_match", "labels"}
    assert d["metadata"]["width"] == 40
    json.dumps(d)


def test_info(col) -> None:
    info = col.info()
    assert info["images"] == 6 and info["texts"] == 9
    assert info["model"]["spec"] == "colour:v1" and info["indexes"]["images"]["rows"] == 6
    assert len(col) == 15


def test_image_bytes_query_png(col) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), COLOURS["magenta"]).save(buf, format="PNG")
    assert col.search(image=buf.getvalue(), k=1)[0].uri.endswith("magenta.png")
