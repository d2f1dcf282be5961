"""Clean-up: old versions that no reader needs any more, and files that no version lists.

A version is removed only when it was superseded longer ago than the retention *and* no reader holds a
lease on it (:mod:`.versions`); the current version is never removed. Then every file under the data
folders that no remaining version (or the writer's draft) lists is removed: what a killed writer left, and
what only removed versions used. Damaged files set aside by the repair (under ``_damaged/``) are left for the user.
Runs only under the writer lock, so no live writer can be about to commit the files it removes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from ..errors import MMSearchError
from .atomic import TMP_PREFIX, remove_stale_temporaries
from .manifest import DELETED_DIR, MODALITIES, Manifest
from .versions import VERSIONS_DIR, list_versions, remove_if_unleased, version_path

log = logging.getLogger(__name__)

DATA_DIRS = (*MODALITIES, DELETED_DIR, "index", "extra")


def vacuum(store, retention_s: float) -> dict[str, int]:  # noqa: ANN001 - a Store (imported lazily by it)
    """See :meth:`mmsearch.store.Store.vacuum`."""
    root, now = store.root, time.time()
    versions = list_versions(root)
    removed = leased = 0
    for older, newer in zip(versions, versions[1:]):
        if older >= store.version:
            break
        superseded_at = _published_at(root, newer)
        if now - superseded_at < retention_s:
            break  # versions are published in order: every later one was superseded later still
        if remove_if_unleased(root, older):
            removed += 1
        else:
            leased += 1
    files = remove_unreferenced(store)
    if removed or files:
        log.info("vacuum: removed %d old versions and %d files no version lists (%d versions kept for readers)",
                 removed, files, leased)
    return {"versions": removed, "files": files, "leased": leased}


def referenced_files(store) -> set[str]:  # noqa: ANN001
    """Every file the store's manifest (a writer's draft included) or any version file lists."""
    refs = set(store.manifest.files())
    for number in list_versions(store.root):
        data = _version_data(version_path(store.root, number))
        if data is not None:
            try:
                refs.update(Manifest.listed_files(data))
            except (KeyError, TypeError, AttributeError, ValueError, MMSearchError):
                pass  # a malformed version keeps nothing alive, as an unreadable one
    return refs


def remove_unreferenced(store) -> int:  # noqa: ANN001
    """Remove temporaries and data files no version lists; returns how many files went."""
    refs = referenced_files(store)
    removed = 0
    for top in DATA_DIRS:
        base = store.root / top
        if not base.is_dir():
            continue
        for dirpath, _dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames:
                path = Path(dirpath) / name
                rel = path.relative_to(store.root).as_posix()
                if top == "index" and name.endswith(".json"):
                    continue  # the readable index summaries
                if name.startswith(TMP_PREFIX) or rel not in refs:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
            if Path(dirpath) != base:
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)  # only when empty
    removed += remove_stale_temporaries(store.root) + remove_stale_temporaries(store.root / VERSIONS_DIR)
    return removed


def _published_at(root: Path, number: int) -> float:
    data = _version_data(version_path(root, number))
    try:
        return float(data["updated_at"]) if data is not None else 0.0
    except (KeyError, TypeError, ValueError):
        return 0.0


def _version_data(path: Path) -> dict | None:
    """A version file's JSON (None when unreadable or not a JSON object)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
