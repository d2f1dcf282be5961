"""The on-disk collection: Parquet shards with embeddings inside, a manifest, atomic commits."""

from .manifest import FORMAT_VERSION, MODALITIES, Manifest, ModelInfo, ShardInfo
from .store import Store

__all__ = ["FORMAT_VERSION", "MODALITIES", "Manifest", "ModelInfo", "ShardInfo", "Store"]
