"""How an index is built, tuned and kept up to date (one frozen dataclass, validated once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .choice import AUTO, DEFAULT_MAX_INDEX_MEMORY_BYTES, choose_factory


@dataclass(frozen=True)
class IndexOptions:
    """Index build options.

    ``factory`` is ``"auto"`` (chosen from the row count and ``max_index_memory_bytes``) or any FAISS
    factory string without ``IDMap`` (mmsearch maps ids itself), e.g. ``"HNSW32"``, ``"IVF1024,Flat"``,
    ``"OPQ64_256,IVF4096,PQ64x8,Refine(SQ8)"``. Search parameters (nprobe, efSearch, k_factor) are tuned
    to reach ``target_recall`` at ``recall_at_k`` on ``tuning_queries`` held-out queries.
    ``index_shards`` > 1 keeps the index as that many parts (each over a contiguous run of the
    collection's Parquet shards, all sharing one trained quantizer) saved apart and searched together.
    """

    factory: str = AUTO
    max_index_memory_bytes: int = DEFAULT_MAX_INDEX_MEMORY_BYTES
    target_recall: float = 0.95
    recall_at_k: int = 10
    tuning_queries: int = 500
    add_batch_rows: int = 65_536
    max_deleted_share: float = 0.2  # deleted ids still in the index / its rows, before a rebuild
    max_untrained_share: float = 0.5  # rows added after training / index rows, before a rebuild
    seed: int = 0
    index_shards: int = 1  # 1: one index; N: N parts searched together (at most one per Parquet shard)
    #: query vectors from the other modality's encoder (e.g. generic text queries for an image index),
    #: used for tuning when the collection holds too few rows of the other modality; not persisted
    probe_queries: Any = field(default=None, compare=False, repr=False)
    #: unrelated text queries, encoded: their best scores set the index's no-match threshold (kept in its record)
    null_queries: Any = field(default=None, compare=False, repr=False)
    #: (rows, dim) -> the automatic choice, made once per build (shared by the copies ``dataclasses.replace`` makes)
    _choices: dict[tuple[int, int], str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ConfigError("the index factory must be 'auto' or a FAISS factory string such as 'HNSW32'")
        if "IDMap" in self.factory:
            raise ConfigError(f"leave IDMap out of the factory {self.factory!r}: mmsearch maps ids itself")
        if self.max_index_memory_bytes <= 0:
            raise ConfigError("max_index_memory_bytes must be positive")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], not {self.target_recall}")
        if self.recall_at_k < 1 or self.tuning_queries < 1 or self.add_batch_rows < 1 or self.index_shards < 1:
            raise ConfigError("recall_at_k, tuning_queries, add_batch_rows and index_shards must be at least 1")
        if not (0.0 <= self.max_deleted_share <= 1.0 and 0.0 <= self.max_untrained_share <= 1.0):
            raise ConfigError("max_deleted_share and max_untrained_share must be in [0, 1]")

    def factory_for(self, rows: int, dim: int) -> str:
        """The FAISS factory for ``rows`` vectors of ``dim``: :attr:`factory`, or for ``"auto"`` the choice
        (:func:`~.choice.choose_factory` within :attr:`max_index_memory_bytes`), made once per build."""
        if self.factory != AUTO:
            return self.factory
        if (rows, dim) not in self._choices:
            self._choices[(rows, dim)] = choose_factory(rows, dim, self.max_index_memory_bytes)
        return self._choices[(rows, dim)]


@dataclass(frozen=True)
class IndexRequest:
    """What a build asks of a collection's indexes (``mmsearch.index(..., index=IndexRequest(...))``). A field left
    None keeps what the collection's index was built with, else the :class:`IndexOptions` default; see
    :func:`mmsearch.indexes.resolve_options`. ``parts`` > 1 keeps each index as that many parts searched together."""

    factory: str | None = None  # "auto" or a FAISS factory string
    max_index_memory_bytes: int | None = None
    target_recall: float | None = None
    parts: int | None = None

    def __post_init__(self) -> None:
        if self.parts is not None and self.parts < 1:
            raise ConfigError("the number of index parts must be at least 1")
        if self.max_index_memory_bytes is not None and self.max_index_memory_bytes <= 0:
            raise ConfigError("max_index_memory_bytes must be positive")
        if self.target_recall is not None and not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], not {self.target_recall}")
