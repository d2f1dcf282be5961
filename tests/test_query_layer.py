"""The query layer on a collection, with the colour encoder: every answer is known exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from fakes import COLOURS, make_colour_folder
from test_query_parts import _FakeChat, fake_chat  # noqa: F401  (fixture)

import mmsearch
from mmsearch import Filter, Q, QueryError
from mmsearch.cli.main import main

ALL = ["red", "green", "blue", "yellow", "cyan", "magenta"]


@pytest.fixture
def col(tmp_path, colour_model: str) -> mmsearch.Collection:
    folder = make_colour_folder(tmp_path / "imgs", ALL)
    shutil.copy(folder / "red.png", folder / "red_copy.png")
    (tmp_path / "notes.txt").write_text("the sky is blue today\nfresh green grass\nquarterly tax forms\n")
    result = mmsearch.index([folder, tmp_path / "notes.txt"], out=tmp_path / "c.mms", model=colour_model)
    return mmsearch.open(result.path)


def _names(hits) -> list[str]:
    return [Path(h.uri).stem for h in hits]


def test_batch_matches_single_queries_in_order(col) -> None:
    queries = ["a blue square", Path(col.search("green", k=1)[0].uri), Q(text="yellow"), "magenta"]
    batch = col.search_batch(queries, k=3)
    assert len(batch) == 4
    singles = [col.search(text=q) if isinstance(q, str) else col.search(image=q) if isinstance(q, Path)
               else col.search(q.text) for q in queries]
    for got, want in zip(batch, singles):  # ties (score 0) may come in any order
        assert got[0].id == want[0].id and [h.score for h in got] == pytest.approx([h.score for h in want[:3]], abs=1e-6)
    assert _names([b[0] for b in batch]) == ["blue", "green", "yellow", "magenta"]
    assert col.search_batch([]) == []


def test_arithmetic_positive_negative_and_weights(col) -> None:
    both = col.search(positive=["red", "yellow"], k=3)
    assert set(_names(both[:3])) <= {"red", "red_copy", "yellow"}
    assert both[0].score == pytest.approx(1 / np.sqrt(2), abs=1e-3)
    minus = col.search("red and blue", negative=["blue"], k=1)
    assert _names(minus) in (["red"], ["red_copy"])
    weighted = col.search(positive=[Q(text="cyan", weight=3), "green"], k=1)
    assert _names(weighted) == ["cyan"]
    image_plus_text = col.search(image=Path(col.search("green", k=1)[0].uri), positive=["blue"], k=2)
    assert set(_names(image_plus_text)) == {"green", "blue"}
    with pytest.raises(QueryError, match="cancel"):
        col.search("red", negative=["red"])


def test_filters_return_k_when_k_match(col) -> None:
    nested = col.search("red", k=3, filter=Filter(path_glob="*/nested/*"))
    assert len(nested) == 3 and all("/nested/" in h.uri for h in nested)
    assert _names(col.search("red", k=10, filter={"caption_contains": "YELLOW"})) == ["yellow"]
    assert len(col.search("red", k=10, filter=Filter(width_min=41))) == 0
    texts = col.search("blue", modality="text", k=5, filter=Filter(path_glob="*notes.txt"))
    assert texts[0].text == "the sky is blue today" and all(h.uri.endswith("notes.txt") for h in texts)
    with pytest.raises(QueryError, match="unknown filter field"):
        col.search("red", filter={"colour": "red"})


def test_recommend_and_similar(col) -> None:
    red = col.search("red", k=1)[0]
    blue = col.search("blue", k=1)[0]
    recs = col.recommend([red.id, blue.id], k=10)
    assert red.id not in [h.id for h in recs] and blue.id not in [h.id for h in recs]
    assert _names(recs[:1]) in (["red"], ["red_copy"])  # the other red
    away = col.recommend([red.id], negative_ids=[blue.id], k=1)
    assert _names(away) in (["red"], ["red_copy"])
    sim = col.similar(red.id, k=1)
    assert sim[0].score == pytest.approx(1.0, abs=1e-3) and sim[0].id != red.id
    caption_of_red = col.similar(red.id, k=1, modality="text")[0]
    assert caption_of_red.text == "a red square"
    assert col.item(red.id).uri == red.uri


def test_embeddings_and_iteration(col) -> None:
    red = col.search("red", k=1)[0]
    text = col.search("fresh green grass", modality="text", k=1)[0]
    vectors = col.embeddings([text.id, red.id])
    np.testing.assert_allclose(vectors[1], np.eye(8)[list(COLOURS).index("red")], atol=1e-3)
    assert vectors.shape == (2, 8) and vectors.dtype == np.float32
    ids, emb = zip(*col.iter_embeddings("image"))
    assert sum(len(i) for i in ids) == 7 and np.concatenate(emb).shape == (7, 8)
    arrow_ids, arrow_emb = next(col.iter_embeddings("image", as_arrow=True))
    assert isinstance(arrow_emb, pa.ChunkedArray) and arrow_emb.type.list_size == 8
    with pytest.raises(QueryError, match="no item"):
        col.embeddings([999])


def test_near_duplicates_collapse(col) -> None:
    plain = _names(col.search("red", k=3))
    assert set(plain[:2]) == {"red", "red_copy"}
    collapsed = _names(col.search("red", k=3, dedup=0.99))
    assert len([n for n in collapsed if n.startswith("red")]) == 1 and len(collapsed) == 3
    with pytest.raises(QueryError, match="dedup"):
        col.search("red", dedup=1.5)


def test_no_good_match_signal(col) -> None:
    threshold = col.no_match_threshold("image")
    assert threshold == pytest.approx(1 / np.sqrt(8), abs=1e-3)  # what colourless text scores against one-hot images
    good = col.search("a red square", k=1)[0]
    bad = col.search("a theorem about prime numbers", k=1)[0]
    assert good.good_match is True and bad.good_match is False  # k=1: the copy of red is still looked at
    assert [h.good_match for h in col.search("a red square", k=3)] == [True, True, False]  # red, its copy, the rest
    assert [h.good_match for h in col.search(image=Path(good.uri), k=3)] == [True, True, False]  # image queries too


def test_evidence_bundle(col) -> None:
    bundle = col.evidence("where is the red square?", k=2, nearest_texts=2)
    assert bundle.found and [i.citation for i in bundle.images] == ["I1", "I2"]
    assert _names(bundle.images) == ["red", "red_copy"] or set(_names(bundle.images)) == {"red", "red_copy"}
    assert bundle.images[0].nearest_texts[0]["text"] == "a red square"
    assert bundle.texts[0].citation == "T1" and bundle.texts[0].text == "a red square"
    assert "[I1] image" in bundle.to_prompt()
    assert json.loads(json.dumps(bundle.to_dict()))["found"] is True
    taxes = col.evidence("the quarterly tax filing deadline")  # no colour: the colour encoder sees only the note
    assert not any(i.good_match for i in taxes.images) and taxes.texts[0].text == "quarterly tax forms"


def test_ask_cli_without_and_with_a_chat_endpoint(col, fake_chat, monkeypatch) -> None:  # noqa: F811
    runner = CliRunner()
    plain = runner.invoke(main, ["ask", "a red square?", "-c", str(col.path)])
    assert plain.exit_code == 0 and "[I1] image" in plain.output and "MMSEARCH_CHAT_URL" in plain.output
    monkeypatch.setenv("MMSEARCH_CHAT_URL", fake_chat)
    monkeypatch.setenv("MMSEARCH_CHAT_MODEL", "local-model")
    answered = runner.invoke(main, ["ask", "a red square?", "-c", str(col.path)])
    assert answered.exit_code == 0, answered.output
    assert "Your cat sleeps [T1]." in answered.output and "Sources:" in answered.output
    sent = _FakeChat.received[-1]["body"]
    assert sent["model"] == "local-model" and "a red square" in sent["messages"][1]["content"]
    data = json.loads(runner.invoke(main, ["ask", "a red square?", "-c", str(col.path), "--json"]).output)
    assert data["answer"] == "Your cat sleeps [T1]." and data["images"][0]["citation"] == "I1"
    monkeypatch.setenv("MMSEARCH_CHAT_URL", "http://127.0.0.1:9/v1")
    failed = runner.invoke(main, ["ask", "a red square?", "-c", str(col.path)])
    assert failed.exit_code == 1 and "cannot reach the chat endpoint" in failed.output


def test_query_cli_arithmetic_and_filters(col) -> None:
    runner = CliRunner()
    out = json.loads(runner.invoke(main, ["query", "red and blue", "--minus", "blue", "-c", str(col.path), "--json",
                                          "-k", "1"]).output)
    assert Path(out[0]["uri"]).stem in ("red", "red_copy")
    nested = json.loads(runner.invoke(main, ["query", "red", "--path-glob", "*/nested/*", "-c", str(col.path),
                                             "--json", "-k", "10"]).output)
    assert len(nested) == 3
    dedup = json.loads(runner.invoke(main, ["query", "red", "--dedup", "0.99", "-c", str(col.path), "--json",
                                            "-k", "2"]).output)
    assert len({Path(h["uri"]).stem.startswith("red") for h in dedup}) == 2


def test_user_metadata_columns_filter_and_show(col) -> None:
    import pyarrow.compute as pc

    hits = col.search("red", k=7)
    ratings = {h.id: (5 if Path(h.uri).stem in ("blue", "green", "cyan") else 1) for h in hits}
    col.set_metadata(list(ratings), {"rating": list(ratings.values())})
    top = col.search("red", k=3, filter={"where": {"rating": 5}})
    assert len(top) == 3 and {Path(h.uri).stem for h in top} == {"blue", "green", "cyan"}
    assert all(h.metadata["rating"] == 5 for h in top)
    assert len(col.search("red", k=10, where=pc.field("rating") < 3)) == 4
    # a second column for some ids keeps the first; reopening the collection keeps both
    first = hits[0].id
    col.set_metadata([first], {"album": ["holiday"]})
    again = mmsearch.open(col.path)
    meta = again.item(first).metadata
    assert meta["album"] == "holiday" and meta["rating"] == ratings[first]
    assert again.item(hits[1].id).metadata["album"] is None
    with pytest.raises(QueryError, match="reserved"):
        col.set_metadata([first], {"uri": ["x"]})
    with pytest.raises(QueryError, match="no image with id"):
        col.set_metadata([10**6], {"rating": [1]})
    with pytest.raises(QueryError, match="values for"):
        col.set_metadata([first], {"rating": [1, 2]})
