"""IndexRequest and resolve_options derived from IndexOptions' fields: a new index knob is one field (issue 17)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from mmsearch.errors import ConfigError
from mmsearch.indexes import IndexOptions, IndexRequest, knobs, request_name, resolve_options
from mmsearch.store.records import IndexRecord


def _store(saved: IndexRecord | None = None) -> SimpleNamespace:
    """What resolve_options reads of a collection: its manifest's index records."""
    return SimpleNamespace(manifest=SimpleNamespace(indexes={"images": saved} if saved else {}))


def _record(**fields) -> IndexRecord:
    return IndexRecord(modality="images", factory="IVF2,Flat", rows=10, dim=4, metric="ip", model_spec="m",
                       file="index/images.faiss", fingerprint="f", **fields)


def test_every_knob_of_the_options_is_an_optional_field_of_the_request() -> None:
    names = [f.name for f in dataclasses.fields(IndexRequest)]
    assert names == [request_name(f) for f in knobs()]
    assert "parts" in names and "seed" in names and "probe_queries" not in names and "_choices" not in names
    assert all(value is None for value in dataclasses.asdict(IndexRequest()).values())
    assert IndexRequest(parts=3, seed=7).asked() == {"index_shards": 3, "seed": 7}


@pytest.mark.parametrize("bad", [{"parts": 0}, {"factory": "IDMap,Flat"}, {"target_recall": 1.5},
                                 {"max_index_memory_bytes": 0}, {"max_deleted_share": 2.0}, {"tuning_queries": 0}])
def test_a_request_is_checked_as_the_options_are(bad) -> None:
    with pytest.raises(ConfigError):
        IndexRequest(**bad)


def test_resolve_takes_the_request_then_the_saved_index_then_the_defaults() -> None:
    defaults = IndexOptions()
    assert resolve_options(_store(), "images") == defaults
    saved = _store(_record(requested="HNSW32", target_recall=0.8, index_shards=2, max_index_memory_bytes=0))
    kept = resolve_options(saved, "images")
    assert (kept.factory, kept.target_recall, kept.index_shards) == ("HNSW32", 0.8, 2)
    assert kept.max_index_memory_bytes == defaults.max_index_memory_bytes  # 0 in a record: not recorded
    asked = resolve_options(saved, "images", IndexRequest(parts=1, seed=5, max_deleted_share=0.0), target_recall=0.9)
    assert (asked.index_shards, asked.seed, asked.max_deleted_share, asked.target_recall) == (1, 5, 0.0, 0.9)
    assert asked.factory == "HNSW32"  # not asked: the saved index's
    over = resolve_options(saved, "images", IndexRequest(factory="Flat"), factory="IVF4,Flat", index_shards=None)
    assert (over.factory, over.index_shards) == ("IVF4,Flat", 2)  # a keyword over the request; None: not asked
    with pytest.raises(TypeError, match="parts"):
        resolve_options(saved, "images", parts=2)  # keywords are IndexOptions names
