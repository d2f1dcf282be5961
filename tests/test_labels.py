"""Labels: each image's top concepts stored at index time, shown in hits, filterable, in evidence bundles.

The colour encoder has a known right answer for every colour, so a vocabulary of colour names labels each
square with its own colour first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import make_colour_folder

import mmsearch
from mmsearch import QueryError
from mmsearch.cli.render import hits_table
from mmsearch.encoders import load_encoder
from mmsearch.query.labels import (
    LABEL_K,
    Vocabulary,
    imagenet_names,
    labels_of,
    match_labels,
    top_labels,
    update_labels,
    vocabulary_embeddings,
    vocabulary_for,
)
from mmsearch.store import Store

NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"]
COLOURS = Vocabulary("colours", [f"{n} thing" for n in NAMES], [[n] for n in NAMES])


def label(root: Path, cache: Path, vocabulary: Vocabulary = COLOURS) -> int:
    """What ``mmsearch.index`` does after ingest: update the labels inside the run's writer transaction."""
    with Store.open_for_writing(root) as store, store.transaction("labels"):
        return update_labels(store, load_encoder(store.manifest.model.spec), cache=cache, vocabulary=vocabulary)


def forget(root: Path, ids: list[int] = (), *, deleted: list[int] = (), everything: bool = False) -> None:
    """Leave ``ids`` out of the stored labels (as rows ingested since the last labelling are), delete rows
    ``deleted``, or drop the labels altogether; whether or not ``mmsearch.index`` labelled the collection."""
    with Store.open_for_writing(root) as store, store.transaction("test"):
        if everything:
            store.manifest.labels.clear()
        elif ids:
            import pyarrow.compute as pc

            table = store.read_labels("images")
            info = {k: v for k, v in store.manifest.labels["images"].items()
                    if k not in ("file", "rows", "sha256", "bytes", "mtime_ns")}
            store.write_labels("images", table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa_ids(ids)))),
                               info)
        if deleted:
            store.mark_deleted("images", deleted)
        store.commit()


def pa_ids(ids: list[int]):  # noqa: ANN201
    import pyarrow as pa

    return pa.array(ids, pa.int64())


@pytest.fixture
def built(tmp_path, colour_model: str) -> Path:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue", "yellow"])
    (tmp_path / "corpus.txt").write_text("the sky is blue today\nfresh green grass\n")
    return mmsearch.index([folder, tmp_path / "corpus.txt"], out=tmp_path / "c.mms", model=colour_model).path


def test_each_image_gets_its_colour_first_with_confidences(built, tmp_path) -> None:
    assert label(built, tmp_path / "cache") == 4
    col = mmsearch.open(built)
    for name in ["red", "green", "blue", "yellow"]:
        hit = col.search(f"a {name} square", k=1)[0]
        assert hit.labels[0]["name"] == f"{name} thing" and len(hit.labels) == LABEL_K
        confidences = [label["confidence"] for label in hit.labels]
        assert confidences == sorted(confidences, reverse=True) and 0.99 <= confidences[0] <= 1.0
        assert hit.to_dict()["labels"] == hit.labels
    assert all(h.labels == [] for h in col.search("blue", modality="text", k=2))  # texts have none


def test_labels_are_incremental_and_drop_deleted_rows(built, tmp_path) -> None:
    cache = tmp_path / "cache"
    assert label(built, cache) == 4
    version = Store.open(built).version
    assert label(built, cache) == 0 and Store.open(built).version == version  # nothing to do: no new version
    col = mmsearch.open(built)
    red, blue = col.search("red", k=1)[0].id, col.search("blue", k=1)[0].id
    forget(built, [blue], deleted=[red])  # blue as if ingested since; red deleted
    assert label(built, cache) == 1  # only blue is scored
    by_id = labels_of(Store.open(built).read_labels("images"))
    table, ids = mmsearch.open(built).metadata("image")
    assert sorted(by_id) == sorted(ids.tolist()) and red not in by_id  # the deleted red square's labels went
    names = {Path(u).stem: by_id[i][0]["name"] for u, i in zip(table.column("uri").to_pylist(), ids.tolist())}
    assert names == {"green": "green thing", "blue": "blue thing", "yellow": "yellow thing"}


def test_another_vocabulary_labels_every_row_again(built, tmp_path) -> None:
    cache = tmp_path / "cache"
    label(built, cache)
    two = Vocabulary("two", ["warm", "cold"], [["red", "yellow", "magenta"], ["blue", "cyan", "green"]])
    assert label(built, cache, two) == 4
    info = Store.open(built).manifest.labels["images"]
    assert info["vocabulary"] == "two" and info["vocabulary_sha256"] == two.sha256 and info["k"] == LABEL_K
    top = {h.uri.rsplit("/", 1)[-1]: h.labels[0]["name"] for h in mmsearch.open(built).search("red", k=4)}
    assert top["red.png"] == "warm" and top["blue.png"] == "cold" and len(mmsearch.open(built).item(0).labels) == 2


def test_label_filter(built, tmp_path) -> None:
    forget(built, everything=True)
    col = mmsearch.open(built)
    with pytest.raises(QueryError, match="no labels.*mmsearch index"):
        col.search("red", filter=mmsearch.Filter(labels=["red"]))
    label(built, tmp_path / "cache")
    col.refresh()
    hits = col.search("red", k=4, filter={"labels": ["BLUE"]})  # whole words, any case
    assert [h.uri.rsplit("/", 1)[-1] for h in hits] == ["blue.png"]
    assert {h.uri.rsplit("/", 1)[-1] for h in col.search("red", k=4, filter=mmsearch.Filter(labels="green thing"))} \
        == {"green.png"}
    assert col.search("red", k=4, filter=mmsearch.Filter(labels=["gre"])) == []  # not a word of any name
    both = col.search("red", k=4, filter=mmsearch.Filter(labels=["red", "yellow"], path_glob="*.png"))
    assert {h.uri.rsplit("/", 1)[-1] for h in both} == {"red.png", "yellow.png"}
    with pytest.raises(QueryError, match="images only"):
        col.search("red", modality="text", filter=mmsearch.Filter(labels=["red"]))
    weak = col.search("red", k=4, filter=mmsearch.Filter(labels=["blue"], label_min_confidence=0.0))
    assert len(weak) == 4  # every square has "blue thing" among its 5 names, at confidence ~0 but the blue one
    with pytest.raises(QueryError, match="strings"):
        mmsearch.Filter(labels=[3])
    with pytest.raises(QueryError, match="label_min_confidence"):
        mmsearch.Filter(labels=["red"], label_min_confidence=2)


def test_match_labels_whole_words() -> None:
    import pyarrow as pa

    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()),
                      "labels": [["tabby cat", "tiger"], ["catamaran"], ["cat face emoji", "tiger"]],
                      "confidences": [[0.9, 0.1], [1.0], [0.97, 0.01]]})
    assert match_labels(table, ["Cat"]).tolist() == [1, 3]
    assert match_labels(table, ["tiger", "catamaran"]).tolist() == [1, 2]  # 3's tiger is below 0.05
    assert match_labels(table, ["tiger"], min_confidence=0.0).tolist() == [1, 3]
    assert match_labels(None, ["cat"]).tolist() == [] and match_labels(table, [" "]).tolist() == []


def test_hits_of_every_query_kind_carry_labels(built, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the table is cut at the terminal's width; pytest's paths are long
    label(built, tmp_path / "cache")
    col = mmsearch.open(built)
    red = col.search("red", k=1)[0]
    assert col.item(red.id).labels[0]["name"] == "red thing"
    similar = col.similar(red.id, k=3)
    assert similar and all(h.labels for h in similar) and red.id not in [h.id for h in similar]
    assert all(h.labels for h in col.recommend([red.id], k=2))
    assert col.search(id=red.id, k=1)[0].labels
    table = hits_table(col.search("red", k=2))
    assert "labels" in table.splitlines()[0] and "red thing 1.00" in table


def test_item_lookups_read_no_whole_metadata(built, tmp_path) -> None:
    """item/similar/recommend find an id's modality by row group, not by reading every row's metadata."""
    label(built, tmp_path / "cache")
    col = mmsearch.open(built)
    red = col.search("red", k=1)[0]
    col.item(red.id), col.similar(red.id, k=2), col.recommend([red.id], k=2)
    assert col._rows == {}  # noqa: SLF001 - nothing was scanned whole
    with pytest.raises(QueryError, match="no item with id 999"):
        col.item(999)


def test_evidence_has_labels_and_scored_related_texts(built, tmp_path) -> None:
    label(built, tmp_path / "cache")
    col = mmsearch.open(built)
    bundle = col.evidence("a blue square", k=2, nearest_texts=3)
    assert bundle.images[0].labels[0]["name"] == "blue thing"
    threshold = col.no_match_threshold("text")
    assert bundle.related_threshold == threshold
    related = [t for item in bundle.images for t in item.nearest_texts]
    assert related and all(t["score"] > threshold for t in related)
    prompt = bundle.to_prompt()
    assert "the model sees: blue thing (1.00)" in prompt and "(similarity " in prompt.split("related texts:")[1]
    assert bundle.to_dict()["images"][0]["labels"] == bundle.images[0].labels


def test_related_texts_below_the_threshold_are_left_out(tmp_path, colour_model: str) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green"], captions=False)
    (tmp_path / "corpus.txt").write_text("nothing about colours\nanother plain sentence\n")
    col = mmsearch.open(mmsearch.index([folder, tmp_path / "corpus.txt"], out=tmp_path / "c.mms",
                                       model=colour_model).path)
    bundle = col.evidence("red", k=2, nearest_texts=2)
    assert bundle.images and all(item.nearest_texts == [] for item in bundle.images)
    assert "related texts" not in bundle.to_prompt()


def test_stored_file_is_checked_repaired_and_read_by_id(built, tmp_path) -> None:
    label(built, tmp_path / "cache")
    store = Store.open(built)
    info = store.manifest.labels["images"]
    assert info["file"].startswith("extra/labels-images.") and info["file"] in store.manifest.files()
    one = store.read_labels("images", ids=[2])
    assert one.column("id").to_pylist() == [2] and len(one.column("labels")[0]) == LABEL_K
    assert store.check() == []
    (built / info["file"]).write_bytes(b"damaged")
    assert any(info["file"] in p for p in store.check())
    with Store.open_for_writing(built) as writer:  # the writer's repair drops the labels...
        assert "images" not in writer.manifest.labels
    assert label(built, tmp_path / "cache") == 4  # ...and the next update makes them again
    assert Store.open(built).check() == []


def test_a_manifest_without_labels_still_reads(built) -> None:
    import json

    data = json.loads((built / "manifest.json").read_text())
    data.pop("labels", None)
    (built / "manifest.json").write_text(json.dumps(data))
    col = mmsearch.open(built)
    assert col.search("red", k=1)[0].labels == []


def test_vocabulary_embeddings_are_cached(built, tmp_path, colour_model: str) -> None:
    class Counting:
        def __init__(self, encoder) -> None:  # noqa: ANN001
            self.encoder, self.calls, self.dim = encoder, 0, encoder.dim

        def encode_texts(self, texts):  # noqa: ANN001, ANN202
            self.calls += 1
            return self.encoder.encode_texts(texts)

    encoder = Counting(load_encoder(colour_model))
    first = vocabulary_embeddings(encoder, colour_model, COLOURS, tmp_path / "cache")
    again = vocabulary_embeddings(encoder, colour_model, COLOURS, tmp_path / "cache")
    assert encoder.calls == 1 and np.array_equal(first, again)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    vectors = vocabulary_embeddings(encoder, colour_model, Vocabulary("x", ["warm"], [["red", "yellow"]]),
                                    tmp_path / "cache")
    assert encoder.calls == 2 and vectors.shape == (1, encoder.dim)


def test_top_labels_softmax() -> None:
    vocab = np.eye(4, dtype=np.float32)
    emb = np.array([[0.8, 0.6, 0, 0], [0, 0, 0, 1]], np.float32)
    idx, conf = top_labels(emb, vocab, k=3, temperature=10.0)
    assert idx[:, 0].tolist() == [0, 3] and idx[0, 1] == 1
    expected = np.exp(8) / (np.exp(8) + np.exp(6) + 2)
    assert conf[0, 0] == pytest.approx(expected, rel=1e-5) and (np.diff(conf, axis=1) <= 0).all()


def test_vocabularies_by_model() -> None:
    imagenet = imagenet_names()
    assert len(imagenet) == 1000 and imagenet[0] == "tench"
    openclip = vocabulary_for("openclip:ViT-B-32/laion2b_s34b_b79k")
    assert openclip.names == imagenet and openclip.prompts[1] == ["a photo of a goldfish."]
    v1, v2, v3 = (vocabulary_for(f"builtin:v{n}") for n in (1, 2, 3))
    assert len(v1.names) == 1000 and len(v2.names) > 1200 and len(v3.names) > len(v2.names) + 1000
    assert "flag of Japan" in v2.names and any(n.endswith(" emoji") for n in v3.names)
    assert len({v1.sha256, v2.sha256, v3.sha256}) == 3


def test_the_encoder_loads_only_when_the_vocabulary_is_not_cached(built, tmp_path, colour_model: str) -> None:
    loads = []

    def load():  # noqa: ANN202 - what api.py passes: load the collection's encoder on demand
        loads.append(1)
        return load_encoder(colour_model)

    def run() -> int:
        with Store.open_for_writing(built) as store, store.transaction("labels"):
            return update_labels(store, load, cache=tmp_path / "cache", vocabulary=COLOURS)

    assert run() == 4 and len(loads) == 1
    assert run() == 0 and len(loads) == 1  # nothing new: no model
    yellow = mmsearch.open(built).search("yellow", k=1)[0].id
    forget(built, [yellow])
    assert run() == 1 and len(loads) == 1  # a row to label, the vocabulary cached: still no model
    assert mmsearch.open(built).item(yellow).labels[0]["name"] == "yellow thing"


def test_index_labels_new_images_and_the_cli_filters_on_them(tmp_path, colour_model: str, monkeypatch) -> None:
    """``mmsearch.index`` labels every image it adds (the model's own vocabulary, ImageNet's names for this one),
    a re-run with nothing new writes no labels again, and ``mmsearch query --label`` keeps the labelled images."""
    import json

    from click.testing import CliRunner

    from mmsearch.cli.main import main

    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue"])
    root = mmsearch.index(folder, out=tmp_path / "c.mms", model=colour_model).path
    col = mmsearch.open(root)
    labels = col.labels([h.id for h in col.search("a red square", k=3)])
    assert len(labels) == 3 and all(len(rows) == LABEL_K for rows in labels.values())
    first = {h.uri: h.labels[0]["name"] for h in col.search("a red square", k=3)}
    assert len(first) == 3 and all(name in imagenet_names() for name in first.values())
    labels_file = Store.open(root).manifest.labels["images"]["file"]
    mmsearch.index(folder, out=root)  # nothing new: the labels file stays
    assert Store.open(root).manifest.labels["images"]["file"] == labels_file

    red_uri = next(uri for uri in first if uri.endswith("red.png"))
    word = first[red_uri].split()[-1]
    out = CliRunner().invoke(main, ["query", "a square", "-c", str(root), "--label", word, "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert red_uri in {h["uri"] for h in hits}
    assert all(any(word.lower() in lab["name"].lower().split() for lab in h["labels"]) for h in hits)


def test_the_default_models_vocabulary_ships_and_equals_the_encoder(tmp_path) -> None:
    """The shipped embedding (tools/build_label_vocabulary.py) is the one the encoder gives today, so a first
    index run needs no half-minute of vocabulary encoding: a stale one (vocabulary or text tower changed) fails here."""
    from mmsearch.query.labels import VOCABULARY_DIR

    spec = "builtin:v4"  # v3's classes and text tower: it shares v3's file
    vocabulary = vocabulary_for(spec)
    shipped = vocabulary_embeddings(lambda: pytest.fail("the shipped file was not used"), spec, vocabulary,
                                    tmp_path / "cache", dim=384)
    assert shipped.shape == (len(vocabulary.names), 384) and list(VOCABULARY_DIR.glob("builtin_v3-*.npy"))
    rows = np.random.default_rng(0).choice(len(vocabulary.names), 12, replace=False)
    sample = Vocabulary("sample", [vocabulary.names[i] for i in rows], [vocabulary.prompts[i] for i in rows])
    fresh = vocabulary_embeddings(load_encoder(spec), "sample-only", sample, tmp_path / "cache")
    assert np.min(np.sum(fresh * shipped[rows], axis=1)) > 0.999


def test_the_table_cuts_long_paths_before_the_labels(monkeypatch) -> None:
    from mmsearch.search import Hit

    monkeypatch.setenv("COLUMNS", "100")
    deep = "/mnt/archive/" + "/".join(["a-rather-long-folder-name"] * 6) + "/IMG_0001.jpg"
    labels = [{"name": "lighthouse", "confidence": 0.91}, {"name": "coast", "confidence": 0.05}]
    table = hits_table([Hit(7, 0.5, "image", uri=deep, labels=labels), Hit(8, 0.4, "image", uri="/short.jpg")])
    lines = table.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert "…" in lines[1] and "IMG_0001.jpg" in lines[1] and "lighthouse 0.91" in lines[1]
    assert "/short.jpg" in lines[2]


def test_the_table_is_not_cut_when_the_output_is_not_a_terminal(monkeypatch) -> None:
    from mmsearch.search import Hit

    monkeypatch.delenv("COLUMNS", raising=False)  # pytest captures stdout: not a terminal
    deep = "/mnt/archive/" + "/".join(["a-rather-long-folder-name"] * 6) + "/IMG_0001.jpg"
    table = hits_table([Hit(7, 0.5, "image", uri=deep, labels=[{"name": "lighthouse", "confidence": 0.91}])])
    assert deep in table and "lighthouse 0.91" in table


def test_rows_that_share_a_name_are_one_label_with_their_summed_confidence() -> None:
    """ImageNet has two "missile" classes (and v3's emoji two "sunglasses"): a hit shows the name once."""
    vocab = np.eye(4, dtype=np.float32)
    emb = np.array([[0.9, 0.0, 0.9, 0.1]], dtype=np.float32)  # rows 0 and 2 both "missile"
    names = ["missile", "cat", "missile", "dog"]
    idx, conf = top_labels(emb, vocab, k=3, temperature=10.0, names=names)
    assert [names[i] for i in idx[0]] == ["missile", "dog", "cat"]
    plain_idx, plain_conf = top_labels(emb, vocab, k=4, temperature=10.0)
    assert conf[0, 0] == pytest.approx(plain_conf[0, 0] + plain_conf[0, 1])  # both missile rows, summed
    assert top_labels(emb, vocab, k=9, names=names)[0].shape == (1, 3)  # at most the distinct names
