"""Adapter training: fit the embedding space to a user's own image-caption pairs (LiT-style).

Both base towers stay frozen; their embeddings are computed once and cached. Small residual heads
(linear or a 2-layer MLP, initialised so an untrained adapter equals the base model) are trained with a
symmetric InfoNCE loss. A saved adapter is a model spec of its own: ``adapter:/path/to/adapter``.

Importing this package is cheap (no torch); torch loads when training or applying an adapter.
"""

from .adapter import AdapterEncoder, AdapterExistsError, load_heads, read_meta, register
from .reproject import ReprojectReport, reproject_collection
from .trainer import TrainConfig, TrainProgress, TrainReport, train_adapter

__all__ = [
    "AdapterEncoder",
    "AdapterExistsError",
    "ReprojectReport",
    "TrainConfig",
    "TrainProgress",
    "TrainReport",
    "load_heads",
    "read_meta",
    "register",
    "reproject_collection",
    "train_adapter",
]
