"""What a writer does when it opens a collection: migrate, resume, tidy, repair.

- A collection written before versions gets its first version file; a version that was written but never
  made current (a kill between the two renames of a publish) is rolled forward.
- A draft left by an interrupted transaction on the same version is resumed (its shards count again).
- Files no version lists are removed (only by the outermost holder of the writer lock: the lock proves
  their writer is gone).
- Damage is repaired, saying so on the log: a listed file that is missing, has the wrong size, or (when its
  modification time changed) the wrong checksum. A damaged index is dropped (the run builds it again); a
  damaged shard is dropped with its rows (their sources are embedded again when still on disk, the captions
  of its images go with them) and the file set aside under ``_damaged/``; a damaged deletion file's ids are
  recovered by keeping only the newest row per path / text key; damaged user metadata is dropped.
  Nothing is deleted silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .atomic import file_sha256, write_bytes_atomic
from .manifest import (
    DAMAGED_DIR,
    MANIFEST_NAME,
    MODALITIES,
    Manifest,
    file_stamp,
    read_deleted_ids,
    read_manifest,
    save_deletions,
)
from .vacuum import remove_unreferenced
from .versions import DRAFT_NAME, list_versions, write_version

log = logging.getLogger(__name__)


def prepare_for_writing(store, *, outermost: bool) -> bool:  # noqa: ANN001 - a Store
    """Migrate, resume, tidy and repair ``store`` (opened for writing); True when its manifest changed."""
    _make_current(store)
    changed = _resume_draft(store)
    if outermost:
        remove_unreferenced(store)
    return _repair(store) or changed


def damage(root: Path, rel: str, sha256: str | None, size: int = -1, mtime_ns: int = -1, *,
           full: bool = False) -> str:
    """Why the listed file ``rel`` is damaged ("" when it is not). The checksum is read only when the size and
    modification time recorded for it do not both match (always with ``full``)."""
    path = Path(root) / rel
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size >= 0 and st.st_size != size:
        return f"{'checksum mismatch: ' if full else ''}{st.st_size} bytes where {size} were written"
    if not full and size >= 0 and st.st_mtime_ns == mtime_ns:
        return ""
    if sha256:
        try:
            if file_sha256(path) != sha256:
                return "checksum mismatch"
        except OSError as exc:
            return f"unreadable ({exc.strerror})"
    return ""


def _make_current(store) -> None:  # noqa: ANN001
    """Give a pre-version collection its first version file; point manifest.json at the newest version."""
    root, manifest = store.root, store.manifest
    if not list_versions(root):
        save_deletions(root, manifest)  # ids still inline (older manifests) move into a file first
        data = manifest.to_json().encode("utf-8")
        write_version(root, manifest.version, data)
        write_bytes_atomic(root / MANIFEST_NAME, data)
        log.info("%s: recorded as version %d (collections now keep versions)", root, manifest.version)
        return
    try:
        pointed = json.loads((root / MANIFEST_NAME).read_bytes()).get("version", 0)
    except (OSError, ValueError, AttributeError):
        pointed = None
    if pointed != manifest.version:
        from .versions import version_path

        write_bytes_atomic(root / MANIFEST_NAME, version_path(root, manifest.version).read_bytes())
        log.warning("%s: manifest.json did not name version %d, the newest; it does now", root, manifest.version)


def _resume_draft(store) -> bool:  # noqa: ANN001
    path = store.root / DRAFT_NAME
    if not path.is_file():
        return False
    try:
        base = json.loads(path.read_bytes()).get("base_version")
        draft = read_manifest(store.root, path, on_damaged=lambda rel, why: None)
    except Exception as exc:  # noqa: BLE001 - an unreadable draft is only lost work, never lost data
        log.warning("an interrupted write left %s, which cannot be read (%s): starting from version %d",
                    path.name, exc, store.version)
        path.unlink(missing_ok=True)
        return False
    if base != store.version:
        log.info("dropping a draft made on version %s (the collection is at version %d)", base, store.version)
        path.unlink(missing_ok=True)
        return False
    draft.version = store.version
    store.manifest = draft
    log.warning("resuming an interrupted write on %s: %d image and %d text rows it had embedded are kept",
                store.root, draft.rows("images") - _rows(store, "images"), draft.rows("texts") - _rows(store, "texts"))
    return True


def _rows(store, modality: str) -> int:  # noqa: ANN001
    try:
        return read_manifest(store.root).rows(modality)
    except Exception:  # noqa: BLE001
        return 0


def _repair(store) -> bool:  # noqa: ANN001
    root, m = store.root, store.manifest
    changed = dropped_shards = lost_deletions = False
    for modality in MODALITIES:
        kept = []
        for shard in m.shards[modality]:
            why = damage(root, shard.file, shard.sha256, shard.bytes, shard.mtime_ns)
            if why:
                _set_aside(root, shard.file)
                log.warning("%s is damaged (%s): its %d rows are dropped and their sources embedded again where "
                            "they are still on disk", shard.file, why, shard.rows)
                dropped_shards = True
                continue
            kept.append(_restamped(root, shard))
        changed |= kept != m.shards[modality]
        m.shards[modality] = kept
        good = []
        for entry in m.deletion_files[modality]:
            why = damage(root, entry["file"], entry["sha256"], entry.get("bytes", -1), entry.get("mtime_ns", -1))
            if why:
                _set_aside(root, entry["file"])
                log.warning("deletion file %s is damaged (%s): deleted rows are found again as older rows of the "
                            "same path or text key", entry["file"], why)
                lost_deletions = True
            else:
                good.append(entry)
        if len(good) != len(m.deletion_files[modality]):
            m.deletion_files[modality] = good
            m.deleted[modality] = [i for entry in good for i in read_deleted_ids(root, entry)]
    changed |= _repair_indexes(store) | _repair_extra(store)
    if dropped_shards:
        _drop_orphaned_rows(store)
    if lost_deletions:
        _keep_newest_rows(store)
    return changed or dropped_shards or lost_deletions


def _restamped(root: Path, shard: Any) -> Any:
    """The shard record with the file's current size and time, once its checksum was found right."""
    stamp = file_stamp(root / shard.file)
    if stamp["bytes"] == shard.bytes and stamp["mtime_ns"] == shard.mtime_ns:
        return shard
    return dataclasses.replace(shard, bytes=stamp["bytes"], mtime_ns=stamp["mtime_ns"])


def _repair_indexes(store) -> bool:  # noqa: ANN001
    root, changed = store.root, False
    for modality, record in list(store.manifest.indexes.items()):
        stamps = record.files
        for rel in record.needed_files():
            stamp = stamps.get(rel, {})
            why = damage(root, rel, stamp.get("sha256"), stamp.get("bytes", -1), stamp.get("mtime_ns", -1))
            if why:
                _set_aside(root, rel)
                log.warning("the %s index file %s is damaged (%s): the index is built again", modality, rel, why)
                store.manifest.indexes.pop(modality)
                changed = True
                break
    return changed


def _repair_extra(store) -> bool:  # noqa: ANN001
    """Damaged side files are set aside and dropped: user metadata (set again with Collection.set_metadata) and
    labels (the next ``mmsearch index`` computes them again)."""
    changed = False
    for entries, what, fix in ((store.manifest.extra, "user metadata", "set it again with Collection.set_metadata"),
                               (store.manifest.labels, "labels", "the next `mmsearch index` computes them again")):
        for modality, info in list(entries.items()):
            if not info:
                continue
            why = damage(store.root, info["file"], info.get("sha256"), info.get("bytes", -1), info.get("mtime_ns", -1))
            if why:
                _set_aside(store.root, info["file"])
                log.warning("%s %s is damaged (%s): dropped; %s", what, info["file"], why, fix)
                entries.pop(modality)
                changed = True
    return changed


def _drop_orphaned_rows(store) -> None:  # noqa: ANN001
    """After shards were dropped: captions whose image went, and captioned images whose caption went (so the
    image is embedded again with it)."""
    images = store.scan("images", ["id", "caption"]).to_pydict()
    texts = store.scan("texts", ["id", "image_id"]).to_pydict()
    live_images = set(images["id"])
    store.mark_deleted("texts", [t for t, img in zip(texts["id"], texts["image_id"]) if img is not None
                                 and img not in live_images])
    captioned = {img for img in texts["image_id"] if img is not None}
    store.mark_deleted("images", [i for i, c in zip(images["id"], images["caption"]) if c and i not in captioned])


def _keep_newest_rows(store) -> None:  # noqa: ANN001
    """After deleted ids were lost: each image path and each (source, key) of a text keeps only its newest row."""
    for modality, key in (("images", ("uri",)), ("texts", ("source", "key"))):
        table = store.scan(modality, ["id", *key]).to_pydict()
        newest: dict[tuple, int] = {}
        older: list[int] = []
        groups: dict[tuple, list[int]] = defaultdict(list)
        for n, row_id in enumerate(table["id"]):
            groups[tuple(table[k][n] for k in key)].append(row_id)
        for group, ids in groups.items():
            newest[group] = max(ids)
            older += [i for i in ids if i != newest[group]]
        store.mark_deleted(modality, older)


def _set_aside(root: Path, rel: str) -> None:
    """Move a damaged file to ``_damaged/<rel>`` (a later one of the same name gets a time suffix)."""
    path = Path(root) / rel
    if not path.exists():
        return
    target = Path(root) / DAMAGED_DIR / rel
    if target.exists():
        target = target.with_name(f"{target.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    target.parent.mkdir(parents=True, exist_ok=True)
    path.replace(target)


__all__ = ["Manifest", "damage", "prepare_for_writing"]
