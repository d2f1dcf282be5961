"""Arrow schemas of the Parquet shards.

Embeddings are a fixed-size list column, so pandas, DuckDB, Polars, Spark, Ray and autofaiss read
them directly. Each shard's schema metadata repeats the model contract (key ``mmsearch``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from . import arrow
from .manifest import FORMAT_VERSION, ModelInfo

EMBEDDING_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}

IMAGE_COLUMNS = [
    pa.field("id", pa.int64(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("bytes", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("mtime", pa.float64()),
    pa.field("caption", pa.string()),
]
TEXT_COLUMNS = [
    pa.field("id", pa.int64(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("source", pa.string()),  # the corpus file, or the image uri for a caption
    pa.field("key", pa.string()),  # identity within the source (for incremental runs)
    pa.field("image_id", pa.int64()),  # the image a caption belongs to, else null
]
COLUMNS = {"images": IMAGE_COLUMNS, "texts": TEXT_COLUMNS}


def shard_schema(modality: str, model: ModelInfo, embedding_dtype: str) -> pa.Schema:
    """The schema of a shard of ``modality`` under ``model``."""
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ConfigError(f"embedding_dtype must be one of {sorted(EMBEDDING_DTYPES)}")
    emb = pa.field("embedding", pa.list_(EMBEDDING_DTYPES[embedding_dtype], model.dim), nullable=False)
    meta = {"format_version": FORMAT_VERSION, "model": model.spec, "dim": model.dim,
            "metric": model.metric, "normalized": model.normalized}
    return pa.schema(COLUMNS[modality] + [emb], metadata={"mmsearch": json.dumps(meta)})


def embedding_array(vectors: np.ndarray, embedding_dtype: str) -> pa.FixedSizeListArray:
    """(N, dim) float array -> Arrow fixed-size list array, zero-copy where the dtype matches."""
    flat = np.ascontiguousarray(vectors, dtype=np.dtype(embedding_dtype)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(arrow.array(flat, EMBEDDING_DTYPES[embedding_dtype]), vectors.shape[1])


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed-size list column -> (N, dim) float32 numpy array."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [_chunk_to_numpy(chunk, dim) for chunk in chunks if len(chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def _chunk_to_numpy(chunk: pa.FixedSizeListArray, dim: int) -> np.ndarray:
    """One chunk's vectors, read from the values buffer (``to_numpy`` of a float16 array imports pandas)."""
    values = chunk.values  # the child array, without the chunk's own offset
    dtype = {pa.float16(): np.float16, pa.float32(): np.float32}.get(values.type)
    if dtype is None or chunk.null_count or values.null_count:
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    start = (chunk.offset * dim) + values.offset
    flat = np.frombuffer(values.buffers()[1], dtype=dtype)[start:start + len(chunk) * dim]
    return flat.astype(np.float32).reshape(-1, dim)


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` as mmsearch writes Parquet: zstd, and dictionary encoding for every column but
    ``embedding``. Vectors never repeat, so dictionary-encoding them (pyarrow's default) only costs: on a
    12,500 x 512 float16 shard it made reads 3.7x and writes 2.8x slower, and the file 3% larger."""
    import pyarrow.parquet as pq

    dictionary = [name for name in table.column_names if name != "embedding"]
    pq.write_table(table, path, compression="zstd", use_dictionary=dictionary)
