"""The index options through mmsearch.index, the CLI and Collection.search (filters, parameter overrides)."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from fakes import make_colour_folder

import mmsearch
from mmsearch import QueryError
from mmsearch.cli.main import main

NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"]


@pytest.fixture
def folder(tmp_path):
    return make_colour_folder(tmp_path / "imgs", NAMES)


def test_factory_and_target_are_stored_and_kept_on_rerun(folder, tmp_path, colour_model) -> None:
    out = tmp_path / "c.mms"
    result = mmsearch.index(folder, out=out, model=colour_model, index_factory="IVF2,Flat", target_recall=0.9)
    info = result.indexes["images"]
    assert info.factory == "IVF2,Flat" and info.target_recall == 0.9 and "nprobe" in info.params
    (folder / "red.png").unlink()
    again = mmsearch.index(folder, out=out, model=colour_model)  # no index options: the collection's are kept
    updated = again.indexes["images"]
    assert updated.factory == "IVF2,Flat" and updated.target_recall == 0.9 and updated.update.startswith("updated")
    assert updated.rows == 7 and all(not h.uri.endswith("/red.png") for h in mmsearch.open(out).search("red", k=8))


def test_where_filter_and_search_params(folder, tmp_path, colour_model) -> None:
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=colour_model, index_factory="HNSW8").path
    col = mmsearch.open(out)
    hits = col.search("a red square", k=3, where=pc.field("uri").isin([str(p) for p in folder.rglob("*.png")
                                                                        if p.stem in ("blue", "green")]))
    assert {h.uri.split("/")[-1] for h in hits} == {"blue.png", "green.png"}  # only the allowed rows, all of them
    top = col.search("a red square", k=1, search_params={"efSearch": 64})[0]
    assert top.uri.endswith("/red.png")
    with pytest.raises(QueryError, match="nprobe"):
        col.search("a red square", search_params={"nprobe": 4})
    with pytest.raises(QueryError, match="filter"):
        col.search("a red square", where=pc.field("no_such_column") == 1)


def test_cli_index_flags_and_info_show_tuning(folder, tmp_path, colour_model) -> None:
    runner = CliRunner()
    out = tmp_path / "c.mms"
    result = runner.invoke(main, ["index", str(folder), "--out", str(out), "--model", colour_model,
                                  "--index", "IVF2,Flat", "--max-index-memory", "1GB", "--target-recall", "0.9"])
    assert result.exit_code == 0, result.output
    assert "index       images: IVF2,Flat, 8 vectors, nprobe=" in result.output
    info = runner.invoke(main, ["info", str(out)])
    assert "recall@10" in info.output and "on texts" in info.output
    data = json.loads(runner.invoke(main, ["info", str(out), "--json"]).output)
    assert data["indexes"]["images"]["max_index_memory_bytes"] == 1024**3
    bad = runner.invoke(main, ["index", str(folder), "--out", str(out), "--max-index-memory", "lots"])
    assert bad.exit_code == 1 and "cannot read 'lots' as a size" in bad.output


def test_generic_text_probes_are_encoded_only_for_an_index_with_something_to_tune(tmp_path, monkeypatch) -> None:
    """An image-only collection tunes an approximate image index on generic text probes; an exact Flat one
    has nothing to tune, so the probes are not encoded (that cost dominated small builds). The no-match queries
    are encoded once per model: the next build reads them from the model cache."""
    from fakes import ColourEncoder

    from mmsearch.api import with_probe_queries
    from mmsearch.indexes import resolve_options
    from mmsearch.query.calibration import NULL_QUERIES
    from mmsearch.query.probes import PROBE_TEXTS
    from mmsearch.store import Store

    class Counting(ColourEncoder):
        texts: list[str] = []

        def encode_texts(self, texts):  # noqa: ANN001, ANN201
            Counting.texts += list(texts)
            return super().encode_texts(texts)

    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    out = mmsearch.index(make_colour_folder(tmp_path / "imgs", captions=False), out=tmp_path / "c.mms",
                         model="colour:v1", workers=0).path
    store, encoder = Store.open(out), Counting()
    assert store.manifest.indexes["images"].factory == "Flat"
    flat = resolve_options(store, "images")
    flat_opts = with_probe_queries(flat, store, "images", encoder)
    assert flat_opts.probe_queries is None and len(flat_opts.null_queries) == len(NULL_QUERIES)
    assert not set(PROBE_TEXTS) & set(Counting.texts)
    assert not set(NULL_QUERIES) & set(Counting.texts)  # the build above embedded and kept them
    ivf = resolve_options(store, "images", factory="IVF2,Flat")
    probed = with_probe_queries(ivf, store, "images", encoder).probe_queries
    assert probed is not None and len(probed) == len(PROBE_TEXTS)
    assert set(PROBE_TEXTS) <= set(Counting.texts)


def test_the_no_match_threshold_is_computed_at_build_and_kept_in_the_index_record(tmp_path) -> None:
    from fakes import ColourEncoder

    from mmsearch.indexes import load_index
    from mmsearch.query.calibration import NULL_QUERIES, threshold_from_null_scores
    from mmsearch.store import Store

    out = mmsearch.index(make_colour_folder(tmp_path / "imgs"), out=tmp_path / "c.mms", model="colour:v1", workers=0).path
    record = Store.open(out).manifest.indexes["images"]
    scores, _ = load_index(Store.open(out), "images").search(ColourEncoder().encode_texts(list(NULL_QUERIES)), 1)
    assert record.no_match_threshold == pytest.approx(threshold_from_null_scores(scores[:, 0]))
    col = mmsearch.open(out)
    assert col.no_match_threshold("image") == record.no_match_threshold and col._encoder is None  # no model loaded
