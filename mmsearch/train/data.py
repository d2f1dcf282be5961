"""Training data: clean the pairs, split them by group, embed them once with the base model (cached)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..evaluation import Pair

log = logging.getLogger(__name__)

CACHE_NAME = "base-features"  # a folder: images.parquet + texts.parquet


@dataclass
class Features:
    """Base embeddings of unique images and texts, and the pairs (as row indices) whose image was readable."""

    image_uris: list[str]
    image_vecs: np.ndarray
    texts: list[str]
    text_vecs: np.ndarray
    skipped_images: int


def clean_pairs(pairs: Sequence[Pair]) -> tuple[list[Pair], int]:
    """Drop exact duplicate pairs (logged, counted); captions shared by several images stay, as one group."""
    seen: dict[tuple[str, str], Pair] = {}
    for p in pairs:
        seen.setdefault((p.image, p.text), p)
    merged = len(pairs) - len(seen)
    shared = sum(1 for n in Counter(p.text for p in seen.values()).values() if n > 1)
    if merged:
        log.warning("merged %d duplicate (image, caption) pairs", merged)
    if shared:
        log.warning("%d captions describe more than one image; each such caption is one positive set", shared)
    return list(seen.values()), merged


def count_groups(pairs: Sequence[Pair]) -> int:
    """Independent caption groups: groups joined by a shared caption or image count once."""
    return len(set(_linked_groups(pairs).values()))


def split_by_group(pairs: Sequence[Pair], *, test_fraction: float, val_fraction: float, seed: int,
                   max_val_groups: int | None = None) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Train / validation / test pairs; groups sharing a caption or image stay together, so nothing leaks.

    The test split is drawn first, so ``val_fraction`` and ``max_val_groups`` never change which pairs it holds.
    """
    components = _linked_groups(pairs)
    keys = sorted(set(components.values()))
    random.Random(seed).shuffle(keys)
    n_test = max(1, round(test_fraction * len(keys)))
    n_val = max(1, round(val_fraction * (len(keys) - n_test)))
    if max_val_groups:
        n_val = min(n_val, max_val_groups)
    if len(keys) - n_test - n_val < 2:
        raise ConfigError(f"only {len(keys)} distinct caption groups: need at least {n_test + n_val + 2} "
                          "to hold some out for validation and test; add more captioned images")
    test, val = set(keys[:n_test]), set(keys[n_test:n_test + n_val])
    parts: tuple[list[Pair], list[Pair], list[Pair]] = ([], [], [])
    for p in pairs:
        key = components[p.group]
        parts[0 if key not in test | val else (1 if key in val else 2)].append(p)
    return parts


def group_folds(pairs: Sequence[Pair], *, folds: int, seed: int) -> list[tuple[list[Pair], list[Pair]]]:
    """``folds`` (train, validation) partitions for cross-validation; linked groups stay in one fold."""
    components = _linked_groups(pairs)
    keys = sorted(set(components.values()))
    random.Random(seed).shuffle(keys)
    fold_of = {key: i % folds for i, key in enumerate(keys)}
    out = []
    for k in range(folds):
        val = [p for p in pairs if fold_of[components[p.group]] == k]
        out.append(([p for p in pairs if fold_of[components[p.group]] != k], val))
    return out


def _linked_groups(pairs: Sequence[Pair]) -> dict[str, str]:
    """Union-find over groups: two groups joined by a shared caption or image become one component."""
    parent: dict[str, str] = {p.group: p.group for p in pairs}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first: dict[tuple[str, str], str] = {}
    for p in pairs:
        for key in (("t", p.text), ("i", p.image)):
            other = first.setdefault(key, p.group)
            a, b = find(other), find(p.group)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {g: find(g) for g in parent}


def base_features(pairs: Sequence[Pair], encoder: Any, cache_dir: Path, *, batch_size: int, workers: int) -> Features:
    """Embed unique images and texts with the frozen base model, reusing ``cache_dir``'s cache when it matches."""
    uris = sorted({p.image for p in pairs})
    texts = sorted({p.text for p in pairs})
    key = _cache_key(encoder, uris, texts)
    path = cache_dir / CACHE_NAME
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    from ..evaluation import embed_images

    vecs, ok = embed_images(encoder, uris, batch_size, workers)
    if (~ok).any():
        log.warning("skipped %d unreadable images", int((~ok).sum()))
    text_vecs = np.concatenate([encoder.encode_texts(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    feats = Features([u for u, good in zip(uris, ok) if good], vecs.astype(np.float32), texts,
                     text_vecs.astype(np.float32), int((~ok).sum()))
    _write_cache(path, key, feats)
    return feats


def _cache_key(encoder: Any, uris: list[str], texts: list[str]) -> str:
    """Changes with the model (spec, preprocessing, a local weights file's size and mtime), the texts, and
    each image's path, size and mtime: an edited image or replaced weights file is embedded again."""
    spec = str(encoder.spec)
    weights = spec.rsplit("@", 1)[1] if "@" in spec else None
    stamp = [_stat(weights)] if weights else []
    h = hashlib.sha256(json.dumps([spec, getattr(encoder, "preprocess_id", ""), stamp, texts]).encode())
    for uri in uris:
        h.update(json.dumps([uri, _stat(uri)]).encode())
    return h.hexdigest()


def _stat(path: str) -> list[int] | None:
    try:
        st = Path(path).expanduser().stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_cache(path: Path, key: str) -> Features | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, texts = path / "images.parquet", path / "texts.parquet"
    if not (images.is_file() and texts.is_file()):
        return None
    try:
        ti, tt = pq.read_table(images), pq.read_table(texts)
        meta = json.loads(ti.schema.metadata[b"mmsearch-train"])
        if meta["key"] != key:
            return None
        return Features(ti.column("uri").to_pylist(), _vectors(ti), tt.column("text").to_pylist(), _vectors(tt),
                        int(meta["skipped"]))
    except (OSError, KeyError, ValueError, pa.ArrowException):
        log.warning("ignoring unreadable feature cache %s", path)
        return None


def _vectors(table: Any) -> np.ndarray:
    from ..store.schema import embeddings_to_numpy

    return embeddings_to_numpy(table.column("embedding"), table.schema.field("embedding").type.list_size)


def _write_cache(path: Path, key: str, f: Features) -> None:
    """Two Parquet files (uri|text, embedding as a fixed-size list), readable by any Arrow tool."""
    import pyarrow as pa

    from ..store import arrow
    from ..store.atomic import write_with_atomic
    from ..store.schema import embedding_array, write_parquet

    path.mkdir(parents=True, exist_ok=True)
    meta = {b"mmsearch-train": json.dumps({"key": key, "skipped": f.skipped_images}).encode()}
    for name, column, values, vecs in (("images", "uri", f.image_uris, f.image_vecs), ("texts", "text", f.texts, f.text_vecs)):
        table = pa.table({column: arrow.array(values, pa.string()), "embedding": embedding_array(vecs, "float32")})
        table = table.replace_schema_metadata(meta)
        write_with_atomic(path / f"{name}.parquet", lambda tmp, t=table: write_parquet(t, tmp))
