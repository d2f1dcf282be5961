"""The automatic index choice, memory estimates and size parsing."""

from __future__ import annotations

import faiss
import pytest

from mmsearch.errors import ConfigError, IndexBuildError
from mmsearch.indexes import IndexOptions, choose_factory, estimate_memory_bytes, parse_bytes
from mmsearch.indexes.choice import FLAT_MAX_ROWS

GiB = 1024**3


@pytest.mark.parametrize("rows, budget, expected", [
    (0, GiB, "Flat"),
    (5_000, GiB, "Flat"),
    (FLAT_MAX_ROWS + 1, GiB, "IVF512,Flat"),
    (1_000_000, 4 * GiB, "IVF4096,Flat"),
    (1_000_000, GiB, "OPQ64_256,IVF4096,PQ64x8,Refine(SQ8)"),
    (1_000_000, 300 * 1024**2, "OPQ64_256,IVF4096,PQ64x8"),
    (100_000_000, 64 * GiB, "OPQ64_256,IVF32768_HNSW32,PQ64x8,Refine(SQ8)"),
])
def test_choice_by_size_and_budget(rows: int, budget: int, expected: str) -> None:
    factory = choose_factory(rows, 512, budget)
    assert factory == expected
    assert estimate_memory_bytes(factory, rows, 512) <= budget
    faiss.index_factory(512, factory, faiss.METRIC_INNER_PRODUCT)  # FAISS accepts every choice


def test_estimates_grow_with_rows_and_shrink_with_compression() -> None:
    assert estimate_memory_bytes("Flat", 2000, 64) > estimate_memory_bytes("Flat", 1000, 64)
    flat, sq8, pq = (estimate_memory_bytes(f, 10**6, 512) for f in ("IVF4096,Flat", "IVF4096,SQ8", "OPQ64_256,IVF4096,PQ64x8"))
    assert flat > sq8 > pq
    assert estimate_memory_bytes("Flat", 1000, 64) == 1000 * 64 * 4 + 16 * 1000


def test_no_index_fits_is_a_typed_error_naming_the_flag() -> None:
    with pytest.raises(IndexBuildError, match="--max-index-memory"):
        choose_factory(1_000_000, 512, 1024**2)


@pytest.mark.parametrize("text, expected", [("4GB", 4 * GiB), ("512MiB", 512 * 1024**2), ("1.5g", int(1.5 * GiB)),
                                            ("1024", 1024), (2048, 2048), (" 2 kb ", 2048)])
def test_parse_bytes(text, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "4XB", "0", "-1GB"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_bytes(text)


@pytest.mark.parametrize("kwargs", [{"factory": "IDMap2,Flat"}, {"factory": " "}, {"target_recall": 0.0},
                                    {"target_recall": 1.5}, {"max_index_memory_bytes": 0}, {"recall_at_k": 0},
                                    {"max_deleted_share": 2.0}])
def test_bad_options_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        IndexOptions(**kwargs)
