"""``verify``: every problem in a collection's current version, one line each.

Checks the version log (every version file readable, ``manifest.json`` naming the newest), and every file
the version lists (present, the recorded size, the recorded checksum). ``deep`` also reads every shard:
its row count, unique ids across shards, and finite, unit-length embeddings (for normalised models).
Reading only: nothing is changed (``mmsearch index`` repairs, see :mod:`.repair`).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import MANIFEST_NAME, MODALITIES
from .repair import damage
from .schema import embeddings_to_numpy
from .versions import VERSIONS_DIR, list_versions, version_path

_NORM_TOLERANCE = 0.02


def check(store, *, deep: bool = False) -> list[str]:  # noqa: ANN001 - a Store
    """See :meth:`mmsearch.store.Store.check`."""
    problems = _version_log(store)
    root, m = store.root, store.manifest
    for modality in MODALITIES:
        for shard in m.shards[modality]:
            if why := damage(root, shard.file, shard.sha256, shard.bytes, full=True):
                problems.append(f"{shard.file}: {why}")
        for entry in m.deletion_files[modality]:
            if why := damage(root, entry["file"], entry["sha256"], entry.get("bytes", -1), full=True):
                problems.append(f"{entry['file']}: {why}")
    for modality, record in m.indexes.items():
        stamps = record.files
        for rel in record.needed_files():
            stamp = stamps.get(rel, {})
            if why := damage(root, rel, stamp.get("sha256"), stamp.get("bytes", -1), full=True):
                problems.append(f"{rel}: {why} (the {modality} index)")
    for info in [*m.extra.values(), *m.labels.values()]:
        if info and (why := damage(root, info["file"], info.get("sha256"), info.get("bytes", -1), full=True)):
            problems.append(f"{info['file']}: {why}")
    if deep:
        problems += _deep(store, {p.split(":", 1)[0] for p in problems})
    return problems


def _version_log(store) -> list[str]:  # noqa: ANN001
    root, problems = store.root, []
    readable = []
    for number in list_versions(root):
        try:
            json.loads(version_path(root, number).read_bytes())
            readable.append(number)
        except (OSError, ValueError) as exc:
            problems.append(f"{VERSIONS_DIR}/{number:08d}.json: not a manifest ({str(exc)[:60]})")
    try:
        pointed = json.loads((root / MANIFEST_NAME).read_bytes()).get("version", 0)
    except (OSError, ValueError, AttributeError):
        problems.append(f"{MANIFEST_NAME}: missing or not a manifest (readers fall back to version "
                        f"{max(readable, default=0)})")
        return problems
    if readable and pointed != max(readable):
        problems.append(f"{MANIFEST_NAME}: names version {pointed}, the newest is {max(readable)}")
    return problems


def _deep(store, damaged: set[str]) -> list[str]:  # noqa: ANN001
    problems, dim = [], store.manifest.model.dim
    for modality in MODALITIES:
        seen: set[int] = set()
        for shard in store.manifest.shards[modality]:
            if shard.file in damaged:
                continue
            try:
                table = pq.read_table(store.root / shard.file, columns=["id", "embedding"])
            except (OSError, pa.ArrowException) as exc:
                problems.append(f"{shard.file}: unreadable ({str(exc)[:80]})")
                continue
            if table.num_rows != shard.rows:
                problems.append(f"{shard.file}: {table.num_rows} rows where the version lists {shard.rows}")
            ids = table.column("id").to_numpy()
            repeated = len(ids) - len(set(ids.tolist()) - seen)
            if repeated:
                problems.append(f"{shard.file}: {repeated} ids that other rows have too")
            seen.update(ids.tolist())
            vectors = embeddings_to_numpy(table.column("embedding"), dim)
            norms = np.linalg.norm(vectors, axis=1)
            bad = ~np.isfinite(norms)
            if store.manifest.model.normalized:
                bad |= np.abs(norms - 1.0) > _NORM_TOLERANCE
            if bad.any():
                problems.append(f"{shard.file}: {int(bad.sum())} embeddings are not finite unit vectors")
    return problems
