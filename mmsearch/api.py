"""The façade: :func:`index` builds or updates a collection, :func:`open` opens one for queries."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .config import default_collection_for, default_model, remember_collection
from .encoders.registry import canonical_spec, load_encoder
from .errors import ConfigError, EncoderMismatchError
from .indexes import DEFAULT_FACTORY, IndexInfo, build_index, is_current
from .ingest import IngestOptions, IngestReport, Progress, ingest
from .search import Collection
from .store import MODALITIES, ModelInfo, Store
from .store.manifest import MANIFEST_NAME


@dataclass
class IndexResult:
    """What :func:`index` did."""

    path: Path
    model: str
    report: IngestReport
    indexes: dict[str, IndexInfo] = field(default_factory=dict)
    seconds: float = 0.0


def index(
    paths: str | Path | Sequence[str | Path], *, out: str | Path | None = None, model: str | None = None,
    batch_size: int = 32, workers: int | None = None, shard_rows: int = 8192,
    embedding_dtype: str = "float16", device: str | None = None, index_factory: str = DEFAULT_FACTORY,
    progress: Progress | None = None,
) -> IndexResult:
    """Embed image folders / images / text corpora into a collection and (re)build its indexes.

    Re-running on the same inputs embeds only what is new or changed and records removed inputs
    as deletions. ``out`` defaults to ``PATH.mms`` beside the first input. The model defaults to
    the collection's own model, else ``$MMSEARCH_MODEL``, else the built-in offline model.
    """
    started = time.perf_counter()
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not path_list:
        raise ConfigError("nothing to index: give at least one folder, image or text corpus")
    if batch_size < 1 or shard_rows < 1:
        raise ConfigError("batch_size and shard_rows must be at least 1")
    root = Path(out).expanduser() if out else default_collection_for(path_list[0])
    spec = model_for_collection(root, model)
    encoder = load_encoder(spec, device=device)
    info = ModelInfo(spec=encoder.spec, preprocess_id=encoder.preprocess_id, dim=encoder.dim)
    store = Store.open_or_create(root, info, embedding_dtype=embedding_dtype)
    options = IngestOptions(batch_size=batch_size, workers=_workers(workers), shard_rows=shard_rows)
    report = ingest(store, encoder, path_list, options=options, progress=progress)
    built = {}
    for modality in MODALITIES:
        if modality in report.changed or not is_current(store, modality):
            result = build_index(store, modality, factory=index_factory)
            if result:
                built[modality] = result
    remember_collection(root)
    return IndexResult(root, encoder.spec, report, built, time.perf_counter() - started)


def open(path: str | Path, *, model: str | None = None, device: str | None = None) -> Collection:  # noqa: A001
    """Open a collection for queries. ``model``, if given, must be the one it was built with."""
    return Collection(Store.open(path), model=model, device=device)


def model_for_collection(root: str | Path, model: str | None = None) -> str:
    """The model spec :func:`index` will use for ``root``: the collection's own, else ``model`` or the default."""
    root = Path(root).expanduser()
    if (root / MANIFEST_NAME).is_file():
        existing = Store.open(root).manifest.model.spec
        if model is not None and canonical_spec(model) != existing:
            raise EncoderMismatchError(existing, canonical_spec(model))
        return existing
    return canonical_spec(model or default_model())


def _workers(workers: int | None) -> int:
    if workers is not None:
        if workers < 0:
            raise ConfigError("workers must be >= 0")
        return workers
    return max(1, min(4, (os.cpu_count() or 2)))
