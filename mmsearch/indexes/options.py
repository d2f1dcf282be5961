"""How an index is built, tuned and kept up to date: :class:`IndexOptions` (one frozen dataclass, validated once),
:class:`IndexRequest` (the same knobs, each optional: what a build asks of a collection) and :func:`resolve_options`
(the request over the collection's own, over the defaults).

A new index knob is one field of :class:`IndexOptions` (plus its CLI flag): :class:`IndexRequest` and
:func:`resolve_options` are derived from its fields. A field with ``compare=False`` is a run-time input, not a knob.
``metadata={"request": NAME}`` names the knob differently in :class:`IndexRequest`; ``metadata={"saved": NAME}``
names the :class:`~mmsearch.store.records.IndexRecord` field that keeps what an index was built with, when it is
not the knob's own name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .choice import AUTO, DEFAULT_MAX_INDEX_MEMORY_BYTES, choose_factory

if TYPE_CHECKING:
    from ..store import Store


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

    factory: str = field(default=AUTO, metadata={"saved": "requested"})  # the record's "factory" is the choice made
    max_index_memory_bytes: int = DEFAULT_MAX_INDEX_MEMORY_BYTES
    target_recall: float = 0.95
    recall_at_k: int = 10
    tuning_queries: int = 500
    add_batch_rows: int = 65_536
    max_deleted_share: float = 0.2  # deleted ids still in the index / its rows, before a rebuild
    max_untrained_share: float = 0.5  # rows added after training / index rows, before a rebuild
    seed: int = 0
    #: 1: one index; N: N parts searched together (at most one per Parquet shard)
    index_shards: int = field(default=1, metadata={"request": "parts"})
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


def knobs() -> tuple[dataclasses.Field[Any], ...]:
    """The fields of :class:`IndexOptions` a build may ask for (those that take part in its equality)."""
    return tuple(f for f in dataclasses.fields(IndexOptions) if f.compare and f.init)


def request_name(knob: dataclasses.Field[Any]) -> str:
    """The name of ``knob`` in :class:`IndexRequest` (``index_shards`` is ``parts``)."""
    return str(knob.metadata.get("request", knob.name))


def _with_optional_knobs(cls: type) -> type:
    """``cls`` as a frozen dataclass with one field per knob of :class:`IndexOptions`, each optional (None)."""
    cls.__annotations__ = {request_name(f): f"{f.type} | None" for f in knobs()}
    for f in knobs():
        setattr(cls, request_name(f), None)
    return dataclass(frozen=True)(cls)


@_with_optional_knobs
class IndexRequest:
    """What a build asks of a collection's indexes (``mmsearch.index(..., index=IndexRequest(...))``): the knobs of
    :class:`IndexOptions`, each optional, its fields derived from them (``parts`` is ``index_shards``). A field left
    None keeps what the collection's index was built with, else the :class:`IndexOptions` default; see
    :func:`resolve_options`. ``parts`` > 1 keeps each index as that many parts searched together."""

    def __post_init__(self) -> None:
        asked = self.asked()
        if asked.get("index_shards", 1) < 1:
            raise ConfigError("the number of index parts must be at least 1")
        IndexOptions(**asked)  # each value checked as the options check it, once, here

    def asked(self) -> dict[str, Any]:
        """The fields set (not None), by their :class:`IndexOptions` names."""
        values = ((f.name, getattr(self, request_name(f))) for f in knobs())
        return {name: value for name, value in values if value is not None}


def resolve_options(store: Store, modality: str, request: IndexRequest | None = None, **keywords: Any) -> IndexOptions:
    """Options for ``modality``: what is asked (``request``, an :class:`IndexRequest`, and over it ``keywords``
    named as :class:`IndexOptions` fields, e.g. ``factory="HNSW32"``, ``index_shards=2``; None: not asked), else
    what its saved index was built with (when its record keeps that knob), else the defaults."""
    names = {f.name for f in knobs()}
    unknown = sorted(set(keywords) - names)
    if unknown:
        raise TypeError(f"resolve_options() got unexpected keywords {unknown}: the knobs are {sorted(names)}")
    asked = (request if request is not None else IndexRequest()).asked()
    asked.update({name: value for name, value in keywords.items() if value is not None})
    saved = store.manifest.indexes.get(modality)
    values = {}
    for knob in knobs():
        kept = getattr(saved, knob.metadata.get("saved", knob.name), None) if saved is not None else None
        if knob.name in asked:
            values[knob.name] = asked[knob.name]
        elif kept:  # 0 or empty in a record: not recorded
            values[knob.name] = kept
    return IndexOptions(**values)
