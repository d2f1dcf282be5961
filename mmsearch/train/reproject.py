"""Re-project a collection's stored base embeddings with an adapter into a new collection (no image decoding)."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EncoderMismatchError
from ..store.manifest import MANIFEST_NAME, MODALITIES, ModelInfo

EMBEDDING_CHUNK_ROWS = 8192


@dataclass
class ReprojectReport:
    """Rows re-projected per modality into the new collection, stamped with the adapter's model spec."""

    source: str
    out: str
    model: str
    images: int
    texts: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def reproject_collection(source: str | Path, out: str | Path, *, adapter: str | Path, force: bool = False,
                         build_indexes: bool = True) -> ReprojectReport:
    """Write ``out``: ``source``'s live rows (same ids and columns) with embeddings passed through ``adapter``.

    ``source`` must have been built with the adapter's base model. The new manifest records the model
    spec ``adapter:PATH``, so queries on ``out`` embed through the adapter too.
    """
    from ..store.store import Store
    from .adapter import AdapterEncoder

    src = Store.open(source)
    enc = AdapterEncoder.load(adapter)
    if src.manifest.model.spec != enc.base.spec:
        raise EncoderMismatchError(src.manifest.model.spec, enc.base.spec)
    out = Path(out).expanduser()
    _clear_target(out, Path(source).expanduser(), force)
    model = ModelInfo(spec=enc.spec, preprocess_id=enc.preprocess_id, dim=enc.dim)
    dst = Store.open_or_create(out, model, embedding_dtype=src.manifest.embedding_dtype)
    counts = {m: _copy_modality(src, dst, m, enc) for m in MODALITIES}
    dst.manifest.next_id = src.manifest.next_id
    dst.commit()
    if build_indexes:
        from ..indexes import build_index

        for modality in MODALITIES:
            build_index(dst, modality)
    return ReprojectReport(str(source), str(out), enc.spec, counts["images"], counts["texts"])


def _clear_target(out: Path, source: Path, force: bool) -> None:
    if out.resolve() == source.resolve():
        raise ConfigError("re-project into a new directory, not over the source collection")
    if (out / MANIFEST_NAME).exists():
        if not force:
            raise ConfigError(f"a collection already exists at {str(out)!r}; pass force=True (--force) to replace it")
        shutil.rmtree(out)


def _copy_modality(src: Any, dst: Any, modality: str, enc: Any) -> int:
    from ..store.schema import embeddings_to_numpy, shard_schema

    schema = shard_schema(modality, src.manifest.model, src.manifest.embedding_dtype)
    project = enc.project_images if modality == "images" else enc.project_texts
    rows = 0
    for table in src.iter_tables(modality, schema.names):
        if table.num_rows == 0:
            continue
        vecs = embeddings_to_numpy(table.column("embedding"), src.manifest.model.dim)
        columns = {name: table.column(name).to_pylist() for name in schema.names if name != "embedding"}
        dst.append(modality, columns, project(vecs))
        rows += table.num_rows
    return rows
