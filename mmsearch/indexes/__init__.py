"""FAISS index building, saving and loading over a collection's shards."""

from .faiss_index import DEFAULT_FACTORY, IndexInfo, SearchIndex, build_index, fingerprint, is_current, load_index

__all__ = ["DEFAULT_FACTORY", "IndexInfo", "SearchIndex", "build_index", "fingerprint", "is_current", "load_index"]
