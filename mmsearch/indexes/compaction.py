"""A write's last step: merge small shards (:mod:`mmsearch.store.compact`) and keep the indexes' records in step."""

from __future__ import annotations

from ..store import Store
from ..store.compact import compact
from ..store.manifest import MODALITIES
from .faiss_index import follow_merged_shards, is_current


def compact_shards(store: Store, shard_rows: int) -> dict[str, int]:
    """Merge the small shards of ``store`` (writing, in a transaction); an index that was current stays current
    (its rows did not change, only the files holding them). Returns per modality how many shards went."""
    current = {m: is_current(store, m) for m in MODALITIES}
    removed = compact(store, shard_rows)
    for modality, count in removed.items():
        if count and current[modality]:
            follow_merged_shards(store, modality)
    if any(removed.values()):
        store.commit()
    return removed
