"""FAISS indexes over a collection's shards: automatic choice, training, streaming add, recall tuning,
incremental updates, deletions, id-filtered search, memory-mapped loading, sharded indexes searched together."""

from .choice import AUTO, DEFAULT_MAX_INDEX_MEMORY_BYTES, choose_factory, estimate_memory_bytes, parse_bytes
from .faiss_index import (
    DEFAULT_FACTORY,
    IndexInfo,
    build_index,
    fingerprint,
    index_files,
    is_current,
    load_index,
    needs_update,
    update_index,
)
from .options import IndexOptions, IndexRequest, knobs, request_name, resolve_options
from .searching import SearchIndex, ShardedSearchIndex

__all__ = [
    "AUTO",
    "DEFAULT_FACTORY",
    "DEFAULT_MAX_INDEX_MEMORY_BYTES",
    "IndexInfo",
    "IndexOptions",
    "IndexRequest",
    "SearchIndex",
    "ShardedSearchIndex",
    "build_index",
    "choose_factory",
    "estimate_memory_bytes",
    "fingerprint",
    "index_files",
    "is_current",
    "knobs",
    "load_index",
    "needs_update",
    "parse_bytes",
    "request_name",
    "resolve_options",
    "update_index",
]
